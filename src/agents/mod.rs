//! Agents: the registry (register, update, delete, each announced as `agent_update` to
//! the users who can see the agent: for a private agent its owner and the admins, for a
//! shared one everyone; written to the store's outbox in the change's own transaction
//! and published by the relay before the caller is answered), token verification
//! (remembered for a few seconds, see `tokens`) and rotation, presence (online while polling or renewing a lease; offline after `OFFLINE_AFTER` of
//! silence by default, detected by a sweeper), and the agent processes themselves: the reference
//! agent `zerostate agent run` (`runner` + `shell`) and the built-in agent (`builtin`),
//! which talk to the server over the same HTTP runtime API.

pub mod builtin;
pub mod runner;
pub mod shell;
pub mod tokens;

use crate::auth::secret::{self, NewSecret, AGENT_TOKEN_PREFIX};
use crate::cluster::Signal;
use crate::domain::{AgentId, Capability, ParseError, UserId};
use crate::realtime::{Hub, Relay, Target};
use crate::store::{
    AgentChanges, AgentRecord, Announcement, NewAgent, Store, StoreError, TaskRecord,
};
use chrono::Utc;
use serde::Serialize;
use std::sync::Arc;
use std::time::Duration;
use tokens::{AgentCredential, AgentTokens};
use uuid::Uuid;

/// By default, an agent that has neither polled nor renewed a lease for this long is
/// offline.
pub const OFFLINE_AFTER: Duration = Duration::from_secs(60);
/// The owner of agents the server runs itself: the nil UUID, which is never an account
/// (creating a real account would take the first-admin slot from the first person).
pub const SYSTEM_OWNER: UserId = UserId(Uuid::nil());
/// The `system_key` of the built-in agent.
const BUILTIN_KEY: &str = "builtin";

/// Parses an agent name: 1–100 printable characters.
pub fn parse_name(raw: &str) -> Result<String, ParseError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ParseError::new("name must be 1-100 printable characters"));
    }
    Ok(name.to_owned())
}

/// Parses a description: at most 1000 characters (newlines allowed).
pub fn parse_description(raw: &str) -> Result<String, ParseError> {
    let text = raw.trim();
    if text.chars().count() > 1000 {
        return Err(ParseError::new(
            "description must be at most 1000 characters",
        ));
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ParseError::new(
            "description must not contain control characters",
        ));
    }
    Ok(text.to_owned())
}

/// Parses a capability list: 1–32 valid capabilities, duplicates dropped, order kept.
pub fn parse_capabilities(raw: &[String]) -> Result<Vec<Capability>, ParseError> {
    if raw.is_empty() {
        return Err(ParseError::new(
            "capabilities must name at least one capability",
        ));
    }
    if raw.len() > 32 {
        return Err(ParseError::new(
            "capabilities may name at most 32 capabilities",
        ));
    }
    let mut caps: Vec<Capability> = Vec::with_capacity(raw.len());
    for item in raw {
        let cap = Capability::parse(item)?;
        if !caps.contains(&cap) {
            caps.push(cap);
        }
    }
    Ok(caps)
}

/// What `agent_update` says an agent did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentAction {
    Registered,
    /// Changed by its owner or an admin, or went online or offline.
    Updated,
    Deleted,
}

/// Whether an agent is reachable, as the API and `agent_update` say it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AgentStatus {
    Online,
    Offline,
}

impl AgentStatus {
    /// The status of a stored agent.
    pub fn of(agent: &AgentRecord) -> Self {
        if agent.online {
            AgentStatus::Online
        } else {
            AgentStatus::Offline
        }
    }
}

/// The `agent_update` message's data, exactly as it goes on the wire.
#[derive(Debug, Clone, Serialize)]
pub struct AgentUpdate<'a> {
    pub agent_id: AgentId,
    pub name: &'a str,
    pub action: AgentAction,
    pub status: AgentStatus,
    pub shared: bool,
}

/// Who, besides everyone for a shared agent, hears of an agent's changes: its owner and
/// the admins, read just before a change, so that its `agent_update` can be written in
/// the change's transaction.
pub struct Audience {
    admins: Vec<UserId>,
}

impl Audience {
    /// The `agent_update` announcing `action` of `agent` to the users who can see it.
    pub fn announce(&self, agent: &AgentRecord, action: AgentAction) -> Vec<Announcement> {
        self.announce_to(agent, action, agent.shared)
    }

    /// The `agent_update` to everyone when `everyone` (a shared agent, or one that was
    /// shared until this change), else to its owner and the admins. Never to anyone
    /// else: the name is text its owner chose.
    fn announce_to(
        &self,
        agent: &AgentRecord,
        action: AgentAction,
        everyone: bool,
    ) -> Vec<Announcement> {
        let update = AgentUpdate {
            agent_id: agent.id,
            name: &agent.name,
            action,
            status: AgentStatus::of(agent),
            shared: agent.shared,
        };
        let targets = if everyone {
            vec![Target::Everyone]
        } else {
            audience(agent.owner_id, self.admins.clone())
        };
        targets
            .into_iter()
            .map(|target| {
                let recipient = match target {
                    Target::User(user) => Some(user),
                    Target::Everyone => None,
                };
                Announcement::new(recipient, "agent_update", &update)
            })
            .collect()
    }
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub description: String,
    pub capabilities: Vec<Capability>,
    /// Only admins may register a shared agent; the HTTP layer checks it.
    pub shared: bool,
}

/// The registry and presence tracker. Cheap to clone.
#[derive(Clone)]
pub struct AgentService {
    store: Arc<dyn Store>,
    /// Publishes what the store's outbox holds; awaited after each announced change.
    relay: Relay,
    /// Tells the other nodes of a cluster about token revocations and agent changes.
    hub: Hub,
    /// Silence after which an agent counts as offline (`OFFLINE_AFTER` unless set).
    offline_after: Duration,
    /// Tokens verified lately and the agents' generations (see `tokens`).
    tokens: Arc<AgentTokens>,
}

impl AgentService {
    /// Announces changes through the store's outbox and `relay`; agents silent for
    /// `offline_after` go offline.
    pub fn new(store: Arc<dyn Store>, relay: Relay, hub: Hub, offline_after: Duration) -> Self {
        Self {
            store,
            relay,
            hub,
            offline_after,
            tokens: Arc::default(),
        }
    }

    /// The audience of agent changes as of now (see [`Audience`]). If the admins cannot
    /// be read it is the owner alone: never widen the audience on error.
    pub async fn audience(&self) -> Audience {
        match self.store.admin_ids().await {
            Ok(admins) => Audience { admins },
            Err(err) => {
                tracing::warn!(error = %err, "admins unknown; agent_update to the owner only");
                Audience { admins: Vec::new() }
            }
        }
    }

    /// The agent a `zsa_…` token belongs to, from memory when it was verified lately
    /// (see `tokens`). `Ok(None)`: unknown, rotated or deleted.
    pub async fn authenticate(&self, token: &str) -> Result<Option<AgentCredential>, StoreError> {
        let hash = secret::hash(token);
        if let Some(credential) = self.tokens.get(&hash) {
            return Ok(Some(credential));
        }
        // Taken before the read: a revocation after this point refuses the answer.
        let started = std::time::Instant::now();
        match self.store.agent_by_token_hash(&hash).await {
            Ok(agent) => Ok(self.tokens.admit(&hash, agent, started)),
            Err(StoreError::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Verified tokens and generations, for a cluster's backplane to forward
    /// revocations made on other nodes.
    pub fn tokens(&self) -> &Arc<AgentTokens> {
        &self.tokens
    }

    /// Registers an agent owned by `owner` and returns it with its token, which only
    /// the caller ever sees (the store keeps the hash).
    pub async fn register(
        &self,
        owner: UserId,
        reg: Registration,
    ) -> Result<(AgentRecord, NewSecret), StoreError> {
        let token = secret::generate(AGENT_TOKEN_PREFIX);
        let new = NewAgent {
            id: AgentId::new(),
            owner_id: owner,
            name: reg.name,
            description: reg.description,
            capabilities: reg.capabilities,
            shared: reg.shared,
            token_hash: token.hash.clone(),
            token_prefix: token.prefix.clone(),
            created_at: Utc::now(),
        };
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| audience.announce(a, AgentAction::Registered);
        let agent = self.store.create_agent(&new, &announce).await?;
        tracing::info!(agent_id = %agent.id, owner_id = %owner, shared = agent.shared, "agent registered");
        self.relay.flush().await;
        Ok((agent, token))
    }

    /// Creates the built-in agent on first start, or sets its token on later starts
    /// (the token is derived from the signing key: every node of a cluster runs the
    /// one built-in agent with the same token, and a changed key voids the old one). It
    /// is shared (it runs every user's tasks, so a new user's first task completes),
    /// and made shared again at every start should it have been changed.
    pub async fn ensure_builtin(
        &self,
        token: NewSecret,
    ) -> Result<(AgentRecord, NewSecret), StoreError> {
        let new = NewAgent {
            id: AgentId::new(),
            owner_id: SYSTEM_OWNER,
            name: "Built-in text agent".to_owned(),
            description: "Runs inside the server: text statistics, keywords and an extractive summary of the query.".to_owned(),
            capabilities: vec![Capability::general(), Capability::parse("text").expect("valid")],
            shared: true,
            token_hash: token.hash.clone(),
            token_prefix: token.prefix.clone(),
            created_at: Utc::now(),
        };
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| audience.announce(a, AgentAction::Registered);
        let (agent, created) = self
            .store
            .upsert_system_agent(BUILTIN_KEY, &new, &announce)
            .await?;
        // Tokens remembered for it are read again (a changed key changed the token);
        // claims waiting with the same token on other nodes go on.
        self.tokens.changed(agent.id);
        self.hub
            .signal_cluster(Signal::AgentChanged { agent: agent.id });
        if created {
            self.relay.flush().await;
        }
        Ok((agent, token))
    }

    /// Applies a validated change to `before` and announces it (`updated`). When it
    /// stops being shared, everyone who could see it until now hears it too, so their
    /// lists can drop it.
    pub async fn update(
        &self,
        before: &AgentRecord,
        changes: &AgentChanges,
    ) -> Result<AgentRecord, StoreError> {
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| {
            audience.announce_to(a, AgentAction::Updated, a.shared || before.shared)
        };
        let agent = self
            .store
            .update_agent(before.id, changes, Utc::now(), &announce)
            .await?;
        self.tokens.changed(agent.id);
        self.hub
            .signal_cluster(Signal::AgentChanged { agent: agent.id });
        if agent.shared != before.shared {
            tracing::info!(agent_id = %agent.id, shared = agent.shared, "agent sharing changed");
        }
        self.relay.flush().await;
        Ok(agent)
    }

    /// Deletes the agent and announces it (`deleted`), and the `task_update` of each of
    /// its tasks that went back to the queue, in the deletion's transaction (see
    /// `AgentStore::delete_agent`). They are returned for the task service to wake
    /// waiting claims.
    pub async fn delete(&self, agent: &AgentRecord) -> Result<Vec<TaskRecord>, StoreError> {
        let audience = self.audience().await;
        let announce = |tasks: &[TaskRecord]| {
            let mut messages = audience.announce(agent, AgentAction::Deleted);
            messages.extend(tasks.iter().flat_map(crate::tasks::task_update));
            messages
        };
        let requeued = self
            .store
            .delete_agent(agent.id, Utc::now(), &announce)
            .await?;
        self.revoke_tokens(agent.id);
        tracing::info!(agent_id = %agent.id, requeued = requeued.len(), "agent deleted");
        self.relay.flush().await;
        Ok(requeued)
    }

    /// Forgets the agent's verified tokens and ends its waiting claims, on this node
    /// and (through the backplane) on every other.
    fn revoke_tokens(&self, agent: AgentId) {
        self.tokens.revoke(agent);
        self.hub.signal_cluster(Signal::AgentRevoked { agent });
    }

    /// Gives the agent a new token, returned once; the old one stops working at once,
    /// and claims waiting with it end without a task. Not announced: nothing others
    /// see changes.
    pub async fn rotate_token(&self, id: AgentId) -> Result<(AgentRecord, NewSecret), StoreError> {
        let token = secret::generate(AGENT_TOKEN_PREFIX);
        let agent = self
            .store
            .set_agent_token(id, &token.hash, &token.prefix, Utc::now())
            .await?;
        self.revoke_tokens(id);
        tracing::info!(agent_id = %id, "agent token rotated");
        Ok((agent, token))
    }

    /// Records a sign of life (a claim, a progress report); announces the agent coming
    /// online. Failures are logged, not returned: presence must never fail a claim.
    pub async fn seen(&self, id: AgentId) {
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| audience.announce(a, AgentAction::Updated);
        match self.store.mark_agent_seen(id, Utc::now(), &announce).await {
            Ok(Some(_)) => {
                tracing::info!(agent_id = %id, "agent online");
                self.relay.flush().await;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(agent_id = %id, error = %err, "could not record agent presence")
            }
        }
    }

    /// The agent process stops (the reference agent on SIGTERM, with nothing to hand
    /// back): offline at once, announced, and its waiting claims end without a task.
    /// Its next call brings it back.
    pub async fn stopped(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        // First, so no waiting claim takes a task for a process on its way out.
        self.tokens.stopped(agent.id);
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| audience.announce(a, AgentAction::Updated);
        if let Some(offline) = self
            .store
            .mark_agent_offline(agent.id, Utc::now(), &announce)
            .await?
        {
            tracing::info!(agent_id = %offline.id, "agent offline (stopped)");
            self.relay.flush().await;
        }
        Ok(())
    }

    /// Turns agents silent for `offline_after` offline and announces each.
    pub async fn sweep_offline(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(self.offline_after).unwrap_or_default();
        let audience = self.audience().await;
        let announce = |a: &AgentRecord| audience.announce(a, AgentAction::Updated);
        let gone = self
            .store
            .mark_stale_agents_offline(cutoff, now, &announce)
            .await?;
        for agent in &gone {
            tracing::info!(agent_id = %agent.id, "agent offline");
        }
        if !gone.is_empty() {
            self.relay.flush().await;
        }
        Ok(())
    }
}

/// The users who see a private agent: its owner (unless it is the system, which is no
/// account) and the admins, each once.
fn audience(owner: UserId, admins: Vec<UserId>) -> Vec<Target> {
    let mut users = Vec::with_capacity(admins.len() + 1);
    if owner != SYSTEM_OWNER {
        users.push(owner);
    }
    for admin in admins {
        if !users.contains(&admin) {
            users.push(admin);
        }
    }
    users.into_iter().map(Target::User).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capabilities_are_validated_and_deduplicated() {
        let caps = parse_capabilities(&["Text".into(), "text".into(), "general".into()]).unwrap();
        assert_eq!(
            caps.iter().map(Capability::as_str).collect::<Vec<_>>(),
            ["text", "general"]
        );
        assert!(parse_capabilities(&[]).is_err());
        assert!(parse_capabilities(&["no spaces".into()]).is_err());
    }

    #[test]
    fn a_private_agents_audience_is_its_owner_and_the_admins_once_each() {
        let (owner, admin) = (UserId::new(), UserId::new());
        let users = |targets: Vec<Target>| {
            targets
                .into_iter()
                .map(|t| match t {
                    Target::User(u) => u,
                    other => panic!("unexpected target {other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(users(audience(owner, vec![admin])), [owner, admin]);
        assert_eq!(users(audience(admin, vec![admin])), [admin]);
        assert_eq!(users(audience(SYSTEM_OWNER, vec![admin])), [admin]);
    }

    #[test]
    fn agent_update_has_the_contract_shape() {
        let id = AgentId::new();
        let update = AgentUpdate {
            agent_id: id,
            name: "n",
            action: AgentAction::Registered,
            status: AgentStatus::Offline,
            shared: true,
        };
        assert_eq!(
            serde_json::to_value(&update).unwrap(),
            serde_json::json!({ "agent_id": id, "name": "n", "action": "registered",
                                "status": "offline", "shared": true })
        );
    }

    #[test]
    fn names_are_bounded() {
        assert!(parse_name("  ").is_err());
        assert!(parse_name(&"x".repeat(101)).is_err());
        assert_eq!(parse_name(" a ").unwrap(), "a");
    }
}

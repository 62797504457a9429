//! Agents: the registry (register, update, delete, each announced as `agent_update`),
//! presence (online while polling or renewing a lease; offline after `OFFLINE_AFTER` of
//! silence by default, detected by a sweeper), and the agent processes themselves: the reference
//! agent `zerostate agent run` (`runner` + `shell`) and the built-in agent (`builtin`),
//! which talk to the server over the same HTTP runtime API.

pub mod builtin;
pub mod runner;
pub mod shell;

use crate::auth::secret::{self, NewSecret, AGENT_TOKEN_PREFIX};
use crate::domain::{AgentId, Capability, MessageType, ParseError, UserId};
use crate::realtime::{Hub, Target};
use crate::store::{AgentChanges, AgentRecord, NewAgent, Store, StoreError};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentAction {
    Registered,
    Updated,
    Deleted,
}

impl AgentAction {
    fn as_str(self) -> &'static str {
        match self {
            AgentAction::Registered => "registered",
            AgentAction::Updated => "updated",
            AgentAction::Deleted => "deleted",
        }
    }
}

/// A validated registration.
#[derive(Debug, Clone)]
pub struct Registration {
    pub name: String,
    pub description: String,
    pub capabilities: Vec<Capability>,
}

/// The registry and presence tracker. Cheap to clone.
#[derive(Clone)]
pub struct AgentService {
    store: Arc<dyn Store>,
    hub: Hub,
    /// Silence after which an agent counts as offline (`OFFLINE_AFTER` unless set).
    offline_after: Duration,
}

impl AgentService {
    /// Announces changes through `hub`; agents silent for `offline_after` go offline.
    pub fn new(store: Arc<dyn Store>, hub: Hub, offline_after: Duration) -> Self {
        Self {
            store,
            hub,
            offline_after,
        }
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
            token_hash: token.hash.clone(),
            token_prefix: token.prefix.clone(),
            created_at: Utc::now(),
        };
        let agent = self.store.create_agent(&new).await?;
        tracing::info!(agent_id = %agent.id, owner_id = %owner, "agent registered");
        self.announce(&agent, AgentAction::Registered).await;
        Ok((agent, token))
    }

    /// Creates the built-in agent on first start, or gives it a fresh token on later
    /// starts; the raw token lives only in this process's memory.
    pub async fn ensure_builtin(&self) -> Result<(AgentRecord, NewSecret), StoreError> {
        let token = secret::generate(AGENT_TOKEN_PREFIX);
        let new = NewAgent {
            id: AgentId::new(),
            owner_id: SYSTEM_OWNER,
            name: "Built-in text agent".to_owned(),
            description: "Runs inside the server: text statistics, keywords and an extractive summary of the query.".to_owned(),
            capabilities: vec![Capability::general(), Capability::parse("text").expect("valid")],
            token_hash: token.hash.clone(),
            token_prefix: token.prefix.clone(),
            created_at: Utc::now(),
        };
        let (agent, created) = self.store.upsert_system_agent(BUILTIN_KEY, &new).await?;
        if created {
            self.announce(&agent, AgentAction::Registered).await;
        }
        Ok((agent, token))
    }

    /// Applies a validated change and announces it (`updated`).
    pub async fn update(
        &self,
        id: AgentId,
        changes: &AgentChanges,
    ) -> Result<AgentRecord, StoreError> {
        let agent = self.store.update_agent(id, changes, Utc::now()).await?;
        self.announce(&agent, AgentAction::Updated).await;
        Ok(agent)
    }

    /// Deletes the agent (its tasks keep its id) and announces it (`deleted`).
    pub async fn delete(&self, agent: &AgentRecord) -> Result<(), StoreError> {
        self.store.delete_agent(agent.id).await?;
        tracing::info!(agent_id = %agent.id, "agent deleted");
        self.announce(agent, AgentAction::Deleted).await;
        Ok(())
    }

    /// Records a sign of life (a claim, a progress report); announces the agent coming
    /// online. Failures are logged, not returned: presence must never fail a claim.
    pub async fn seen(&self, id: AgentId) {
        match self.store.mark_agent_seen(id, Utc::now()).await {
            Ok(Some(agent)) => {
                tracing::info!(agent_id = %id, "agent online");
                self.announce(&agent, AgentAction::Updated).await;
            }
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(agent_id = %id, error = %err, "could not record agent presence")
            }
        }
    }

    /// Turns agents silent for `offline_after` offline and announces each.
    pub async fn sweep_offline(&self) -> Result<(), StoreError> {
        let now = Utc::now();
        let cutoff = now - chrono::Duration::from_std(self.offline_after).unwrap_or_default();
        for agent in self.store.mark_stale_agents_offline(cutoff, now).await? {
            tracing::info!(agent_id = %agent.id, "agent offline");
            self.announce(&agent, AgentAction::Updated).await;
        }
        Ok(())
    }

    /// Announces a change of presence made by another service (a clean stop, noted
    /// when the agent hands a task back, turns it offline).
    pub async fn announce_updated(&self, agent: &AgentRecord) {
        self.announce(agent, AgentAction::Updated).await;
    }

    /// Sends `agent_update` to everyone. A failed publish is logged: the change itself
    /// is already stored, and clients reload lists on `reset`.
    async fn announce(&self, agent: &AgentRecord, action: AgentAction) {
        let data = json!({
            "agent_id": agent.id,
            "name": agent.name,
            "action": action.as_str(),
            "status": if agent.online { "online" } else { "offline" },
        });
        if let Err(err) = self
            .hub
            .publish(Target::Everyone, MessageType::known("agent_update"), data)
            .await
        {
            tracing::warn!(agent_id = %agent.id, error = format!("{err:#}"), "agent_update not published");
        }
    }
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
    fn names_are_bounded() {
        assert!(parse_name("  ").is_err());
        assert!(parse_name(&"x".repeat(101)).is_err());
        assert_eq!(parse_name(" a ").unwrap(), "a");
    }
}

//! Verified agent tokens, remembered for a few seconds so that a busy agent's runtime
//! calls (claim, progress, output, complete) do not each read its row: a task cost
//! five token lookups before this cache.
//!
//! Two promises hold on this node however the cache is used:
//! - **A revoked token stops working at once.** Rotation and deletion (`revoke`) drop
//!   the agent's remembered tokens; a lookup that read the database before the
//!   revocation and comes back after it is refused (it overlapped the revocation, so
//!   "after" is a valid order), never remembered.
//! - **A waiting claim stops being handed tasks at once.** Every authenticated call
//!   gets the agent's current *generation* ([`AgentCredential::ended`]), a token that
//!   is cancelled when the agent's token is revoked or the agent says it stops. The
//!   long-poll claim checks it before each attempt and wakes on it, so a claim that
//!   waited through a rotation returns without a task.
//!
//! What the cache cannot see: a change made on another node (or by another process on
//! the same database). Those are bounded by [`TOKEN_CACHE_TTL`]; a cluster's backplane
//! forwards revocations to [`AgentTokens::revoke`] on every node to make them immediate.

use crate::domain::AgentId;
use crate::store::AgentRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long a verified token is trusted without reading its row again. Changes made
/// through this node forget it at once; this bounds only changes made elsewhere.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(10);
/// Most tokens remembered at once; beyond, new ones are simply not remembered.
const MAX_TOKENS: usize = 10_000;
/// An agent's revocation record is kept this long after its last use. It must outlive
/// every request authenticated before it (a claim lives at most its 30 s wait plus its
/// body's 30 s): a record pruned earlier could let a stale lookup be remembered.
const STATE_KEEP: Duration = Duration::from_secs(300);
/// Past this many agent records, idle ones (see `STATE_KEEP`) are pruned.
const MAX_STATES: usize = 10_000;

/// What a runtime call authenticated as: the agent as read at most [`TOKEN_CACHE_TTL`]
/// ago (name, owner and sharing as of this node's last change; presence and the task
/// counters may be older), and the generation it was authenticated in.
#[derive(Clone)]
pub struct AgentCredential {
    pub agent: AgentRecord,
    generation: CancellationToken,
    tokens: Arc<AgentTokens>,
    verified_at: Instant,
}

impl std::fmt::Debug for AgentCredential {
    // Not derived: the shared cache would print every remembered token hash.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentCredential")
            .field("agent", &self.agent.id)
            .field("standing", &self.standing())
            .finish()
    }
}

/// Where a credential stands now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// Nothing happened to the agent since the credential was checked.
    Current,
    /// The agent said it stops: its waiting claims end, its token still works.
    Stopped,
    /// The token was rotated or the agent deleted since the credential was checked.
    Revoked,
}

impl AgentCredential {
    /// Cancelled when the agent's token is revoked or the agent stops after this
    /// credential was checked: a waiting claim must not be handed tasks after that.
    pub fn ended(&self) -> &CancellationToken {
        &self.generation
    }

    /// Whether the token was revoked, or the agent stopped, since this credential was
    /// checked.
    pub fn standing(&self) -> Standing {
        if !self.generation.is_cancelled() {
            return Standing::Current;
        }
        if self.tokens.revoked_since(self.agent.id, self.verified_at) {
            Standing::Revoked
        } else {
            Standing::Stopped
        }
    }
}

/// The cache and the agents' generations. Cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct AgentTokens {
    // A std mutex: held for map operations, never across an await.
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Verified tokens by hash (never the token itself).
    tokens: HashMap<String, Remembered>,
    /// Per agent: its generation and when it last changed.
    agents: HashMap<AgentId, AgentState>,
}

#[derive(Debug)]
struct Remembered {
    agent: AgentRecord,
    verified_at: Instant,
}

#[derive(Debug)]
struct AgentState {
    /// The current generation, cancelled and replaced on revocation and on stop.
    generation: CancellationToken,
    /// When the current generation began (`None`: the first, since this node started).
    since: Option<Instant>,
    /// When the agent's token was last revoked (rotation, deletion).
    revoked_at: Option<Instant>,
    /// When its record last changed through this node (an update or a revocation):
    /// a lookup that started before is not remembered.
    changed_at: Option<Instant>,
    /// When it was last used or changed, for pruning.
    touched_at: Instant,
}

impl AgentState {
    fn new(now: Instant) -> Self {
        Self {
            generation: CancellationToken::new(),
            since: None,
            revoked_at: None,
            changed_at: None,
            touched_at: now,
        }
    }

    /// Ends the current generation (waking whoever waits on it) and starts the next.
    fn next_generation(&mut self, now: Instant) {
        self.generation.cancel();
        self.generation = CancellationToken::new();
        self.since = Some(now);
        self.touched_at = now;
    }
}

impl AgentTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The remembered agent for a token hash, if verified within the TTL and nothing
    /// happened to the agent since.
    pub fn get(self: &Arc<Self>, hash: &str) -> Option<AgentCredential> {
        let now = Instant::now();
        let mut inner = self.lock();
        let (agent, verified_at) = match inner.tokens.get(hash) {
            Some(r) if now.duration_since(r.verified_at) < TOKEN_CACHE_TTL => {
                (r.agent.clone(), r.verified_at)
            }
            Some(_) => {
                inner.tokens.remove(hash);
                return None;
            }
            None => return None,
        };
        // Changes remove the agent's entries, so the current generation is this
        // credential's.
        let state = inner.state(agent.id, now);
        state.touched_at = now;
        let generation = state.generation.clone();
        Some(AgentCredential {
            agent,
            generation,
            tokens: self.clone(),
            verified_at,
        })
    }

    /// Admits an agent read from the store by a lookup that started at `started` (take
    /// it before the read), and remembers it unless the agent changed meanwhile. `None`
    /// when its token was revoked while it was being read: as good as unknown.
    pub fn admit(
        self: &Arc<Self>,
        hash: &str,
        agent: AgentRecord,
        started: Instant,
    ) -> Option<AgentCredential> {
        let now = Instant::now();
        let mut inner = self.lock();
        let state = inner.state(agent.id, now);
        state.touched_at = now;
        if state.revoked_at.is_some_and(|at| at >= started) {
            return None;
        }
        // A stop that overlapped the read counts as after it: the claim ends.
        let generation = if state.since.is_some_and(|since| since >= started) {
            let ended = CancellationToken::new();
            ended.cancel();
            ended
        } else {
            state.generation.clone()
        };
        let fresh = state.changed_at.is_none_or(|at| at < started);
        if fresh {
            inner.remember(hash, &agent, started, now);
        }
        Some(AgentCredential {
            agent,
            generation,
            tokens: self.clone(),
            verified_at: started,
        })
    }

    /// The agent's token was rotated or the agent deleted: its tokens are forgotten and
    /// every credential checked before now ends (call it after the store has the
    /// change).
    pub fn revoke(&self, agent: AgentId) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tokens.retain(|_, r| r.agent.id != agent);
        let state = inner.state(agent, now);
        state.revoked_at = Some(now);
        state.changed_at = Some(now);
        state.next_generation(now);
    }

    /// The agent's record changed (name, capabilities, sharing): it is read again.
    pub fn changed(&self, agent: AgentId) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tokens.retain(|_, r| r.agent.id != agent);
        let state = inner.state(agent, now);
        state.changed_at = Some(now);
        state.touched_at = now;
    }

    /// Forgets every remembered token (revocations may have been missed): each is
    /// read from the store again. Lookups of known agents under way are not
    /// remembered either.
    pub fn forget_all(&self) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.tokens.clear();
        for state in inner.agents.values_mut() {
            state.changed_at = Some(now);
        }
    }

    /// The agent process said it stops: the claims it has waiting end without a task.
    /// Its token keeps working (a restarted process uses it again).
    pub fn stopped(&self, agent: AgentId) {
        let now = Instant::now();
        self.lock().state(agent, now).next_generation(now);
    }

    fn revoked_since(&self, agent: AgentId, at: Instant) -> bool {
        self.lock()
            .agents
            .get(&agent)
            .and_then(|s| s.revoked_at)
            .is_some_and(|revoked| revoked >= at)
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.lock().tokens.len()
    }
}

impl Inner {
    /// The agent's state, created (and the map pruned) when missing.
    fn state(&mut self, agent: AgentId, now: Instant) -> &mut AgentState {
        if !self.agents.contains_key(&agent) && self.agents.len() >= MAX_STATES {
            self.agents
                .retain(|_, s| now.duration_since(s.touched_at) < STATE_KEEP);
        }
        self.agents
            .entry(agent)
            .or_insert_with(|| AgentState::new(now))
    }

    fn remember(&mut self, hash: &str, agent: &AgentRecord, verified_at: Instant, now: Instant) {
        if !self.tokens.contains_key(hash) && self.tokens.len() >= MAX_TOKENS {
            self.tokens
                .retain(|_, r| now.duration_since(r.verified_at) < TOKEN_CACHE_TTL);
            if self.tokens.len() >= MAX_TOKENS {
                return;
            }
        }
        self.tokens.insert(
            hash.to_owned(),
            Remembered {
                agent: agent.clone(),
                verified_at,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use chrono::Utc;

    fn agent() -> AgentRecord {
        AgentRecord {
            id: AgentId::new(),
            owner_id: UserId::new(),
            name: "a".into(),
            description: String::new(),
            capabilities: Vec::new(),
            shared: false,
            online: false,
            last_seen_at: None,
            current_tasks: 0,
            tasks_completed: 0,
            tasks_failed: 0,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    fn admit(
        tokens: &Arc<AgentTokens>,
        hash: &str,
        a: &AgentRecord,
        at: Instant,
    ) -> AgentCredential {
        tokens.admit(hash, a.clone(), at).expect("admitted")
    }

    #[test]
    fn a_revocation_forgets_the_token_and_ends_earlier_credentials() {
        let tokens = Arc::new(AgentTokens::default());
        let a = agent();
        let cred = admit(&tokens, "h1", &a, Instant::now());
        let cached = tokens.get("h1").expect("remembered");
        assert_eq!(cached.standing(), Standing::Current);
        tokens.revoke(a.id);
        assert!(tokens.get("h1").is_none());
        assert!(cred.ended().is_cancelled() && cached.ended().is_cancelled());
        assert_eq!(cred.standing(), Standing::Revoked);
        // The new token, read after the revocation, lives in the next generation.
        let new = admit(&tokens, "h2", &a, Instant::now());
        assert_eq!(new.standing(), Standing::Current);
    }

    #[test]
    fn a_read_that_overlapped_a_revocation_is_refused_and_not_remembered() {
        let tokens = Arc::new(AgentTokens::default());
        let a = agent();
        let started = Instant::now();
        tokens.revoke(a.id);
        assert!(tokens.admit("h", a.clone(), started).is_none());
        assert_eq!(tokens.remembered(), 0);
        // An update that overlapped: admitted, not remembered.
        let b = agent();
        let started = Instant::now();
        tokens.changed(b.id);
        assert_eq!(
            admit(&tokens, "hb", &b, started).standing(),
            Standing::Current
        );
        assert!(tokens.get("hb").is_none());
    }

    #[test]
    fn forgetting_all_drops_every_token_and_lookups_under_way() {
        let tokens = Arc::new(AgentTokens::default());
        let (a, b) = (agent(), agent());
        admit(&tokens, "ha", &a, Instant::now());
        let started = Instant::now();
        tokens.forget_all();
        assert!(tokens.get("ha").is_none());
        // A lookup of a known agent that overlapped: admitted, not remembered.
        admit(&tokens, "ha2", &a, started);
        assert!(tokens.get("ha2").is_none());
        // After it, tokens are remembered again.
        admit(&tokens, "hb", &b, Instant::now());
        assert!(tokens.get("hb").is_some());
    }

    #[test]
    fn a_stop_ends_waiting_claims_but_not_the_token() {
        let tokens = Arc::new(AgentTokens::default());
        let a = agent();
        let waiting = admit(&tokens, "h", &a, Instant::now());
        // A read in flight while the agent stops counts as before the stop.
        let overlapping = Instant::now();
        tokens.stopped(a.id);
        assert_eq!(waiting.standing(), Standing::Stopped);
        assert_eq!(
            admit(&tokens, "h", &a, overlapping).standing(),
            Standing::Stopped
        );
        let next = tokens.get("h").expect("still remembered");
        assert_eq!(next.standing(), Standing::Current);
    }
}

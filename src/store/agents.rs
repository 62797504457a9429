//! The agent registry's side of the store: records, filters and the `AgentStore` trait.
//!
//! Visibility (contract v2, Agents): a **private** agent is seen by its owner and the
//! admins and runs only its owner's tasks; a **shared** agent is seen by every user and
//! runs everyone's tasks. [`AgentRecord::runs_tasks_of`] states the rule that the claim
//! statement enforces in SQL, so the two can be read side by side.
//!
//! Every change that is announced (`agent_update`) takes an `announce` function (see
//! `store::outbox`), called with the changed record inside the change's transaction.

use super::outbox::Announce;
use super::tasks::TaskRecord;
use super::StoreError;
use crate::domain::{AgentId, Capability, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A registered agent as the store hands it out. The token hash never leaves the store.
#[derive(Debug, Clone)]
pub struct AgentRecord {
    pub id: AgentId,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    pub capabilities: Vec<Capability>,
    /// Shared agents run every user's tasks and every user sees them; private ones only
    /// their owner's (and admins see them).
    pub shared: bool,
    /// Whether the agent polled or renewed a lease recently (see `agents::OFFLINE_AFTER`).
    pub online: bool,
    pub last_seen_at: Option<DateTime<Utc>>,
    /// Tasks running on it now, counted from `tasks` like the counters below.
    pub current_tasks: i64,
    /// Derived from the tasks it finished, so the counters can never drift from them.
    pub tasks_completed: i64,
    pub tasks_failed: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl AgentRecord {
    /// Whether `user` (an admin when `admin`) may see this agent: its owner, any admin,
    /// or anyone when it is shared. Everything else answers 404, as if it did not exist.
    pub fn visible_to(&self, user: UserId, admin: bool) -> bool {
        admin || self.shared || self.owner_id == user
    }

    /// Whether this agent may run a task of `user`. This is the rule the claim statement
    /// enforces (`agents.shared = 1 OR tasks.user_id = agents.owner_id`): it does not
    /// depend on roles, so an admin's private agent runs only the admin's own tasks.
    pub fn runs_tasks_of(&self, user: UserId) -> bool {
        self.shared || self.owner_id == user
    }
}

/// What it takes to register an agent.
#[derive(Debug, Clone)]
pub struct NewAgent {
    pub id: AgentId,
    pub owner_id: UserId,
    pub name: String,
    pub description: String,
    pub capabilities: Vec<Capability>,
    pub shared: bool,
    pub token_hash: String,
    pub token_prefix: String,
    pub created_at: DateTime<Utc>,
}

/// A partial update; `None` leaves a field as it is.
#[derive(Debug, Clone, Default)]
pub struct AgentChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub capabilities: Option<Vec<Capability>>,
    /// Only admins may set it; the HTTP layer checks that before it gets here.
    pub shared: Option<bool>,
}

/// Which agents to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AgentFilter {
    /// Case-insensitive substring of the name or the description.
    pub q: Option<String>,
    pub capability: Option<Capability>,
    /// Only agents this user may see: theirs and the shared ones. `None` lists every
    /// agent (an admin's `?all=true`).
    pub visible_to: Option<UserId>,
    /// Continue after this position (from a previous page's `next_cursor`).
    pub cursor: Option<i64>,
    pub limit: u32,
}

/// One page of a list and where the next one starts (`None` at the end).
#[derive(Debug, Clone)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<i64>,
}

/// Agents and their presence.
#[async_trait]
pub trait AgentStore {
    /// Inserts a new agent. `Conflict` if the id or token hash is taken.
    async fn create_agent(
        &self,
        new: &NewAgent,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<AgentRecord, StoreError>;
    /// Creates the server-managed agent named `system_key`, or, if it exists, gives it
    /// the new token hash; one statement, so concurrent starts cannot create two. The
    /// flag says whether it was created by this call (only then is `announce` called).
    async fn upsert_system_agent(
        &self,
        system_key: &str,
        new: &NewAgent,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<(AgentRecord, bool), StoreError>;
    async fn agent(&self, id: AgentId) -> Result<AgentRecord, StoreError>;
    /// The agent whose token hashes to `hash`; `NotFound` otherwise.
    async fn agent_by_token_hash(&self, hash: &str) -> Result<AgentRecord, StoreError>;
    async fn list_agents(&self, filter: &AgentFilter) -> Result<Page<AgentRecord>, StoreError>;
    /// Applies the changes and bumps `updated_at`; `NotFound` if there is no such agent.
    async fn update_agent(
        &self,
        id: AgentId,
        changes: &AgentChanges,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<AgentRecord, StoreError>;
    /// Deletes the agent and, in the same transaction, puts its running tasks back in
    /// the queue: status `queued`, no agent, the attempt handed back (it does not count
    /// against `max_attempts`, as it was not the task's failure). Tasks that were
    /// submitted for this agent by id lose that pin (queued or running), since no agent
    /// could ever claim them otherwise. Returns the tasks it changed, so the caller can
    /// announce them; finished tasks keep the agent's id. `NotFound` if there is none.
    /// `announce` is called once, with those tasks, in the same transaction (it
    /// announces the deletion and the re-queues).
    async fn delete_agent(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, [TaskRecord]>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Gives the agent a new token (stored as its hash); the old one stops matching at
    /// once, as every runtime request looks the token up. `NotFound` if there is none.
    async fn set_agent_token(
        &self,
        id: AgentId,
        token_hash: &str,
        token_prefix: &str,
        at: DateTime<Utc>,
    ) -> Result<AgentRecord, StoreError>;
    /// The admins' ids: besides its owner, the only users who see a private agent (and
    /// so hear its `agent_update`s).
    async fn admin_ids(&self) -> Result<Vec<UserId>, StoreError>;
    /// Records that the agent was seen at `at`. Returns the record only when this call
    /// turned it from offline to online (decided atomically, so exactly one caller
    /// announces the transition).
    async fn mark_agent_seen(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Option<AgentRecord>, StoreError>;
    /// Turns the agent offline (its process stopped cleanly). Returns the record only
    /// when this call turned it from online to offline (a compare-and-set, so exactly
    /// one caller announces the transition, in the same transaction). `NotFound` is not an
    /// error here: `None`.
    async fn mark_agent_offline(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Option<AgentRecord>, StoreError>;
    /// Turns every online agent last seen before `seen_before` offline, returning them
    /// (one statement: each transition is reported once).
    async fn mark_stale_agents_offline(
        &self,
        seen_before: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Vec<AgentRecord>, StoreError>;
    /// `(total, online)` over the agents `viewer` may see: their own and the shared ones
    /// (`None`: every agent, for admins).
    async fn count_agents(&self, viewer: Option<UserId>) -> Result<(i64, i64), StoreError>;
}

//! The durable task queue's side of the store: records and the `TaskStore` trait.
//!
//! Every state change is one conditional statement (`… WHERE status = 'running' AND
//! agent_id = ?`), so two parties racing on one task (an agent completing it while its
//! owner cancels it, two agents claiming) can never both win. A `None` answer means the
//! condition did not hold; the caller reads the task to tell the agent why. The attempt
//! history and the fair-scheduling bookkeeping are written by the same statement (the
//! backend keeps them with the row), so they can never disagree with the task.
//!
//! Every method that changes a task's status or progress takes an `announce` function
//! (see `store::outbox`): it is called with each task the method changed, and what it
//! returns is written to the outbox in the same transaction as the change.

use super::agents::Page;
use super::outbox::Announce;
use super::StoreError;
use crate::domain::{
    AgentId, AttemptOutcome, Capability, IdempotencyKey, MaxAttempts, Priority, TaskId, TaskQuery,
    TaskStatus, TimeoutSecs, UserId,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// A task as stored.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: TaskId,
    pub user_id: UserId,
    pub query: String,
    pub capability: Capability,
    pub priority: Priority,
    pub status: TaskStatus,
    pub progress: u8,
    /// The agent running or that ran it; while queued, the agent it was submitted for.
    pub agent_id: Option<AgentId>,
    /// The agent the submitter asked for; only it may claim the task.
    pub requested_agent_id: Option<AgentId>,
    pub result: Option<serde_json::Value>,
    /// Set while the task failed, or while it waits to retry a failed attempt.
    pub error: Option<String>,
    /// Attempts used so far; the current attempt number while running.
    pub attempts: u32,
    pub max_attempts: u32,
    pub idempotency_key: Option<String>,
    /// The start time the submitter asked for.
    pub run_at: Option<DateTime<Utc>>,
    /// While queued: when it may be handed out (its `run_at` or the end of a backoff).
    pub available_at: DateTime<Utc>,
    pub timeout_s: u32,
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// Bytes of output stored so far (see `OutputStore`).
    pub output_bytes: u64,
    pub created_at: DateTime<Utc>,
    /// Start of the current (or last) attempt.
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What it takes to enqueue a task.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: TaskId,
    pub user_id: UserId,
    pub query: TaskQuery,
    pub capability: Capability,
    pub priority: Priority,
    pub agent_id: Option<AgentId>,
    pub timeout: TimeoutSecs,
    pub max_attempts: MaxAttempts,
    pub idempotency_key: Option<IdempotencyKey>,
    pub run_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// What `insert_task` did.
#[derive(Debug, Clone)]
pub enum Inserted {
    /// A new task was queued.
    New(TaskRecord),
    /// The user's idempotency key already names this task (created within the window):
    /// nothing was inserted.
    Duplicate(TaskRecord),
}

/// One attempt at a task, as `GET …/attempts` shows it.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub attempt: u32,
    pub agent_id: Option<AgentId>,
    pub started_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub outcome: AttemptOutcome,
    pub error: Option<String>,
}

/// Where a queued, claimable task stands.
#[derive(Debug, Clone, Copy)]
pub struct QueueStanding {
    /// 1 = the next task its agents would take (an estimate of the fair order: tasks of
    /// higher priority, then a round-robin over the users at its priority).
    pub position: i64,
    /// Online agents that may run it (capability, visibility, reservation).
    pub eligible_online_agents: i64,
}

/// How retries back off: the delay before attempt n+1 is uniform in
/// `[0, min(max, base · 2^(n-1))]` (exponential backoff with full jitter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: i64,
    pub max_ms: i64,
}

/// Live queue figures for `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct QueueGauges {
    /// Queued tasks per capability.
    pub queued: Vec<(Capability, i64)>,
    pub running: i64,
    pub agents_online: i64,
}
/// Which tasks to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this user's tasks; `None` for all (admins).
    pub user: Option<UserId>,
    pub status: Option<TaskStatus>,
    /// Case-insensitive substring of the query.
    pub q: Option<String>,
    pub capability: Option<Capability>,
    /// The agent that runs or ran it (or, while queued, the one it was submitted for).
    pub agent_id: Option<AgentId>,
    pub cursor: Option<i64>,
    pub limit: u32,
}

/// The few columns analytics needs.
#[derive(Debug, Clone)]
pub struct TaskStat {
    pub status: TaskStatus,
    pub agent_id: Option<AgentId>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// How an attempt ended, as an agent reports it.
#[derive(Debug, Clone)]
pub enum Outcome {
    Completed {
        result: serde_json::Value,
    },
    /// `retryable` re-queues the task (after a backoff) while attempts remain.
    Failed {
        error: String,
        retryable: bool,
    },
}

/// The queue. PostgreSQL implements the claim with `SELECT … FOR UPDATE SKIP LOCKED`
/// inside the `UPDATE`; SQLite has one writer, so the single
/// `UPDATE … WHERE id = (SELECT …)` statement is already exclusive.
#[async_trait]
pub trait TaskStore {
    /// Queues a task. With an idempotency key that the user already used for a task
    /// created less than `key_window` ago, inserts nothing and answers `Duplicate`;
    /// parallel inserts with one key create one task (the key is unique per user).
    async fn insert_task(
        &self,
        new: &NewTask,
        key_window: chrono::Duration,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Inserted, StoreError>;
    async fn task(&self, id: TaskId) -> Result<TaskRecord, StoreError>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, StoreError>;
    /// Cancels a queued or running task (of `owner`, when given). `None` when there is
    /// no such unfinished task.
    async fn cancel_task(
        &self,
        id: TaskId,
        owner: Option<UserId>,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Atomically takes up to `max` queued tasks the agent may run: one of its
    /// capabilities, not reserved for another agent, its owner's unless it is shared,
    /// and due (`run_at` and backoff passed). Each is chosen in fair order: highest
    /// priority; among those, the user with the fewest running tasks, then the user
    /// whose task was handed out longest ago (never = longest), then that user's oldest
    /// task. Marks each running with a lease until `lease_until` and counts the
    /// attempt. Two concurrent callers never get the same task.
    async fn claim_tasks(
        &self,
        agent: AgentId,
        max: u32,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Sets the progress of the agent's running task and extends its lease. Returns the
    /// task and whether the progress value changed (only then is `announce` called);
    /// `None` if it is not this agent's running task. `announce` lives for the whole
    /// program: a store may call it outside the caller's task (SQLite commits reports
    /// in groups, see `store::sqlite::reports`).
    async fn report_progress(
        &self,
        id: TaskId,
        agent: AgentId,
        progress: u8,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError>;
    /// Ends the agent's running attempt. A retryable failure with attempts left goes
    /// back to the queue after a `backoff` delay. `None` if it is not this agent's
    /// running task. `announce` lives for the whole program, as for `report_progress`.
    async fn finish_attempt(
        &self,
        id: TaskId,
        agent: AgentId,
        outcome: &Outcome,
        backoff: Backoff,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Hands the agent's running task back to the queue without using an attempt
    /// (a clean stop), due at once, and turns the agent offline in the same
    /// transaction. Returns the task and whether the agent was online until now (both
    /// handed to `announce`); `None` (and no change) if it is not this agent's running
    /// task.
    async fn release_task(
        &self,
        id: TaskId,
        agent: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, (TaskRecord, bool)>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError>;
    /// Hands back every running task of the agents the server runs itself (at
    /// shutdown), without using attempts. Returns them.
    async fn release_server_agent_tasks(
        &self,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Running tasks whose lease ended before `at` go back to the queue after a
    /// backoff, or fail once they have used all their attempts. Returns them.
    async fn requeue_expired(
        &self,
        backoff: Backoff,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Running tasks that have run longer than their `timeout_s` fail. Returns them.
    async fn fail_timed_out(
        &self,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// The task's attempts, oldest first.
    async fn task_attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError>;
    /// Where a queued task that is due at `at` stands; `None` if it is not queued.
    async fn queue_standing(
        &self,
        task: &TaskRecord,
        at: DateTime<Utc>,
    ) -> Result<Option<QueueStanding>, StoreError>;
    /// Queue depth per capability, running tasks and online agents.
    async fn queue_gauges(&self) -> Result<QueueGauges, StoreError>;
    /// Tasks created, or finished, at or after `since` (of `user`, when given).
    async fn task_stats(
        &self,
        user: Option<UserId>,
        since: DateTime<Utc>,
    ) -> Result<Vec<TaskStat>, StoreError>;
}

/// One user's due tasks at one priority, as a backend's `queue_standing` weighs them.
pub(crate) struct Rival {
    pub rank: i64,
    /// The task's own user.
    pub mine: bool,
    pub queued: i64,
    /// Of those, how many come before the task (its own user's only matter).
    pub before: i64,
    /// The claim's turn order: running tasks, last hand-out (0 = never), oldest task.
    pub turn: (i64, i64, i64),
}

/// The task's place in the fair order (1 = next): every task of a higher priority, then
/// a round robin over the users at its priority, where it is its owner's k-th task: each
/// other user gets k-1 turns before it, and a k-th too when their turn comes first in a
/// round (the claim's order of fewest running, longest since a hand-out, oldest task).
/// An estimate in one respect: the turn order is today's, while the real one shifts as
/// tasks are handed out.
pub(crate) fn fair_position(rank: i64, own_turn: (i64, i64, i64), rivals: &[Rival]) -> i64 {
    let higher: i64 = rivals
        .iter()
        .filter(|r| r.rank > rank)
        .map(|r| r.queued)
        .sum();
    let own = rivals.iter().find(|r| r.rank == rank && r.mine);
    let k = own.map_or(0, |r| r.before) + 1;
    let own_turn = own.map_or(own_turn, |r| (r.turn.0, r.turn.1, r.turn.2.min(own_turn.2)));
    let others: i64 = rivals
        .iter()
        .filter(|r| r.rank == rank && !r.mine)
        .map(|r| r.queued.min(k - 1 + i64::from(r.turn < own_turn)))
        .sum();
    higher + k + others
}

//! The durable task queue's side of the store: records and the `TaskStore` trait.
//!
//! Every state change is one conditional statement (`… WHERE status = 'running' AND
//! agent_id = ?`), so two parties racing on one task (an agent completing it while its
//! owner cancels it, two agents claiming) can never both win. A `None` answer means the
//! condition did not hold; the caller reads the task to tell the agent why.

use super::agents::Page;
use super::StoreError;
use crate::domain::{
    AgentId, Capability, Priority, TaskId, TaskQuery, TaskStatus, TimeoutSecs, UserId,
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
    pub error: Option<String>,
    /// Claims so far; the current attempt number while running.
    pub attempts: u32,
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
    pub created_at: DateTime<Utc>,
}

/// Which tasks to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    /// Only this user's tasks; `None` for all (admins).
    pub user: Option<UserId>,
    pub status: Option<TaskStatus>,
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
    /// `retryable` re-queues the task while attempts remain.
    Failed {
        error: String,
        retryable: bool,
    },
}

/// The queue. PostgreSQL will implement `claim_task` with
/// `SELECT … FOR UPDATE SKIP LOCKED` inside the `UPDATE`; SQLite has one writer, so the
/// single `UPDATE … WHERE id = (SELECT …)` statement is already exclusive.
#[async_trait]
pub trait TaskStore {
    async fn insert_task(&self, new: &NewTask) -> Result<TaskRecord, StoreError>;
    async fn task(&self, id: TaskId) -> Result<TaskRecord, StoreError>;
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, StoreError>;
    /// Cancels a queued or running task (of `owner`, when given). `None` when there is
    /// no such unfinished task.
    async fn cancel_task(
        &self,
        id: TaskId,
        owner: Option<UserId>,
        at: DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Atomically takes the first queued task the agent may run (one of `capabilities`,
    /// not reserved for another agent), in queue order: priority rank descending, then
    /// oldest first. Marks it running with a lease until `lease_until` and counts the
    /// attempt. Two concurrent callers never get the same task.
    async fn claim_task(
        &self,
        agent: AgentId,
        capabilities: &[Capability],
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Sets the progress of the agent's running task and extends its lease. Returns the
    /// task and whether the progress value changed; `None` if it is not this agent's
    /// running task.
    async fn report_progress(
        &self,
        id: TaskId,
        agent: AgentId,
        progress: u8,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError>;
    /// Ends the agent's running attempt. A retryable failure with fewer than
    /// `max_attempts` attempts goes back to the queue. `None` if it is not this agent's
    /// running task.
    async fn finish_attempt(
        &self,
        id: TaskId,
        agent: AgentId,
        outcome: &Outcome,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, StoreError>;
    /// Running tasks whose lease ended before `at` go back to the queue, or fail once
    /// they have had `max_attempts` attempts. Returns the changed tasks.
    async fn requeue_expired(
        &self,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>, StoreError>;
    /// Running tasks that have run longer than their `timeout_s` fail. Returns them.
    async fn fail_timed_out(&self, at: DateTime<Utc>) -> Result<Vec<TaskRecord>, StoreError>;
    /// Tasks created, or finished, at or after `since` (of `user`, when given).
    async fn task_stats(
        &self,
        user: Option<UserId>,
        since: DateTime<Utc>,
    ) -> Result<Vec<TaskStat>, StoreError>;
}

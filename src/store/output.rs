//! Task output's side of the store: the `OutputStore` trait.
//!
//! An append is one transaction: it checks that the task is the agent's running task,
//! reserves the next `n` sequence numbers and counts the bytes in one conditional
//! `UPDATE`, then inserts the chunks. Two appends to one task are serialized by the
//! write on the task row, so their numbers never overlap and never leave a gap.

use super::StoreError;
use crate::domain::{AgentId, ChunkBatch, OutputChunk, TaskId, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// What an append did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Stored as `first_seq ..= last_seq`; the task (of `user_id`) now holds
    /// `output_bytes`.
    Stored {
        user_id: UserId,
        first_seq: u64,
        last_seq: u64,
        output_bytes: u64,
    },
    /// The task is not this agent's running task; nothing was stored.
    NotRunning,
    /// The task's output would exceed the limit; nothing was stored.
    OverLimit { output_bytes: u64 },
}

#[async_trait]
pub trait OutputStore {
    /// Appends the batch to the agent's running task in one transaction, renewing its
    /// lease until `lease_until` (an agent that streams is alive). Refused without any
    /// change when the task is not the agent's running task, or when its output would
    /// pass `max_bytes`.
    async fn append_output(
        &self,
        task: TaskId,
        agent: AgentId,
        batch: &ChunkBatch,
        max_bytes: u64,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Appended, StoreError>;

    /// Up to `limit` chunks of the task with `seq > after`, in order.
    async fn read_output(
        &self,
        task: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OutputChunk>, StoreError>;
}

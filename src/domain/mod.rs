//! Validated domain types. Everything that crosses a boundary (HTTP body, query string,
//! store row) is parsed into one of these first, so the rest of the code never has to
//! re-check an email, a status or a message type. This module imports nothing internal.

mod credential;
mod ids;
mod message;
mod output;
#[cfg(test)]
mod props;
mod task;
mod user;

pub use credential::Credential;
pub use ids::{AgentId, ApiKeyId, SessionId, TaskId, UserId};
pub use message::{Cursor, MessageType};
pub use output::{
    BatchError, ChunkBatch, NewChunk, OutputChunk, OutputStream, DEFAULT_TASK_OUTPUT_MAX_BYTES,
    MAX_APPEND_BYTES, MAX_APPEND_CHUNKS,
};
pub use task::{
    AttemptOutcome, Capability, IdempotencyKey, MaxAttempts, Priority, TaskQuery, TaskStatus,
    TimeoutSecs,
};
pub use user::{Email, FullName, Password, Role};

/// A value that failed validation, with a message meant for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl ParseError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

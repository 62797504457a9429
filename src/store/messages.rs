//! The real-time message history's side of the store: rows and the `MessageStore`
//! trait. The hub defines what it needs from a history (`realtime::MessageLog`, its
//! port); `app.rs` adapts this store-owned trait to that port, so neither side imports
//! the other.
//!
//! There is one log-wide sequence: a message's position is the same for every
//! recipient. A user's stream is their own messages plus the broadcasts; retention is
//! applied per stream and each stream remembers how far it was pruned.

use super::StoreError;
use crate::domain::UserId;
use async_trait::async_trait;

/// A message as stored.
#[derive(Debug, Clone)]
pub struct MessageRow {
    /// Position in the log-wide sequence.
    pub seq: i64,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object, exactly as appended.
    pub data_json: String,
    /// When it was published, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A message to append.
#[derive(Debug, Clone, Copy)]
pub struct NewMessage<'a> {
    /// Its recipient; `None` for a broadcast.
    pub user: Option<UserId>,
    /// The message type.
    pub kind: &'a str,
    /// The JSON text of the data object.
    pub data_json: &'a str,
    /// When it was published, Unix milliseconds.
    pub created_at_ms: i64,
    /// Its idempotency key: a message whose key the log already holds is not appended
    /// again.
    pub dedupe: Option<i64>,
}

/// Where a user stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MessagePosition {
    /// The newest message addressed to the user (own or broadcast) at or below the
    /// asked bound; 0 when there is none.
    pub latest: i64,
    /// Every message of the user's two streams at or below this was pruned.
    pub pruned_through: i64,
}

/// The durable, ordered message log.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// The log's name, generated on first use and never changed.
    async fn message_epoch(&self) -> Result<String, StoreError>;

    /// The highest sequence number ever assigned (0 for an empty log), including
    /// messages already pruned.
    async fn last_message_seq(&self) -> Result<i64, StoreError>;

    /// Appends the messages, in order, in one transaction, and returns for each its
    /// sequence number (strictly greater than every earlier one, never reused) and
    /// `true`; or, for a message whose `dedupe` key the log already holds, that earlier
    /// message's sequence number and `false` (nothing appended for it).
    async fn append_messages(
        &self,
        batch: &[NewMessage<'_>],
    ) -> Result<Vec<(i64, bool)>, StoreError>;

    /// The newest message addressed to `user` with `seq <= upto`, and the prune
    /// watermark of their streams.
    async fn message_position(
        &self,
        user: UserId,
        upto: i64,
    ) -> Result<MessagePosition, StoreError>;

    /// Messages addressed to `user` (own or broadcast) with `after < seq <= upto`, in
    /// ascending `seq` order, at most `limit`.
    async fn messages_between(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError>;

    /// Deletes, per stream, the messages that are both beyond its newest
    /// `keep_per_stream` and created before `cutoff_ms`, raising the stream's watermark
    /// before deleting (a crash in between can only cause an early `reset`, never a
    /// replay with a hole). Returns how many were deleted.
    async fn prune_messages(&self, keep_per_stream: u32, cutoff_ms: i64)
        -> Result<u64, StoreError>;

    /// How many messages the log holds now.
    async fn message_count(&self) -> Result<u64, StoreError>;
}

//! The message log behind resume: every durable message is appended here before it is
//! delivered, and a reconnecting client is replayed from it.
//!
//! The local broker keeps its history through this trait (the hub's port); `app.rs`
//! adapts the store's `MessageStore` to it, so the hub never names a store type.
//!
//! There is one log-wide sequence: a message's position is the same for every recipient,
//! so its frame is serialized once. A user's stream is their own messages plus the
//! broadcasts; retention is applied per stream (`'*'` is the broadcast stream)
//! and each stream remembers how far it was pruned, so a resume can tell "nothing
//! missed" from "history gone".

use crate::domain::UserId;
use async_trait::async_trait;
use std::time::Duration;

/// How much history is kept. A message is deleted only when it is BOTH beyond the
/// newest `max_per_stream` of its stream AND older than `max_age`, so the contract's
/// "at least 1000 per user and 10 minutes" both hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    /// Newest messages always kept per stream (a user's own, or the broadcasts).
    pub max_per_stream: u32,
    /// Messages younger than this are always kept.
    pub max_age: Duration,
}

impl Default for HistoryPolicy {
    fn default() -> Self {
        Self {
            max_per_stream: 1000,
            max_age: Duration::from_secs(600),
        }
    }
}

impl HistoryPolicy {
    /// How often the prune job runs: every 30 s, or more often for a short `max_age`
    /// (tests), but not more than once a second.
    pub fn prune_interval(&self) -> Duration {
        (self.max_age / 2).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }
}

/// A message as kept in the log.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// Position in the log-wide sequence.
    pub seq: i64,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object, exactly as appended.
    pub data_json: String,
    /// When it was published, Unix milliseconds.
    pub created_at_ms: i64,
}

/// A message to append (see [`MessageLog::append`]).
#[derive(Debug, Clone, Copy)]
pub struct LogEntry<'a> {
    /// Its recipient; `None` for a broadcast.
    pub user: Option<UserId>,
    /// The message type.
    pub kind: &'a str,
    /// The JSON text of the data object.
    pub data_json: &'a str,
    /// When it was published, Unix milliseconds.
    pub created_at_ms: i64,
    /// Its idempotency key (see `NewPublication::dedupe`).
    pub dedupe: Option<i64>,
}

/// Where a user stands in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StreamPosition {
    /// The newest message addressed to the user (own or broadcast) at or below the
    /// asked bound; 0 when there is none.
    pub latest: i64,
    /// Every message of the user's two streams at or below this was pruned (the larger
    /// of the two watermarks); a resume from a smaller position cannot be replayed.
    pub pruned_through: i64,
}

/// The durable, ordered message log.
#[async_trait]
pub trait MessageLog: Send + Sync + 'static {
    /// The name of this log, generated once and never changed: cursors from another
    /// log are recognised by it.
    async fn epoch(&self) -> anyhow::Result<String>;

    /// The highest sequence number ever assigned (0 for an empty log), including
    /// messages already pruned.
    async fn last_seq(&self) -> anyhow::Result<i64>;

    /// Appends the messages in order, atomically, and returns for each its sequence
    /// number (strictly greater than every earlier one, never reused) and `true`; for
    /// one whose `dedupe` key the log already holds, nothing is appended and the answer
    /// is the earlier message's sequence number and `false`.
    async fn append(&self, batch: &[LogEntry<'_>]) -> anyhow::Result<Vec<(i64, bool)>>;

    /// The user's position: newest message addressed to them with `seq <= upto`, and the
    /// prune watermark of their streams.
    async fn position(&self, user: UserId, upto: i64) -> anyhow::Result<StreamPosition>;

    /// Messages addressed to `user` (own or broadcast) with `after < seq <= upto`, in
    /// ascending `seq` order, at most `limit`.
    async fn replay(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredMessage>>;

    /// Applies the retention policy as of `now_ms`, raising each stream's watermark
    /// before (atomically with) deleting its messages. Returns how many were deleted.
    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> anyhow::Result<u64>;

    /// How many messages the log holds now.
    async fn count(&self) -> anyhow::Result<u64>;
}

//! The broker: where a durable message is given its position, kept for resume, and
//! delivered to the hub of every node. centrifuge's `Broker` shape: the broker owns
//! publish-plus-history, so "appended" and "delivered" cannot disagree, and the hub
//! only consumes a [`Subscription`] and fans out what it is handed.
//!
//! The guarantee the hub's resume invariant (see `hub.rs`) rests on, stated once:
//!
//! > Every publication is in history before any node is handed it, and every node's
//! > subscription hands over every publication, exactly in sequence order, each one
//! > naming the sequence number of the one before it.
//!
//! The chain (`prev_seq`) lets the hub check the promise instead of trusting it: a
//! publication that is older than one already delivered, or whose predecessor is not
//! the last one delivered, is an anomaly the hub detects, logs, counts and repairs by
//! resyncing the affected connections from history (never dropped silently).
//!
//! Implementations: [`local::LocalBroker`] (one process, history in the store's message
//! log) and [`redis::RedisBroker`] (a cluster: every node on one Redis, one sequence
//! for all of them). Both pass the same contract tests (`broker::contract`, test-only).

pub mod local;
pub mod redis;

#[cfg(test)]
pub(crate) mod contract;

use super::history::{HistoryPolicy, StoredMessage, StreamPosition};
use super::Target;
use crate::domain::UserId;
use async_trait::async_trait;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Publications a subscription may hold before the broker waits for the hub: a slow hub
/// slows publishers down (backpressure) instead of growing a queue or losing messages.
pub const SUBSCRIPTION_QUEUE: usize = 1024;

/// What a publisher hands the broker.
#[derive(Debug, Clone)]
pub struct NewPublication {
    /// Who it is for.
    pub target: Target,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object; stored and delivered byte for byte.
    pub data_json: String,
    /// When it was published, Unix milliseconds (stored, and the frame's timestamp).
    pub created_at_ms: i64,
    /// An opaque token the publishing hub chose, handed back unchanged on delivery so
    /// that hub can tell its caller what its own node did with the message. Hubs draw
    /// tokens from a random 64-bit start, so another node's token never matches.
    pub origin: Option<u64>,
    /// An idempotency key (the transactional outbox's row id): a publication whose key was already published is not published again, and publish returns the earlier one's seq.
    pub dedupe: Option<i64>,
}

/// A publication as delivered to a hub: the message, its position, and the position of
/// the publication delivered just before it (the chain the hub checks).
#[derive(Debug, Clone)]
pub struct Publication {
    /// Its position in the sequence; strictly greater than every earlier publication's.
    pub seq: i64,
    /// The `seq` of the publication delivered just before it on this subscription, or
    /// the subscription's [`Subscription::start`] for the first one.
    pub prev_seq: i64,
    /// Who it is for.
    pub target: Target,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object, exactly as stored.
    pub data_json: String,
    /// When it was published, Unix milliseconds, exactly as stored.
    pub created_at_ms: i64,
    /// The publisher's token, if it gave one.
    pub origin: Option<u64>,
}

/// A node's stream of publications, in sequence order. Bounded: see
/// [`SUBSCRIPTION_QUEUE`].
pub struct Subscription {
    /// Every publication with `seq <= start` was in history when the subscription was
    /// opened; every later one is delivered on it.
    pub start: i64,
    rx: mpsc::Receiver<Arc<Publication>>,
}

impl Subscription {
    /// A subscription reading from `rx`; the broker keeps the sending half.
    pub fn new(start: i64, rx: mpsc::Receiver<Arc<Publication>>) -> Self {
        Self { start, rx }
    }

    /// The next publication; `None` once the broker has stopped. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Arc<Publication>> {
        self.rx.recv().await
    }
}

/// Why a broker call failed.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker's task has ended (the process is stopping).
    #[error("the real-time broker has stopped")]
    Stopped,
    /// The history could not be read or written; nothing was published.
    #[error("the message history is unavailable: {0:#}")]
    History(anyhow::Error),
}

/// Publish-plus-history, and delivery to every node. Every method documents its
/// ordering and atomicity; implementations must pass `broker::contract`.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The history's name, the first half of every cursor. Stable for the life of the
    /// history: a cursor from another history (wiped data, another cluster) is
    /// recognised by it.
    async fn epoch(&self) -> Result<String, BrokerError>;

    /// Opens a subscription for this node's hub. Atomic with respect to `publish`:
    /// every publication is either at or below [`Subscription::start`] (and in history
    /// by then) or delivered on the subscription, never both, never neither.
    async fn subscribe(&self) -> Result<Subscription, BrokerError>;

    /// Appends the message to history and delivers it to every subscription, as one
    /// step: no subscriber is handed it before it is in history, and no append is left
    /// undelivered (a caller that stops waiting does not cancel the delivery).
    /// Publications get strictly increasing positions and are delivered in that order,
    /// so two concurrent publishers to one stream can never be seen in two orders.
    /// Returns the position once every subscription has it queued; an `Err` means it
    /// was neither stored nor delivered.
    async fn publish(&self, publication: NewPublication) -> Result<i64, BrokerError>;

    /// The user's position in history: the newest publication addressed to them with
    /// `seq <= upto`, and how far their streams were pruned. Reads what was committed
    /// by publishes that have returned (or been delivered).
    async fn position(&self, user: UserId, upto: i64) -> Result<StreamPosition, BrokerError>;

    /// Publications addressed to `user` (own or broadcast) with `after < seq <= upto`,
    /// in ascending `seq` order, at most `limit`, each exactly as delivered. With
    /// `upto` at or below a delivered position, the answer never changes except by
    /// pruning (which only removes a prefix and raises `pruned_through` first).
    async fn history(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, BrokerError>;

    /// Applies the retention policy as of `now_ms`; per stream, the watermark is raised
    /// before (or atomically with) deleting. Returns how many messages were deleted.
    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> Result<u64, BrokerError>;

    /// How many messages history holds now.
    async fn history_size(&self) -> Result<u64, BrokerError>;

    /// Whether the broker can reach what it stands on right now (for `/health`). A
    /// one-process broker always can; a networked one is unhealthy while it cannot, and
    /// becomes healthy again by itself once it reconnects.
    fn healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::local::LocalBroker;
    use super::Broker;
    use crate::realtime::memory::MemoryLog;
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_local_broker_on_the_in_memory_log_keeps_the_contract() {
        super::contract::run_all(|| async {
            let log = Arc::new(MemoryLog::new("abcd"));
            Arc::new(LocalBroker::start(log).await.unwrap()) as Arc<dyn Broker>
        })
        .await;
    }
}

//! The transactional outbox's relay: publishes what the store committed.
//!
//! A store change that is announced writes its messages into an outbox in the same
//! database transaction (`store::outbox`), so the change and its announcement can
//! never disagree, whatever crashes. This relay, one task per node, turns the outbox
//! into publications: it reads pending entries oldest first in batches, publishes each
//! batch through the broker (one call, one history transaction for the local broker)
//! with every entry's id as the publication's idempotency key (`dedupe`), and then
//! removes them. So:
//!
//! - a crash before the publish loses nothing: the entries are still pending, and the
//!   relay drains leftovers when it starts;
//! - a crash between the publish and the remove repeats nothing: the broker answers an
//!   already published key with the earlier position and delivers nothing again;
//! - entries are published in id order, which is commit order for the changes of one
//!   task or agent (on SQLite for all of them), so a task's updates reach its owner in
//!   the order they happened.
//!
//! The relay is woken right after each commit that wrote entries ([`Relay::flush`]),
//! and sweeps every `SWEEP_EVERY` regardless (another process's leftovers, a missed
//! wake-up). A service that must answer its caller only after the announcement went
//! out on this node (an HTTP response after the `task_update`, as before the outbox)
//! awaits [`Relay::flush`]: it returns once a relay pass that started after the call
//! has found the outbox drained, so every entry committed before the call has been
//! published and delivered here. A caller that is not the announcement's audience (an
//! agent reporting on a task) only wakes the relay ([`Relay::nudge`]).
//!
//! One relay per outbox: with one node, the relay task is the only reader. Several
//! nodes sharing one database must serialize their relays (the PostgreSQL store holds
//! an advisory lock from `pending` to `remove` or `abandon`, with deadlines; see
//! `store::postgres::outbox`), or publication order would be lost.
//!
//! The relay knows no store: it reads through the [`OutboxPort`] port, which `app.rs`
//! adapts to the store's `OutboxStore`.

use super::broker::NewPublication;
use super::{Hub, Target};
use async_trait::async_trait;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};

/// Entries read and published per batch.
const BATCH: u32 = 256;
/// The relay looks at the outbox at least this often, even when nobody wakes it.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// After a failed pass, the relay waits this long before the next.
const RETRY_AFTER: Duration = Duration::from_millis(200);
/// The longest [`Relay::flush`] waits; past it the caller goes on (the entries stay
/// pending and go out with a later pass).
pub const FLUSH_DEADLINE: Duration = Duration::from_secs(10);

/// A pending outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Its position in the outbox, and the publication's idempotency key.
    pub id: i64,
    /// Who it is for.
    pub target: Target,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object.
    pub data_json: String,
    /// When the change it announces committed, Unix milliseconds (the message's time).
    pub created_at_ms: i64,
}

/// What the relay needs from the outbox.
#[async_trait]
pub trait OutboxPort: Send + Sync + 'static {
    /// Up to `limit` pending entries, lowest id first.
    async fn pending(&self, limit: u32) -> anyhow::Result<Vec<OutboxEntry>>;
    /// Removes published entries.
    async fn remove(&self, ids: &[i64]) -> anyhow::Result<()>;
    /// Gives up the entries `pending` returned without removing them (their publish
    /// failed): they stay pending, and an outbox shared by several relays lets the
    /// others have a turn meanwhile.
    async fn abandon(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// The relay found nothing pending: an outbox that deletes removed entries later
    /// may delete them now.
    async fn tidy(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// The relay handle: wakes the relay task and waits for it. Cheap to clone.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

struct Inner {
    port: Arc<dyn OutboxPort>,
    hub: Hub,
    /// Wakes the relay task (a stored permit: a wake-up during a pass is not lost).
    wake: Notify,
    /// Flush requests so far.
    requested: AtomicU64,
    /// The newest request a pass has served: every entry committed before it was
    /// published (and delivered on this node).
    served: watch::Sender<u64>,
}

impl Relay {
    /// A relay publishing `port`'s entries through `hub`. Nothing runs until [`run`].
    ///
    /// [`run`]: Relay::run
    pub fn new(port: Arc<dyn OutboxPort>, hub: Hub) -> Self {
        Self {
            inner: Arc::new(Inner {
                port,
                hub,
                wake: Notify::new(),
                requested: AtomicU64::new(0),
                served: watch::channel(0).0,
            }),
        }
    }

    /// Wakes the relay and waits (at most [`FLUSH_DEADLINE`]) until every entry
    /// committed before this call has been published and delivered on this node. Call
    /// it after a commit that wrote entries. Past the deadline it logs and returns:
    /// the change is committed and its messages go out with a later pass.
    pub async fn flush(&self) {
        let ticket = self.inner.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut served = self.inner.served.subscribe();
        self.inner.wake.notify_one();
        let wait = async { served.wait_for(|s| *s >= ticket).await.map(|_| ()) };
        match tokio::time::timeout(FLUSH_DEADLINE, wait).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => tracing::warn!("the outbox relay is gone: announcement pending"),
            Err(_) => tracing::warn!("the outbox relay is behind: announcement still pending"),
        }
    }

    /// Wakes the relay without waiting for it: for a caller that is not the
    /// announcement's audience (an agent reporting on a task is answered once its
    /// change is committed; the owner hears of it from the pass this starts).
    pub fn nudge(&self) {
        self.inner.wake.notify_one();
    }

    /// The relay task: a pass at start (leftovers of an earlier run), then one per
    /// wake-up or `SWEEP_EVERY`. Runs until aborted; an abort at any point is safe
    /// (see the module doc).
    pub async fn run(self) {
        loop {
            match self.pass().await {
                Ok(true) => {}
                Ok(false) => {
                    if let Err(err) = self.inner.port.tidy().await {
                        tracing::warn!(error = format!("{err:#}"), "outbox tidy failed");
                    }
                }
                Err(err) => {
                    tracing::warn!(error = format!("{err:#}"), "outbox relay pass failed");
                    tokio::time::sleep(RETRY_AFTER).await;
                    continue;
                }
            }
            tokio::select! {
                _ = self.inner.wake.notified() => {}
                _ = tokio::time::sleep(SWEEP_EVERY) => {}
            }
        }
    }

    /// Marks the flush requests up to `ticket` as served.
    fn serve(&self, ticket: u64) {
        self.inner.served.send_if_modified(|served| {
            let newer = ticket > *served;
            if newer {
                *served = ticket;
            }
            newer
        });
    }

    /// Publishes and removes batches until a read finds fewer than `BATCH` entries,
    /// then marks the flush requests made before that read as served. Answers whether
    /// it found anything to publish.
    async fn pass(&self) -> anyhow::Result<bool> {
        let mut published = false;
        loop {
            // Read before the outbox: every entry committed before this request was
            // made is in the read below or was published by an earlier batch.
            let ticket = self.inner.requested.load(Ordering::SeqCst);
            let entries = self.inner.port.pending(BATCH).await?;
            let drained = entries.len() < BATCH as usize;
            if !entries.is_empty() {
                let ids: Vec<i64> = entries.iter().map(|e| e.id).collect();
                let batch = entries
                    .into_iter()
                    .map(|e| NewPublication {
                        target: e.target,
                        kind: e.kind,
                        data_json: e.data_json,
                        created_at_ms: e.created_at_ms,
                        origin: None,
                        dedupe: Some(e.id),
                    })
                    .collect();
                if let Err(err) = self.inner.hub.publish_batch(batch).await {
                    if let Err(also) = self.inner.port.abandon().await {
                        tracing::warn!(error = format!("{also:#}"), "outbox abandon failed");
                    }
                    return Err(err);
                }
                published = true;
                if drained {
                    // Published and delivered: the waiters need not wait for the
                    // remove (a crash before it repeats nothing, see the module doc).
                    self.serve(ticket);
                }
                self.inner.port.remove(&ids).await?;
            }
            if drained {
                self.serve(ticket);
                return Ok(published);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;
    use crate::realtime::broker::local::LocalBroker;
    use crate::realtime::history::{HistoryPolicy, MessageLog};
    use crate::realtime::memory::MemoryLog;
    use crate::realtime::ConnectRequest;
    use crate::realtime::TransportKind;
    use std::sync::Mutex;

    /// An outbox in memory whose `remove` can be made to fail, like a crash between
    /// publishing a batch and removing it.
    #[derive(Default)]
    struct TestOutbox {
        entries: Mutex<Vec<OutboxEntry>>,
        failing_removes: AtomicU64,
    }

    impl TestOutbox {
        fn add(&self, user: UserId, n: i64) {
            self.entries.lock().unwrap().push(OutboxEntry {
                id: n,
                target: Target::User(user),
                kind: "note".into(),
                data_json: format!(r#"{{"n":{n}}}"#),
                created_at_ms: 1_700_000_000_000,
            });
        }
    }

    #[async_trait]
    impl OutboxPort for TestOutbox {
        async fn pending(&self, limit: u32) -> anyhow::Result<Vec<OutboxEntry>> {
            let entries = self.entries.lock().unwrap();
            Ok(entries.iter().take(limit as usize).cloned().collect())
        }

        async fn remove(&self, ids: &[i64]) -> anyhow::Result<()> {
            if self
                .failing_removes
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                anyhow::bail!("the database went away");
            }
            self.entries
                .lock()
                .unwrap()
                .retain(|e| !ids.contains(&e.id));
            Ok(())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leftovers_are_published_once_in_order_even_when_removing_fails() {
        let log = Arc::new(MemoryLog::new("abcd"));
        let broker = LocalBroker::start(log.clone()).await.unwrap();
        let hub = Hub::start(Arc::new(broker), HistoryPolicy::default())
            .await
            .unwrap();
        let user = UserId::new();
        let outbox = Arc::new(TestOutbox::default());
        // Left over from an earlier run, more than one batch.
        for n in 1..=600 {
            outbox.add(user, n);
        }
        // The first two batches are published but their removal fails.
        outbox.failing_removes.store(2, Ordering::SeqCst);
        let relay = Relay::new(outbox.clone(), hub.clone());
        let mut conn = hub
            .connect(ConnectRequest {
                user,
                credential: None,
                transport: TransportKind::WebSocket,
                since: None,
                expires_at: None,
            })
            .await
            .unwrap();
        // Read while the relay publishes: a connection's queue is bounded.
        let reader = tokio::spawn(async move {
            let mut live = Vec::new();
            while live.len() < 601 {
                let frame = tokio::time::timeout(Duration::from_secs(10), conn.next_frame())
                    .await
                    .expect("a frame in time")
                    .expect("open");
                let v: serde_json::Value = serde_json::from_str(frame.text()).unwrap();
                if v["type"] == "note" {
                    live.push(v["data"].to_string());
                }
            }
            live
        });
        let task = tokio::spawn(relay.clone().run());
        // A flush returns once the batch is delivered, which may be just before its
        // remove: the outbox empties right after.
        let drained = || async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            while !outbox.entries.lock().unwrap().is_empty() {
                assert!(tokio::time::Instant::now() < deadline, "drained in time");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        relay.flush().await;
        drained().await;
        // Entries committed after a flush started go out with the next one.
        outbox.add(user, 601);
        relay.flush().await;
        drained().await;
        task.abort();

        let kept = log.replay(user, 0, i64::MAX, 10_000).await.unwrap();
        let ns: Vec<String> = kept.iter().map(|m| m.data_json.clone()).collect();
        let expected: Vec<String> = (1..=601).map(|n| format!(r#"{{"n":{n}}}"#)).collect();
        assert_eq!(ns, expected, "each entry stored once, in id order");
        // And delivered live once each, in order.
        let live = reader.await.unwrap();
        assert_eq!(live, expected);
    }
}

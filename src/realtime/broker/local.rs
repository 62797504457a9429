//! The one-process broker: history in the store's message log (the hub's
//! [`MessageLog`] port), delivery through in-process channels. This is what ZeroState
//! did before the broker seam existed, behind the [`Broker`] trait.
//!
//! One task, the publisher, takes publish requests one at a time (a request is one
//! publication or a batch): it appends to the log (getting the sequence numbers from
//! the log's single writer, a batch in one transaction), then, under the subscriber
//! lock, advances the chain and takes the subscriber list, then queues each new
//! publication to each subscriber. A publication whose idempotency key (`dedupe`) the
//! log already holds is not appended, and so not delivered: the log answers the earlier
//! one's position, which the publisher returns. One request at a time is what makes delivery order
//! equal sequence order; doing the work in a task (not in the caller) is what makes a
//! caller that stops waiting unable to leave a message appended but undelivered.

use super::{Broker, BrokerError, NewPublication, Publication, Subscription, SUBSCRIPTION_QUEUE};
use crate::domain::UserId;
use crate::realtime::history::{
    HistoryPolicy, LogEntry, MessageLog, StoredMessage, StreamPosition,
};
use crate::realtime::Target;
use async_trait::async_trait;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::{mpsc, oneshot};

/// Publish requests waiting for the publisher task; callers wait (backpressure) beyond.
const PUBLISH_QUEUE: usize = 1024;

/// A broker for one process. Cheap to share behind an `Arc`.
pub struct LocalBroker {
    inner: Arc<Inner>,
    requests: mpsc::Sender<Request>,
}

struct Inner {
    /// Where publications are kept for resume.
    log: Arc<dyn MessageLog>,
    /// Who receives publications, and the chain's head. A std mutex: it is held only to
    /// read or change these two fields, never across an `.await`.
    subscribers: Mutex<Subscribers>,
}

struct Subscribers {
    /// The newest sequence number handed to the subscribers (or present in the log at
    /// start): a new subscription starts after it.
    last_seq: i64,
    senders: Vec<mpsc::Sender<Arc<Publication>>>,
}

struct Request {
    batch: Vec<NewPublication>,
    reply: oneshot::Sender<Result<Vec<i64>, BrokerError>>,
}

impl LocalBroker {
    /// Opens the broker on a message log and starts its publisher task. Must be called
    /// inside a tokio runtime.
    pub async fn start(log: Arc<dyn MessageLog>) -> Result<Self, BrokerError> {
        let last_seq = log.last_seq().await.map_err(BrokerError::History)?;
        let inner = Arc::new(Inner {
            log,
            subscribers: Mutex::new(Subscribers {
                last_seq,
                senders: Vec::new(),
            }),
        });
        let (requests, rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(run_publisher(inner.clone(), rx));
        Ok(Self { inner, requests })
    }
}

impl Inner {
    fn subscribers(&self) -> MutexGuard<'_, Subscribers> {
        // Nothing panics while holding it; the two fields stay consistent regardless.
        self.subscribers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends the publications (one log transaction) and queues each new one to
    /// every subscriber, in order.
    async fn publish_many(&self, batch: Vec<NewPublication>) -> Result<Vec<i64>, BrokerError> {
        let entries: Vec<LogEntry<'_>> = batch
            .iter()
            .map(|new| LogEntry {
                user: match new.target {
                    Target::User(user) => Some(user),
                    Target::Everyone => None,
                },
                kind: &new.kind,
                data_json: &new.data_json,
                created_at_ms: new.created_at_ms,
                dedupe: new.dedupe,
            })
            .collect();
        let appended = self
            .log
            .append(&entries)
            .await
            .map_err(BrokerError::History)?;
        drop(entries);
        let mut seqs = Vec::with_capacity(batch.len());
        for (new, (seq, fresh)) in batch.into_iter().zip(appended) {
            seqs.push(seq);
            if !fresh {
                // Published before (its key is in the log): not delivered again.
                continue;
            }
            let (prev_seq, senders) = {
                let mut subs = self.subscribers();
                let prev = subs.last_seq;
                subs.last_seq = seq;
                subs.senders.retain(|s| !s.is_closed());
                (prev, subs.senders.clone())
            };
            let publication = Arc::new(Publication {
                seq,
                prev_seq,
                target: new.target,
                kind: new.kind,
                data_json: new.data_json,
                created_at_ms: new.created_at_ms,
                origin: new.origin,
            });
            for sender in senders {
                // Waits while a hub is behind (bounded queue); a hub that has gone away
                // (its receiver dropped) is skipped and forgotten at the next publish.
                let _ = sender.send(publication.clone()).await;
            }
        }
        Ok(seqs)
    }
}

/// The publisher task: one request at a time, so delivery follows sequence order.
async fn run_publisher(inner: Arc<Inner>, mut requests: mpsc::Receiver<Request>) {
    while let Some(req) = requests.recv().await {
        let count = req.batch.len();
        let result = inner.publish_many(req.batch).await;
        if let Err(err) = &result {
            tracing::error!(error = %err, count, "publishing failed");
        }
        let _ = req.reply.send(result);
    }
}

#[async_trait]
impl Broker for LocalBroker {
    async fn epoch(&self) -> Result<String, BrokerError> {
        self.inner.log.epoch().await.map_err(BrokerError::History)
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        // Under the same lock the publisher advances the chain with: see `publish_one`.
        let mut subs = self.inner.subscribers();
        subs.senders.push(tx);
        Ok(Subscription::new(subs.last_seq, rx))
    }

    async fn publish(&self, publication: NewPublication) -> Result<i64, BrokerError> {
        let seqs = self.publish_batch(vec![publication]).await?;
        seqs.first().copied().ok_or(BrokerError::Stopped)
    }

    async fn publish_batch(&self, batch: Vec<NewPublication>) -> Result<Vec<i64>, BrokerError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, answer) = oneshot::channel();
        self.requests
            .send(Request { batch, reply })
            .await
            .map_err(|_| BrokerError::Stopped)?;
        answer.await.map_err(|_| BrokerError::Stopped)?
    }

    async fn position(&self, user: UserId, upto: i64) -> Result<StreamPosition, BrokerError> {
        self.inner
            .log
            .position(user, upto)
            .await
            .map_err(BrokerError::History)
    }

    async fn history(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        self.inner
            .log
            .replay(user, after, upto, limit)
            .await
            .map_err(BrokerError::History)
    }

    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> Result<u64, BrokerError> {
        self.inner
            .log
            .prune(policy, now_ms)
            .await
            .map_err(BrokerError::History)
    }

    async fn history_size(&self) -> Result<u64, BrokerError> {
        self.inner.log.count().await.map_err(BrokerError::History)
    }
}

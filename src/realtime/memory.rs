//! An in-memory message log with the same contract as the store's, so the hub's unit
//! tests can drive thousands of publishes and reconnects without a database. Only
//! compiled for tests: the server always keeps its history in the store.

use super::history::{HistoryPolicy, LogEntry, MessageLog, StoredMessage, StreamPosition};
use crate::domain::UserId;
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;

/// A message log held in memory.
pub struct MemoryLog {
    epoch: String,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    last_seq: i64,
    /// In seq order.
    messages: Vec<(Option<UserId>, StoredMessage)>,
    /// Prune watermark per stream (`None` = broadcasts).
    pruned_through: HashMap<Option<UserId>, i64>,
    /// The seq of each idempotency key appended.
    dedupe: HashMap<i64, i64>,
}

impl MemoryLog {
    /// An empty log with the given epoch.
    pub fn new(epoch: impl Into<String>) -> Self {
        Self {
            epoch: epoch.into(),
            inner: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn addressed_to(target: &Option<UserId>, user: UserId) -> bool {
    target.is_none_or(|t| t == user)
}

#[async_trait]
impl MessageLog for MemoryLog {
    async fn epoch(&self) -> anyhow::Result<String> {
        Ok(self.epoch.clone())
    }

    async fn last_seq(&self) -> anyhow::Result<i64> {
        Ok(self.lock().last_seq)
    }

    async fn append(&self, batch: &[LogEntry<'_>]) -> anyhow::Result<Vec<(i64, bool)>> {
        let mut inner = self.lock();
        let mut out = Vec::with_capacity(batch.len());
        for entry in batch {
            if let Some(seq) = entry.dedupe.and_then(|key| inner.dedupe.get(&key)) {
                out.push((*seq, false));
                continue;
            }
            inner.last_seq += 1;
            let seq = inner.last_seq;
            if let Some(key) = entry.dedupe {
                inner.dedupe.insert(key, seq);
            }
            inner.messages.push((
                entry.user,
                StoredMessage {
                    seq,
                    kind: entry.kind.to_owned(),
                    data_json: entry.data_json.to_owned(),
                    created_at_ms: entry.created_at_ms,
                },
            ));
            out.push((seq, true));
        }
        Ok(out)
    }

    async fn position(&self, user: UserId, upto: i64) -> anyhow::Result<StreamPosition> {
        let inner = self.lock();
        let latest = inner
            .messages
            .iter()
            .filter(|(t, m)| addressed_to(t, user) && m.seq <= upto)
            .map(|(_, m)| m.seq)
            .max()
            .unwrap_or(0);
        let pruned = |s| inner.pruned_through.get(&s).copied().unwrap_or(0);
        Ok(StreamPosition {
            latest,
            pruned_through: pruned(Some(user)).max(pruned(None)),
        })
    }

    async fn replay(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<StoredMessage>> {
        let inner = self.lock();
        Ok(inner
            .messages
            .iter()
            .filter(|(t, m)| addressed_to(t, user) && m.seq > after && m.seq <= upto)
            .take(limit as usize)
            .map(|(_, m)| m.clone())
            .collect())
    }

    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> anyhow::Result<u64> {
        let cutoff = now_ms - i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
        let mut inner = self.lock();
        let mut per_stream: HashMap<Option<UserId>, Vec<(i64, i64)>> = HashMap::new();
        for (t, m) in &inner.messages {
            per_stream
                .entry(*t)
                .or_default()
                .push((m.seq, m.created_at_ms));
        }
        for (stream, mut seqs) in per_stream {
            seqs.sort_unstable_by_key(|(seq, _)| std::cmp::Reverse(*seq));
            let doomed = seqs
                .iter()
                .skip(policy.max_per_stream as usize)
                .filter(|(_, at)| *at < cutoff)
                .map(|(seq, _)| *seq)
                .max();
            if let Some(through) = doomed {
                let mark = inner.pruned_through.entry(stream).or_default();
                *mark = (*mark).max(through);
            }
        }
        let before = inner.messages.len();
        let marks = inner.pruned_through.clone();
        inner
            .messages
            .retain(|(t, m)| m.seq > marks.get(t).copied().unwrap_or(0));
        Ok((before - inner.messages.len()) as u64)
    }

    async fn count(&self) -> anyhow::Result<u64> {
        Ok(self.lock().messages.len() as u64)
    }
}

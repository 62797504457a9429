//! Task output: agents append chunks while they work; readers page through them by
//! `seq` or follow them live; the owner's real-time connections get each chunk as a
//! transient `task_output` frame.
//!
//! The store is the truth and the only thing a reader ever has to trust: every chunk is
//! committed (with its gapless `seq`) before anyone hears of it. Everything in memory
//! is a hint that lets followers skip the database while they keep up:
//! - `Feeds` holds, per followed task, a bounded broadcast of the batches committed
//!   since. A follower subscribes *before* reading the store, so a batch is either in
//!   what it reads or in what it hears (or both: duplicates are skipped by `seq`).
//!   A follower that falls behind (`Lagged`), or hears a batch that does not start
//!   right after what it has, reads the store from its last `seq` again. So it never
//!   loses or repeats a chunk, and a slow follower costs memory only up to the bound.
//! - The end of a task is announced on the same feed; the follower then reads the
//!   store once more (appends stop before a task finishes, so that read is complete)
//!   and ends. Every wait has a deadline: a follower that hears nothing re-checks the
//!   task's status now and then, so a missed announcement costs seconds, not forever.
//! - Live frames to the owner's connections carry no cursor and are not kept in the
//!   resume history: a flood of tokens must not push task updates out of it. A client
//!   that sees a gap, or reconnects, reads the missing chunks with `?after=`.

use super::{TaskError, TaskService};
use crate::domain::{ChunkBatch, OutputChunk, OutputStream, TaskId, TaskStatus, UserId};
use crate::store::{from_millis, to_millis, AgentRecord, Appended, StoreError, TaskRecord};
use chrono::Utc;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::broadcast;

/// Batches a task's feed holds for followers that have not read them yet; a follower
/// further behind reads the store instead.
const FEED_CAPACITY: usize = 256;
/// Chunks read from the store per query while catching up.
const READ_PAGE: u32 = 1000;
/// A follower that has heard nothing for this long re-checks the task in the store.
const RECHECK_EVERY: Duration = Duration::from_secs(15);
/// The real-time message type of a live chunk.
pub const TASK_OUTPUT: &str = "task_output";

/// What a task's feed carries.
#[derive(Debug, Clone)]
enum FeedEvent {
    /// A batch just committed, in `seq` order.
    Chunks(Arc<[OutputChunk]>),
    /// The task finished; every chunk is in the store.
    End(TaskStatus),
}

/// The per-task feeds of followed tasks. A feed exists only while someone follows the
/// task: appends to an unfollowed task cost one map lookup.
#[derive(Default)]
pub(super) struct Feeds {
    map: Mutex<HashMap<TaskId, broadcast::Sender<FeedEvent>>>,
}

impl Feeds {
    /// Locks the map; it holds no invariant a panic could break, so poisoning is ignored.
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, broadcast::Sender<FeedEvent>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn subscribe(&self, task: TaskId) -> broadcast::Receiver<FeedEvent> {
        self.lock()
            .entry(task)
            .or_insert_with(|| broadcast::channel(FEED_CAPACITY).0)
            .subscribe()
    }

    /// Tells the task's followers about a committed batch; forgets a feed nobody
    /// follows any more.
    fn chunks(&self, task: TaskId, chunks: Arc<[OutputChunk]>) {
        let mut map = self.lock();
        if let Some(feed) = map.get(&task) {
            if feed.send(FeedEvent::Chunks(chunks)).is_err() {
                map.remove(&task);
            }
        }
    }

    /// Tells the task's followers it finished, and drops its feed.
    pub(super) fn finished(&self, task: TaskId, status: TaskStatus) {
        if let Some(feed) = self.lock().remove(&task) {
            let _ = feed.send(FeedEvent::End(status));
        }
    }
}

/// The live `task_output` frame: one chunk.
#[derive(Debug, Serialize)]
pub struct TaskOutputFrame<'a> {
    pub task_id: TaskId,
    pub seq: u64,
    pub stream: OutputStream,
    pub text: &'a str,
}

/// Why an append was refused.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The task's output would pass the operator's limit.
    #[error("the task's output may hold at most {max} bytes; it holds {stored}")]
    Limit { max: u64, stored: u64 },
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl From<StoreError> for OutputError {
    fn from(err: StoreError) -> Self {
        OutputError::Task(err.into())
    }
}

/// One page of a task's output.
#[derive(Debug, Serialize)]
pub struct OutputPage {
    pub chunks: Vec<OutputChunk>,
    /// The `after` for the next page: the last `seq` returned (or the one asked after).
    pub next: u64,
    /// The task finished and this page holds its last chunk.
    pub complete: bool,
}

impl TaskService {
    /// Appends a batch to the agent's running task (one transaction), renews its lease,
    /// then hands the chunks to the task's followers and the owner's live connections.
    /// Returns the last `seq` written.
    pub async fn append_output(
        &self,
        agent: &AgentRecord,
        id: TaskId,
        batch: ChunkBatch,
    ) -> Result<u64, OutputError> {
        let now = Utc::now();
        let lease_until =
            now + chrono::Duration::from_std(self.inner.settings.lease).unwrap_or_default();
        let max = self.inner.settings.output_max_bytes;
        let appended = self
            .store()
            .append_output(id, agent.id, &batch, max, lease_until, now)
            .await?;
        let (user, first_seq, last_seq) = match appended {
            Appended::Stored {
                user_id,
                first_seq,
                last_seq,
                ..
            } => (user_id, first_seq, last_seq),
            Appended::NotRunning => return Err(self.why_not_running(agent.id, id).await.into()),
            Appended::OverLimit { output_bytes } => {
                return Err(OutputError::Limit {
                    max,
                    stored: output_bytes,
                })
            }
        };
        metrics::counter!("zerostate_task_output_bytes_total").increment(batch.bytes());
        metrics::counter!("zerostate_task_output_chunks_total").increment(batch.len() as u64);
        // The stored time, to the millisecond, so a live chunk equals the one read later.
        let at = from_millis(to_millis(now));
        let chunks: Arc<[OutputChunk]> = batch
            .chunks()
            .iter()
            .zip(first_seq..)
            .map(|(c, seq)| OutputChunk {
                seq,
                stream: c.stream,
                text: c.text.clone(),
                at,
            })
            .collect();
        self.deliver_output(user, id, &chunks);
        self.inner.feeds.chunks(id, chunks);
        Ok(last_seq)
    }

    /// Queues the chunks to the owner's live connections as `task_output`.
    fn deliver_output(&self, user: UserId, id: TaskId, chunks: &[OutputChunk]) {
        let frames: Vec<TaskOutputFrame<'_>> = chunks
            .iter()
            .map(|c| TaskOutputFrame {
                task_id: id,
                seq: c.seq,
                stream: c.stream,
                text: &c.text,
            })
            .collect();
        self.inner
            .hub
            .send_transient_batch(user, TASK_OUTPUT, &frames);
    }

    /// Up to `limit` chunks of `task` after `after`. `task` must have been read before
    /// this call: if it had finished then, no chunk can follow the ones read here.
    pub async fn output_page(
        &self,
        task: &TaskRecord,
        after: u64,
        limit: u32,
    ) -> Result<OutputPage, TaskError> {
        let mut chunks = self
            .store()
            .read_output(task.id, after, limit.saturating_add(1))
            .await?;
        let more = chunks.len() > limit as usize;
        chunks.truncate(limit as usize);
        Ok(OutputPage {
            next: chunks.last().map_or(after, |c| c.seq),
            complete: task.status.is_finished() && !more,
            chunks,
        })
    }

    /// Follows `task`'s output from `after`: every chunk in order, live, then the end.
    pub fn follow_output(&self, task: &TaskRecord, after: u64) -> OutputFollower {
        // Subscribe first: see the module docs.
        let feed = self.inner.feeds.subscribe(task.id);
        OutputFollower {
            service: self.clone(),
            task: task.id,
            after,
            feed: Some(feed),
            pending: VecDeque::new(),
            read_store: true,
            finishing: task.status.is_finished().then_some(task.status),
            // The task may have finished between its reading and the subscription,
            // announcing it to nobody: look once more before the first wait.
            recheck: !task.status.is_finished(),
            done: false,
        }
    }
}

/// What a follower yields.
#[derive(Debug, Clone)]
pub enum FollowEvent {
    Chunk(OutputChunk),
    /// The task finished with this status; nothing follows.
    End(TaskStatus),
}

/// A reader following one task's output; see the module docs.
pub struct OutputFollower {
    service: TaskService,
    task: TaskId,
    /// The last `seq` handed out.
    after: u64,
    feed: Option<broadcast::Receiver<FeedEvent>>,
    /// Chunks heard or read, after `after`, contiguous.
    pending: VecDeque<OutputChunk>,
    /// Whether the store may hold chunks we have not queued.
    read_store: bool,
    /// The task finished: read the store to its end, then end.
    finishing: Option<TaskStatus>,
    /// Read the task's status before waiting.
    recheck: bool,
    done: bool,
}

impl OutputFollower {
    /// The next chunk, or the end. `Ok(None)` after the end, or when the server is
    /// shutting down (the client resumes from its last `seq`).
    pub async fn next(&mut self) -> Result<Option<FollowEvent>, TaskError> {
        loop {
            if let Some(chunk) = self.pending.pop_front() {
                self.after = chunk.seq;
                return Ok(Some(FollowEvent::Chunk(chunk)));
            }
            if self.done {
                return Ok(None);
            }
            if self.read_store {
                let page = self
                    .service
                    .store()
                    .read_output(self.task, self.after, READ_PAGE)
                    .await?;
                if page.is_empty() {
                    self.read_store = false;
                } else {
                    self.pending.extend(page);
                }
                continue;
            }
            if let Some(status) = self.finishing {
                self.done = true;
                self.feed = None;
                return Ok(Some(FollowEvent::End(status)));
            }
            if std::mem::take(&mut self.recheck) {
                let task = self.service.store().task(self.task).await?;
                if task.status.is_finished() {
                    self.finishing = Some(task.status);
                    self.read_store = true;
                }
                continue;
            }
            let heard = match self.feed.as_mut() {
                Some(feed) => {
                    let shutdown = self.service.inner.shutdown.clone();
                    tokio::select! {
                        heard = tokio::time::timeout(RECHECK_EVERY, feed.recv()) => heard,
                        _ = shutdown.triggered() => return Ok(None),
                    }
                }
                None => Ok(Err(broadcast::error::RecvError::Closed)),
            };
            match heard {
                Ok(Ok(FeedEvent::Chunks(batch))) => self.take(&batch),
                Ok(Ok(FeedEvent::End(status))) => {
                    self.finishing = Some(status);
                    self.read_store = true;
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => self.read_store = true,
                // The feed was dropped (the task finished, or nobody seemed to follow
                // it), or nothing was heard for a while: ask the store.
                Ok(Err(broadcast::error::RecvError::Closed)) | Err(_) => {
                    let task = self.service.store().task(self.task).await?;
                    if task.status.is_finished() {
                        self.finishing = Some(task.status);
                    } else if self.feed.as_ref().is_none_or(|f| f.is_closed()) {
                        self.feed = Some(self.service.inner.feeds.subscribe(self.task));
                    }
                    self.read_store = true;
                }
            }
        }
    }

    /// Queues the part of a heard batch that continues what we have; a batch that
    /// starts beyond it means something was missed, so the store is read instead.
    fn take(&mut self, batch: &[OutputChunk]) {
        let have = self.pending.back().map_or(self.after, |c| c.seq);
        match batch.first() {
            Some(first) if first.seq > have + 1 => self.read_store = true,
            _ => self
                .pending
                .extend(batch.iter().filter(|c| c.seq > have).cloned()),
        }
    }
}

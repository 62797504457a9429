//! The hub: live connections by user, the single publisher that orders every message,
//! and the resume handshake.
//!
//! Ordering and no-gap resume rest on one rule: the publisher task appends a message to
//! the log (getting its sequence number), then fans it out under the registry lock, and
//! a connection registers under that same lock, reading the last fanned-out sequence
//! number there. So every message is either at or below that number (the connection
//! replays it from the log) or above it (the connection gets it live), never both and
//! never neither. The registry lock is a std mutex held only for map updates and
//! `try_send`s, never across an `.await` (mini-redis's `db.rs` explains why that is the
//! right lock for such short sections).

use super::client::{ClientQueue, ConnId, Offer, Slot, TransportKind};
use super::disconnect::{Disconnect, DisconnectSignal};
use super::history::{HistoryPolicy, MessageLog, StreamPosition};
use super::protocol::{self, Frame, ResetReason};
use super::{Published, Target};
use crate::auth::Credential;
use crate::domain::{Cursor, MessageType, UserId};
use crate::shutdown::Shutdown;
use anyhow::Context;
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot, Notify};

/// Publish requests waiting for the publisher; callers wait (backpressure) beyond this.
const PUBLISH_QUEUE: usize = 1024;
/// Messages read from the log per replay query.
const REPLAY_PAGE: u32 = 200;
/// How long a revoked credential is remembered, to refuse a connection that
/// authenticated just before the revocation but registers just after it.
const REVOKED_MEMORY: Duration = Duration::from_secs(120);

/// The hub handle; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
    publish_tx: mpsc::Sender<PublishRequest>,
}

struct Shared {
    log: Arc<dyn MessageLog>,
    /// The log's epoch, the first half of every cursor.
    epoch: String,
    policy: HistoryPolicy,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    counters: Counters,
    /// Woken when the last connection ends (for draining at shutdown).
    idle: Notify,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Slot>,
    by_user: HashMap<UserId, HashSet<ConnId>>,
    by_credential: HashMap<Credential, HashSet<ConnId>>,
    /// The newest sequence number fanned out; see the module docs.
    last_published_seq: i64,
    /// Set at shutdown: no new connections.
    closed: bool,
    recently_revoked: HashMap<Credential, Instant>,
}

impl Registry {
    fn insert(&mut self, slot: Slot) {
        self.by_user.entry(slot.user).or_default().insert(slot.id);
        if let Some(c) = slot.credential {
            self.by_credential.entry(c).or_default().insert(slot.id);
        }
        self.conns.insert(slot.id, slot);
    }

    fn remove(&mut self, id: ConnId) -> Option<Slot> {
        let slot = self.conns.remove(&id)?;
        if let Some(set) = self.by_user.get_mut(&slot.user) {
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&slot.user);
            }
        }
        if let Some(c) = slot.credential {
            if let Some(set) = self.by_credential.get_mut(&c) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_credential.remove(&c);
                }
            }
        }
        Some(slot)
    }
}

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    current_ws: AtomicU64,
    current_sse: AtomicU64,
    messages_sent: AtomicU64,
    published: AtomicU64,
    slow: AtomicU64,
    resumes: AtomicU64,
    resets: AtomicU64,
    history_size: AtomicU64,
}

impl Counters {
    fn current(&self, kind: TransportKind) -> &AtomicU64 {
        match kind {
            TransportKind::WebSocket => &self.current_ws,
            TransportKind::Sse => &self.current_sse,
        }
    }
}

/// Counters for `GET /api/v1/ws/stats` (this node).
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    /// Connections accepted since start.
    pub total_connections: u64,
    /// Connections open now.
    pub current_connections: u64,
    /// Messages written to sockets (control messages included).
    pub messages_sent: u64,
    /// Open connections by transport.
    pub connections_by_transport: TransportCounts,
    /// Durable messages published since start.
    pub messages_published: u64,
    /// Connections closed with 4008 since start.
    pub slow_disconnects: u64,
    /// Resumes that replayed the gap.
    pub resumes: u64,
    /// Resumes answered with `reset`.
    pub resets: u64,
    /// Messages kept for resume (as of the last prune).
    pub history_size: u64,
}

/// Open connections per transport.
#[derive(Debug, Clone, Serialize)]
pub struct TransportCounts {
    /// WebSocket connections.
    pub websocket: u64,
    /// Server-Sent Events streams.
    pub sse: u64,
}

/// What a transport asks for when a client connects.
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// Whose messages the connection receives.
    pub user: UserId,
    /// The credential it authenticated with, so revoking it closes the connection.
    pub credential: Option<Credential>,
    /// Which transport carries it (stats).
    pub transport: TransportKind,
    /// The cursor to resume after (`?since=` or `Last-Event-ID`), as given.
    pub since: Option<String>,
}

/// Why the hub refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the credential was revoked")]
    Revoked,
}

struct PublishRequest {
    target: Target,
    kind: MessageType,
    data: serde_json::Value,
    reply: oneshot::Sender<anyhow::Result<Published>>,
}

impl Hub {
    /// Opens the hub on a message log and starts its publisher task. Must be called
    /// inside a tokio runtime.
    pub async fn start(log: Arc<dyn MessageLog>, policy: HistoryPolicy) -> anyhow::Result<Self> {
        let epoch = log.epoch().await.context("reading the message log epoch")?;
        let last_seq = log
            .last_seq()
            .await
            .context("reading the message log position")?;
        let history_size = log.count().await.unwrap_or_default();
        let shared = Arc::new(Shared {
            log,
            epoch,
            policy,
            registry: Mutex::new(Registry {
                last_published_seq: last_seq,
                ..Default::default()
            }),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            idle: Notify::new(),
        });
        shared
            .counters
            .history_size
            .store(history_size, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_history_messages").set(history_size as f64);
        let (publish_tx, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        tokio::spawn(run_publisher(shared.clone(), publish_rx));
        Ok(Self { shared, publish_tx })
    }

    /// Persists the message in history (giving it a cursor) and routes it to the live
    /// connections of its target, in publish order.
    ///
    /// The work is done by the publisher task, so a caller that gives up waiting (a
    /// dropped request) cannot leave a message appended but not delivered.
    pub async fn publish(
        &self,
        target: Target,
        kind: MessageType,
        data: serde_json::Value,
    ) -> anyhow::Result<Published> {
        let (reply, answer) = oneshot::channel();
        self.publish_tx
            .send(PublishRequest {
                target,
                kind,
                data,
                reply,
            })
            .await
            .map_err(|_| anyhow::anyhow!("the real-time publisher has stopped"))?;
        answer
            .await
            .map_err(|_| anyhow::anyhow!("the real-time publisher has stopped"))?
    }

    /// Registers a connection and prepares what it sends first: `welcome`, then (with
    /// a cursor) the replay and `resumed`, or `reset`. Live messages queue up from the
    /// moment of registration, so nothing falls between replay and live delivery.
    pub async fn connect(&self, req: ConnectRequest) -> Result<Connection, ConnectError> {
        let shared = &self.shared;
        let (tx, queue) = ClientQueue::new();
        let signal = DisconnectSignal::default();
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let upto = {
            let mut reg = shared.lock();
            if reg.closed {
                return Err(ConnectError::ShuttingDown);
            }
            if let Some(c) = req.credential {
                if reg.recently_revoked.contains_key(&c) {
                    return Err(ConnectError::Revoked);
                }
            }
            reg.insert(Slot {
                id,
                user: req.user,
                credential: req.credential,
                tx,
                queued_bytes: queue.queued_bytes.clone(),
                signal: signal.clone(),
            });
            reg.last_published_seq
        };
        shared.counters.total.fetch_add(1, Ordering::Relaxed);
        shared
            .counters
            .current(req.transport)
            .fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_connections", "transport" => req.transport.as_str())
            .increment(1.0);
        // From here on, dropping the connection unregisters it.
        let mut conn = Connection {
            id,
            user: req.user,
            transport: req.transport,
            shared: shared.clone(),
            queue,
            signal,
            pending: VecDeque::new(),
            replay: None,
            last_seq: upto,
        };

        let position = shared.log.position(req.user, upto).await;
        if let Err(err) = &position {
            tracing::warn!(error = format!("{err:#}"), "reading the message log failed");
        }
        let welcome_seq = match &position {
            // A stream pruned past its newest message still has a position: the watermark.
            Ok(p) => p.latest.max(p.pruned_through),
            Err(_) => upto,
        };
        conn.pending
            .push_back(protocol::welcome(&shared.cursor(welcome_seq)));
        if let Some(raw) = req.since.as_deref().filter(|s| !s.trim().is_empty()) {
            match shared.check_resume(raw, upto, &position) {
                Ok(from) => {
                    conn.replay = Some(Replay {
                        after: from.seq,
                        to: from.seq,
                        from,
                        upto,
                        replayed: 0,
                    });
                }
                Err(reason) => {
                    shared.counters.resets.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!("zerostate_realtime_resets_total", "reason" => reason.as_str())
                        .increment(1);
                    conn.pending.push_back(protocol::reset(reason));
                }
            }
        }
        Ok(conn)
    }

    /// Closes (4001) every live connection that authenticated with one of these
    /// credentials, and refuses new ones with them for a while.
    pub fn disconnect_credentials(&self, credentials: &[Credential]) {
        let mut reg = self.shared.lock();
        let now = Instant::now();
        reg.recently_revoked
            .retain(|_, at| now.duration_since(*at) < REVOKED_MEMORY);
        for credential in credentials {
            reg.recently_revoked.insert(*credential, now);
            let ids: Vec<ConnId> = reg
                .by_credential
                .get(credential)
                .map(|set| set.iter().copied().collect())
                .unwrap_or_default();
            for id in ids {
                if let Some(slot) = reg.remove(id) {
                    slot.signal.fire(Disconnect::Revoked);
                }
            }
        }
    }

    /// Refuses new connections and tells every live one to close with `reason`
    /// (1012 at shutdown).
    pub fn close_all(&self, reason: Disconnect) {
        let mut reg = self.shared.lock();
        reg.closed = true;
        let ids: Vec<ConnId> = reg.conns.keys().copied().collect();
        for id in ids {
            if let Some(slot) = reg.remove(id) {
                slot.signal.fire(reason);
            }
        }
    }

    /// Waits until every connection task has ended, at most `timeout`. Returns whether
    /// they all did.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.shared.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.current_connections() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.shared.current_connections() == 0;
            }
        }
    }

    /// How many live connections `user` has on this node (for the per-user cap).
    pub fn user_connection_count(&self, user: UserId) -> usize {
        self.shared
            .lock()
            .by_user
            .get(&user)
            .map_or(0, HashSet::len)
    }

    /// This node's counters.
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        let ws = c.current_ws.load(Ordering::Relaxed);
        let sse = c.current_sse.load(Ordering::Relaxed);
        Stats {
            total_connections: c.total.load(Ordering::Relaxed),
            current_connections: ws + sse,
            messages_sent: c.messages_sent.load(Ordering::Relaxed),
            connections_by_transport: TransportCounts { websocket: ws, sse },
            messages_published: c.published.load(Ordering::Relaxed),
            slow_disconnects: c.slow.load(Ordering::Relaxed),
            resumes: c.resumes.load(Ordering::Relaxed),
            resets: c.resets.load(Ordering::Relaxed),
            history_size: c.history_size.load(Ordering::Relaxed),
        }
    }

    /// Runs the history retention job until shutdown.
    pub async fn run_maintenance(&self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(self.shared.policy.prune_interval());
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.prune_once().await,
                _ = shutdown.triggered() => break,
            }
        }
    }

    /// Applies the retention policy once and refreshes the history size.
    pub async fn prune_once(&self) {
        let log = &self.shared.log;
        let now = Utc::now().timestamp_millis();
        match log.prune(self.shared.policy, now).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned real-time history"),
            Err(err) => tracing::warn!(error = format!("{err:#}"), "pruning history failed"),
        }
        if let Ok(size) = log.count().await {
            self.shared
                .counters
                .history_size
                .store(size, Ordering::Relaxed);
            metrics::gauge!("zerostate_realtime_history_messages").set(size as f64);
        }
    }
}

impl Shared {
    /// Locks the registry. A panic while holding it (there is no code that can panic
    /// there) would poison it; the maps stay consistent, so carry on.
    fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn cursor(&self, seq: i64) -> Cursor {
        Cursor::new(self.epoch.clone(), seq)
    }

    fn current_connections(&self) -> u64 {
        self.counters.current_ws.load(Ordering::Relaxed)
            + self.counters.current_sse.load(Ordering::Relaxed)
    }

    /// Decides whether a resume from `raw` can be replayed up to `upto`.
    fn check_resume(
        &self,
        raw: &str,
        upto: i64,
        position: &anyhow::Result<StreamPosition>,
    ) -> Result<Cursor, ResetReason> {
        let since = Cursor::parse(raw).map_err(|_| ResetReason::InvalidCursor)?;
        if since.epoch != self.epoch {
            return Err(ResetReason::EpochChanged);
        }
        if since.seq > upto {
            return Err(ResetReason::CursorAhead);
        }
        let position = position
            .as_ref()
            .map_err(|_| ResetReason::HistoryUnavailable)?;
        if since.seq < position.pruned_through {
            return Err(ResetReason::HistoryExpired);
        }
        Ok(since)
    }

    /// Appends one message and fans it out; run only by the publisher task.
    async fn publish_one(
        &self,
        target: Target,
        kind: &MessageType,
        data: &serde_json::Value,
    ) -> anyhow::Result<Published> {
        let data_json = serde_json::to_string(data)?;
        let now_ms = Utc::now().timestamp_millis();
        let user = match target {
            Target::User(user) => Some(user),
            Target::Everyone => None,
        };
        let seq = self
            .log
            .append(user, kind.as_str(), &data_json, now_ms)
            .await?;
        // The timestamp is the stored one, so a replay carries the very same bytes.
        let at = DateTime::from_timestamp_millis(now_ms).unwrap_or_default();
        let frame = protocol::durable(kind.as_str(), &data_json, &self.cursor(seq), at);
        let (delivered, overflowed) = {
            let mut reg = self.lock();
            reg.last_published_seq = reg.last_published_seq.max(seq);
            let mut delivered = 0;
            let mut overflowed = Vec::new();
            let mut offer = |slot: &Slot| match slot.offer(&frame) {
                Offer::Queued => delivered += 1,
                Offer::Overflowed => overflowed.push(slot.id),
                Offer::Gone => {}
            };
            match target {
                Target::User(user) => {
                    for id in reg.by_user.get(&user).into_iter().flatten() {
                        if let Some(slot) = reg.conns.get(id) {
                            offer(slot);
                        }
                    }
                }
                Target::Everyone => reg.conns.values().for_each(offer),
            }
            // A slow connection leaves the registry at once: nothing more is queued
            // for it while its task sends the 4008 close.
            for id in &overflowed {
                reg.remove(*id);
            }
            (delivered, overflowed.len())
        };
        self.counters.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_published_total").increment(1);
        if overflowed > 0 {
            self.counters
                .slow
                .fetch_add(overflowed as u64, Ordering::Relaxed);
            metrics::counter!("zerostate_realtime_slow_disconnects_total")
                .increment(overflowed as u64);
            tracing::info!(
                connections = overflowed,
                "slow connections disconnected (4008)"
            );
        }
        Ok(Published { delivered })
    }
}

/// The publisher task: one request at a time, so fan-out follows sequence order.
async fn run_publisher(shared: Arc<Shared>, mut requests: mpsc::Receiver<PublishRequest>) {
    while let Some(req) = requests.recv().await {
        let result = shared.publish_one(req.target, &req.kind, &req.data).await;
        if let Err(err) = &result {
            tracing::error!(error = format!("{err:#}"), kind = %req.kind, "publishing failed");
        }
        let _ = req.reply.send(result);
    }
}

/// Where a resuming connection is in its replay.
struct Replay {
    from: Cursor,
    /// The last sequence number replayed (or `from`).
    after: i64,
    /// The newest message addressed to the user among those replayed (for `resumed.to`).
    to: i64,
    /// The registration point: newer messages arrive live.
    upto: i64,
    replayed: u64,
}

/// A registered connection, owned by its transport task. Dropping it unregisters it.
pub struct Connection {
    id: ConnId,
    user: UserId,
    transport: TransportKind,
    shared: Arc<Shared>,
    queue: ClientQueue,
    signal: DisconnectSignal,
    /// Frames to send before anything else (welcome, replay page, resumed/reset).
    pending: VecDeque<Frame>,
    replay: Option<Replay>,
    /// The newest durable message handed out, so a frame is never sent twice.
    last_seq: i64,
}

impl Connection {
    /// This connection's id (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The user it belongs to.
    pub fn user(&self) -> UserId {
        self.user
    }

    /// The next frame to send: welcome, the replay (read from the log page by page),
    /// `resumed`/`reset`, then live frames. `None` when the hub dropped the connection
    /// (it is then disconnected; see [`Connection::disconnected`]).
    ///
    /// Cancel-safe: state changes only after each `.await` completes, so it can sit in
    /// a `select!` beside the socket.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if let Some(replay) = &self.replay {
                let (after, upto) = (replay.after, replay.upto);
                let page = self
                    .shared
                    .log
                    .replay(self.user, after, upto, REPLAY_PAGE)
                    .await;
                self.apply_page(page);
                continue;
            }
            let frame = self.queue.recv().await?;
            match frame.seq() {
                Some(seq) if seq <= self.last_seq => continue,
                Some(seq) => self.last_seq = seq,
                None => {}
            }
            return Some(frame);
        }
    }

    fn apply_page(&mut self, page: anyhow::Result<Vec<super::history::StoredMessage>>) {
        let Some(replay) = self.replay.as_mut() else {
            return;
        };
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "replaying history failed");
                self.replay = None;
                self.shared.counters.resets.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("zerostate_realtime_resets_total", "reason" => "history_unavailable")
                    .increment(1);
                self.pending
                    .push_back(protocol::reset(ResetReason::HistoryUnavailable));
                return;
            }
        };
        let done = page.len() < REPLAY_PAGE as usize;
        for m in page {
            let at = DateTime::from_timestamp_millis(m.created_at_ms).unwrap_or_default();
            let cursor = Cursor::new(self.shared.epoch.clone(), m.seq);
            self.pending
                .push_back(protocol::durable(&m.kind, &m.data_json, &cursor, at));
            replay.after = m.seq;
            replay.to = m.seq;
            replay.replayed += 1;
            self.last_seq = self.last_seq.max(m.seq);
        }
        if done {
            let to = self.shared.cursor(replay.to.max(replay.from.seq));
            self.pending
                .push_back(protocol::resumed(&replay.from, &to, replay.replayed));
            self.replay = None;
            self.shared.counters.resumes.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("zerostate_realtime_resumes_total").increment(1);
        }
    }

    /// Resolves with the reason once the hub (or a revocation, or shutdown) decided
    /// this connection must end. Cancel-safe.
    ///
    /// The future does not borrow the connection, so it can race `next_frame`.
    pub fn disconnected(&self) -> impl std::future::Future<Output = Disconnect> + Send + 'static {
        let signal = self.signal.clone();
        async move { signal.fired().await }
    }

    /// Why the connection must end, once decided.
    pub fn reason(&self) -> Option<Disconnect> {
        self.signal.reason()
    }

    /// Ends the connection for a reason found by the transport (too big, idle, expiry).
    pub fn disconnect(&self, reason: Disconnect) {
        self.signal.fire(reason);
    }

    /// Counts a message written to the socket.
    pub fn record_sent(&self) {
        self.shared
            .counters
            .messages_sent
            .fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_messages_sent_total", "transport" => self.transport.as_str())
            .increment(1);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.lock().remove(self.id);
        self.shared
            .counters
            .current(self.transport)
            .fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_connections", "transport" => self.transport.as_str())
            .decrement(1.0);
        if self.shared.current_connections() == 0 {
            self.shared.idle.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionId;
    use crate::realtime::memory::MemoryLog;
    use serde_json::{json, Value};

    const WAIT: Duration = Duration::from_secs(10);

    async fn hub() -> Hub {
        Hub::start(Arc::new(MemoryLog::new("abcd")), HistoryPolicy::default())
            .await
            .unwrap()
    }

    fn request(user: UserId, since: Option<String>) -> ConnectRequest {
        ConnectRequest {
            user,
            credential: None,
            transport: TransportKind::WebSocket,
            since,
        }
    }

    async fn next(conn: &mut Connection) -> Value {
        let frame = tokio::time::timeout(WAIT, conn.next_frame())
            .await
            .expect("frame in time");
        serde_json::from_str(frame.expect("connection open").text()).unwrap()
    }

    async fn note(hub: &Hub, user: UserId, n: usize) -> Published {
        hub.publish(
            Target::User(user),
            MessageType::known("note"),
            json!({ "n": n }),
        )
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn reconnecting_while_publishing_never_skips_or_repeats_a_message() {
        const TOTAL: u64 = 2000;
        let hub = hub().await;
        let user = UserId::new();
        let mut conn = hub.connect(request(user, None)).await.unwrap();
        let publisher = {
            let hub = hub.clone();
            tokio::spawn(async move {
                for n in 0..TOTAL as usize {
                    note(&hub, user, n).await;
                }
            })
        };
        let (mut expected, mut cursor, mut reconnects) = (0u64, None::<String>, 0);
        loop {
            assert_eq!(next(&mut conn).await["type"], "welcome");
            // Read a few, then drop the connection mid-stream and resume.
            let mut read = 0;
            while read < 37 && expected < TOTAL {
                let m = next(&mut conn).await;
                match m["type"].as_str() {
                    Some("note") => {
                        assert_eq!(
                            m["data"]["n"], expected,
                            "gap or duplicate after {cursor:?}"
                        );
                        expected += 1;
                        read += 1;
                        cursor = m["cursor"].as_str().map(str::to_owned);
                    }
                    Some("resumed") => {}
                    _ => panic!("unexpected {m}"),
                }
            }
            if expected == TOTAL {
                break;
            }
            drop(conn);
            reconnects += 1;
            conn = hub.connect(request(user, cursor.clone())).await.unwrap();
        }
        publisher.await.unwrap();
        assert!(reconnects > 10);
    }

    #[tokio::test]
    async fn a_connection_that_does_not_read_is_told_it_is_slow_and_others_are_not() {
        let hub = hub().await;
        let user = UserId::new();
        let stalled = hub.connect(request(user, None)).await.unwrap();
        let mut reader = hub.connect(request(user, None)).await.unwrap();
        assert_eq!(next(&mut reader).await["type"], "welcome");
        for n in 0..crate::realtime::client::MAX_QUEUED_FRAMES + 10 {
            note(&hub, user, n).await;
            assert_eq!(next(&mut reader).await["data"]["n"], n);
        }
        let reason = tokio::time::timeout(WAIT, stalled.disconnected())
            .await
            .unwrap();
        assert_eq!(reason, Disconnect::Slow);
        assert!(reader.reason().is_none());
        assert_eq!(hub.stats().slow_disconnects, 1);
        // Once slow, nothing more is queued for it.
        assert_eq!(note(&hub, user, 0).await.delivered, 1);
    }

    #[tokio::test]
    async fn revoking_a_credential_ends_only_its_connections_and_refuses_it_afterwards() {
        let hub = hub().await;
        let user = UserId::new();
        let (doomed, kept) = (
            Credential::Session(SessionId::new()),
            Credential::Session(SessionId::new()),
        );
        let with = |credential| ConnectRequest {
            credential: Some(credential),
            ..request(user, None)
        };
        let a = hub.connect(with(doomed)).await.unwrap();
        let b = hub.connect(with(kept)).await.unwrap();
        hub.disconnect_credentials(&[doomed]);
        assert_eq!(
            tokio::time::timeout(WAIT, a.disconnected()).await.unwrap(),
            Disconnect::Revoked
        );
        assert!(b.reason().is_none());
        assert_eq!(
            hub.connect(with(doomed)).await.err(),
            Some(ConnectError::Revoked)
        );
    }

    #[tokio::test]
    async fn shutdown_closes_everyone_refuses_newcomers_and_is_tracked() {
        let hub = hub().await;
        let conn = hub.connect(request(UserId::new(), None)).await.unwrap();
        hub.close_all(Disconnect::Shutdown);
        assert_eq!(conn.reason(), Some(Disconnect::Shutdown));
        assert_eq!(
            hub.connect(request(UserId::new(), None)).await.err(),
            Some(ConnectError::ShuttingDown)
        );
        assert!(!hub.wait_idle(Duration::from_millis(10)).await);
        drop(conn);
        assert!(hub.wait_idle(WAIT).await);
        assert_eq!(hub.stats().current_connections, 0);
    }

    #[tokio::test]
    async fn cursors_from_elsewhere_or_beyond_retention_get_reset() {
        let log = Arc::new(MemoryLog::new("abcd"));
        let policy = HistoryPolicy {
            max_per_stream: 2,
            max_age: Duration::ZERO,
        };
        let hub = Hub::start(log.clone(), policy).await.unwrap();
        let user = UserId::new();
        for n in 0..5 {
            note(&hub, user, n).await;
        }
        for (since, reason) in [
            ("nonsense", "invalid_cursor"),
            ("ffff-1", "epoch_changed"),
            ("abcd-99", "cursor_ahead"),
        ] {
            let mut conn = hub
                .connect(request(user, Some(since.into())))
                .await
                .unwrap();
            assert_eq!(next(&mut conn).await["type"], "welcome");
            let reset = next(&mut conn).await;
            assert_eq!(
                (reset["type"].as_str(), reset["data"]["reason"].as_str()),
                (Some("reset"), Some(reason))
            );
        }
        // Replayable before pruning, not after.
        let mut conn = hub
            .connect(request(user, Some("abcd-1".into())))
            .await
            .unwrap();
        next(&mut conn).await;
        assert_eq!(next(&mut conn).await["data"]["n"], 1);
        // With `max_age` zero a message is prunable from the next millisecond on.
        tokio::time::sleep(Duration::from_millis(5)).await;
        hub.prune_once().await;
        assert_eq!(hub.stats().history_size, 2);
        let mut conn = hub
            .connect(request(user, Some("abcd-1".into())))
            .await
            .unwrap();
        let welcome = next(&mut conn).await;
        assert_eq!(welcome["data"]["cursor"], "abcd-5");
        assert_eq!(next(&mut conn).await["data"]["reason"], "history_expired");
        // The newest kept position still resumes.
        let mut conn = hub
            .connect(request(user, Some("abcd-3".into())))
            .await
            .unwrap();
        next(&mut conn).await;
        assert_eq!(next(&mut conn).await["data"]["n"], 3);
        assert_eq!(next(&mut conn).await["data"]["n"], 4);
        assert_eq!(next(&mut conn).await["data"]["replayed"], 2);
    }
}

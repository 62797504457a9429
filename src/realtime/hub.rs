//! The hub: live connections by user, delivery of the broker's publications to them,
//! and the resume handshake.
//!
//! Ordering and no-gap resume rest on one rule: the broker hands this node every
//! publication in sequence order, each already in history (its contract, in
//! `broker/mod.rs`), and the hub fans each out under the registry lock, recording its
//! sequence number as the last delivered; a connection registers under that same lock,
//! reading the last delivered sequence number there. So every message is either at or
//! below that number (the connection replays it from history) or above it (the
//! connection gets it live), never both and never neither. The registry lock is a std
//! mutex held only for map updates and `try_send`s, never across an `.await`
//! (mini-redis's `db.rs` explains why that is the right lock for such short sections).
//!
//! The hub checks the broker's half instead of trusting it: each publication names its
//! predecessor, and one that arrives late (older than the last delivered) or after a
//! gap is logged, counted (`zerostate_realtime_out_of_order_total`) and repaired by
//! asking the affected connections to resync from history, or to `reset` when they
//! already sent something newer. Nothing is dropped silently.

use super::broker::{Broker, NewPublication, Publication, Subscription};
use super::client::{ConnId, ConnState, Slot, TransportKind};
use super::connection::Connection;
use super::disconnect::{Disconnect, DisconnectSignal};
use super::history::{HistoryPolicy, StreamPosition};
use super::protocol::{self, Frame, ResetReason};
use super::registry::Registry;
use super::stats::{HubStats, Stats};
use super::{Published, Target};
use crate::cluster::{Backplane, Signal};
use crate::domain::{Credential, Cursor, MessageType, UserId};
use crate::shutdown::Shutdown;
use anyhow::Context;
use chrono::{DateTime, Utc};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};

/// The longest `publish_batch` waits for this node to fan its messages out.
const BATCH_DELIVERY_WAIT: Duration = Duration::from_secs(10);

/// How long a revoked credential is remembered, to refuse a connection that
/// authenticated just before the revocation but registers just after it.
const REVOKED_MEMORY: Duration = Duration::from_secs(120);

/// The hub handle; cheap to clone.
#[derive(Clone)]
pub struct Hub {
    shared: Arc<Shared>,
}

/// State shared by the hub, its delivery task and every connection.
pub(crate) struct Shared {
    /// Publish-plus-history and delivery.
    pub broker: Arc<dyn Broker>,
    /// The history's epoch, the first half of every cursor.
    pub epoch: String,
    /// Retention, applied by `run_maintenance`.
    pub policy: HistoryPolicy,
    /// Live connections and the last delivered position.
    pub registry: Mutex<Registry>,
    /// Connection ids.
    pub next_id: AtomicU64,
    /// Counters and metrics.
    pub stats: HubStats,
    /// Woken when the last connection ends (for draining at shutdown).
    pub idle: Notify,
    /// Callers of `publish` waiting for their publication's delivery on this node.
    pub waiters: Waiters,
    /// The other nodes, once joined (`Hub::join_cluster`): transient frames are sent
    /// on to them.
    pub cluster: OnceLock<Arc<dyn Backplane>>,
}

/// A page of a user's history (see [`Hub::history_page`]).
#[derive(Debug)]
pub struct HistoryPage {
    /// The page holds publications after this position.
    pub after: i64,
    /// The publications, oldest first.
    pub messages: Vec<super::history::StoredMessage>,
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
    /// When the credential stops working: the connection is closed with 4001 then.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Why the hub refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("the credential was revoked")]
    Revoked,
}

impl Hub {
    /// Opens the hub on a broker: reads the epoch, subscribes, and starts the delivery
    /// task that fans the subscription out. Must be called inside a tokio runtime.
    pub async fn start(broker: Arc<dyn Broker>, policy: HistoryPolicy) -> anyhow::Result<Self> {
        let epoch = broker.epoch().await.context("reading the history epoch")?;
        let subscription = broker
            .subscribe()
            .await
            .context("subscribing to the broker")?;
        let history_size = broker.history_size().await.unwrap_or_default();
        let shared = Arc::new(Shared {
            broker,
            epoch,
            policy,
            registry: Mutex::new(Registry {
                last_delivered: subscription.start,
                ..Default::default()
            }),
            next_id: AtomicU64::new(1),
            stats: HubStats::default(),
            idle: Notify::new(),
            waiters: Waiters::new(),
            cluster: OnceLock::new(),
        });
        shared.stats.history_size(history_size);
        // Weak: the tasks must not keep the hub alive once every handle is gone.
        tokio::spawn(run_delivery(Arc::downgrade(&shared), subscription));
        tokio::spawn(run_sweep(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// Persists the message in history (giving it a cursor) and routes it to the live
    /// connections of its target, in publish order; returns once this node has fanned
    /// it out.
    ///
    /// The broker does the work, so a caller that gives up waiting (a dropped future)
    /// cannot leave a message appended but not delivered.
    pub async fn publish(
        &self,
        target: Target,
        kind: MessageType,
        data: serde_json::Value,
    ) -> anyhow::Result<Published> {
        let data_json = serde_json::to_string(&data)?;
        let waiter = self
            .shared
            .waiters
            .register()
            .context("the real-time delivery task has stopped")?;
        self.shared
            .broker
            .publish(NewPublication {
                target,
                kind: kind.as_str().to_owned(),
                data_json,
                created_at_ms: Utc::now().timestamp_millis(),
                origin: Some(waiter.token),
                dedupe: None,
            })
            .await?;
        let delivered = waiter
            .wait()
            .await
            .context("the real-time delivery task has stopped")?;
        Ok(Published { delivered })
    }

    /// Publishes a batch of durable messages through one broker call, in order, each
    /// with its idempotency key (`NewPublication::dedupe`; `origin` is set here), and
    /// returns their positions once this node has fanned out every one that was new.
    /// For the transactional outbox's relay (`outbox.rs`).
    ///
    /// A publication the broker answers with a position at or below the last one this
    /// node had delivered before the call was deduplicated: it was delivered when it was
    /// first published and is not delivered again, so nobody waits for it. Any other
    /// wait is bounded by `BATCH_DELIVERY_WAIT` (the message is in history regardless).
    pub async fn publish_batch(&self, mut batch: Vec<NewPublication>) -> anyhow::Result<Vec<i64>> {
        let mut waiters = Vec::with_capacity(batch.len());
        for publication in &mut batch {
            let waiter = self
                .shared
                .waiters
                .register()
                .context("the real-time delivery task has stopped")?;
            publication.origin = Some(waiter.token);
            waiters.push(waiter);
        }
        let delivered_before = self.shared.lock().last_delivered;
        let seqs = self.shared.broker.publish_batch(batch).await?;
        let deadline = tokio::time::Instant::now() + BATCH_DELIVERY_WAIT;
        for (seq, waiter) in seqs.iter().zip(waiters) {
            if *seq <= delivered_before {
                continue;
            }
            match tokio::time::timeout_at(deadline, waiter.wait()).await {
                Ok(delivered) => {
                    delivered.context("the real-time delivery task has stopped")?;
                }
                Err(_) => {
                    tracing::warn!(
                        seq,
                        "a published message was not delivered on this node in time"
                    );
                }
            }
        }
        Ok(seqs)
    }

    /// Queues a transient message to the live connections of one user on this node:
    /// no history, no cursor, nothing to resume (a client that is not connected, or
    /// reconnects, never sees it). For high-rate, disposable output (a task's output
    /// stream) whose durable outcome is published separately. Never waits; a
    /// connection whose queue is full is closed with 4008 like for any message.
    ///
    /// In a cluster it is also sent on to the other nodes (a backplane signal, at most
    /// once); `delivered` counts this node's connections.
    pub fn send_transient(
        &self,
        user: UserId,
        kind: MessageType,
        data: serde_json::Value,
    ) -> Published {
        let frame = protocol::transient(kind.as_str(), &data);
        self.signal_cluster_with(|| Signal::Transient {
            user,
            kind: kind.as_str().to_owned(),
            items: vec![data.clone()],
        });
        let fan_out = self.shared.lock().fan_out(Target::User(user), &frame);
        self.shared.stats.slow_disconnects(fan_out.overflowed);
        Published {
            delivered: fan_out.delivered,
        }
    }

    /// Like `send_transient`, for a batch: queues transient frames (no cursor, not kept
    /// in history) to every live connection of `user` on this node, one frame per item,
    /// in order, under one registry lock. For high-rate data that has its own store and a catch-up path
    /// (task output, whose frames carry a gapless `seq` the client can fill in with
    /// `?after=`): it must not push durable messages out of the resume history, nor
    /// get a connection closed for them.
    ///
    /// So transient frames only take the part of a connection's bounded queue that
    /// durable messages do not need: while less than half of it is free, they are
    /// skipped for that connection (counted in
    /// `zerostate_realtime_transient_skipped_total`; the client sees the gap in `seq`).
    /// The bounds and the 4008 rule for durable messages are unchanged. Returns how
    /// many frames were queued on this node. In a cluster the batch is also sent on to
    /// the other nodes (a backplane signal, at most once: the output store is the
    /// fallback), which queue it the same way ([`Hub::deliver_transient`]).
    pub fn send_transient_batch<T: serde::Serialize>(
        &self,
        user: UserId,
        kind: &'static str,
        items: &[T],
    ) -> usize {
        let values: Vec<serde_json::Value> = items
            .iter()
            .filter_map(|item| serde_json::to_value(item).ok())
            .collect();
        let queued = self.deliver_transient(user, kind, &values);
        self.signal_cluster_with(|| Signal::Transient {
            user,
            kind: kind.to_owned(),
            items: values,
        });
        queued
    }

    /// Queues transient frames to `user`'s connections on this node only (the rules of
    /// [`Hub::send_transient_batch`]); for batches another node sent on.
    pub fn deliver_transient(
        &self,
        user: UserId,
        kind: &str,
        items: &[serde_json::Value],
    ) -> usize {
        use super::client::{Offer, MAX_QUEUED_BYTES, MAX_QUEUED_FRAMES};
        let frames: Vec<Frame> = items
            .iter()
            .map(|data| protocol::transient(kind, data))
            .collect();
        let (mut queued, mut skipped) = (0, 0);
        {
            let reg = self.shared.lock();
            for slot in reg
                .by_user
                .get(&user)
                .into_iter()
                .flatten()
                .filter_map(|id| reg.conns.get(id))
            {
                for (i, frame) in frames.iter().enumerate() {
                    let room = slot.free_frames() > MAX_QUEUED_FRAMES / 2
                        && slot.queued_bytes() + frame.len() <= MAX_QUEUED_BYTES / 2;
                    // With room left, `offer` cannot overflow; a connection that is
                    // ending takes nothing more.
                    if !room || slot.offer(frame) != Offer::Queued {
                        skipped += frames.len() - i;
                        break;
                    }
                    queued += 1;
                }
            }
        }
        if skipped > 0 {
            metrics::counter!("zerostate_realtime_transient_skipped_total")
                .increment(skipped as u64);
        }
        queued
    }

    /// Registers a connection and prepares what it sends first: `welcome`, then (with
    /// a cursor) the replay and `resumed`, or `reset`. Live messages queue up from the
    /// moment of registration, so nothing falls between replay and live delivery.
    ///
    /// The `welcome` cursor (the user's newest message at or below the registration's
    /// delivery position) comes from the registry's position count when it knows the
    /// user, without a history query; only the first connect of a user since start (or
    /// since the count was forgotten) asks the broker. A resume asks the broker for the
    /// prune watermark only when the user has missed something.
    pub async fn connect(&self, req: ConnectRequest) -> Result<Connection, ConnectError> {
        let shared = &self.shared;
        let state = Arc::<ConnState>::default();
        let signal = DisconnectSignal::default();
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let (upto, cached) = {
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
                transport: req.transport,
                expires_at: req.expires_at.map(|at| at.timestamp()),
                state: state.clone(),
                signal: signal.clone(),
            });
            (reg.last_delivered, reg.cached_position(req.user))
        };
        shared.stats.connection_opened(req.transport);
        // From here on, dropping the connection unregisters it.
        let mut conn = Connection {
            id,
            user: req.user,
            transport: req.transport,
            shared: shared.clone(),
            state,
            signal,
            pending: VecDeque::new(),
            replay: None,
            last_seq: upto,
        };
        let since = req.since.as_deref().filter(|s| !s.trim().is_empty());

        // Known: nothing to ask, unless a resume missed messages (the prune watermark).
        if let Some(latest) = cached {
            conn.pending
                .push_back(protocol::welcome(&shared.cursor(latest)));
            let Some(raw) = since else {
                return Ok(conn);
            };
            match shared.parse_resume(raw, upto) {
                Ok(from) if from.seq >= latest => {
                    // Nothing addressed to the user after the cursor (pruned or not):
                    // resumed at once, nothing to read.
                    conn.pending.push_back(protocol::resumed(&from, &from, 0));
                    shared.stats.resumed();
                    return Ok(conn);
                }
                Ok(_) => {
                    let position = shared.position(req.user, upto).await;
                    conn.start_resume(raw, upto, &position);
                }
                Err(reason) => conn.refuse_resume(reason),
            }
            return Ok(conn);
        }

        let position = shared.position(req.user, upto).await;
        let welcome_seq = match &position {
            // A stream pruned past its newest message still has a position: the watermark.
            Ok(p) => {
                let latest = p.latest.max(p.pruned_through);
                shared.lock().learn_position(req.user, latest);
                latest
            }
            Err(_) => upto,
        };
        conn.pending
            .push_back(protocol::welcome(&shared.cursor(welcome_seq)));
        if let Some(raw) = since {
            conn.start_resume(raw, upto, &position);
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
        Self::close_registered(&mut reg, reason);
    }

    /// Asks every live connection to reconnect (1012) while still accepting new ones:
    /// each client comes back with its cursor, is authenticated again from the store
    /// and resumes with nothing lost. For when this node may have missed revocations
    /// (the cluster's signal stream was trimmed past it), so no connection of a revoked
    /// credential outlives that.
    pub fn reconnect_all(&self) {
        let mut reg = self.shared.lock();
        Self::close_registered(&mut reg, Disconnect::Shutdown);
    }

    fn close_registered(reg: &mut Registry, reason: Disconnect) {
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
            if self.shared.stats.current_connections() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.shared.stats.current_connections() == 0;
            }
        }
    }

    /// How many live connections `user` has on this node (for the per-user cap).
    pub fn user_connection_count(&self, user: UserId) -> usize {
        self.shared
            .lock()
            .by_user
            .get(&user)
            .map_or(0, std::collections::HashSet::len)
    }

    /// This node's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats.snapshot()
    }

    /// Joins the cluster: transient frames go on to the other nodes through
    /// `backplane`, and with a shared backplane the users whose connections end are
    /// remembered for [`Hub::take_released_users`]. Once; later calls are ignored.
    pub fn join_cluster(&self, backplane: Arc<dyn Backplane>) {
        if backplane.is_shared() {
            self.shared
                .lock()
                .released
                .get_or_insert_with(Default::default);
        }
        let _ = self.shared.cluster.set(backplane);
    }

    /// A page of the user's history as this node has delivered it: publications
    /// addressed to them (own or broadcast) with `after < seq <=` the last one delivered
    /// here, oldest first, at most `limit`, and where their history starts (what was
    /// pruned). Read from the broker, so every node answers from the one history.
    pub async fn history_page(
        &self,
        user: UserId,
        after: Option<i64>,
        limit: u32,
    ) -> anyhow::Result<HistoryPage> {
        let upto = self.shared.lock().last_delivered;
        let after = match after {
            Some(after) => after,
            None => {
                self.shared
                    .broker
                    .position(user, upto)
                    .await
                    .context("reading the history position")?
                    .pruned_through
            }
        };
        let messages = self
            .shared
            .broker
            .history(user, after, upto, limit)
            .await
            .context("reading the history")?;
        Ok(HistoryPage { after, messages })
    }

    /// Whether the broker under this hub reaches its backend (for `/health`).
    pub fn broker_healthy(&self) -> bool {
        self.shared.broker.healthy()
    }

    /// Sends `signal` to the other nodes, if this hub joined a cluster.
    pub fn signal_cluster(&self, signal: Signal) {
        self.signal_cluster_with(|| signal);
    }

    fn signal_cluster_with(&self, signal: impl FnOnce() -> Signal) {
        if let Some(cluster) = self.shared.cluster.get().filter(|c| c.is_shared()) {
            cluster.signal(signal());
        }
    }

    /// The users who lost a connection on this node since the last call (only tracked
    /// in a cluster, for the shared connection cap).
    pub fn take_released_users(&self) -> Vec<UserId> {
        let mut reg = self.shared.lock();
        reg.released
            .as_mut()
            .map(|set| set.drain().collect())
            .unwrap_or_default()
    }

    /// How many live connections each of `users` has on this node (`None`: every user
    /// with one).
    pub fn user_connection_counts(&self, users: Option<&[UserId]>) -> Vec<(UserId, usize)> {
        let reg = self.shared.lock();
        let count = |user: &UserId| reg.by_user.get(user).map_or(0, |set| set.len());
        match users {
            Some(users) => users.iter().map(|u| (*u, count(u))).collect(),
            None => reg.by_user.iter().map(|(u, set)| (*u, set.len())).collect(),
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
        let broker = &self.shared.broker;
        let now = Utc::now().timestamp_millis();
        match broker.prune(self.shared.policy, now).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "pruned real-time history"),
            Err(err) => tracing::warn!(error = %err, "pruning history failed"),
        }
        if let Ok(size) = broker.history_size().await {
            self.shared.stats.history_size(size);
        }
    }
}

impl Shared {
    /// Locks the registry. A panic while holding it (there is no code that can panic
    /// there) would poison it; the maps stay consistent, so carry on.
    pub fn lock(&self) -> MutexGuard<'_, Registry> {
        self.registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The cursor of a sequence number in this history.
    pub fn cursor(&self, seq: i64) -> Cursor {
        Cursor::new(self.epoch.clone(), seq)
    }

    /// The user's position in history as of `upto`, from the broker (logged if it
    /// fails: the connect goes on, a resume is answered with `reset`).
    async fn position(&self, user: UserId, upto: i64) -> anyhow::Result<StreamPosition> {
        let position = self
            .broker
            .position(user, upto)
            .await
            .map_err(anyhow::Error::from);
        if let Err(err) = &position {
            tracing::warn!(error = format!("{err:#}"), "reading the history failed");
        }
        position
    }

    /// Parses a resume cursor and checks it belongs to this history and is not ahead
    /// of `upto`.
    fn parse_resume(&self, raw: &str, upto: i64) -> Result<Cursor, ResetReason> {
        let since = Cursor::parse(raw).map_err(|_| ResetReason::InvalidCursor)?;
        if since.epoch != self.epoch {
            return Err(ResetReason::EpochChanged);
        }
        if since.seq > upto {
            return Err(ResetReason::CursorAhead);
        }
        Ok(since)
    }

    /// Decides whether a resume from `raw` can be replayed up to `upto`.
    pub(crate) fn check_resume(
        &self,
        raw: &str,
        upto: i64,
        position: &anyhow::Result<StreamPosition>,
    ) -> Result<Cursor, ResetReason> {
        let since = self.parse_resume(raw, upto)?;
        let position = position
            .as_ref()
            .map_err(|_| ResetReason::HistoryUnavailable)?;
        if since.seq < position.pruned_through {
            return Err(ResetReason::HistoryExpired);
        }
        Ok(since)
    }

    /// Fans one publication out to this node's connections, under the registry lock,
    /// and advances the delivery position (see the module docs). Returns how many
    /// connections it was queued to.
    ///
    /// A publication that breaks the broker's order is never dropped silently: a late
    /// one (at or below the last delivered) is not queued, and the connections it is
    /// addressed to resync from history (or `reset`, if they already sent newer
    /// messages); after a gap (its predecessor is not the last delivered), every
    /// connection resyncs up to it, since the missing publications' targets are
    /// unknown. A duplicate delivery counts as late: at worst an unneeded resync.
    pub fn deliver(&self, seq: i64, prev_seq: i64, target: Target, frame: &Frame) -> usize {
        let fan_out = {
            let mut reg = self.lock();
            let last = reg.last_delivered;
            if seq <= last {
                reg.for_each_target(target, |slot| slot.state.request_resync(seq, last));
                reg.forget_positions();
                drop(reg);
                self.stats.out_of_order("late");
                tracing::error!(
                    seq,
                    prev_seq,
                    last_delivered = last,
                    "the broker delivered a publication late: resyncing its recipients"
                );
                return 0;
            }
            if prev_seq != last {
                let missed_from = prev_seq.min(last) + 1;
                reg.conns
                    .values()
                    .for_each(|slot| slot.state.request_resync(missed_from, seq));
                reg.forget_positions();
                self.stats.out_of_order("gap");
                tracing::error!(
                    seq,
                    prev_seq,
                    last_delivered = last,
                    "the broker skipped publications: resyncing every connection"
                );
            }
            reg.last_delivered = seq;
            reg.record_delivery(seq, target);
            reg.fan_out(target, frame)
        };
        self.stats.published();
        self.stats.slow_disconnects(fan_out.overflowed);
        fan_out.delivered
    }

    /// Builds the frame of a publication (serialized once for every recipient) and
    /// delivers it; answers the publisher if it is waiting on this node.
    fn handle(&self, p: &Publication) {
        // The timestamp is the stored one, so a replay carries the very same bytes.
        let at = DateTime::from_timestamp_millis(p.created_at_ms).unwrap_or_default();
        let frame = protocol::durable(&p.kind, &p.data_json, &self.cursor(p.seq), at);
        let delivered = self.deliver(p.seq, p.prev_seq, p.target, &frame);
        if let Some(token) = p.origin {
            self.waiters.answer(token, delivered);
        }
    }
}

/// The delivery task: consumes the broker's subscription, one publication at a time,
/// so fan-out follows the subscription's order. Ends when the broker stops or the hub
/// is gone.
async fn run_delivery(shared: Weak<Shared>, mut subscription: Subscription) {
    while let Some(publication) = subscription.recv().await {
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.handle(&publication);
    }
    if let Some(shared) = shared.upgrade() {
        tracing::error!("the broker subscription ended: no more live delivery on this node");
        // Nobody will answer: waiting publishers get an error instead of waiting forever.
        shared.waiters.stop();
    }
}

/// The shared keepalive: once a second, [`Registry::sweep`] over every connection
/// (pings, idle and expiry closes) instead of timers in every connection task. Ends
/// when the hub is gone.
async fn run_sweep(shared: Weak<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let now = super::client::now_secs();
        shared.lock().sweep(now, Utc::now().timestamp());
    }
}

/// Callers of [`Hub::publish`] waiting to learn what this node did with their
/// publication, by the token they gave the broker.
pub(crate) struct Waiters {
    next: AtomicU64,
    /// `None` once the delivery task has ended.
    pending: Mutex<Option<HashMap<u64, oneshot::Sender<usize>>>>,
}

/// One registered waiter; dropping it (a cancelled publish) forgets it.
pub(crate) struct Waiter<'a> {
    waiters: &'a Waiters,
    /// The token handed to the broker.
    pub token: u64,
    answer: Option<oneshot::Receiver<usize>>,
}

impl Waiters {
    fn new() -> Self {
        // A random start, so tokens of different nodes do not collide.
        Self {
            next: AtomicU64::new(rand::random()),
            pending: Mutex::new(Some(HashMap::new())),
        }
    }

    fn pending(&self) -> MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<usize>>>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new waiter; `None` once delivery has stopped.
    fn register(&self) -> Option<Waiter<'_>> {
        let token = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending().as_mut()?.insert(token, tx);
        Some(Waiter {
            waiters: self,
            token,
            answer: Some(rx),
        })
    }

    fn answer(&self, token: u64, delivered: usize) {
        let tx = self.pending().as_mut().and_then(|p| p.remove(&token));
        if let Some(tx) = tx {
            let _ = tx.send(delivered);
        }
    }

    /// Delivery has ended: fails every waiting publisher and every later one.
    fn stop(&self) {
        self.pending().take();
    }
}

impl Waiter<'_> {
    /// How many connections of this node the publication was queued to.
    async fn wait(mut self) -> anyhow::Result<usize> {
        let answer = self.answer.take().context("waited twice")?;
        Ok(answer.await?)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.waiters.pending().as_mut() {
            p.remove(&self.token);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::SessionId;
    use crate::realtime::broker::local::LocalBroker;
    use crate::realtime::broker::BrokerError;
    use crate::realtime::history::MessageLog;
    use crate::realtime::memory::MemoryLog;
    use crate::realtime::Outgoing;
    use serde_json::{json, Value};

    const WAIT: Duration = Duration::from_secs(10);

    async fn hub_with(policy: HistoryPolicy) -> Hub {
        let broker = LocalBroker::start(Arc::new(MemoryLog::new("abcd")))
            .await
            .unwrap();
        Hub::start(Arc::new(broker), policy).await.unwrap()
    }

    async fn hub() -> Hub {
        hub_with(HistoryPolicy::default()).await
    }

    fn request(user: UserId, since: Option<String>) -> ConnectRequest {
        ConnectRequest {
            user,
            credential: None,
            transport: TransportKind::WebSocket,
            since,
            expires_at: None,
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
    async fn reconnect_all_closes_everyone_with_1012_and_still_admits_newcomers() {
        let hub = hub().await;
        let first = hub.connect(request(UserId::new(), None)).await.unwrap();
        let second = hub.connect(request(UserId::new(), None)).await.unwrap();
        hub.reconnect_all();
        assert_eq!(first.reason(), Some(Disconnect::Shutdown));
        assert_eq!(second.reason(), Some(Disconnect::Shutdown));
        let again = hub.connect(request(UserId::new(), None)).await;
        assert!(again.is_ok(), "the node keeps accepting connections");
    }

    #[tokio::test]
    async fn cursors_from_elsewhere_or_beyond_retention_get_reset() {
        let hub = hub_with(HistoryPolicy {
            max_per_stream: 2,
            max_age: Duration::ZERO,
        })
        .await;
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

    #[tokio::test]
    async fn transient_messages_reach_only_the_users_live_connections_without_a_cursor() {
        let hub = hub().await;
        let (alice, bob) = (UserId::new(), UserId::new());
        let mut tabs = [
            hub.connect(request(alice, None)).await.unwrap(),
            hub.connect(request(alice, None)).await.unwrap(),
        ];
        let mut other = hub.connect(request(bob, None)).await.unwrap();
        let sent = hub.send_transient(
            alice,
            MessageType::known("task_output"),
            json!({"chunk": "hi"}),
        );
        assert_eq!(sent.delivered, 2);
        for tab in &mut tabs {
            assert_eq!(next(tab).await["type"], "welcome");
            let m = next(tab).await;
            assert_eq!(
                (m["type"].as_str(), m["data"]["chunk"].as_str()),
                (Some("task_output"), Some("hi"))
            );
            assert!(
                m.get("cursor").is_none(),
                "transient messages are not resumable: {m}"
            );
        }
        // Bob's first message after welcome is his own, not Alice's output; and it
        // was not kept: history holds only Bob's note.
        note(&hub, bob, 7).await;
        assert_eq!(next(&mut other).await["type"], "welcome");
        assert_eq!(next(&mut other).await["data"]["n"], 7);
        assert_eq!(hub.shared.broker.history_size().await.unwrap(), 1);
    }

    /// A broker that counts the position queries of the local broker it wraps.
    struct CountingBroker {
        inner: LocalBroker,
        positions: AtomicU64,
    }

    #[async_trait::async_trait]
    impl Broker for CountingBroker {
        async fn epoch(&self) -> Result<String, BrokerError> {
            self.inner.epoch().await
        }
        async fn subscribe(&self) -> Result<Subscription, BrokerError> {
            self.inner.subscribe().await
        }
        async fn publish(&self, p: NewPublication) -> Result<i64, BrokerError> {
            self.inner.publish(p).await
        }
        async fn position(&self, user: UserId, upto: i64) -> Result<StreamPosition, BrokerError> {
            self.positions.fetch_add(1, Ordering::Relaxed);
            self.inner.position(user, upto).await
        }
        async fn history(
            &self,
            user: UserId,
            after: i64,
            upto: i64,
            limit: u32,
        ) -> Result<Vec<crate::realtime::history::StoredMessage>, BrokerError> {
            self.inner.history(user, after, upto, limit).await
        }
        async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> Result<u64, BrokerError> {
            self.inner.prune(policy, now_ms).await
        }
        async fn history_size(&self) -> Result<u64, BrokerError> {
            self.inner.history_size().await
        }
    }

    #[tokio::test]
    async fn welcome_cursors_come_from_delivery_without_a_history_query_per_connect() {
        let broker = Arc::new(CountingBroker {
            inner: LocalBroker::start(Arc::new(MemoryLog::new("abcd")))
                .await
                .unwrap(),
            positions: AtomicU64::new(0),
        });
        let hub = Hub::start(broker.clone(), HistoryPolicy::default())
            .await
            .unwrap();
        let (alice, bob) = (UserId::new(), UserId::new());
        note(&hub, alice, 0).await; // seq 1
        let welcome = |hub: Hub, user, since: Option<&str>| {
            let since = since.map(str::to_owned);
            async move {
                let mut conn = hub.connect(request(user, since)).await.unwrap();
                let w = next(&mut conn).await;
                (conn, w["data"]["cursor"].as_str().unwrap().to_owned())
            }
        };
        // The first connect of a user asks the broker; the later ones do not, and
        // their cursor follows every delivery: own messages, broadcasts, not others'.
        assert_eq!(welcome(hub.clone(), alice, None).await.1, "abcd-1");
        assert_eq!(broker.positions.load(Ordering::Relaxed), 1);
        note(&hub, alice, 1).await; // 2
        assert_eq!(welcome(hub.clone(), alice, None).await.1, "abcd-2");
        hub.publish(Target::Everyone, MessageType::known("note"), json!({}))
            .await
            .unwrap(); // 3
        assert_eq!(welcome(hub.clone(), alice, None).await.1, "abcd-3");
        note(&hub, bob, 2).await; // 4
        assert_eq!(welcome(hub.clone(), alice, None).await.1, "abcd-3");
        assert_eq!(broker.positions.load(Ordering::Relaxed), 1);
        // A resume that missed nothing is answered at once; one that missed something
        // reads the prune watermark, then replays.
        let (mut conn, _) = welcome(hub.clone(), alice, Some("abcd-3")).await;
        assert_eq!(next(&mut conn).await["data"]["replayed"], 0);
        assert_eq!(broker.positions.load(Ordering::Relaxed), 1);
        let (mut conn, _) = welcome(hub.clone(), alice, Some("abcd-1")).await;
        assert_eq!(next(&mut conn).await["data"]["n"], 1);
        assert_eq!(next(&mut conn).await["type"], "note");
        assert_eq!(next(&mut conn).await["data"]["replayed"], 2);
        assert_eq!(broker.positions.load(Ordering::Relaxed), 2);
        // Bob's first connect asks; his cursor is his own message.
        assert_eq!(welcome(hub.clone(), bob, None).await.1, "abcd-4");
        assert_eq!(broker.positions.load(Ordering::Relaxed), 3);
        // After an out-of-order delivery the counts are forgotten: asked again.
        hub.shared.handle(&publication(9, 7, bob, 3));
        assert_eq!(welcome(hub.clone(), alice, None).await.1, "abcd-3");
        assert_eq!(broker.positions.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn the_sweep_pings_websockets_and_closes_the_silent_and_the_expired() {
        let hub = hub().await;
        let user = UserId::new();
        let mut ws = hub.connect(request(user, None)).await.unwrap();
        let sse = hub
            .connect(ConnectRequest {
                transport: TransportKind::Sse,
                ..request(user, None)
            })
            .await
            .unwrap();
        let expiring = hub
            .connect(ConnectRequest {
                transport: TransportKind::Sse,
                expires_at: Some(Utc::now() + chrono::Duration::seconds(30)),
                ..request(user, None)
            })
            .await
            .unwrap();
        let t0 = ws.state.last_inbound.load(Ordering::Relaxed);
        let now_unix = Utc::now().timestamp();
        let sweep = |after: u32, unix: i64| hub.shared.lock().sweep(t0 + after, unix);
        assert!(matches!(
            next_outgoing(&mut ws).await,
            Outgoing::Frame(f) if f.text().contains("welcome")
        ));
        sweep(10, now_unix);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), ws.next_outgoing(true))
                .await
                .is_err()
        );
        sweep(25, now_unix);
        assert!(matches!(next_outgoing(&mut ws).await, Outgoing::Ping));
        // A client that speaks is not idle; one silent for 75 s is closed (1001), an
        // SSE stream (nothing to read from it) is not.
        ws.state.last_inbound.store(t0 + 70, Ordering::Relaxed);
        sweep(76, now_unix);
        assert!(ws.reason().is_none() && expiring.reason().is_none());
        sweep(144, now_unix);
        assert!(ws.reason().is_none());
        sweep(145, now_unix);
        assert_eq!(ws.reason(), Some(Disconnect::Idle));
        assert_eq!(sse.reason(), None);
        // The credential's expiry closes its connection (4001), whatever its transport.
        sweep(1, now_unix + 31);
        assert_eq!(expiring.reason(), Some(Disconnect::Expired));
        assert_eq!(sse.reason(), None);
    }

    async fn next_outgoing(conn: &mut Connection) -> Outgoing {
        tokio::time::timeout(WAIT, conn.next_outgoing(true))
            .await
            .expect("in time")
            .expect("open")
    }

    /// A publication as a broker would hand it over, for driving `deliver` by hand.
    fn publication(seq: i64, prev_seq: i64, user: UserId, n: usize) -> Publication {
        Publication {
            seq,
            prev_seq,
            target: Target::User(user),
            kind: "note".into(),
            data_json: json!({ "n": n }).to_string(),
            created_at_ms: 1_700_000_000_000,
            origin: None,
        }
    }

    #[tokio::test]
    async fn a_gap_in_the_brokers_chain_is_repaired_from_history_and_a_late_message_resets() {
        // A log the test writes behind the broker's back, as a broken broker would.
        let log = Arc::new(MemoryLog::new("abcd"));
        let broker = LocalBroker::start(log.clone()).await.unwrap();
        let hub = Hub::start(Arc::new(broker), HistoryPolicy::default())
            .await
            .unwrap();
        let user = UserId::new();
        let mut conn = hub.connect(request(user, None)).await.unwrap();
        assert_eq!(next(&mut conn).await["type"], "welcome");
        let append = |n: usize| {
            let log = log.clone();
            async move {
                let data = json!({ "n": n }).to_string();
                let entry = crate::realtime::history::LogEntry {
                    user: Some(user),
                    kind: "note",
                    data_json: &data,
                    created_at_ms: 1_700_000_000_000,
                    dedupe: None,
                };
                log.append(&[entry]).await.unwrap()[0].0
            }
        };

        // Seq 1 is in history but never delivered; seq 2 arrives naming 1 as its
        // predecessor: the connection gets both, in order, from history.
        assert_eq!(append(0).await, 1);
        assert_eq!(append(1).await, 2);
        hub.shared.handle(&publication(2, 1, user, 1));
        assert_eq!(next(&mut conn).await["data"]["n"], 0);
        let m = next(&mut conn).await;
        assert_eq!(
            (m["data"]["n"].as_u64(), m["cursor"].as_str()),
            (Some(1), Some("abcd-2"))
        );
        assert_eq!(hub.shared.stats.out_of_order_count(), 1);

        // Seq 4 is delivered before seq 3: 4 goes out live, and 3 can no longer be
        // sent in order, so the client is told to reset instead of silently missing it.
        assert_eq!(append(2).await, 3);
        assert_eq!(append(3).await, 4);
        hub.shared.handle(&publication(4, 2, user, 3));
        assert_eq!(next(&mut conn).await["data"]["n"], 3);
        hub.shared.handle(&publication(3, 2, user, 2));
        let reset = next(&mut conn).await;
        assert_eq!(
            (reset["type"].as_str(), reset["data"]["reason"].as_str()),
            (Some("reset"), Some("out_of_order"))
        );
        assert_eq!(hub.shared.stats.out_of_order_count(), 2);
        assert_eq!(hub.stats().resets, 1);

        // Live delivery carries on after both repairs, and a resume from the start
        // replays the whole history in order.
        assert_eq!(append(4).await, 5);
        hub.shared.handle(&publication(5, 4, user, 4));
        assert_eq!(next(&mut conn).await["data"]["n"], 4);
        let mut resumed = hub
            .connect(request(user, Some("abcd-0".into())))
            .await
            .unwrap();
        assert_eq!(next(&mut resumed).await["type"], "welcome");
        for n in 0..5 {
            assert_eq!(next(&mut resumed).await["data"]["n"], n);
        }
        assert_eq!(next(&mut resumed).await["data"]["replayed"], 5);
    }
}

//! One registered connection, owned by its transport task: what it sends first
//! (`welcome`, the replay page by page, `resumed`/`reset`), then its live frames, with
//! duplicates between replay and live delivery skipped by sequence number.
//!
//! The hub may ask it to resync (the broker broke its ordering promise): before the next
//! live frame it re-reads history from its own last sent position, or, when a message
//! it should have sent is older than one it already sent, tells the client `reset`.

use super::client::{ConnId, ConnState, Next, ResyncRange, TransportKind};
use super::disconnect::{Disconnect, DisconnectSignal};
use super::history::{StoredMessage, StreamPosition};
use super::hub::Shared;
use super::protocol::{self, Frame, ResetReason};
use crate::domain::{Cursor, UserId};
use chrono::DateTime;
use std::collections::VecDeque;
use std::sync::Arc;

/// Messages read from history per replay query.
pub(crate) const REPLAY_PAGE: u32 = 200;

/// Where a connection is in a replay from history.
pub(crate) struct Replay {
    /// Where the replay started (the client's cursor, for `resumed.from`).
    pub from: Cursor,
    /// The last sequence number replayed (or `from`).
    pub after: i64,
    /// The newest message addressed to the user among those replayed (`resumed.to`).
    pub to: i64,
    /// Replay up to here: newer messages arrive live.
    pub upto: i64,
    /// Messages replayed so far.
    pub replayed: u64,
    /// Whether to end with `resumed` (a client's resume) or silently (a resync).
    pub announce: bool,
}

/// What a WebSocket task sends next.
#[derive(Debug)]
pub enum Outgoing {
    /// A message.
    Frame(Frame),
    /// A keepalive ping, asked for by the hub's sweep.
    Ping,
}

/// A registered connection, owned by its transport task. Dropping it unregisters it.
pub struct Connection {
    pub(crate) id: ConnId,
    pub(crate) user: UserId,
    pub(crate) transport: TransportKind,
    pub(crate) shared: Arc<Shared>,
    /// Queue, wake-up, resync requests and keepalive, shared with the slot.
    pub(crate) state: Arc<ConnState>,
    pub(crate) signal: DisconnectSignal,
    /// Frames to send before anything else (welcome, replay page, resumed/reset).
    pub(crate) pending: VecDeque<Frame>,
    pub(crate) replay: Option<Replay>,
    /// The newest durable message handed out, so a frame is never sent twice.
    pub(crate) last_seq: i64,
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

    /// The next frame to send: welcome, the replay (read from history page by page),
    /// `resumed`/`reset`, then live frames. `None` when the hub dropped the connection
    /// (it is then disconnected; see [`Connection::disconnected`]).
    ///
    /// Cancel-safe: state changes only after each `.await` completes, so it can sit in
    /// a `select!` beside the socket.
    pub async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            match self.next_outgoing(false).await? {
                Outgoing::Frame(frame) => return Some(frame),
                Outgoing::Ping => continue,
            }
        }
    }

    /// Like [`Connection::next_frame`], and also the keepalive pings the hub's shared
    /// sweep asks for (WebSocket only: one sweep for every connection instead of a
    /// timer each).
    pub async fn next_outgoing(&mut self, pings: bool) -> Option<Outgoing> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Some(Outgoing::Frame(frame));
            }
            if let Some(range) = self.state.take_resync() {
                self.start_resync(range);
                continue;
            }
            if let Some(replay) = &self.replay {
                let (after, upto) = (replay.after, replay.upto);
                let page = self
                    .shared
                    .broker
                    .history(self.user, after, upto, REPLAY_PAGE)
                    .await;
                self.apply_page(page.map_err(anyhow::Error::from));
                continue;
            }
            let frame = match self.state.next(pings).await? {
                // The loop takes it.
                Next::Resync => continue,
                Next::Ping => return Some(Outgoing::Ping),
                Next::Frame(frame) => frame,
            };
            if let Some(frame) = self.live(frame) {
                return Some(Outgoing::Frame(frame));
            }
        }
    }

    /// A live frame that is ready now, if any, without waiting (for write batching).
    /// `None` also when a resync or a replay page must come first.
    pub fn try_next_frame(&mut self) -> Option<Frame> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        if self.replay.is_some() {
            return None;
        }
        loop {
            let frame = self.state.try_next_frame()?;
            if let Some(frame) = self.live(frame) {
                return Some(frame);
            }
            if !self.pending.is_empty() || self.replay.is_some() {
                return None;
            }
        }
    }

    /// Checks a frame taken from the queue: a resync requested meanwhile comes first,
    /// and a durable frame already handed out is skipped (`None`).
    fn live(&mut self, frame: Frame) -> Option<Frame> {
        if let Some(range) = self.state.take_resync() {
            // The request came before this frame was read: history first. A durable
            // frame is covered by the resync (it is in history); a transient one
            // is sent as it is.
            self.start_resync(ResyncRange {
                upto: range.upto.max(frame.seq().unwrap_or(0)),
                ..range
            });
            if frame.seq().is_none() {
                self.pending.push_back(frame);
            }
            return None;
        }
        match frame.seq() {
            Some(seq) if seq <= self.last_seq => return None,
            Some(seq) => self.last_seq = seq,
            None => {}
        }
        Some(frame)
    }

    /// Starts the replay of a resume from `raw` up to `upto`, or queues `reset` when it
    /// cannot be replayed (see `Shared::check_resume`).
    pub(crate) fn start_resume(
        &mut self,
        raw: &str,
        upto: i64,
        position: &anyhow::Result<StreamPosition>,
    ) {
        match self.shared.check_resume(raw, upto, position) {
            Ok(from) => {
                self.replay = Some(Replay {
                    after: from.seq,
                    to: from.seq,
                    from,
                    upto,
                    replayed: 0,
                    announce: true,
                });
            }
            Err(reason) => self.refuse_resume(reason),
        }
    }

    /// Tells the client its cursor cannot be resumed from.
    pub(crate) fn refuse_resume(&mut self, reason: ResetReason) {
        self.shared.stats.reset(reason);
        self.pending.push_back(protocol::reset(reason));
    }

    /// The client sent something (the idle sweep's clock).
    pub fn touch(&self) {
        self.state.touch();
    }

    /// Re-reads history after an out-of-order delivery. If the connection already sent
    /// something newer than a message it missed, that message cannot be sent in order
    /// any more: the client is told `reset` (it reloads its data). Either way, every
    /// message up to `range.upto` it has not sent is replayed before anything newer.
    fn start_resync(&mut self, range: ResyncRange) {
        // How far the client's stream has been handed out: a replay in progress has
        // sent up to its `after`; otherwise `last_seq` (which, after a resume, counts
        // the whole replayed range as handed out).
        let sent = self.replay.as_ref().map_or(self.last_seq, |r| r.after);
        if range.missed_from <= sent {
            tracing::warn!(
                connection = self.id,
                missed_from = range.missed_from,
                sent,
                "a message arrived after newer ones were sent: reset"
            );
            self.shared.stats.reset(ResetReason::OutOfOrder);
            self.pending
                .push_back(protocol::reset(ResetReason::OutOfOrder));
        }
        match &mut self.replay {
            // Already replaying: read further.
            Some(replay) => replay.upto = replay.upto.max(range.upto),
            None if range.upto > self.last_seq => {
                self.replay = Some(Replay {
                    from: self.shared.cursor(self.last_seq),
                    after: self.last_seq,
                    to: self.last_seq,
                    upto: range.upto,
                    replayed: 0,
                    announce: false,
                });
            }
            None => {}
        }
    }

    fn apply_page(&mut self, page: anyhow::Result<Vec<StoredMessage>>) {
        let Some(replay) = self.replay.as_mut() else {
            return;
        };
        let page = match page {
            Ok(page) => page,
            Err(err) => {
                tracing::warn!(error = format!("{err:#}"), "replaying history failed");
                self.replay = None;
                self.shared.stats.reset(ResetReason::HistoryUnavailable);
                self.pending
                    .push_back(protocol::reset(ResetReason::HistoryUnavailable));
                return;
            }
        };
        let done = page.len() < REPLAY_PAGE as usize;
        for m in page {
            let at = DateTime::from_timestamp_millis(m.created_at_ms).unwrap_or_default();
            let cursor = self.shared.cursor(m.seq);
            self.pending
                .push_back(protocol::durable(&m.kind, &m.data_json, &cursor, at));
            replay.after = m.seq;
            replay.to = m.seq;
            replay.replayed += 1;
            self.last_seq = self.last_seq.max(m.seq);
        }
        if done {
            if replay.announce {
                let to = self.shared.cursor(replay.to.max(replay.from.seq));
                self.pending
                    .push_back(protocol::resumed(&replay.from, &to, replay.replayed));
                self.shared.stats.resumed();
            }
            // Everything up to `upto` has now been handed out, addressed to this user
            // or not: live frames at or below it are duplicates.
            self.last_seq = self.last_seq.max(replay.upto);
            self.replay = None;
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
        self.shared.stats.message_sent(self.transport);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.shared.lock().remove(self.id);
        if self.shared.stats.connection_closed(self.transport) == 0 {
            self.shared.idle.notify_waiters();
        }
    }
}

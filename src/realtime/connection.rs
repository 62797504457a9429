//! One registered connection, owned by its transport task: what it sends first
//! (`welcome`, the replay page by page, `resumed`/`reset`), then its live frames, with
//! duplicates between replay and live delivery skipped by sequence number.
//!
//! The hub may ask it to resync (the broker broke its ordering promise): before the next
//! live frame it re-reads history from its own last sent position, or, when a message
//! it should have sent is older than one it already sent, tells the client `reset`.

use super::client::{ClientQueue, ConnId, Resync, ResyncRange, TransportKind};
use super::disconnect::{Disconnect, DisconnectSignal};
use super::history::StoredMessage;
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

/// A registered connection, owned by its transport task. Dropping it unregisters it.
pub struct Connection {
    pub(crate) id: ConnId,
    pub(crate) user: UserId,
    pub(crate) transport: TransportKind,
    pub(crate) shared: Arc<Shared>,
    pub(crate) queue: ClientQueue,
    pub(crate) signal: DisconnectSignal,
    /// Resync requests from the hub (shared with the slot).
    pub(crate) resync: Arc<Resync>,
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
            if let Some(frame) = self.pending.pop_front() {
                return Some(frame);
            }
            if let Some(range) = self.resync.take() {
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
            let frame = tokio::select! {
                biased;
                frame = self.queue.recv() => frame?,
                // A resync request wakes an idle connection; the loop takes it.
                () = self.resync.requested() => continue,
            };
            if let Some(range) = self.resync.take() {
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
                continue;
            }
            match frame.seq() {
                Some(seq) if seq <= self.last_seq => continue,
                Some(seq) => self.last_seq = seq,
                None => {}
            }
            return Some(frame);
        }
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

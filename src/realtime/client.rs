//! One live connection as the hub sees it: a bounded outgoing queue, a disconnect
//! signal, and the few figures the keepalive sweep reads.
//!
//! The queue is bounded twice, in frames and in bytes, because either alone lets a
//! stalled client pin a lot of memory (256 tiny frames are nothing; 256 frames of
//! 64 KiB are 16 MiB). Overflow never waits and never drops silently: the connection is
//! marked slow and closed with 4008, and the client resumes from its cursor.
//!
//! Beside the queue sits a resync request: the hub's way to tell a connection that the
//! broker broke its ordering promise and the connection must re-read history (or send
//! `reset`) before it sends anything newer.
//!
//! Memory is the point of this layout: the product promises about 1 KB per idle
//! connection, so everything the hub and the connection task share lives in one
//! allocation ([`ConnState`]): a queue that holds no buffer while empty (a `VecDeque`
//! allocates on first push; a tokio `mpsc` channel allocates its cache-padded channel and
//! a first block of slots up front), one `Notify` that wakes the task for a frame, a
//! resync or a keepalive ping, and the timestamps of the shared sweep
//! ([`crate::realtime::registry::Registry::sweep`]) that replaces per-connection timers.

use super::disconnect::{Disconnect, DisconnectSignal};
use super::protocol::Frame;
use crate::domain::{Credential, UserId};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Instant;
use tokio::sync::Notify;

/// Most frames waiting for one connection.
pub const MAX_QUEUED_FRAMES: usize = 256;
/// Most bytes waiting for one connection (a single larger frame is still accepted into
/// an empty queue, so the largest legal message always gets through).
pub const MAX_QUEUED_BYTES: usize = 1024 * 1024;

/// A connection's id, unique for the life of the process.
pub type ConnId = u64;

/// The transport a connection uses, for stats and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TransportKind {
    WebSocket,
    Sse,
}

impl TransportKind {
    /// The label used in stats and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::WebSocket => "websocket",
            TransportKind::Sse => "sse",
        }
    }
}

/// Whole seconds since the process's first call: the coarse clock of the keepalive
/// sweep and of `touch` (a `u32` of seconds lasts 136 years and keeps the state small).
pub(crate) fn now_secs() -> u32 {
    static START: OnceLock<Instant> = OnceLock::new();
    let secs = START.get_or_init(Instant::now).elapsed().as_secs();
    u32::try_from(secs).unwrap_or(u32::MAX)
}

/// What the hub keeps per connection (under the registry lock).
pub(crate) struct Slot {
    /// The connection's id.
    pub id: ConnId,
    /// Whose connection it is (routing).
    pub user: UserId,
    /// What it authenticated with (revocation).
    pub credential: Option<Credential>,
    /// Which transport carries it (only WebSockets are pinged and closed when idle).
    pub transport: TransportKind,
    /// When its credential stops working, Unix seconds (closed with 4001 then).
    pub expires_at: Option<i64>,
    /// The state shared with its task: queue, wake-up, resync, keepalive.
    pub state: Arc<ConnState>,
    /// Tells its task to close.
    pub signal: DisconnectSignal,
}

/// The outcome of offering a frame to a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Offer {
    Queued,
    /// The queue was full: the connection was told to close with 4008.
    Overflowed,
    /// The connection is already ending.
    Gone,
}

impl Slot {
    /// Queues a frame without waiting. Called with the registry lock held, so it must
    /// never block: one uncontended queue lock (the task holds it only to pop) and
    /// atomics.
    pub fn offer(&self, frame: &Frame) -> Offer {
        if self.signal.reason().is_some() {
            return Offer::Gone;
        }
        let len = frame.len();
        let state = &self.state;
        {
            let mut queue = state.queue();
            if queue.closed {
                return Offer::Gone;
            }
            let before = state.queued_bytes.load(Ordering::Acquire);
            if queue.frames.len() >= MAX_QUEUED_FRAMES
                || (before > 0 && before + len > MAX_QUEUED_BYTES)
            {
                drop(queue);
                self.signal.fire(Disconnect::Slow);
                return Offer::Overflowed;
            }
            state.queued_bytes.fetch_add(len, Ordering::AcqRel);
            queue.frames.push_back(frame.clone());
        }
        state.wake.notify_one();
        Offer::Queued
    }

    /// Frames the queue can take before it overflows.
    pub fn free_frames(&self) -> usize {
        MAX_QUEUED_FRAMES.saturating_sub(self.state.queue().frames.len())
    }

    /// Bytes waiting in the queue.
    pub fn queued_bytes(&self) -> usize {
        self.state.queued_bytes.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    /// The hub let go of the connection: its task sees the end of the queue once it
    /// has sent what is queued (like the last sender of a channel going away).
    fn drop(&mut self) {
        self.state.queue().closed = true;
        self.state.wake.notify_one();
    }
}

/// The queue proper, under [`ConnState`]'s lock.
#[derive(Default)]
struct Queue {
    /// Frames, in publish order. Empty means no allocation (once drained it keeps its
    /// capacity only until `pop` shrinks it).
    frames: VecDeque<Frame>,
    /// The hub dropped the slot: nothing more will be queued.
    closed: bool,
}

/// What the hub and one connection task share, in one allocation.
pub(crate) struct ConnState {
    /// A std mutex: held for one push or pop, never across an await.
    queue: Mutex<Queue>,
    /// Bytes waiting in the queue.
    queued_bytes: AtomicUsize,
    /// Wakes the task: a frame was queued, a resync was requested, a ping is due, or the
    /// queue was closed. `notify_one` keeps a permit, so no wake-up is lost between the
    /// task's look at the queue and its wait.
    wake: Notify,
    /// A resync request is waiting in `resync` (keeps the normal path to one load).
    resync_pending: AtomicBool,
    resync: Mutex<Option<ResyncRange>>,
    /// The sweep decided a keepalive ping is due.
    ping_due: AtomicBool,
    /// When the client last sent anything ([`now_secs`]).
    pub(crate) last_inbound: AtomicU32,
    /// When the sweep last asked for a ping (or the connection opened).
    pub(crate) last_ping: AtomicU32,
}

impl Default for ConnState {
    fn default() -> Self {
        let now = now_secs();
        Self {
            queue: Mutex::default(),
            queued_bytes: AtomicUsize::new(0),
            wake: Notify::new(),
            resync_pending: AtomicBool::new(false),
            resync: Mutex::new(None),
            ping_due: AtomicBool::new(false),
            last_inbound: AtomicU32::new(now),
            last_ping: AtomicU32::new(now),
        }
    }
}

/// What a connection task is handed next.
#[derive(Debug)]
pub(crate) enum Next {
    /// A frame from the queue.
    Frame(Frame),
    /// A resync request arrived (taken with [`ConnState::take_resync`]).
    Resync,
    /// The keepalive sweep asks for a WebSocket ping.
    Ping,
}

impl ConnState {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding it; the queue stays consistent regardless.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a queued frame without waiting.
    fn pop(&self) -> Option<Frame> {
        let mut queue = self.queue();
        let frame = queue.frames.pop_front()?;
        if queue.frames.is_empty() && queue.frames.capacity() > 8 {
            // A burst is over: give its buffer back, so an idle connection holds none.
            queue.frames = VecDeque::new();
        }
        drop(queue);
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
    }

    /// The next thing for the task: a queued frame first, then a resync request, then
    /// a ping; `None` once the hub dropped the slot and the queue is empty. With
    /// `pings` false, ping requests are left for later. Cancel-safe: state changes only
    /// when it returns.
    pub async fn next(&self, pings: bool) -> Option<Next> {
        loop {
            if self.resync_pending.load(Ordering::Acquire) {
                return Some(Next::Resync);
            }
            if let Some(frame) = self.pop() {
                return Some(Next::Frame(frame));
            }
            if pings && self.ping_due.swap(false, Ordering::AcqRel) {
                return Some(Next::Ping);
            }
            if self.queue().closed {
                return None;
            }
            self.wake.notified().await;
        }
    }

    /// A queued frame if one is ready now (for batching).
    pub fn try_next_frame(&self) -> Option<Frame> {
        if self.resync_pending.load(Ordering::Acquire) {
            return None;
        }
        self.pop()
    }

    /// Asks the connection to resync (merged with any request not yet taken).
    pub fn request_resync(&self, missed_from: i64, upto: i64) {
        let mut range = self.resync.lock().unwrap_or_else(|p| p.into_inner());
        *range = Some(match *range {
            Some(r) => ResyncRange {
                missed_from: r.missed_from.min(missed_from),
                upto: r.upto.max(upto),
            },
            None => ResyncRange { missed_from, upto },
        });
        self.resync_pending.store(true, Ordering::Release);
        drop(range);
        self.wake.notify_one();
    }

    /// The pending resync request, if any, clearing it.
    pub fn take_resync(&self) -> Option<ResyncRange> {
        if !self.resync_pending.load(Ordering::Acquire) {
            return None;
        }
        let mut range = self.resync.lock().unwrap_or_else(|p| p.into_inner());
        self.resync_pending.store(false, Ordering::Release);
        range.take()
    }

    /// Asks the task for a keepalive ping (the sweep).
    pub fn request_ping(&self) {
        self.ping_due.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The client sent something: it is alive.
    pub fn touch(&self) {
        self.last_inbound.store(now_secs(), Ordering::Relaxed);
    }
}

/// What a connection must re-read from history, merged over every request made since
/// it last looked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ResyncRange {
    /// The oldest publication the connection may have missed.
    pub missed_from: i64,
    /// Everything up to here is in history and must be sent before anything newer.
    pub upto: i64,
}

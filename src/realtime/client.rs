//! One live connection as the hub sees it: a bounded outgoing queue and a disconnect
//! signal.
//!
//! The queue is bounded twice, in frames and in bytes, because either alone lets a
//! stalled client pin a lot of memory (256 tiny frames are nothing; 256 frames of
//! 64 KiB are 16 MiB). Overflow never waits and never drops silently: the connection is
//! marked slow and closed with 4008, and the client resumes from its cursor.
//!
//! Beside the queue sits a resync request: the hub's way to tell a connection that the
//! broker broke its ordering promise and the connection must re-read history (or send
//! `reset`) before it sends anything newer.

use super::disconnect::{Disconnect, DisconnectSignal};
use super::protocol::Frame;
use crate::domain::{Credential, UserId};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

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

/// What the hub keeps per connection (under the registry lock).
pub(crate) struct Slot {
    /// The connection's id.
    pub id: ConnId,
    /// Whose connection it is (routing).
    pub user: UserId,
    /// What it authenticated with (revocation).
    pub credential: Option<Credential>,
    /// The sending half of its bounded queue.
    pub tx: mpsc::Sender<Frame>,
    /// Bytes waiting in the queue, shared with the receiving half.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Tells its task to close.
    pub signal: DisconnectSignal,
    /// Tells its task to resync from history (out-of-order delivery).
    pub resync: Arc<Resync>,
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
    /// never block: `try_send` and atomics only.
    pub fn offer(&self, frame: &Frame) -> Offer {
        if self.signal.reason().is_some() {
            return Offer::Gone;
        }
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before + len > MAX_QUEUED_BYTES {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            self.signal.fire(Disconnect::Slow);
            return Offer::Overflowed;
        }
        match self.tx.try_send(frame.clone()) {
            Ok(()) => Offer::Queued,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                self.signal.fire(Disconnect::Slow);
                Offer::Overflowed
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                Offer::Gone
            }
        }
    }
}

/// The receiving end of a connection's queue, owned by its transport task.
pub(crate) struct ClientQueue {
    /// Frames, in publish order.
    pub rx: mpsc::Receiver<Frame>,
    /// Bytes waiting, shared with the slot.
    pub queued_bytes: Arc<AtomicUsize>,
}

impl ClientQueue {
    /// Creates a queue and the sender half for the slot.
    pub fn new() -> (mpsc::Sender<Frame>, Self) {
        let (tx, rx) = mpsc::channel(MAX_QUEUED_FRAMES);
        (
            tx,
            Self {
                rx,
                queued_bytes: Arc::new(AtomicUsize::new(0)),
            },
        )
    }

    /// The next live frame. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Frame> {
        let frame = self.rx.recv().await?;
        self.queued_bytes.fetch_sub(frame.len(), Ordering::AcqRel);
        Some(frame)
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

/// A pending resync request: set by the hub (under the registry lock, never waiting),
/// taken by the connection task. The flag keeps the normal path to one atomic load.
#[derive(Default)]
pub(crate) struct Resync {
    pending: AtomicBool,
    range: Mutex<Option<ResyncRange>>,
    /// Wakes a connection task idle in `recv`.
    wake: Notify,
}

impl Resync {
    /// Asks the connection to resync (merged with any request not yet taken).
    pub fn request(&self, missed_from: i64, upto: i64) {
        let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
        *range = Some(match *range {
            Some(r) => ResyncRange {
                missed_from: r.missed_from.min(missed_from),
                upto: r.upto.max(upto),
            },
            None => ResyncRange { missed_from, upto },
        });
        self.pending.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// The pending request, if any, clearing it.
    pub fn take(&self) -> Option<ResyncRange> {
        if !self.pending.load(Ordering::Acquire) {
            return None;
        }
        let mut range = self.range.lock().unwrap_or_else(|p| p.into_inner());
        self.pending.store(false, Ordering::Release);
        range.take()
    }

    /// Resolves when a request is made (or one was made since the last wait).
    /// Cancel-safe.
    pub async fn requested(&self) {
        self.wake.notified().await
    }
}

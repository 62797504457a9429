//! Why the server ends a live connection, and the signal that carries that reason from
//! whoever decides it (the publisher on overflow, a logout, shutdown) to the task that
//! owns the socket.
//!
//! The decision and the close are deliberately split: the hub must never wait on a
//! socket, so it only records the reason and wakes the connection task, which sends the
//! close frame once the write in flight (if any) has finished.

use std::sync::{Arc, OnceLock};
use tokio_util::sync::CancellationToken;

/// A typed reason to end a connection; each maps to the close code clients act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disconnect {
    /// The credential was revoked (logout, password change, key revocation): 4001.
    Revoked,
    /// The credential reached its expiry while connected: 4001.
    Expired,
    /// The outgoing queue overflowed: 4008, the client resumes at once.
    Slow,
    /// The server is shutting down: 1012, the client reconnects elsewhere with jitter.
    Shutdown,
    /// An inbound message was larger than the limit: 1009.
    TooBig,
    /// Nothing was received for too long: 1001.
    Idle,
}

impl Disconnect {
    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        match self {
            Disconnect::Revoked | Disconnect::Expired => 4001,
            Disconnect::Slow => 4008,
            Disconnect::Shutdown => 1012,
            Disconnect::TooBig => 1009,
            Disconnect::Idle => 1001,
        }
    }

    /// The close reason text (kept short: a close frame carries at most 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            Disconnect::Revoked => "credential revoked",
            Disconnect::Expired => "credential expired",
            Disconnect::Slow => "slow consumer",
            Disconnect::Shutdown => "server shutting down",
            Disconnect::TooBig => "message too big",
            Disconnect::Idle => "idle timeout",
        }
    }
}

/// A one-shot, first-reason-wins signal shared by the hub and one connection task.
#[derive(Clone, Default)]
pub struct DisconnectSignal(Arc<SignalInner>);

#[derive(Default)]
struct SignalInner {
    reason: OnceLock<Disconnect>,
    fired: CancellationToken,
}

impl DisconnectSignal {
    /// Records `reason` unless another one came first, and wakes the connection task.
    /// Returns whether this call set the reason.
    pub fn fire(&self, reason: Disconnect) -> bool {
        let first = self.0.reason.set(reason).is_ok();
        self.0.fired.cancel();
        first
    }

    /// The reason, once fired.
    pub fn reason(&self) -> Option<Disconnect> {
        self.0.reason.get().copied()
    }

    /// Resolves with the reason once fired. Cancel-safe: it can sit in a `select!`.
    pub async fn fired(&self) -> Disconnect {
        self.0.fired.cancelled().await;
        // `fire` sets the reason before cancelling, so it is always there.
        self.reason().unwrap_or(Disconnect::Shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_reason_wins() {
        let s = DisconnectSignal::default();
        assert!(s.reason().is_none());
        assert!(s.fire(Disconnect::Slow));
        assert!(!s.fire(Disconnect::Shutdown));
        assert_eq!(s.fired().await, Disconnect::Slow);
        assert_eq!(Disconnect::Slow.code(), 4008);
        assert_eq!(Disconnect::Revoked.code(), 4001);
    }
}

//! The hub's counters, kept in one place: each event is one method that moves both the
//! node-local figure served by `GET /api/v1/ws/stats` and the Prometheus metric, so the
//! two can never drift apart and no call site has to remember both. In a cluster, each
//! node reports its [`Stats`] through the backplane and the endpoint sums them
//! ([`Stats::sum`]).

use super::client::TransportKind;
use super::protocol::ResetReason;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for `GET /api/v1/ws/stats` (one node, or the cluster's sums).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TransportCounts {
    /// WebSocket connections.
    pub websocket: u64,
    /// Server-Sent Events streams.
    pub sse: u64,
}

impl Stats {
    /// The cluster's figures from every node's: counts of connections and of frames
    /// written add up; `messages_published` and `history_size` are about the one
    /// shared history (every node delivers every publication), so they are the
    /// largest any node reports, not a sum that would count each publication once per
    /// node.
    pub fn sum<'a>(nodes: impl IntoIterator<Item = &'a Stats>) -> Stats {
        nodes.into_iter().fold(Stats::default(), |total, n| Stats {
            total_connections: total.total_connections + n.total_connections,
            current_connections: total.current_connections + n.current_connections,
            messages_sent: total.messages_sent + n.messages_sent,
            connections_by_transport: TransportCounts {
                websocket: total.connections_by_transport.websocket
                    + n.connections_by_transport.websocket,
                sse: total.connections_by_transport.sse + n.connections_by_transport.sse,
            },
            messages_published: total.messages_published.max(n.messages_published),
            slow_disconnects: total.slow_disconnects + n.slow_disconnects,
            resumes: total.resumes + n.resumes,
            resets: total.resets + n.resets,
            history_size: total.history_size.max(n.history_size),
        })
    }
}

/// The live counters behind [`Stats`] and the `zerostate_realtime_*` metrics.
#[derive(Default)]
pub(crate) struct HubStats {
    /// Connections accepted since start.
    total: AtomicU64,
    /// Open WebSocket connections.
    current_ws: AtomicU64,
    /// Open SSE streams.
    current_sse: AtomicU64,
    /// Frames written to sockets.
    messages_sent: AtomicU64,
    /// Durable publications delivered by the broker to this node.
    published: AtomicU64,
    /// Connections closed with 4008.
    slow: AtomicU64,
    /// Resumes that replayed their gap.
    resumes: AtomicU64,
    /// `reset`s sent (refused resumes and out-of-order resyncs).
    resets: AtomicU64,
    /// History size as of the last prune.
    history_size: AtomicU64,
    /// Broker deliveries that arrived out of order or after a gap.
    out_of_order: AtomicU64,
}

impl HubStats {
    fn current(&self, kind: TransportKind) -> &AtomicU64 {
        match kind {
            TransportKind::WebSocket => &self.current_ws,
            TransportKind::Sse => &self.current_sse,
        }
    }

    /// A connection was registered.
    pub fn connection_opened(&self, kind: TransportKind) {
        self.total.fetch_add(1, Ordering::Relaxed);
        self.current(kind).fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_connections", "transport" => kind.as_str())
            .increment(1.0);
    }

    /// A connection ended. Returns how many are still open.
    pub fn connection_closed(&self, kind: TransportKind) -> u64 {
        self.current(kind).fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_connections", "transport" => kind.as_str())
            .decrement(1.0);
        self.current_connections()
    }

    /// Connections open now, all transports.
    pub fn current_connections(&self) -> u64 {
        self.current_ws.load(Ordering::Relaxed) + self.current_sse.load(Ordering::Relaxed)
    }

    /// A frame was written to a socket.
    pub fn message_sent(&self, kind: TransportKind) {
        self.messages_sent.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_messages_sent_total", "transport" => kind.as_str())
            .increment(1);
    }

    /// A durable publication was fanned out on this node.
    pub fn published(&self) {
        self.published.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_published_total").increment(1);
    }

    /// `n` connections overflowed their queue and are being closed with 4008.
    pub fn slow_disconnects(&self, n: usize) {
        if n == 0 {
            return;
        }
        self.slow.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_slow_disconnects_total").increment(n as u64);
        tracing::info!(connections = n, "slow connections disconnected (4008)");
    }

    /// A resume replayed its gap.
    pub fn resumed(&self) {
        self.resumes.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_resumes_total").increment(1);
    }

    /// A `reset` was sent.
    pub fn reset(&self, reason: ResetReason) {
        self.resets.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_resets_total", "reason" => reason.as_str())
            .increment(1);
    }

    /// The history holds `n` messages.
    pub fn history_size(&self, n: u64) {
        self.history_size.store(n, Ordering::Relaxed);
        metrics::gauge!("zerostate_realtime_history_messages").set(n as f64);
    }

    /// The broker delivered a publication out of order (`late`) or after a gap (`gap`).
    pub fn out_of_order(&self, kind: &'static str) {
        self.out_of_order.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("zerostate_realtime_out_of_order_total", "kind" => kind).increment(1);
    }

    /// Out-of-order deliveries seen since start (not in the public stats; for tests
    /// and the metric's twin).
    #[cfg(test)]
    pub fn out_of_order_count(&self) -> u64 {
        self.out_of_order.load(Ordering::Relaxed)
    }

    /// The figures as served by `/api/v1/ws/stats`.
    pub fn snapshot(&self) -> Stats {
        let ws = self.current_ws.load(Ordering::Relaxed);
        let sse = self.current_sse.load(Ordering::Relaxed);
        Stats {
            total_connections: self.total.load(Ordering::Relaxed),
            current_connections: ws + sse,
            messages_sent: self.messages_sent.load(Ordering::Relaxed),
            connections_by_transport: TransportCounts { websocket: ws, sse },
            messages_published: self.published.load(Ordering::Relaxed),
            slow_disconnects: self.slow.load(Ordering::Relaxed),
            resumes: self.resumes.load(Ordering::Relaxed),
            resets: self.resets.load(Ordering::Relaxed),
            history_size: self.history_size.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_sums_connections_and_frames_but_not_the_shared_history() {
        let node = |current, sent, published| Stats {
            total_connections: current * 2,
            current_connections: current,
            messages_sent: sent,
            connections_by_transport: TransportCounts {
                websocket: current,
                sse: 0,
            },
            messages_published: published,
            history_size: published,
            ..Stats::default()
        };
        let total = Stats::sum([&node(3, 10, 7), &node(4, 20, 7)]);
        assert_eq!(total.current_connections, 7);
        assert_eq!(total.total_connections, 14);
        assert_eq!(total.messages_sent, 30);
        assert_eq!(total.connections_by_transport.websocket, 7);
        assert_eq!(total.messages_published, 7);
        assert_eq!(total.history_size, 7);
    }
}

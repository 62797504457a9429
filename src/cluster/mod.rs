//! The backplane: everything that used to live in one process's memory and must be
//! shared when the same binary runs as several nodes (the contract's Running section,
//! "Cluster"). The message broker (publish, history, ordered delivery) is not here: it
//! is `realtime::broker`. What is here:
//!
//! - **Node identity and stats**: each node has a random [`Backplane::node_id`] and
//!   reports its hub counters every [`REPORT_EVERY`]; a report lives [`NODE_TTL`], so a
//!   node that stops reporting (crashed, partitioned) drops out of
//!   `GET /api/v1/ws/stats` and its shared counts stop counting by themselves.
//! - **Signals** to every other node ([`Signal`]), never blocking the caller, never
//!   delivered to their sender. Two kinds:
//!   - the ones whose loss matters (credential revocation, agent token rotation and
//!     record changes) are durable: on a shared backplane they travel on a Redis
//!     Stream each node reads on from its last id after a drop or a Redis restart
//!     (with AOF), so a node that was reconnecting still closes a revoked session's
//!     live connection (which nothing else would close before the session expires).
//!     When a node cannot know what it missed (away longer than the stream's bound,
//!     Redis lost its data, or it fell behind its local buffer) it gets
//!     [`Signal::Missed`] and drops every cached session, API key and agent token, so
//!     every later request re-verifies against the store. Live connections it already
//!     holds are not re-checked: the hub has no hook for that yet;
//!   - the claim wake-up and transient frames stay at most once and cheap (pub/sub),
//!     each with its fallback: waiting claims re-check the queue every second anyway;
//!     the output store keeps every chunk of live task output and the client fills
//!     the gap with `?after=`.
//! - **Shared limits**: sliding-window counters (the login, password-change and
//!   registration throttles) and the per-user real-time connection cap.
//!
//! Implementations: [`local::LocalBackplane`] (one node: today's in-memory behaviour,
//! signals go nowhere because there is nobody else) and [`redis::RedisBackplane`]
//! (Redis: keys with expiry, pub/sub, Lua scripts for the check-and-count steps). Only
//! `app.rs` names them; everything else holds an `Arc<dyn Backplane>`.
//!
//! Failure: every Redis call has a deadline ([`redis::CALL_DEADLINE`]); while Redis is
//! unreachable, health says so (`/health` 503 `degraded`), at-most-once signals are
//! dropped (their fallbacks above apply) while durable ones are retried for a while
//! (see `redis`), and the limits fall back to this node's own memory (see each
//! method) rather than refusing everyone or letting everyone through.

pub mod local;
pub mod redis;

use crate::domain::{AgentId, ApiKeyId, Credential, SessionId, UserId};
use crate::realtime::{Hub, Stats, Target};
use crate::shutdown::Shutdown;
use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

/// How often a node reports its stats (and so proves it is alive).
pub const REPORT_EVERY: Duration = Duration::from_secs(2);
/// How long a node's report (its liveness) lasts without a newer one.
pub const NODE_TTL: Duration = Duration::from_secs(10);
/// Signals from other nodes a slow subscriber may lag behind before it loses some.
pub const SIGNAL_BUFFER: usize = 1024;

/// What the backplane can tell `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackplaneHealth {
    /// One node: there is no backplane to reach.
    Disabled,
    /// Reachable.
    Ok,
    /// Unreachable (or too slow to answer within its deadline).
    Unreachable,
}

impl BackplaneHealth {
    /// The `checks.backplane` value of `/health`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Ok => "ok",
            Self::Unreachable => "error",
        }
    }

    /// Whether the node is degraded because of it.
    pub fn is_degraded(self) -> bool {
        self == Self::Unreachable
    }
}

/// A message to every other node; which ones are durable: module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "signal", rename_all = "snake_case")]
pub enum Signal {
    /// These credentials were revoked: forget cached sessions, close their live
    /// connections (4001) and refuse them for a while.
    Revoked { credentials: Vec<WireCredential> },
    /// A task became claimable: wake the claims long-polling here.
    ClaimWake,
    /// An agent's token was rotated or the agent deleted: forget its verified tokens
    /// and end the claims it has waiting here. Fallback: the token cache's 10 s bound.
    AgentRevoked { agent: AgentId },
    /// An agent's record changed (name, capabilities, sharing): read it again.
    /// Fallback: the token cache's 10 s bound.
    AgentChanged { agent: AgentId },
    /// Transient frames (no history, no cursor) for one user's live connections.
    Transient {
        user: UserId,
        kind: String,
        items: Vec<serde_json::Value>,
    },
    /// Never sent by a node: the backplane hands it to this node when durable signals
    /// may have been lost on the way (module docs). Drop every cached credential.
    Missed,
}

/// A [`Credential`] as it travels between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "id", rename_all = "snake_case")]
pub enum WireCredential {
    Session(SessionId),
    ApiKey(ApiKeyId),
}

impl From<Credential> for WireCredential {
    fn from(c: Credential) -> Self {
        match c {
            Credential::Session(id) => Self::Session(id),
            Credential::ApiKey(id) => Self::ApiKey(id),
        }
    }
}

impl From<WireCredential> for Credential {
    fn from(c: WireCredential) -> Self {
        match c {
            WireCredential::Session(id) => Self::Session(id),
            WireCredential::ApiKey(id) => Self::ApiKey(id),
        }
    }
}

/// One node's figures in `GET /api/v1/ws/stats`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeStats {
    /// The node's id.
    pub node_id: String,
    /// Its hub counters.
    #[serde(flatten)]
    pub stats: Stats,
}

/// A sliding-window counter's key: which limit, and a fixed-size digest of what it
/// counts (an email and an address, an address), so an attacker's long input costs
/// nothing and no raw email or address is written to a shared server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateKey {
    /// The limit's name (`login_pair`, `login_address`, `registration`).
    pub scope: &'static str,
    /// SHA-256 of what is counted.
    pub digest: [u8; 32],
}

/// At most `max` events per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// Events allowed in one window.
    pub max: usize,
    /// The sliding window.
    pub window: Duration,
}

/// One counted event, so that it can be taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HitId(pub u64);

/// What [`Backplane::rate_begin`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateDecision {
    /// Counted in every window.
    Counted(HitId),
    /// Some window is full: try again after this long. Nothing was counted.
    Blocked(Duration),
}

/// Why a backplane read failed.
#[derive(Debug, thiserror::Error)]
pub enum BackplaneError {
    #[error("the backplane did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the backplane failed: {0}")]
    Failed(String),
}

/// Everything node-local made cluster-wide (module docs). Every method returns within
/// a deadline, whatever the state of the shared server.
#[async_trait]
pub trait Backplane: Send + Sync + 'static {
    /// This node's id: random at each start.
    fn node_id(&self) -> &str;

    /// Whether other nodes may exist (a shared backplane): `false` for one node.
    fn is_shared(&self) -> bool;

    /// Whether the shared server answers (`Disabled` for one node).
    async fn health(&self) -> BackplaneHealth;

    /// Sends `signal` to every other node without waiting: it is queued (bounded;
    /// dropped and counted when full) and sent (durable ones reliably: module docs).
    fn signal(&self, signal: Signal);

    /// The signals other nodes send (never this node's own).
    fn subscribe(&self) -> broadcast::Receiver<Signal>;

    /// Publishes this node's figures (which also keeps it alive for [`NODE_TTL`]).
    async fn report(&self, stats: &Stats) -> Result<(), BackplaneError>;

    /// Leaves the cluster at shutdown: the node drops out of the stats at once, and its
    /// connections stop counting against the cap (a crashed node expires instead).
    async fn leave(&self);

    /// The other live nodes' latest figures (not this node's).
    async fn other_nodes(&self) -> Result<Vec<NodeStats>, BackplaneError>;

    /// Counts one event in each window unless one of them is full. Atomic across
    /// nodes: parallel callers anywhere in the cluster never pass more than `max`.
    /// Falls back to this node's own windows while the shared server is unreachable.
    async fn rate_begin(&self, keys: &[(RateKey, Window)]) -> RateDecision;

    /// Takes one counted event back.
    async fn rate_forget(&self, key: &RateKey, hit: HitId);

    /// Forgets every event of `key`.
    async fn rate_clear(&self, key: &RateKey);

    /// Takes a place under `user`'s cluster-wide cap of live real-time connections,
    /// given the user's connections on this node now (`here`): admitted when every
    /// live node's count plus this one stays within `cap`. The caller holds the user's
    /// turn on this node until the connection is registered (or
    /// [`Backplane::connections_changed`] was told it was not).
    async fn admit_connection(&self, user: UserId, here: usize, cap: usize) -> bool;

    /// Tells the backplane this node's current connection counts for these users
    /// (after connections ended, or an admitted one was not registered after all).
    async fn connections_changed(&self, counts: &[(UserId, usize)]);

    /// Live connections on the other nodes that `target` addresses (for `delivered`;
    /// as last reported, so it may lag by a report).
    async fn remote_connections(&self, target: Target) -> u64;
}

/// The stats upkeep: reports this node's figures every [`REPORT_EVERY`] and keeps its
/// share of the connection cap in step with the hub (every user whose connections
/// ended since the last tick; every user after a failed report, since the other nodes
/// may have dropped this node's counts meanwhile). Runs until shutdown, then leaves.
///
/// The counts written here are read outside the user's admission turn, so one that
/// races an admission on this node can undercount the user by the connection being
/// admitted, until that user's next disconnect here: at worst one place too many for
/// a while, never a user locked out.
pub async fn run_upkeep(backplane: Arc<dyn Backplane>, hub: Hub, shutdown: Shutdown) {
    if !backplane.is_shared() {
        return;
    }
    let mut tick = tokio::time::interval(REPORT_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut resync_all = true;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.triggered() => {
                backplane.leave().await;
                break;
            }
        }
        let reported = backplane.report(&hub.stats()).await;
        if let Err(err) = &reported {
            tracing::warn!(error = %err, "reporting this node's stats failed");
        }
        let users = hub.take_released_users();
        let counts = if resync_all {
            hub.user_connection_counts(None)
        } else {
            hub.user_connection_counts(Some(&users))
        };
        if !counts.is_empty() {
            backplane.connections_changed(&counts).await;
        }
        resync_all = reported.is_err();
    }
}

/// Applies other nodes' signals to this node until shutdown; `apply` does the work.
pub async fn run_signals(
    backplane: Arc<dyn Backplane>,
    shutdown: Shutdown,
    apply: impl Fn(Signal) + Send + 'static,
) {
    let mut signals = backplane.subscribe();
    loop {
        tokio::select! {
            received = signals.recv() => match received {
                Ok(signal) => apply(signal),
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    metrics::counter!("zerostate_cluster_signals_lost_total").increment(n);
                    tracing::warn!(lost = n, "fell behind the cluster's signals");
                    // Some of the lost ones may have been revocations.
                    apply(Signal::Missed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            _ = shutdown.triggered() => break,
        }
    }
}

/// The cluster's figures for `GET /api/v1/ws/stats`: sums at the top level, one entry
/// per live node (this one first, with its figures as of now).
pub async fn cluster_stats(backplane: &dyn Backplane, here: Stats) -> serde_json::Value {
    let mut nodes = vec![NodeStats {
        node_id: backplane.node_id().to_owned(),
        stats: here,
    }];
    match backplane.other_nodes().await {
        Ok(others) => nodes.extend(others),
        Err(err) => tracing::warn!(error = %err, "cluster stats: other nodes unknown"),
    }
    let total = Stats::sum(nodes.iter().map(|n| &n.stats));
    let mut value = serde_json::to_value(total).unwrap_or_default();
    if let Some(object) = value.as_object_mut() {
        object.insert(
            "nodes".into(),
            serde_json::to_value(&nodes).unwrap_or_default(),
        );
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_round_trip_as_json() {
        let signals = [
            Signal::Revoked {
                credentials: vec![
                    WireCredential::Session(SessionId::new()),
                    WireCredential::ApiKey(ApiKeyId::new()),
                ],
            },
            Signal::ClaimWake,
            Signal::AgentRevoked {
                agent: AgentId::new(),
            },
            Signal::AgentChanged {
                agent: AgentId::new(),
            },
            Signal::Transient {
                user: UserId::new(),
                kind: "task_output".into(),
                items: vec![serde_json::json!({"seq": 1})],
            },
            Signal::Missed,
        ];
        for signal in signals {
            let json = serde_json::to_string(&signal).unwrap();
            assert_eq!(serde_json::from_str::<Signal>(&json).unwrap(), signal);
        }
    }
}

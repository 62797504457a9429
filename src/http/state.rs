//! The state every handler can reach. Cheap to clone: everything is behind an `Arc`.

use crate::auth::password::Hasher;
use crate::auth::throttle::{LoginThrottle, RegistrationLimiter};
use crate::auth::tokens::TokenSigner;
use crate::config::TrustedProxies;
use crate::store::{Announcement, Store};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Shared handles for handlers.
#[derive(Clone)]
pub struct AppState {
    /// Persistence.
    pub store: Arc<dyn Store>,
    /// Signs and checks session tokens.
    pub signer: Arc<TokenSigner>,
    /// Login attempt counters.
    pub throttle: Arc<LoginThrottle>,
    /// Sign-ups per client address.
    pub registrations: Arc<RegistrationLimiter>,
    /// Places being taken under the per-user real-time connection cap.
    pub realtime_admission: Arc<super::realtime::Admission>,
    /// Password hashing, one hash per core at a time.
    pub hasher: Hasher,
    /// Settings the HTTP layer needs.
    pub http: Arc<HttpSettings>,
    /// Whether `/ready` says yes; turned off first thing on shutdown.
    pub readiness: Readiness,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// For `uptime_s` in `/health`.
    pub started_at: Instant,
    /// The real-time hub: live connections, publish, history.
    pub hub: crate::realtime::Hub,
    /// The agent registry and presence tracking.
    pub agents: crate::agents::AgentService,
    /// The task queue, its runtime operations and the reaper.
    pub tasks: crate::tasks::TaskService,
    /// What the nodes of a cluster share besides the broker (one node: in memory).
    pub cluster: Arc<dyn crate::cluster::Backplane>,
    /// The outbox relay: awaited after a change whose announcement the store wrote.
    pub relay: crate::realtime::Relay,
}

/// HTTP-level settings from the command line.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Origins, besides the server's own, allowed to make cookie-authenticated changes
    /// and to open real-time connections (`scheme://host[:port]`, no trailing slash).
    pub allowed_origins: Vec<String>,
    /// Largest request body accepted by default, in bytes.
    pub body_limit: usize,
    /// A request body must have arrived in full within this.
    pub body_timeout: std::time::Duration,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Live real-time connections (WebSocket and SSE together) per user.
    pub realtime_connections_per_user: usize,
}

/// A readiness flag shared by `/ready` and the shutdown sequence.
#[derive(Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set_ready(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

impl AppState {
    /// Ends every live connection that authenticated with one of these credentials
    /// (logout, password change, key revocation), on this node and on every other.
    pub fn on_credentials_revoked(&self, credentials: &[crate::auth::Credential]) {
        self.forget_credentials(credentials);
        if !credentials.is_empty() {
            self.cluster.signal(crate::cluster::Signal::Revoked {
                credentials: credentials.iter().map(|c| (*c).into()).collect(),
            });
        }
    }

    /// This node's half of a revocation.
    fn forget_credentials(&self, credentials: &[crate::auth::Credential]) {
        // Forgotten first, so no request is let in on a remembered session meanwhile.
        self.signer.sessions().forget(credentials);
        // Closed with 4001: the client goes to login instead of retrying.
        self.hub.disconnect_credentials(credentials);
    }

    /// Applies a signal another node sent (see `cluster::Signal`).
    pub fn on_cluster_signal(&self, signal: crate::cluster::Signal) {
        use crate::cluster::Signal;
        match signal {
            Signal::Revoked { credentials } => {
                let credentials: Vec<_> = credentials.into_iter().map(Into::into).collect();
                self.forget_credentials(&credentials);
            }
            Signal::ClaimWake => self.tasks.wake_from_peer(),
            Signal::AgentRevoked { agent } => self.agents.tokens().revoke(agent),
            Signal::AgentChanged { agent } => self.agents.tokens().changed(agent),
            Signal::Transient { user, kind, items } => {
                self.hub.deliver_transient(user, &kind, &items);
            }
            // Revocations may have been lost: every cached credential is verified again,
            // and every live connection reconnects (1012, then resumes), so one whose
            // credential was revoked meanwhile is refused instead of staying open.
            Signal::Missed => {
                self.signer.sessions().forget_all();
                self.agents.tokens().forget_all();
                self.hub.reconnect_all();
            }
        }
    }
}

/// The data of a `system` message of category `security`.
#[derive(Debug, serde::Serialize)]
struct SecurityAlert<'a> {
    message: &'a str,
    level: &'static str,
    category: &'static str,
}

/// A `system` message of category `security` to `user`: what a change to their
/// credentials announces (written by the store in the change's transaction).
pub fn security_alert(user: crate::domain::UserId, message: &str) -> Vec<Announcement> {
    let alert = SecurityAlert {
        message,
        level: "warning",
        category: "security",
    };
    vec![Announcement::new(Some(user), "system", &alert)]
}

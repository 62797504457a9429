//! The composition root: opens the store, loads the signing key, builds the state and
//! the router, binds the listener, and runs until shut down. The only place that names
//! concrete backends.

use crate::auth::throttle::LoginThrottle;
use crate::auth::tokens::TokenSigner;
use crate::cli::{ServeArgs, StorageArgs};
use crate::http::{self, AppState, HttpSettings, Readiness};
use crate::realtime::{Disconnect, HistoryPolicy, Hub};
use crate::shutdown::Shutdown;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};

/// How long in-flight requests get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long real-time connections get to send their 1012 close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending connections the kernel may queue before `accept`.
const LISTEN_BACKLOG: u32 = 1024;

/// Opens the store named by the storage arguments, creating the data directory.
pub async fn open_store(storage: &StorageArgs) -> anyhow::Result<Arc<dyn Store>> {
    std::fs::create_dir_all(&storage.data_dir)
        .with_context(|| format!("creating data directory {}", storage.data_dir.display()))?;
    match storage.database_url.as_deref() {
        None => {
            let path = storage.data_dir.join("zerostate.db");
            Ok(Arc::new(SqliteStore::open(&path).await?))
        }
        Some(url) if url.starts_with("sqlite:") => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        Some(url) => {
            let scheme = url.split(':').next().unwrap_or_default();
            anyhow::bail!("unsupported database URL scheme {scheme:?}: this build supports sqlite:")
        }
    }
}

/// A server that has bound its port and is ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown: Shutdown,
    /// Whether to run the built-in agent once the server listens.
    builtin_agent: bool,
}

impl Application {
    /// Builds everything and binds the listener, so `local_addr` is known before `run`.
    pub async fn build(args: ServeArgs, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        if args.redis_url.is_some() {
            anyhow::bail!("--redis-url (several nodes) is not supported by this build yet");
        }
        let store = open_store(&args.storage).await?;
        let signer =
            TokenSigner::load_or_create(args.signing_key.as_deref(), &args.storage.data_dir)?;
        let readiness = Readiness::default();
        let history = HistoryPolicy {
            max_per_stream: args.history_max_per_user,
            max_age: Duration::from_secs(args.history_max_age_s),
        };
        // `Arc<dyn Store>` is itself a message log (see `realtime::history`).
        let hub = Hub::start(Arc::new(store.clone()), history).await?;
        let shutdown = Shutdown::new();
        let agents = crate::agents::AgentService::new(
            store.clone(),
            hub.clone(),
            Duration::from_secs(args.agent_offline_after_s),
        );
        let queue = crate::tasks::QueueSettings {
            lease: Duration::from_secs(args.task_lease_s),
            output_max_bytes: args.task_output_max_bytes,
        };
        let tasks = crate::tasks::TaskService::new(
            store.clone(),
            hub.clone(),
            agents.clone(),
            queue,
            shutdown.clone(),
        );
        let state = AppState {
            store,
            signer: Arc::new(signer),
            throttle: Arc::new(LoginThrottle::default()),
            http: Arc::new(HttpSettings {
                allowed_origins: normalise_origins(&args.allowed_origins),
                body_limit: http::extract::DEFAULT_BODY_LIMIT,
            }),
            readiness,
            metrics,
            started_at: Instant::now(),
            hub,
            agents,
            tasks,
        };
        let listener = bind(&args.addr).await?;
        let builtin_agent = args.builtin_agent_enabled();
        Ok(Self {
            listener,
            state,
            shutdown,
            builtin_agent,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGINT/SIGTERM, then drains: `/ready` turns 503, real-time
    /// connections are closed with 1012, in-flight requests get `DRAIN_TIMEOUT` to
    /// finish, and the function returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            shutdown,
            builtin_agent,
        } = self;
        let local_addr = listener.local_addr()?;
        let mut jobs = BackgroundJobs::start(&state, &shutdown);
        let app = http::router(state.clone());
        state.readiness.set_ready(true);
        spawn_signal_listener(shutdown.clone());

        let (drained, draining_state) = (shutdown.clone(), state.clone());
        let server = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            drained.triggered().await;
            // Not ready first, so load balancers stop sending clients here before
            // the live connections are told (1012) to reconnect elsewhere.
            draining_state.readiness.set_ready(false);
            draining_state.hub.close_all(Disconnect::Shutdown);
        });
        let server = tokio::spawn(async move { server.await });
        // The built-in agent talks to this server over HTTP like any agent, so it starts
        // once the listener is serving; it stops by itself on shutdown.
        if builtin_agent {
            let run =
                crate::agents::builtin::run(state.agents.clone(), local_addr, shutdown.clone());
            jobs.0.push(tokio::spawn(run));
        }
        shutdown.triggered().await;
        match tokio::time::timeout(DRAIN_TIMEOUT, server).await {
            Ok(result) => result??,
            Err(_) => tracing::warn!("in-flight requests did not finish in time"),
        }
        // Upgraded WebSockets are not in-flight requests: wait for their close frames.
        if !state.hub.wait_idle(CLOSE_TIMEOUT).await {
            tracing::warn!("real-time connections did not close in time");
        }
        jobs.stop();
        tracing::info!("stopped");
        Ok(())
    }
}

/// The loops that run beside the HTTP server: each selects on shutdown, and whatever is
/// still running once the server has drained is aborted.
struct BackgroundJobs(Vec<tokio::task::JoinHandle<()>>);

impl BackgroundJobs {
    fn start(state: &AppState, shutdown: &Shutdown) -> Self {
        let hub = state.hub.clone();
        let history = shutdown.clone();
        Self(vec![
            // Leases, timeouts and silent agents.
            tokio::spawn(state.tasks.clone().run_reaper(shutdown.clone())),
            // Message-history retention.
            tokio::spawn(async move { hub.run_maintenance(history).await }),
            spawn_metrics_upkeep(state.metrics.clone(), shutdown.clone()),
        ])
    }

    fn stop(self) {
        self.0.iter().for_each(|job| job.abort());
    }
}

/// Triggers `shutdown` on SIGINT or SIGTERM.
fn spawn_signal_listener(shutdown: Shutdown) {
    tokio::spawn(async move {
        crate::shutdown::wait_for_signal().await;
        tracing::info!("shutdown requested: draining");
        shutdown.trigger();
    });
}

/// Origins compare without a trailing slash.
fn normalise_origins(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// Binds with a backlog of `LISTEN_BACKLOG` (tokio's default is 1024 only on some
/// platforms; here it is explicit).
async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))?;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    Ok(socket.listen(LISTEN_BACKLOG)?)
}

/// Histograms in the Prometheus recorder need periodic upkeep to bound their memory.
fn spawn_metrics_upkeep(
    handle: PrometheusHandle,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = tick.tick() => handle.run_upkeep(),
                _ = shutdown.triggered() => break,
            }
        }
    })
}

//! The composition root: opens the store, loads the signing key, builds the state and
//! the router, binds the listener, and runs until shut down. The only place that names
//! concrete backends.

use crate::auth::password::Hasher;
use crate::auth::throttle::{LoginThrottle, RegistrationLimiter};
use crate::auth::tokens::TokenSigner;
use crate::cluster::local::LocalBackplane;
use crate::cluster::redis::RedisBackplane;
use crate::cluster::Backplane;
use crate::config::{Settings, StorageSettings};
use crate::http::server::Server;
use crate::http::{self, AppState, HttpSettings, Readiness};
use crate::realtime::broker::local::LocalBroker;
use crate::realtime::broker::redis::RedisBroker;
use crate::realtime::{
    Disconnect, HistoryPolicy, Hub, MessageLog, OutboxEntry, OutboxPort, Relay, Target,
};
use crate::shutdown::Shutdown;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::store::{MessageStore, NewMessage, OutboxStore, SigningKeyStore, Store};
use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpSocket};

/// How long in-flight requests get to finish once shutdown starts; then the rest are
/// dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How long real-time connections get to send their 1012 close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Pending connections the kernel may queue before `accept`.
const LISTEN_BACKLOG: u32 = 1024;
/// The prefix of every Redis key (and channel) the nodes share.
const REDIS_PREFIX: &str = "zerostate";

/// Opens the store named by the storage settings, creating the data directory `0700`
/// and keeping every file in it `0600`.
pub async fn open_store(storage: &StorageSettings) -> anyhow::Result<Arc<dyn Store>> {
    Ok(open_backends(storage).await?.0)
}

/// What `open_backends` opens on one database: the store, the real-time message history
/// and the transactional outbox (each adapted to the hub's port) and, for a database
/// several nodes share, the keeper of their common signing key.
type Backends = (
    Arc<dyn Store>,
    Arc<dyn MessageLog>,
    Arc<dyn OutboxPort>,
    Option<Arc<dyn SigningKeyStore>>,
);

/// Opens the store and, on the same database, the real-time message history and the
/// outbox (adapted to the hub's ports). The data directory is created in every case: a
/// single node keeps its signing key there.
async fn open_backends(storage: &StorageSettings) -> anyhow::Result<Backends> {
    fn both<S: Store + MessageStore + OutboxStore>(store: S) -> Backends {
        let store = Arc::new(store);
        (
            store.clone(),
            Arc::new(StoreMessageLog(store.clone())),
            Arc::new(StoreOutbox(store)),
            None,
        )
    }
    prepare_data_dir(&storage.data_dir)?;
    let backends = match storage.database_url.as_deref() {
        None => {
            let path = storage.data_dir.join("zerostate.db");
            both(SqliteStore::open(&path).await?)
        }
        Some(url) if url.starts_with("sqlite:") => both(SqliteStore::open_url(url).await?),
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = PgStore::open_url(url).await?;
            // A clone shares the connection pool.
            let keys: Arc<dyn SigningKeyStore> = Arc::new(store.clone());
            let (store, log, outbox, _) = both(store);
            (store, log, outbox, Some(keys))
        }
        Some(url) => {
            let scheme = url.split(':').next().unwrap_or_default();
            anyhow::bail!(
                "unsupported database URL scheme {scheme:?}: this build supports sqlite:, postgres:// and postgresql://"
            )
        }
    };
    // Files made by an older version (or before the umask was set) are tightened too.
    restrict_files(&storage.data_dir);
    Ok(backends)
}

/// A server that has bound its port and is ready to run.
pub struct Application {
    listener: TcpListener,
    state: AppState,
    shutdown: Shutdown,
    /// Whether to run the built-in agent once the server listens.
    builtin_agent: bool,
    settings: Settings,
}

impl Application {
    /// Builds everything and binds the listener, so `local_addr` is known before `run`.
    pub async fn build(settings: Settings, metrics: PrometheusHandle) -> anyhow::Result<Self> {
        let (store, history_log, outbox, shared_keys) = open_backends(&settings.storage).await?;
        let given_key = settings.signing_key.as_ref().map(|k| k.0.as_str());
        let signer = match (&shared_keys, given_key) {
            // Several nodes on one database: without `--signing-key`, the key is made
            // once and kept in the database, so every node signs with the same one.
            (Some(keys), None) => {
                let key = keys.signing_key(&TokenSigner::generate_key()).await?;
                TokenSigner::from_key(&key)?
            }
            _ => TokenSigner::load_or_create(given_key, &settings.storage.data_dir)?,
        };
        let readiness = Readiness::default();
        let history = HistoryPolicy {
            max_per_stream: settings.history_max_per_user,
            max_age: settings.history_max_age,
        };
        // One node: everything in this process. Several (`--redis-url`): Redis.
        let (cluster, broker): (Arc<dyn Backplane>, Arc<dyn crate::realtime::Broker>) =
            match settings.redis_url.as_deref() {
                None => (
                    Arc::new(LocalBackplane::default()),
                    Arc::new(LocalBroker::start(history_log.clone()).await?),
                ),
                Some(url) => {
                    let client = redis::Client::open(url).context("reading --redis-url")?;
                    let backplane =
                        RedisBackplane::start(client.clone(), REDIS_PREFIX.to_owned()).await?;
                    // Publish-plus-history and delivery for every node, on the same Redis.
                    let broker = RedisBroker::start(client, REDIS_PREFIX.to_owned()).await?;
                    (Arc::new(backplane), Arc::new(broker))
                }
            };
        let hub = Hub::start(broker, history).await?;
        hub.join_cluster(cluster.clone());
        let relay = Relay::new(outbox, hub.clone());
        let shutdown = Shutdown::new();
        let agents = crate::agents::AgentService::new(
            store.clone(),
            relay.clone(),
            hub.clone(),
            settings.agent_offline_after,
        );
        let queue = crate::tasks::QueueSettings {
            lease: settings.task_lease,
            retry_backoff_base: settings.retry_backoff_base,
            output_max_bytes: settings.task_output_max_bytes,
        };
        let tasks = crate::tasks::TaskService::new(
            store.clone(),
            hub.clone(),
            relay.clone(),
            agents.clone(),
            queue,
            shutdown.clone(),
        );
        let state = AppState {
            store,
            signer: Arc::new(signer),
            throttle: Arc::new(LoginThrottle::new(cluster.clone())),
            registrations: Arc::new(RegistrationLimiter::new(
                settings.limits.registration_limit,
                cluster.clone(),
            )),
            realtime_admission: Arc::default(),
            hasher: Hasher::new(),
            http: Arc::new(HttpSettings {
                allowed_origins: settings.allowed_origins.clone(),
                body_limit: http::extract::DEFAULT_BODY_LIMIT,
                body_timeout: settings.limits.body_timeout,
                trusted_proxies: settings.limits.trusted_proxies.clone(),
                realtime_connections_per_user: settings.limits.realtime_connections_per_user,
            }),
            readiness,
            metrics,
            started_at: Instant::now(),
            hub,
            agents,
            tasks,
            cluster,
            relay,
        };
        let listener = bind(&settings.addr).await?;
        let builtin_agent = settings.builtin_agent;
        Ok(Self {
            listener,
            state,
            shutdown,
            builtin_agent,
            settings,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until SIGINT/SIGTERM, then drains: `/ready` turns 503 at once while the
    /// listener stays open (so probes see it), real-time connections are closed with
    /// 1012, requests in flight get `DRAIN_TIMEOUT` to finish (a half-sent one is cut at
    /// once), and the function returns.
    pub async fn run(self) -> anyhow::Result<()> {
        let Self {
            listener,
            state,
            shutdown,
            builtin_agent,
            settings,
        } = self;
        let local_addr = listener.local_addr()?;
        let mut jobs = BackgroundJobs::start(&state, &shutdown);
        let app = http::router(state.clone());
        state.readiness.set_ready(true);
        spawn_signal_listener(shutdown.clone());
        let server = Server::start(listener, app, &settings.limits);
        // The built-in agent talks to this server over HTTP like any agent, so it starts
        // once the listener is serving; it stops by itself on shutdown.
        if builtin_agent {
            let run = crate::agents::builtin::run(
                state.agents.clone(),
                state.signer.builtin_agent_token(),
                local_addr,
                shutdown.clone(),
            );
            jobs.0.push(tokio::spawn(run));
        }
        shutdown.triggered().await;
        // Not ready first, so load balancers stop sending clients here before the live
        // connections are told (1012) to reconnect elsewhere.
        state.readiness.set_ready(false);
        // While the listener still serves: the built-in agent's running tasks go back to
        // the queue in-process, without using attempts.
        state.tasks.hand_back_server_agents().await;
        state.hub.close_all(Disconnect::Shutdown);
        server.drain();
        let (requests, realtime) = tokio::join!(
            server.wait_drained(DRAIN_TIMEOUT),
            // Upgraded WebSockets are not HTTP connections any more: wait for their
            // close frames.
            state.hub.wait_idle(CLOSE_TIMEOUT),
        );
        if !requests {
            tracing::warn!("in-flight requests did not finish in time");
        }
        if !realtime {
            tracing::warn!("real-time connections did not close in time");
        }
        server.stop().await;
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
        let signals = state.clone();
        Self(vec![
            // The cluster: this node's stats and connection counts, other nodes' signals.
            tokio::spawn(crate::cluster::run_upkeep(
                state.cluster.clone(),
                state.hub.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(crate::cluster::run_signals(
                state.cluster.clone(),
                shutdown.clone(),
                move |signal| signals.on_cluster_signal(signal),
            )),
            // The outbox relay. It does not stop on shutdown: the shutdown sequence's
            // own changes (the built-in agent's hand-back) are announced through it. It
            // is aborted with the rest, which is safe at any point.
            tokio::spawn(state.relay.clone().run()),
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

/// Creates the data directory readable by its owner only, and makes every file created
/// from now on (the SQLite database, its `-wal` and `-shm`, the signing key) `0600`: the
/// umask is process-wide, so SQLite's own files get it too.
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        // SAFETY: umask only swaps the process's file-creation mask; it cannot fail.
        unsafe {
            libc::umask(0o077);
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("creating data directory {}", dir.display()))?;
        // An existing directory is tightened as well; one we do not own stays as it is.
        if let Err(err) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)) {
            tracing::warn!(dir = %dir.display(), error = %err, "cannot make the data directory 0700");
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    Ok(())
}

/// Makes the files the server keeps in the data directory `0600`.
fn restrict_files(dir: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for name in [
            "zerostate.db",
            "zerostate.db-wal",
            "zerostate.db-shm",
            "signing.key",
        ] {
            let path = dir.join(name);
            if path.exists() {
                if let Err(err) =
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                {
                    tracing::warn!(path = %path.display(), error = %err, "cannot make the file 0600");
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Raises this process's soft limit on open files to the hard limit: every socket is a
/// descriptor, and the common default soft limit (1024) would let a thousand idle
/// sockets from one host starve `/health` before any other limit applies.
pub fn raise_open_files_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            if limit.rlim_cur < limit.rlim_max {
                let raised = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                    tracing::debug!(
                        from = limit.rlim_cur,
                        to = limit.rlim_max,
                        "raised the open-files limit"
                    );
                }
            }
        }
    }
}

/// The store's message history seen through the hub's `MessageLog` port: the one place
/// the two meet, so the hub never names a store type and the store never names a hub
/// type. Store errors become the port's (`anyhow`) errors with their context kept.
struct StoreMessageLog<S>(Arc<S>);

#[async_trait::async_trait]
impl<S: MessageStore> MessageLog for StoreMessageLog<S> {
    async fn epoch(&self) -> anyhow::Result<String> {
        Ok(self.0.message_epoch().await?)
    }

    async fn last_seq(&self) -> anyhow::Result<i64> {
        Ok(self.0.last_message_seq().await?)
    }

    async fn append(
        &self,
        batch: &[crate::realtime::history::LogEntry<'_>],
    ) -> anyhow::Result<Vec<(i64, bool)>> {
        let batch: Vec<NewMessage<'_>> = batch
            .iter()
            .map(|e| NewMessage {
                user: e.user,
                kind: e.kind,
                data_json: e.data_json,
                created_at_ms: e.created_at_ms,
                dedupe: e.dedupe,
            })
            .collect();
        Ok(self.0.append_messages(&batch).await?)
    }

    async fn position(
        &self,
        user: crate::domain::UserId,
        upto: i64,
    ) -> anyhow::Result<crate::realtime::history::StreamPosition> {
        let p = self.0.message_position(user, upto).await?;
        Ok(crate::realtime::history::StreamPosition {
            latest: p.latest,
            pruned_through: p.pruned_through,
        })
    }

    async fn replay(
        &self,
        user: crate::domain::UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> anyhow::Result<Vec<crate::realtime::history::StoredMessage>> {
        let rows = self.0.messages_between(user, after, upto, limit).await?;
        Ok(rows
            .into_iter()
            .map(|m| crate::realtime::history::StoredMessage {
                seq: m.seq,
                kind: m.kind,
                data_json: m.data_json,
                created_at_ms: m.created_at_ms,
            })
            .collect())
    }

    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> anyhow::Result<u64> {
        let max_age = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(max_age);
        Ok(self.0.prune_messages(policy.max_per_stream, cutoff).await?)
    }

    async fn count(&self) -> anyhow::Result<u64> {
        Ok(self.0.message_count().await?)
    }
}

/// The store's outbox seen through the relay's `OutboxPort`, like [`StoreMessageLog`].
struct StoreOutbox<S>(Arc<S>);

#[async_trait::async_trait]
impl<S: OutboxStore> OutboxPort for StoreOutbox<S> {
    async fn pending(&self, limit: u32) -> anyhow::Result<Vec<OutboxEntry>> {
        let rows = self.0.outbox_pending(limit).await?;
        Ok(rows
            .into_iter()
            .map(|row| OutboxEntry {
                id: row.id,
                target: row.recipient.map_or(Target::Everyone, Target::User),
                kind: row.kind,
                data_json: row.data_json,
                created_at_ms: row.created_at_ms,
            })
            .collect())
    }

    async fn remove(&self, ids: &[i64]) -> anyhow::Result<()> {
        Ok(self.0.outbox_remove(ids).await?)
    }

    async fn abandon(&self) -> anyhow::Result<()> {
        Ok(self.0.outbox_abandon().await?)
    }

    async fn tidy(&self) -> anyhow::Result<()> {
        Ok(self.0.outbox_tidy().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::Broker;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_local_broker_on_sqlite_keeps_the_broker_contract() {
        let dir = tempfile::tempdir().unwrap();
        let next = std::sync::atomic::AtomicU32::new(0);
        crate::realtime::broker::contract::run_all(|| {
            let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let path = dir.path().join(format!("broker-{n}.db"));
            async move {
                let store = Arc::new(SqliteStore::open(&path).await.unwrap());
                let log: Arc<dyn MessageLog> = Arc::new(StoreMessageLog(store));
                Arc::new(LocalBroker::start(log).await.unwrap()) as Arc<dyn Broker>
            }
        })
        .await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_local_broker_on_postgres_keeps_the_broker_contract() {
        crate::realtime::broker::contract::run_all(|| async {
            let url = crate::store::postgres::testing::fresh_database().await;
            let store = Arc::new(PgStore::open_url(&url).await.unwrap());
            let log: Arc<dyn MessageLog> = Arc::new(StoreMessageLog(store));
            Arc::new(LocalBroker::start(log).await.unwrap()) as Arc<dyn Broker>
        })
        .await;
    }
}

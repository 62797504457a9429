//! Side-by-side real-time benchmark: ZeroState (with its real authentication, cursors
//! and history) and the bare peer hubs in `../shared/peers/`, driven through the same
//! phases in one run, printed as one table.
//!
//! For each hub it starts the server process itself on a free loopback port, then:
//! 1. **setup** (ZeroState only): signs up an admin and `ceil(N / 100)` users (the
//!    per-user connection cap is 100) and keeps each one's session token;
//! 2. **handshakes**: opens N WebSockets (authenticated for ZeroState) from source
//!    addresses 127.0.0.2–127.0.0.201, `--concurrency` at a time: handshakes/s;
//! 3. **idle memory**: the server's `VmRSS` (`/proc/PID/status`) before and after, divided
//!    by N: KiB per idle connection;
//! 4. **broadcast**: `--rounds` single broadcasts, each timed from the POST to the last of
//!    the N deliveries: the median;
//! 5. **burst**: `--burst` back-to-back broadcasts, timed from the first POST to the last
//!    delivery: delivered msgs/s, and the server's CPU time (`/proc/PID/stat`) per
//!    delivered message;
//! 6. **reconnect storm** (ZeroState only; the peers keep no history): every client
//!    disconnects, `--missed` broadcasts are published, and all N reconnect with
//!    `?since=<last cursor seen>`; timed until the last one has received its replay and
//!    `resumed`, each checked exact (every missed message once, in order);
//! 7. **RSS after sign-ups** (`--signups N`, ZeroState only, after the table): a fresh
//!    server's `VmRSS` before and after N sign-ups, 32 at a time (each hashes a
//!    password), its peak meanwhile, and 5 s later.
//!
//! Hub `zerostate_cluster` is ZeroState on `--cluster-nodes` nodes (default 2) sharing
//! PostgreSQL and Redis, started (and stopped, its directory deleted) with
//! `scripts/cluster.sh` (`--cluster-script`). The connections go straight to the nodes'
//! ports, round-robin (not through the script's nginx); every publish goes to the first
//! node; RSS and CPU are summed over the node processes, and Redis's CPU time during the
//! burst is printed as a note below the table.
//!
//! Every wait has a deadline and every loop a count; failures are counted and printed
//! rather than hidden. Loopback only.
//!
//! ```sh
//! cargo build --release --bin zerostate --example hub_bench
//! CARGO_TARGET_DIR=/work/peers-target cargo build --release \
//!     --manifest-path ../shared/peers/servers/Cargo.toml
//! ./target/release/examples/hub_bench --bin target/release/zerostate \
//!     --hubs zerostate,zerostate_cluster,fastws,axum_tuned,node_ws --connections 5000 \
//!     --peers-bin /work/peers-target/release --peers-node /work/peers-node
//! ```
//! Figures and the machine they came from go in `docs/BENCHMARKS.md`.

mod support;

use futures_util::StreamExt;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{cpu_ticks, percentile, rss_kib, BenchServer};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One connection's upgrade must finish within this.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Deadline for any "all N have received it" wait.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// ZeroState's per-user cap on real-time connections (its default).
const CONNECTIONS_PER_USER: usize = 100;
/// Source addresses the client connections are spread over (127.0.0.2 and up).
const SOURCE_ADDRESSES: usize = 200;

struct Options {
    bin: String,
    hubs: Vec<String>,
    connections: usize,
    concurrency: usize,
    rounds: usize,
    burst: usize,
    missed: usize,
    peers_bin: String,
    peers_node: String,
    /// Sign-ups for the RSS-after-sign-ups phase (0: skipped).
    signups: usize,
    /// Nodes of the `zerostate_cluster` hub.
    cluster_nodes: usize,
    /// The script that starts and stops a cluster (`scripts/cluster.sh`).
    cluster_script: String,
}

fn parse_args() -> Options {
    let (bin, flags) = support::flags();
    let mut opts = Options {
        bin,
        hubs: vec!["zerostate".into(), "fastws".into(), "axum_tuned".into()],
        connections: 2000,
        concurrency: 64,
        rounds: 10,
        burst: 100,
        missed: 10,
        peers_bin: "/work/peers-target/release".into(),
        peers_node: "/work/peers-node".into(),
        signups: 0,
        cluster_nodes: 2,
        cluster_script: concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/cluster.sh").into(),
    };
    for (flag, value) in flags {
        let number = || -> usize {
            value
                .parse()
                .unwrap_or_else(|_| panic!("{flag} takes a number"))
        };
        match flag.as_str() {
            "--hubs" => opts.hubs = value.split(',').map(str::to_owned).collect(),
            "--connections" => opts.connections = number(),
            "--concurrency" => opts.concurrency = number().max(1),
            "--rounds" => opts.rounds = number().max(1),
            "--burst" => opts.burst = number().max(1),
            "--missed" => opts.missed = number(),
            "--peers-bin" => opts.peers_bin = value,
            "--peers-node" => opts.peers_node = value,
            "--signups" => opts.signups = number(),
            "--cluster-nodes" => opts.cluster_nodes = number().max(1),
            "--cluster-script" => opts.cluster_script = value,
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

/// Raises the soft descriptor limit to the hard one: N client sockets live here.
fn raise_nofile() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return 0;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        lim.rlim_cur
    }
}

/// What kind of hub is under test: how to connect, publish and recognise messages.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    ZeroState,
    Peer,
}

/// A running hub: where to publish, where to connect, its server processes and what
/// keeps it alive.
struct Hub {
    kind: Kind,
    /// Base URL publishes go to (a cluster's first node).
    base: String,
    /// Ports the connections are spread over, round-robin (one per node).
    ports: Vec<u16>,
    /// The server processes whose RSS and CPU time are summed (one per node).
    pids: Vec<u32>,
    /// Other processes whose CPU time is reported beside (a cluster's Redis).
    aux: Vec<(&'static str, u32)>,
    /// Admin token (ZeroState) for publishing.
    admin: String,
    /// One token per user (ZeroState) or user ids (peers); connection i uses `i % len`.
    users: Vec<String>,
    _server: Option<BenchServer>,
    _peer: Option<tokio::process::Child>,
    _cluster: Option<Cluster>,
}

impl Hub {
    /// Resident memory summed over the server processes, in KiB.
    fn rss_kib(&self) -> u64 {
        self.pids.iter().map(|&pid| rss_kib(pid)).sum()
    }

    /// CPU time summed over the server processes, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        self.pids.iter().map(|&pid| cpu_ticks(pid)).sum()
    }
}

/// The port of a `http://host:port` base URL.
fn port_of(base: &str) -> u16 {
    base.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {base}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

async fn start_hub(name: &str, opts: &Options, http: &reqwest::Client) -> Hub {
    if name == "zerostate" {
        return start_zerostate(opts, http).await;
    }
    if name == "zerostate_cluster" {
        return start_cluster(opts, http).await;
    }
    let port = free_port();
    let mut command = match name {
        "fastws" | "tokiows" => {
            tokio::process::Command::new(format!("{}/{name}_hub", opts.peers_bin))
        }
        "axum_tuned" | "axum_default" => {
            let mut c = tokio::process::Command::new(format!("{}/axum_hub", opts.peers_bin));
            c.env("WSCFG", name.trim_start_matches("axum_"));
            c
        }
        "node_ws" => {
            let mut c = tokio::process::Command::new("node");
            c.arg("ws_hub.js").current_dir(&opts.peers_node);
            c
        }
        other => panic!(
            "unknown hub {other} (zerostate, zerostate_cluster, fastws, axum_tuned, axum_default, tokiows, node_ws)"
        ),
    };
    let child = command
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    let pid = child.id().expect("pid");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "{name} did not listen within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = (0..opts.connections.div_ceil(CONNECTIONS_PER_USER))
        .map(|i| format!("u{i}"))
        .collect();
    Hub {
        kind: Kind::Peer,
        base: format!("http://127.0.0.1:{port}"),
        ports: vec![port],
        pids: vec![pid],
        aux: Vec::new(),
        admin: String::new(),
        users,
        _server: None,
        _peer: Some(child),
        _cluster: None,
    }
}

async fn start_zerostate(opts: &Options, http: &reqwest::Client) -> Hub {
    let server = BenchServer::start_with(
        &opts.bin,
        &[
            "--registration-limit",
            "0",
            "--max-connections-per-address",
            "0",
        ],
    )
    .await;
    let (admin, users) = sign_up_users(http, &server.base, opts.connections).await;
    Hub {
        kind: Kind::ZeroState,
        base: server.base.clone(),
        ports: vec![port_of(&server.base)],
        pids: vec![server.pid],
        aux: Vec::new(),
        admin,
        users,
        _server: Some(server),
        _peer: None,
        _cluster: None,
    }
}

/// Signs up the admin and `ceil(connections / 100)` users at `base`; their tokens.
async fn sign_up_users(
    http: &reqwest::Client,
    base: &str,
    connections: usize,
) -> (String, Vec<String>) {
    let admin = support::sign_up_at(http, base, "bench@example.com", "Bench").await;
    let count = connections.div_ceil(CONNECTIONS_PER_USER);
    // Sign-ups hash a password each: a few at a time.
    let users = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let (email, name) = (format!("load{i}@example.com"), format!("Load {i}"));
            support::sign_up_at(http, base, &email, &name).await
        })
        .buffer_unordered(4)
        .collect()
        .await;
    (admin, users)
}

/// A cluster started by `scripts/cluster.sh` in its own directory: PostgreSQL, Redis
/// (AOF, fsync on every write), the nodes and nginx; stopped and deleted when dropped.
struct Cluster {
    script: String,
    dir: std::path::PathBuf,
    /// Delete the directory on stop; false until the cluster has started, so that the
    /// logs of a failed start stay for reading.
    remove: bool,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Synchronous on purpose: the processes are not children of this one (setsid),
        // so nothing else would stop them if this process went on or ended.
        let stopped = std::process::Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .args(self.remove.then_some("--rm"))
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .status();
        if !matches!(stopped, Ok(s) if s.success()) {
            eprintln!(
                "stopping the cluster in {} failed: stop it with {} stop --dir {}",
                self.dir.display(),
                self.script,
                self.dir.display()
            );
        }
    }
}

/// A number (process id, port) written in a file of the cluster's directory.
fn read_number(path: &std::path::Path) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no number in {}", path.display()))
}

/// Starts `--cluster-nodes` nodes on PostgreSQL and Redis with `scripts/cluster.sh`.
/// The connections go straight to the nodes' ports, round-robin (not through the
/// script's nginx, which would add its own hop and CPU); publishes go to the first node.
async fn start_cluster(opts: &Options, http: &reqwest::Client) -> Hub {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        std::env::temp_dir().join(format!("hub-bench-cluster-{}-{stamp}", std::process::id()));
    let mut cluster = Cluster {
        script: opts.cluster_script.clone(),
        dir: dir.clone(),
        remove: false,
    };
    let nodes = opts.cluster_nodes.to_string();
    let started = tokio::time::timeout(
        Duration::from_secs(300),
        tokio::process::Command::new("bash")
            .arg(&opts.cluster_script)
            .args(["start", "--nodes", &nodes, "--bin", &opts.bin, "--dir"])
            .arg(&dir)
            .args([
                "--",
                "--no-builtin-agent",
                "--registration-limit",
                "0",
                "--max-connections-per-address",
                "0",
            ])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status(),
    )
    .await;
    assert!(
        matches!(started, Ok(Ok(s)) if s.success()),
        "the cluster did not start (within 300 s): its logs are in {}",
        dir.display()
    );
    let mut ports = Vec::new();
    let mut pids = Vec::new();
    for i in 1..=opts.cluster_nodes {
        let node = dir.join(format!("node{i}"));
        ports.push(read_number(&node.join("port")) as u16);
        pids.push(read_number(&node.join("pid")));
    }
    cluster.remove = true;
    let aux = vec![("redis", read_number(&dir.join("redis/redis.pid")))];
    let base = format!("http://127.0.0.1:{}", ports[0]);
    let (admin, users) = sign_up_users(http, &base, opts.connections).await;
    Hub {
        kind: Kind::ZeroState,
        base,
        ports,
        pids,
        aux,
        admin,
        users,
        _server: None,
        _peer: None,
        _cluster: Some(cluster),
    }
}

/// Counters shared by every client connection of one hub.
#[derive(Default)]
struct Tally {
    welcomed: AtomicUsize,
    /// Benchmark messages received.
    received: AtomicUsize,
    /// `received` value at which `done` is notified.
    target: AtomicUsize,
    done: Notify,
    /// Storm: clients whose replay and `resumed` arrived.
    caught_up: AtomicUsize,
    /// Storm: clients whose replay was not exactly the missed messages in order.
    inexact: AtomicUsize,
    /// Storm: `reset` frames (the cursor was refused).
    resets: AtomicUsize,
    closed_early: AtomicUsize,
}

impl Tally {
    fn arm(&self, target: usize) {
        self.target.store(target, Ordering::SeqCst);
    }

    fn count(&self, counter: &AtomicUsize) {
        let now = counter.fetch_add(1, Ordering::SeqCst) + 1;
        if now == self.target.load(Ordering::SeqCst) {
            self.done.notify_one();
        }
    }

    /// Waits until `counter` reaches `target` (armed before the action), or the deadline.
    async fn wait(&self, counter: &AtomicUsize, target: usize) -> bool {
        let deadline = tokio::time::Instant::now() + DELIVERY_TIMEOUT;
        while counter.load(Ordering::SeqCst) < target {
            // The notify can race with the check; a short timeout re-checks.
            let _ = tokio::time::timeout(Duration::from_millis(20), self.done.notified()).await;
            if tokio::time::Instant::now() > deadline {
                return false;
            }
        }
        true
    }
}

/// What a client expects on a resume: the `n` of the first missed message and how many.
#[derive(Clone, Copy)]
struct Expect {
    first: u64,
    count: u64,
}

/// A live client connection: closing it returns the last cursor it saw.
struct Client {
    close: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Option<String>>,
}

type Ws = WebSocketStream<TcpStream>;

async fn open(hub: &Hub, index: usize, since: Option<&str>) -> Result<Ws, String> {
    let source = std::net::Ipv4Addr::new(127, 0, 0, 2 + (index % SOURCE_ADDRESSES) as u8);
    let port = hub.ports[index % hub.ports.len()];
    let socket = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(([127, 0, 0, 1], port).into())
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let user = &hub.users[index % hub.users.len()];
    let url = match hub.kind {
        Kind::Peer => format!("ws://127.0.0.1:{port}/ws?user={user}"),
        Kind::ZeroState => match since {
            Some(cursor) => format!("ws://127.0.0.1:{port}/api/v1/ws/connect?since={cursor}"),
            None => format!("ws://127.0.0.1:{port}/api/v1/ws/connect"),
        },
    };
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if hub.kind == Kind::ZeroState {
        let value = format!("Bearer {user}").parse().map_err(|_| "header")?;
        request.headers_mut().insert("authorization", value);
    }
    // Small client buffers: N of them live in this process beside the server.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// The integer after `"n":` in a benchmark message, without parsing the whole JSON.
fn field_n(text: &str) -> Option<u64> {
    let at = text.find("\"n\":")? + 4;
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// The string value of `"key":"…"`.
fn field_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\":\"");
    let at = text.find(&pattern)? + pattern.len();
    let rest = &text[at..];
    Some(&rest[..rest.find('"')?])
}

/// Reads one connection until told to close; counts what arrives.
fn spawn_reader(mut ws: Ws, kind: Kind, tally: Arc<Tally>, expect: Option<Expect>) -> Client {
    let (close, mut closed) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut cursor: Option<String> = None;
        let mut next = expect.map(|e| e.first);
        let mut replayed = 0u64;
        let mut exact = true;
        loop {
            let message = tokio::select! {
                _ = &mut closed => {
                    let _ = tokio::time::timeout(Duration::from_secs(5), ws.close(None)).await;
                    break;
                }
                message = ws.next() => message,
            };
            let text = match message {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                _ => {
                    tally.closed_early.fetch_add(1, Ordering::SeqCst);
                    break;
                }
            };
            let text = text.as_str();
            let bench = match kind {
                Kind::Peer => text.starts_with("{\"type\":\"broadcast\""),
                Kind::ZeroState => text.starts_with("{\"type\":\"bench\""),
            };
            if bench {
                if kind == Kind::ZeroState {
                    cursor = field_str(text, "cursor").map(str::to_owned);
                }
                if let (Some(want), Some(expect)) = (next.as_mut(), expect) {
                    if replayed < expect.count {
                        replayed += 1;
                        exact &= field_n(text) == Some(*want);
                        *want += 1;
                    }
                }
                tally.count(&tally.received);
            } else if text.contains("\"type\":\"welcome\"") {
                tally.count(&tally.welcomed);
            } else if text.contains("\"type\":\"resumed\"") {
                if let Some(expect) = expect {
                    if !exact || replayed != expect.count {
                        tally.inexact.fetch_add(1, Ordering::SeqCst);
                    }
                    tally.count(&tally.caught_up);
                }
            } else if text.contains("\"type\":\"reset\"") {
                tally.resets.fetch_add(1, Ordering::SeqCst);
                tally.count(&tally.caught_up);
            }
        }
        cursor
    });
    Client { close, task }
}

/// Opens `count` connections, `concurrency` at a time. Returns the clients, the
/// seconds it took and the failures (with the first error).
async fn open_all(
    hub: &Hub,
    count: usize,
    concurrency: usize,
    tally: &Arc<Tally>,
    resume: Option<(&[Option<String>], Expect)>,
) -> (Vec<Client>, f64, usize, Option<String>) {
    let gate = Arc::new(Semaphore::new(concurrency));
    let started = Instant::now();
    let results: Vec<Result<Client, String>> = futures_util::stream::iter(0..count)
        .map(|i| {
            let gate = gate.clone();
            let tally = tally.clone();
            let since = resume.and_then(|(cursors, _)| cursors.get(i).cloned().flatten());
            let expect = resume.map(|(_, e)| e);
            async move {
                let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
                let ws = tokio::time::timeout(CONNECT_TIMEOUT, open(hub, i, since.as_deref()))
                    .await
                    .map_err(|_| "timed out".to_owned())??;
                Ok(spawn_reader(ws, hub.kind, tally, expect))
            }
        })
        .buffered(concurrency)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let mut clients = Vec::with_capacity(count);
    let mut failed = 0;
    let mut first_error = None;
    for result in results {
        match result {
            Ok(c) => clients.push(c),
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (clients, secs, failed, first_error)
}

/// Publishes one benchmark broadcast carrying `n` (about 150 bytes on the wire).
async fn broadcast(http: &reqwest::Client, hub: &Hub, n: u64) -> bool {
    let pad = "x".repeat(60);
    let request = match hub.kind {
        Kind::ZeroState => http
            .post(format!("{}/api/v1/ws/broadcast", hub.base))
            .bearer_auth(&hub.admin)
            .json(&serde_json::json!({"type": "bench", "data": {"n": n, "pad": pad}})),
        Kind::Peer => http
            .post(format!("{}/broadcast", hub.base))
            .json(&serde_json::json!({"n": n, "pad": pad})),
    };
    matches!(
        request.timeout(Duration::from_secs(30)).send().await,
        Ok(r) if r.status().is_success()
    )
}

/// One hub's figures.
#[derive(Default)]
struct Row {
    name: String,
    connections: usize,
    failed: usize,
    kib_per_conn: f64,
    rss_before_kib: u64,
    rss_after_kib: u64,
    handshakes_per_s: f64,
    last_delivery_ms: f64,
    burst_msgs_per_s: f64,
    burst_complete: bool,
    cpu_us_per_msg: f64,
    storm: Option<String>,
    notes: Vec<String>,
}

async fn run_hub(name: &str, opts: &Options, http: &reqwest::Client) -> Row {
    let n = opts.connections;
    let mut row = Row {
        name: if name == "zerostate_cluster" {
            format!("{name} ({} nodes)", opts.cluster_nodes)
        } else {
            name.to_owned()
        },
        ..Row::default()
    };
    eprintln!("[{name}] starting");
    let hub = start_hub(name, opts, http).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    row.rss_before_kib = hub.rss_kib();

    // Handshakes (authenticated for ZeroState) and idle memory.
    let tally = Arc::new(Tally::default());
    tally.arm(n);
    let (clients, secs, failed, error) = open_all(&hub, n, opts.concurrency, &tally, None).await;
    let open = clients.len();
    row.connections = open;
    row.failed = failed;
    row.handshakes_per_s = open as f64 / secs;
    if let Some(e) = error {
        row.notes
            .push(format!("{failed} connects failed (first: {e})"));
    }
    eprintln!("[{name}] {open} open in {secs:.2} s ({failed} failed)");
    if hub.kind == Kind::ZeroState && !tally.wait(&tally.welcomed, open).await {
        row.notes.push(format!(
            "only {} welcomes",
            tally.welcomed.load(Ordering::SeqCst)
        ));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    row.rss_after_kib = hub.rss_kib();
    row.kib_per_conn =
        row.rss_after_kib.saturating_sub(row.rss_before_kib) as f64 / open.max(1) as f64;

    // Broadcast to all, one at a time: publish → last delivery.
    let mut seq = 0u64;
    let mut times = Vec::with_capacity(opts.rounds);
    for _ in 0..opts.rounds {
        let target = tally.received.load(Ordering::SeqCst) + open;
        tally.arm(target);
        let started = Instant::now();
        if !broadcast(http, &hub, seq).await {
            row.notes.push("a broadcast was refused".into());
            break;
        }
        seq += 1;
        if !tally.wait(&tally.received, target).await {
            row.notes
                .push("a broadcast did not reach everyone in 60 s".into());
            break;
        }
        times.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    times.sort_by(f64::total_cmp);
    row.last_delivery_ms = percentile(&times, 0.5);
    eprintln!("[{name}] broadcast to {open}: {times:.0?} ms");

    // Burst: back-to-back broadcasts, with the server's CPU time.
    let before = tally.received.load(Ordering::SeqCst);
    let target = before + open * opts.burst;
    tally.arm(target);
    let cpu_before = hub.cpu_ticks();
    let aux_before: Vec<u64> = hub.aux.iter().map(|&(_, pid)| cpu_ticks(pid)).collect();
    let started = Instant::now();
    for _ in 0..opts.burst {
        if !broadcast(http, &hub, seq).await {
            row.notes.push("a burst broadcast was refused".into());
            break;
        }
        seq += 1;
    }
    let published = started.elapsed().as_secs_f64();
    row.burst_complete = tally.wait(&tally.received, target).await;
    let secs = started.elapsed().as_secs_f64();
    let delivered = tally.received.load(Ordering::SeqCst) - before;
    let cpu_s = (hub.cpu_ticks().saturating_sub(cpu_before)) as f64 / support::clock_ticks();
    for (&(what, pid), before) in hub.aux.iter().zip(aux_before) {
        let secs = cpu_ticks(pid).saturating_sub(before) as f64 / support::clock_ticks();
        row.notes.push(format!(
            "{what} CPU during the burst: {secs:.2} s ({:.2} µs/delivered msg, not in the column)",
            secs * 1e6 / delivered.max(1) as f64
        ));
    }
    row.burst_msgs_per_s = delivered as f64 / secs;
    row.cpu_us_per_msg = cpu_s * 1e6 / delivered.max(1) as f64;
    if !row.burst_complete {
        row.notes.push(format!(
            "burst: {delivered}/{} delivered",
            open * opts.burst
        ));
    }
    eprintln!(
        "[{name}] burst: {} publishes accepted in {published:.2} s, {delivered} delivered in {secs:.2} s, server CPU {cpu_s:.2} s",
        opts.burst
    );

    // Reconnect storm (ZeroState: the peers keep no history to resume from).
    let mut cursors = Vec::with_capacity(open);
    for client in clients {
        let _ = client.close.send(());
        cursors.push(
            tokio::time::timeout(Duration::from_secs(10), client.task)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten(),
        );
    }
    if hub.kind == Kind::ZeroState && opts.missed > 0 {
        row.storm = Some(storm(&hub, http, opts, &cursors, seq).await);
    }
    row
}

/// Everyone is away; `--missed` broadcasts go out; everyone resumes at once.
async fn storm(
    hub: &Hub,
    http: &reqwest::Client,
    opts: &Options,
    cursors: &[Option<String>],
    first: u64,
) -> String {
    // Wait (bounded) until the server has let go of every connection.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open = http
            .get(format!("{}/api/v1/ws/stats", hub.base))
            .send()
            .await
            .ok();
        let body: Option<serde_json::Value> = match open {
            Some(r) => r.json().await.ok(),
            None => None,
        };
        let current = body
            .as_ref()
            .and_then(|b| b["stats"]["current_connections"].as_u64())
            .unwrap_or(u64::MAX);
        if current == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for n in first..first + opts.missed as u64 {
        if !broadcast(http, hub, n).await {
            return "a broadcast was refused".into();
        }
    }
    let tally = Arc::new(Tally::default());
    let count = cursors.len();
    tally.arm(count);
    let expect = Expect {
        first,
        count: opts.missed as u64,
    };
    let started = Instant::now();
    let (clients, _, failed, _) = open_all(
        hub,
        count,
        opts.concurrency,
        &tally,
        Some((cursors, expect)),
    )
    .await;
    let all = tally.wait(&tally.caught_up, clients.len()).await;
    let secs = started.elapsed().as_secs_f64();
    let caught = tally.caught_up.load(Ordering::SeqCst);
    let inexact = tally.inexact.load(Ordering::SeqCst);
    let resets = tally.resets.load(Ordering::SeqCst);
    let missing_cursor = cursors.iter().filter(|c| c.is_none()).count();
    for client in clients {
        let _ = client.close.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), client.task).await;
    }
    let verdict = if all && failed == 0 && inexact == 0 && resets == 0 && missing_cursor == 0 {
        "all exact".to_owned()
    } else {
        format!(
            "{caught}/{count} caught up, {inexact} inexact, {resets} reset, {failed} failed, {missing_cursor} without cursor"
        )
    };
    format!("{secs:.2} s ({} missed each, {verdict})", opts.missed)
}

fn print_table(rows: &[Row], opts: &Options) {
    println!();
    println!(
        "| hub | connections | KiB/conn idle | broadcast to N, last delivery (median of {}) | delivered msgs/s ({} back-to-back) | server CPU µs/delivered msg | handshakes/s | reconnect storm |",
        opts.rounds, opts.burst
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {}{} | {:.1} ({} → {} KiB RSS) | {:.0} ms | {:.0}k{} | {:.2} | {:.1}k | {} |",
            r.name,
            r.connections,
            if r.failed > 0 {
                format!(" ({} failed)", r.failed)
            } else {
                String::new()
            },
            r.kib_per_conn,
            r.rss_before_kib,
            r.rss_after_kib,
            r.last_delivery_ms,
            r.burst_msgs_per_s / 1000.0,
            if r.burst_complete {
                ""
            } else {
                " (incomplete)"
            },
            r.cpu_us_per_msg,
            r.handshakes_per_s / 1000.0,
            r.storm.as_deref().unwrap_or("n/a (no history)"),
        );
    }
    for r in rows {
        for note in &r.notes {
            println!("- {}: {note}", r.name);
        }
    }
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let limit = raise_nofile();
    assert!(
        limit as usize > opts.connections + 100,
        "the descriptor limit ({limit}) is too low for {} connections",
        opts.connections
    );
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for name in &opts.hubs {
        rows.push(run_hub(name, &opts, &http).await);
        // Let the closed sockets leave TIME_WAIT pressure behind before the next hub.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    print_table(&rows, &opts);
    if opts.signups > 0 {
        signup_rss(&opts, &http).await;
    }
}

/// Sign-ups in flight at once in the RSS phase: a burst, as many browsers would send.
const SIGNUP_CONCURRENCY: usize = 32;

/// A fresh ZeroState: its RSS once started (and the admin signed up), then after
/// `--signups` sign-ups, `SIGNUP_CONCURRENCY` at a time (each hashes a password with
/// argon2, the memory-hungry part), then 5 s later. Every sign-up must succeed.
async fn signup_rss(opts: &Options, http: &reqwest::Client) {
    let server = BenchServer::start_with(&opts.bin, &["--registration-limit", "0"]).await;
    let _admin = server.sign_up_admin(http).await;
    let base = rss_kib(server.pid);
    let started = Instant::now();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(base));
    let sampler = {
        let (pid, peak) = (server.pid, peak.clone());
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_kib(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let tokens: Vec<String> = futures_util::stream::iter(0..opts.signups)
        .map(|i| {
            let server = &server;
            async move {
                let (email, name) = (format!("rss{i}@example.com"), format!("Rss {i}"));
                server.sign_up(http, &email, &name).await
            }
        })
        .buffer_unordered(SIGNUP_CONCURRENCY)
        .collect()
        .await;
    let secs = started.elapsed().as_secs_f64();
    let after = rss_kib(server.pid);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let settled = rss_kib(server.pid);
    sampler.abort();
    let peak = peak.load(Ordering::Relaxed);
    let mib = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!(
        "RSS after {} sign-ups ({SIGNUP_CONCURRENCY} at a time, {:.1} s, all {} succeeded): \
         base {:.1} MiB, after {:.1} MiB (+{:.1}), peak {:.1} MiB (+{:.1}), 5 s later {:.1} MiB (+{:.1})",
        opts.signups,
        secs,
        tokens.len(),
        mib(base),
        mib(after),
        mib(after.saturating_sub(base)),
        mib(peak),
        mib(peak.saturating_sub(base)),
        mib(settled),
        mib(settled.saturating_sub(base)),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_from_the_wire_text() {
        let text = r#"{"type":"bench","data":{"n":42,"pad":"x"},"cursor":"ab-7","timestamp":"t"}"#;
        assert_eq!(field_n(text), Some(42));
        assert_eq!(field_str(text, "cursor"), Some("ab-7"));
        assert_eq!(field_str(text, "missing"), None);
    }
}

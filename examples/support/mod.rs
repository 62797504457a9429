//! What the benchmark tools share: command-line flags, starting the server binary on
//! loopback with a fresh data directory, signing up, registering an agent, opening the
//! owner's WebSocket, JSON posts, and percentiles.
#![allow(dead_code)] // Each benchmark uses a different part of it.

use serde_json::{json, Value};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A WebSocket connection to the server.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Parses `--flag value` pairs into `(flag, value)`; `bin` defaults to the release build.
pub fn flags() -> (String, Vec<(String, String)>) {
    let mut bin = "target/release/zerostate".to_owned();
    let mut rest = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        if flag == "--bin" {
            bin = value;
        } else {
            rest.push((flag, value));
        }
    }
    (bin, rest)
}

/// A server started for one benchmark run; killed when dropped.
pub struct BenchServer {
    pub base: String,
    pub pid: u32,
    _process: tokio::process::Child,
    _data_dir: tempfile::TempDir,
}

impl BenchServer {
    /// Starts `bin serve` on a free loopback port with the built-in agent off.
    pub async fn start(bin: &str) -> Self {
        Self::start_with(bin, &[]).await
    }

    /// Like `start`, with extra `serve` flags (limits a load test must lift).
    pub async fn start_with(bin: &str, extra: &[&str]) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut process = tokio::process::Command::new(bin)
            .args([
                "serve",
                "--addr",
                "127.0.0.1:0",
                "--no-builtin-agent",
                "--data-dir",
            ])
            .arg(data_dir.path())
            .args(extra)
            // BENCH_SERVER_LOG=sqlx::query=debug prints every statement with its time.
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start server");
        let pid = process.id().expect("pid");
        let mut lines = BufReader::new(process.stdout.take().expect("stdout")).lines();
        let base = loop {
            let line = lines
                .next_line()
                .await
                .expect("stdout")
                .expect("server exited");
            if let Some(url) = line.strip_prefix("zerostate listening on ") {
                break url.to_owned();
            }
        };
        Self {
            base,
            pid,
            _process: process,
            _data_dir: data_dir,
        }
    }

    /// Signs up the first account (the admin) and returns its session token.
    pub async fn sign_up_admin(&self, http: &reqwest::Client) -> String {
        self.sign_up(http, "bench@example.com", "Bench").await
    }

    /// Signs up an account (password hashing takes a while under load: 60 s allowed)
    /// and returns its session token.
    pub async fn sign_up(&self, http: &reqwest::Client, email: &str, name: &str) -> String {
        sign_up_at(http, &self.base, email, name).await
    }

    /// Registers one agent with the `general` capability; returns its agent token.
    pub async fn register_agent(&self, http: &reqwest::Client, user_token: &str) -> String {
        let (_, body) = post(
            http,
            format!("{}/api/v1/agents/register", self.base),
            user_token,
            json!({"name": "bench", "capabilities": ["general"]}),
        )
        .await;
        body["agent_token"]
            .as_str()
            .expect("agent token")
            .to_owned()
    }

    /// Opens a WebSocket to `/api/v1/ws/connect` with `token` as the bearer.
    pub async fn connect_ws(&self, token: &str) -> WsStream {
        let mut request = format!("{}/api/v1/ws/connect", self.base.replacen("http", "ws", 1))
            .into_client_request()
            .expect("request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("connect");
        ws
    }
}

/// Signs up an account at the server `base` (60 s allowed: password hashing is slow
/// under load) and returns its session token.
pub async fn sign_up_at(http: &reqwest::Client, base: &str, email: &str, name: &str) -> String {
    let body: serde_json::Value = http
        .post(format!("{base}/api/v1/users/register"))
        .json(&serde_json::json!({"email": email, "password": "bench password", "full_name": name}))
        .timeout(std::time::Duration::from_secs(60))
        .send()
        .await
        .expect("register")
        .json()
        .await
        .expect("register body");
    body["token"].as_str().expect("token").to_owned()
}

/// Posts `body` as JSON with `token` as the bearer; returns the status and the JSON
/// answer (`Value::Null` when there is none).
pub async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// The `p` quantile (0..=1) of sorted values; 0 for none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let last = sorted.len().saturating_sub(1);
    sorted
        .get((last as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// The resident memory of process `pid` in KiB (`VmRSS`); 0 if unreadable.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// User plus system CPU time of process `pid` in clock ticks (`/proc/PID/stat`).
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The command name may hold spaces: fields are counted after its closing paren.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    field(11) + field(12)
}

/// Clock ticks per second, the unit of `cpu_ticks`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

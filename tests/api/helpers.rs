//! The test harness: `spawn_app()` starts the built binary and hands back a `TestApp`
//! with one method per common call.
#![allow(dead_code)] // A shared harness: not every test module uses every method.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_zerostate");

/// How a test wants its server started.
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// Run the built-in agent (off by default so tests control who claims tasks).
    pub builtin_agent: bool,
    /// More `serve` flags.
    pub extra_args: Vec<String>,
    /// Keep the production limits on sign-ups per address and connections per address.
    /// Off by default: tests sign up many accounts and open many sockets from one
    /// address, so the harness turns both limits off unless a test asks for them.
    pub real_limits: bool,
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub port: u16,
    /// A client without a cookie jar: tests pass credentials explicitly.
    pub client: reqwest::Client,
    data_dir: Arc<tempfile::TempDir>,
    /// `Some` when the suite runs on PostgreSQL: this app's own database.
    database_url: Option<String>,
    options: AppOptions,
    process: Spawned,
}

/// The variable that switches the suite to PostgreSQL: a server URL such as
/// `postgres://postgres@127.0.0.1:PORT/postgres` (see `scripts/test-postgres.sh`).
pub const POSTGRES_URL_VAR: &str = "ZEROSTATE_TEST_POSTGRES_URL";

/// Whether the suite runs on PostgreSQL (tests that look at SQLite's files skip that
/// part).
pub fn on_postgres() -> bool {
    std::env::var_os(POSTGRES_URL_VAR).is_some()
}

/// On PostgreSQL, a fresh database for one app (`CREATE DATABASE` on the server the
/// variable names) and its URL; `None` on SQLite.
async fn fresh_database() -> Option<String> {
    use sqlx::Connection;
    let server = std::env::var(POSTGRES_URL_VAR).ok()?;
    let name = format!("api_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_VAR}={server}: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    // The same server, this database: replace the path of the URL.
    let (base, _) = server
        .split_once('?')
        .map_or((server.as_str(), ""), |(b, q)| (b, q));
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    Some(format!("{}/{name}", &base[..authority_end]))
}

/// Starts a server with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Starts a server with the given options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    spawn_on(fresh_database().await, options).await
}

/// On PostgreSQL, a second node: another server process, with its own data directory,
/// on this app's database (`None` on SQLite, whose database one process owns).
pub async fn spawn_node_on_same_database(app: &TestApp) -> Option<TestApp> {
    let url = app.database_url.clone()?;
    Some(spawn_on(Some(url), app.options.clone()).await)
}

async fn spawn_on(database_url: Option<String>, options: AppOptions) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let (child, port) = start(
        data_dir.path(),
        database_url.as_deref(),
        &options,
        "127.0.0.1:0",
    )
    .await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        data_dir,
        database_url,
        options,
        process: Spawned(Some(child)),
    }
}

async fn start(
    data_dir: &Path,
    database_url: Option<&str>,
    options: &AppOptions,
    addr: &str,
) -> (Child, u16) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(data_dir.join("server.log"))
        .expect("log file");
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .arg("--addr")
        .arg(addr)
        .arg("--data-dir")
        .arg(data_dir)
        .args(&options.extra_args)
        .env_remove("ZEROSTATE_DATABASE_URL")
        .env_remove("ZEROSTATE_REDIS_URL")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    if !options.builtin_agent {
        cmd.arg("--no-builtin-agent");
    }
    if options.real_limits {
        cmd.env_remove("ZEROSTATE_REGISTRATION_LIMIT")
            .env_remove("ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS");
    } else {
        cmd.env("ZEROSTATE_REGISTRATION_LIMIT", "0")
            .env("ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS", "0");
    }
    let mut child = cmd.spawn().expect("start zerostate");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            if let Some(url) = line.strip_prefix("zerostate listening on http://") {
                let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                return port.expect("port in listening line");
            }
        }
        panic!(
            "server exited before listening; see {}",
            data_dir.join("server.log").display()
        );
    })
    .await
    .expect("server did not start within 30 s");
    // Keep draining stdout so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

impl TestApp {
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.path().to_owned()
    }

    /// The flags that point an operator command (`zerostate users …`) at this app's
    /// data: its data directory, and its database when the suite runs on PostgreSQL.
    pub fn storage_args(&self) -> Vec<std::ffi::OsString> {
        let mut args = vec!["--data-dir".into(), self.data_dir.path().into()];
        if let Some(url) = &self.database_url {
            args.extend(["--database-url".into(), url.into()]);
        }
        args
    }

    /// `ws://127.0.0.1:PORT`
    pub fn ws_address(&self) -> String {
        self.address.replacen("http://", "ws://", 1)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.process.pid()
    }

    /// Sends SIGTERM without waiting: the server starts draining.
    pub fn begin_shutdown(&self) {
        self.process.begin_shutdown();
    }

    /// Waits up to `within` for the server to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        self.process.wait_exit(within).await
    }

    /// Sends SIGTERM and waits for the server to exit; returns its exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        self.process.stop(Duration::from_secs(30)).await
    }

    /// Kills the server without letting it drain (a crash).
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let addr = format!("127.0.0.1:{}", self.port);
        let mut last = None;
        for _ in 0..50 {
            // The port can stay busy for a moment after the old process exits.
            match tokio::time::timeout(
                Duration::from_secs(30),
                start_checked(
                    self.data_dir.path(),
                    self.database_url.as_deref(),
                    &self.options,
                    &addr,
                ),
            )
            .await
            {
                Ok(Some(child)) => {
                    self.process = Spawned(Some(child));
                    return;
                }
                other => last = Some(other.is_err()),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("could not restart the server (timed out: {last:?})");
    }

    /// Sends a request with an optional bearer token and JSON body; returns status and
    /// JSON body (`Value::Null` when the body is empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    pub async fn put(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, token, Some(body)).await
    }

    pub async fn delete(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, token, None).await
    }

    /// Registers a fresh account and returns it.
    pub async fn register(&self, email: &str, password: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/api/v1/users/register",
                None,
                json!({ "email": email, "password": password, "full_name": "Test User" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register {email}: {body}");
        TestUser::from_auth_body(&body, password)
    }

    /// Registers an account with a unique email.
    pub async fn new_user(&self) -> TestUser {
        self.register(&unique_email(), "correct horse battery")
            .await
    }

    /// Logs in and returns the session.
    pub async fn login(&self, email: &str, password: &str) -> TestUser {
        let (status, body) = self
            .post(
                "/api/v1/users/login",
                None,
                json!({ "email": email, "password": password }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        TestUser::from_auth_body(&body, password)
    }

    /// Creates an API key for the user and returns its secret.
    pub async fn create_api_key(&self, user: &TestUser, name: &str) -> (String, Value) {
        let (status, body) = self
            .post(
                "/api/v1/api-keys",
                Some(&user.token),
                json!({ "name": name }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "create key: {body}");
        (body["key"].as_str().expect("key").to_owned(), body)
    }
}

impl TestApp {
    /// A plain TCP connection to the server (for hand-written HTTP and WebSocket bytes).
    pub async fn tcp(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect")
    }

    /// The `/metrics` page as text (Prometheus exposition format).
    pub async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

async fn start_checked(
    data_dir: &Path,
    database_url: Option<&str>,
    options: &AppOptions,
    addr: &str,
) -> Option<Child> {
    // `start` panics when the process exits early (port still busy): catch that by
    // running it in a task.
    let (dir, opts, addr) = (data_dir.to_owned(), options.clone(), addr.to_owned());
    let url = database_url.map(str::to_owned);
    tokio::spawn(async move { start(&dir, url.as_deref(), &opts, &addr).await.0 })
        .await
        .ok()
}

/// A process the harness started (the server or a reference agent), until it is
/// stopped or killed; `kill_on_drop` ends it with the test.
pub struct Spawned(Option<Child>);

impl Spawned {
    /// The process id (while it runs).
    pub fn pid(&self) -> Option<u32> {
        self.0.as_ref().and_then(Child::id)
    }

    /// Sends SIGTERM to this one process (never a group) without waiting: it starts
    /// draining.
    pub fn begin_shutdown(&self) {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }

    /// Waits up to `within` for the process to exit; returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let mut child = self.0.take()?;
        let status = tokio::time::timeout(within, child.wait())
            .await
            .expect("process did not stop in time")
            .expect("wait");
        status.code()
    }

    /// Sends SIGTERM and waits up to `within` for the process to exit; returns its exit
    /// code.
    pub async fn stop(&mut self, within: Duration) -> Option<i32> {
        self.begin_shutdown();
        self.wait_exit(within).await
    }

    /// Kills the process without letting it drain (SIGKILL).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill().await;
        }
    }
}

/// A signed-in account.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
    pub role: String,
}

impl TestUser {
    fn from_auth_body(body: &Value, password: &str) -> Self {
        Self {
            id: body["user"]["id"].as_str().expect("user.id").to_owned(),
            email: body["user"]["email"]
                .as_str()
                .expect("user.email")
                .to_owned(),
            password: password.to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            role: body["user"]["role"].as_str().expect("user.role").to_owned(),
        }
    }
}

/// An email no other test uses.
pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

// ---------------------------------------------------------------------------------------
// Real-time helpers (real-time hub issue): WebSocket and SSE clients, publish calls.
// ---------------------------------------------------------------------------------------

/// A WebSocket client stream.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// How long a test waits for a real-time message before failing.
pub const WS_WAIT: Duration = Duration::from_secs(10);

/// How a real-time connection presents its credentials.
#[derive(Debug, Clone, Copy)]
pub enum WsAuth<'a> {
    None,
    Bearer(&'a str),
    Cookie(&'a str),
    Query(&'a str),
}

/// Options for opening a real-time connection.
#[derive(Debug, Clone, Copy, Default)]
pub struct WsOpen<'a> {
    pub since: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// Shrinks the client's socket receive buffer (for stalled-reader tests).
    pub small_recv_buffer: bool,
}

fn ws_request(
    app: &TestApp,
    auth: WsAuth<'_>,
    open: WsOpen<'_>,
) -> tokio_tungstenite::tungstenite::handshake::client::Request {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut query = Vec::new();
    if let WsAuth::Query(token) = auth {
        query.push(format!("token={}", urlencode(token)));
    }
    if let Some(since) = open.since {
        query.push(format!("since={}", urlencode(since)));
    }
    let mut url = format!("{}/api/v1/ws/connect", app.ws_address());
    if !query.is_empty() {
        url = format!("{url}?{}", query.join("&"));
    }
    let mut request = url.into_client_request().expect("ws request");
    let headers = request.headers_mut();
    match auth {
        WsAuth::Bearer(token) => {
            headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        WsAuth::Cookie(token) => {
            headers.insert("cookie", format!("zs_session={token}").parse().unwrap());
        }
        WsAuth::None | WsAuth::Query(_) => {}
    }
    if let Some(origin) = open.origin {
        headers.insert("origin", origin.parse().unwrap());
    }
    request
}

/// Percent-encodes a query value.
pub fn urlencode(raw: &str) -> String {
    raw.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl TestApp {
    /// Opens a real-time WebSocket; `Err(status)` when the server refused the upgrade.
    pub async fn ws_try(&self, auth: WsAuth<'_>, open: WsOpen<'_>) -> Result<WsClient, u16> {
        let request = ws_request(self, auth, open);
        let result = if open.small_recv_buffer {
            let socket = tokio::net::TcpSocket::new_v4().expect("socket");
            socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
            let stream = socket
                .connect(format!("127.0.0.1:{}", self.port).parse().unwrap())
                .await
                .expect("tcp connect");
            tokio_tungstenite::client_async(
                request,
                tokio_tungstenite::MaybeTlsStream::Plain(stream),
            )
            .await
        } else {
            tokio_tungstenite::connect_async(request).await
        };
        match result {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("websocket connect failed: {other}"),
        }
    }

    /// Opens a WebSocket with a bearer token and returns it with its `welcome` message.
    pub async fn ws(&self, token: &str) -> (WsClient, Value) {
        self.ws_with(token, WsOpen::default()).await
    }

    /// Opens a WebSocket that resumes after `cursor`; returns it and its `welcome`.
    pub async fn ws_since(&self, token: &str, cursor: &str) -> (WsClient, Value) {
        let open = WsOpen {
            since: Some(cursor),
            ..Default::default()
        };
        self.ws_with(token, open).await
    }

    /// Opens a WebSocket with a bearer token and options; returns it and its `welcome`.
    pub async fn ws_with(&self, token: &str, open: WsOpen<'_>) -> (WsClient, Value) {
        let mut client = self
            .ws_try(WsAuth::Bearer(token), open)
            .await
            .unwrap_or_else(|status| panic!("websocket refused with {status}"));
        let welcome = client.next().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first message must be welcome: {welcome}"
        );
        (client, welcome)
    }

    /// `POST /api/v1/ws/user/{id}`.
    pub async fn publish_to(
        &self,
        token: &str,
        user_id: &str,
        kind: &str,
        data: Value,
    ) -> (StatusCode, Value) {
        self.post(
            &format!("/api/v1/ws/user/{user_id}"),
            Some(token),
            json!({ "type": kind, "data": data }),
        )
        .await
    }

    /// `POST /api/v1/ws/user/{id}`, asserting 202.
    pub async fn publish_ok(&self, token: &str, user_id: &str, kind: &str, data: Value) -> Value {
        let (status, body) = self.publish_to(token, user_id, kind, data).await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish: {body}");
        body
    }

    /// `POST /api/v1/ws/broadcast`.
    pub async fn broadcast(&self, token: &str, kind: &str, data: Value) -> (StatusCode, Value) {
        self.post(
            "/api/v1/ws/broadcast",
            Some(token),
            json!({ "type": kind, "data": data }),
        )
        .await
    }

    /// `GET /api/v1/ws/stats` → the `stats` object.
    pub async fn ws_stats(&self) -> Value {
        let (status, body) = self.get("/api/v1/ws/stats", None).await;
        assert_eq!(status, StatusCode::OK, "stats: {body}");
        body["stats"].clone()
    }

    /// Opens `GET /api/v1/events` with a bearer token and optional `Last-Event-ID`.
    pub async fn sse(&self, token: &str, last_event_id: Option<&str>) -> SseClient {
        let mut req = self
            .client
            .get(self.url("/api/v1/events"))
            .bearer_auth(token);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id);
        }
        let response = req.send().await.expect("sse request");
        assert_eq!(response.status(), StatusCode::OK, "sse refused");
        SseClient {
            response,
            buffer: String::new(),
        }
    }
}

/// A test WebSocket client.
pub struct WsClient {
    pub stream: WsStream,
}

impl WsClient {
    /// The next raw message (pings and pongs skipped); `None` at end of stream.
    pub async fn next_raw(&mut self) -> Option<WsMessage> {
        use futures_util::StreamExt;
        loop {
            let next = tokio::time::timeout(WS_WAIT, self.stream.next())
                .await
                .expect("no websocket message within 10 s");
            match next {
                None | Some(Err(_)) => return None,
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
            }
        }
    }

    /// The next JSON message; panics on close or timeout.
    pub async fn next(&mut self) -> Value {
        match self.next_raw().await {
            Some(WsMessage::Text(text)) => {
                serde_json::from_str(text.as_str()).expect("server sent invalid JSON")
            }
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Sends a message.
    pub async fn send(&mut self, message: WsMessage) {
        use futures_util::SinkExt;
        self.stream.send(message).await.expect("websocket send");
    }

    /// Sends JSON text.
    pub async fn send_json(&mut self, value: Value) {
        self.send(WsMessage::text(value.to_string())).await;
    }

    /// Reads until the server's close frame and returns its code (skipping any other
    /// messages); `None` if the connection ended without one.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            match self.next_raw().await? {
                WsMessage::Close(Some(frame)) => return Some(u16::from(frame.code)),
                WsMessage::Close(None) => return None,
                _ => continue,
            }
        }
    }

    /// Closes from the client side.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: Option<String>,
    pub id: Option<String>,
    pub data: Value,
}

/// A test SSE client reading the response body.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// The next event (comments skipped); `None` when the stream ended.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let (mut event, mut id, mut data) = (None, None, Vec::new());
                for line in block.lines() {
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                    match field {
                        "event" => event = Some(value),
                        "id" => id = Some(value),
                        "data" => data.push(value),
                        _ => {}
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data.join("\n")).expect("event data is JSON");
                return Some(SseEvent { event, id, data });
            }
            let chunk = tokio::time::timeout(WS_WAIT, self.response.chunk())
                .await
                .expect("no SSE data within 10 s")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Agents and tasks helpers (agents and tasks issue): registering agents, submitting and
// waiting for tasks, and running the reference agent `zerostate agent run` as a process.
// ---------------------------------------------------------------------------------------

/// How long a test waits for a task to reach a state before failing.
pub const TASK_WAIT: Duration = Duration::from_secs(30);

impl TestApp {
    /// Starts a server whose claimed tasks lose their lease after `lease_s` seconds.
    pub async fn with_lease(lease_s: u64) -> TestApp {
        spawn_app_with(AppOptions {
            extra_args: vec!["--task-lease-s".into(), lease_s.to_string()],
            ..AppOptions::default()
        })
        .await
    }

    /// Registers an agent; returns its JSON and its `zsa_` token.
    pub async fn register_agent(
        &self,
        user: &TestUser,
        name: &str,
        capabilities: &[&str],
    ) -> (Value, String) {
        self.register_agent_as(
            user,
            json!({ "name": name, "description": "test agent", "capabilities": capabilities }),
        )
        .await
    }

    /// Registers an agent from a raw request body (e.g. with `shared`); returns its JSON
    /// and its `zsa_` token.
    pub async fn register_agent_as(&self, user: &TestUser, body: Value) -> (Value, String) {
        let (status, body) = self
            .post("/api/v1/agents/register", Some(&user.token), body)
            .await;
        assert_eq!(status, StatusCode::CREATED, "register agent: {body}");
        let token = body["agent_token"]
            .as_str()
            .expect("agent_token")
            .to_owned();
        (body["agent"].clone(), token)
    }

    /// Submits a task (202 expected) and returns its JSON.
    pub async fn submit(&self, user: &TestUser, body: Value) -> Value {
        let (status, answer) = self
            .post("/api/v1/tasks/submit", Some(&user.token), body)
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit: {answer}");
        answer["task"].clone()
    }

    /// Submits a task with just a query.
    pub async fn submit_query(&self, user: &TestUser, query: &str) -> String {
        let task = self.submit(user, json!({ "query": query })).await;
        task["id"].as_str().expect("task id").to_owned()
    }

    /// `GET /api/v1/tasks/{id}`, asserting 200.
    pub async fn task(&self, user: &TestUser, id: &str) -> Value {
        let (status, body) = self
            .get(&format!("/api/v1/tasks/{id}"), Some(&user.token))
            .await;
        assert_eq!(status, StatusCode::OK, "get task: {body}");
        body
    }

    /// Polls the task until `done` holds; panics with the task after `TASK_WAIT`.
    pub async fn wait_task(
        &self,
        user: &TestUser,
        id: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        eventually(TASK_WAIT, Duration::from_millis(50), async || {
            let task = self.task(user, id).await;
            if done(&task) {
                return Ok(task);
            }
            Err(format!(
                "task did not reach the expected state: {task}\nserver log:\n{}",
                self.log()
            ))
        })
        .await
    }

    /// Polls until the task has the given status.
    pub async fn wait_status(&self, user: &TestUser, id: &str, status: &str) -> Value {
        self.wait_task(user, id, |t| t["status"] == status).await
    }

    /// Calls the runtime API as an agent.
    pub async fn runtime(&self, agent_token: &str, path: &str, body: Value) -> (StatusCode, Value) {
        self.post(&format!("/api/v1/runtime{path}"), Some(agent_token), body)
            .await
    }

    /// Starts `zerostate agent run` against this server.
    pub fn spawn_agent(&self, token: &str, exec: &str, concurrency: u16) -> AgentProcess {
        let log_path = self
            .data_dir()
            .join(format!("agent-{}.log", uuid::Uuid::new_v4().simple()));
        let log = std::fs::File::create(&log_path).expect("agent log");
        let child = Command::new(BIN)
            .args([
                "agent",
                "run",
                "--server",
                &self.address,
                "--token",
                token,
                "--exec",
                exec,
            ])
            .args(["--concurrency", &concurrency.to_string()])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("start zerostate agent run");
        AgentProcess {
            process: Spawned(Some(child)),
            log_path,
        }
    }
}

/// A running reference agent process.
pub struct AgentProcess {
    /// The process itself (pid, SIGTERM, waiting for its exit).
    pub process: Spawned,
    log_path: PathBuf,
}

impl AgentProcess {
    /// Kills the agent without warning (SIGKILL): it cannot hand its tasks back.
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Sends SIGTERM and waits for the agent to exit; returns its exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        self.process.stop(Duration::from_secs(15)).await
    }

    /// What the agent logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

impl WsClient {
    /// Reads messages until one of type `kind` satisfies `pick`; returns its `data`.
    pub async fn next_of(&mut self, kind: &str, pick: impl Fn(&Value) -> bool) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == kind && pick(&message["data"]) {
                return message["data"].clone();
            }
        }
    }
}

/// Polls `check` every `every` until it answers `Ok`, and returns that; once `within`
/// has passed, fails the test with the last `Err` (what is still missing). Every
/// "eventually" condition in the tests waits through this, so each has a deadline.
pub async fn eventually<T>(
    within: Duration,
    every: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match check().await {
            Ok(done) => return done,
            Err(missing) => assert!(tokio::time::Instant::now() < deadline, "{missing}"),
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits (polling every 100 ms) until the process `pid` is gone; fails the test with
/// `why()` if it still runs after `within`.
pub async fn wait_gone(pid: u32, within: Duration, why: impl Fn() -> String) {
    eventually(within, Duration::from_millis(100), async || {
        if process_alive(pid) {
            Err(why())
        } else {
            Ok(())
        }
    })
    .await;
}

/// Whether a process with this pid is alive.
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    pid > 1 && unsafe { libc::kill(pid, 0) } == 0
}

/// Kills the process group led by `pid` (a command the reference agent started in its
/// own group). Refuses anything that is not a group leader, so a wrong pid can never
/// take the test runner's own group with it.
pub fn kill_process_group(pid: u32) {
    let Ok(pid) = i32::try_from(pid) else { return };
    // SAFETY: plain syscalls on integers; guarded so only `pid`'s own group is hit.
    unsafe {
        if pid > 1 && libc::getpgid(pid) == pid && libc::getpgid(0) != pid {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}

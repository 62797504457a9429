//! One ZeroState node of the cluster (the built binary, `serve` against the shared
//! PostgreSQL and Redis with its own data directory), restartable on its port and
//! SIGKILL-able; and `Api`, the calls a test makes to any HTTP entry point (a node or
//! the nginx in front), with WebSocket and SSE clients. Patterns from
//! `tests/api/helpers.rs`.
#![allow(dead_code)] // A shared harness: not every test uses every method.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_zerostate");

/// How long a node may take to print its address (migrations on a busy machine).
const NODE_START_WAIT: Duration = Duration::from_secs(90);

/// How long a test waits for one real-time message before failing.
pub const WS_WAIT: Duration = Duration::from_secs(30);

/// An HTTP entry point: a node or the load balancer.
#[derive(Clone)]
pub struct Api {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub port: u16,
    pub client: reqwest::Client,
}

/// A signed-in account.
#[derive(Debug, Clone)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password: String,
    pub token: String,
    pub role: String,
}

impl User {
    fn from_auth_body(body: &Value, password: &str) -> Self {
        Self {
            id: body["user"]["id"].as_str().expect("user.id").to_owned(),
            email: body["user"]["email"].as_str().expect("email").to_owned(),
            password: password.to_owned(),
            token: body["token"].as_str().expect("token").to_owned(),
            role: body["user"]["role"].as_str().expect("role").to_owned(),
        }
    }
}

/// An email no other test uses.
pub fn unique_email() -> String {
    format!("user-{}@example.com", uuid::Uuid::new_v4().simple())
}

impl Api {
    /// The entry point on `127.0.0.1:port`.
    pub fn new(port: u16) -> Api {
        Api {
            address: format!("http://127.0.0.1:{port}"),
            port,
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        }
    }

    /// The full URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.address, path)
    }

    /// A request with an optional bearer token and JSON body: status and JSON body
    /// (`Null` when empty or not JSON); `Err` when no answer came (node down).
    pub async fn try_call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(StatusCode, Value), reqwest::Error> {
        let mut req = self.client.request(method, self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// As `try_call`, failing the test when no answer came.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.try_call(method.clone(), path, token, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {}{path}: {e}", self.address))
    }

    /// `GET path`.
    pub async fn get(&self, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        self.call(Method::GET, path, token, None).await
    }

    /// `POST path` with a JSON body.
    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, token, Some(body)).await
    }

    /// Registers an account with a unique email.
    pub async fn new_user(&self) -> User {
        let password = "correct horse battery";
        let (status, body) = self
            .post(
                "/api/v1/users/register",
                None,
                json!({ "email": unique_email(), "password": password, "full_name": "Test User" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register: {body}");
        User::from_auth_body(&body, password)
    }

    /// Logs in (a new session) and returns it.
    pub async fn login(&self, user: &User) -> User {
        let (status, body) = self
            .post(
                "/api/v1/users/login",
                None,
                json!({ "email": user.email, "password": user.password }),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "login: {body}");
        User::from_auth_body(&body, &user.password)
    }

    /// Submits a task with just a query (202 expected); returns its id.
    pub async fn submit_query(&self, user: &User, query: &str) -> String {
        let (status, body) = self
            .post(
                "/api/v1/tasks/submit",
                Some(&user.token),
                json!({ "query": query }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "submit: {body}");
        body["task"]["id"].as_str().expect("task id").to_owned()
    }

    /// Registers an agent; returns its JSON and its `zsa_` token.
    pub async fn register_agent(&self, user: &User, name: &str) -> (Value, String) {
        let (status, body) = self
            .post(
                "/api/v1/agents/register",
                Some(&user.token),
                json!({ "name": name, "description": "cluster test agent", "capabilities": ["general"] }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "register agent: {body}");
        let token = body["agent_token"]
            .as_str()
            .expect("agent_token")
            .to_owned();
        (body["agent"].clone(), token)
    }

    /// `POST /api/v1/ws/user/{id}`, asserting 202; returns the answer.
    pub async fn publish_ok(&self, admin: &User, user_id: &str, kind: &str, data: Value) -> Value {
        let (status, body) = self
            .post(
                &format!("/api/v1/ws/user/{user_id}"),
                Some(&admin.token),
                json!({ "type": kind, "data": data }),
            )
            .await;
        assert_eq!(status, StatusCode::ACCEPTED, "publish: {body}");
        body
    }

    /// `GET /api/v1/ws/stats` → the `stats` object.
    pub async fn ws_stats(&self) -> Value {
        let (status, body) = self.get("/api/v1/ws/stats", None).await;
        assert_eq!(status, StatusCode::OK, "stats: {body}");
        body["stats"].clone()
    }

    /// `GET /health`: status and body; `None` when the node does not answer.
    pub async fn health(&self) -> Option<(StatusCode, Value)> {
        self.try_call(Method::GET, "/health", None, None).await.ok()
    }

    /// Opens a real-time WebSocket (bearer token), resuming after `since` if given;
    /// `Err(status)` when the upgrade is refused.
    pub async fn ws_try(&self, token: &str, since: Option<&str>) -> Result<WsClient, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut url = format!(
            "{}/api/v1/ws/connect",
            self.address.replacen("http://", "ws://", 1)
        );
        if let Some(since) = since {
            url = format!("{url}?since={}", urlencode(since));
        }
        let mut request = url.into_client_request().expect("ws request");
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        match tokio_tungstenite::connect_async(request).await {
            Ok((stream, _)) => Ok(WsClient { stream }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                Err(response.status().as_u16())
            }
            Err(other) => panic!("websocket connect to {} failed: {other}", self.address),
        }
    }

    /// Opens a WebSocket and returns it with its `welcome`.
    pub async fn ws(&self, token: &str) -> (WsClient, Value) {
        self.ws_since_opt(token, None).await
    }

    /// Opens a WebSocket resuming after `cursor`; returns it with its `welcome`.
    pub async fn ws_since(&self, token: &str, cursor: &str) -> (WsClient, Value) {
        self.ws_since_opt(token, Some(cursor)).await
    }

    async fn ws_since_opt(&self, token: &str, since: Option<&str>) -> (WsClient, Value) {
        let mut client = self
            .ws_try(token, since)
            .await
            .unwrap_or_else(|status| panic!("websocket refused with {status}"));
        let welcome = client.next().await;
        assert_eq!(
            welcome["type"], "welcome",
            "first message must be welcome: {welcome}"
        );
        (client, welcome)
    }

    /// Opens `GET /api/v1/events` (SSE) with a bearer token.
    pub async fn sse(&self, token: &str) -> SseClient {
        let response = self
            .client
            .get(self.url("/api/v1/events"))
            .bearer_auth(token)
            .timeout(Duration::from_secs(600))
            .send()
            .await
            .expect("sse request");
        assert_eq!(response.status(), StatusCode::OK, "sse refused");
        SseClient {
            response,
            buffer: String::new(),
        }
    }
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

/// A WebSocket client stream.
pub type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// What came next on a WebSocket.
#[derive(Debug)]
pub enum Next {
    /// A JSON text message.
    Message(Value),
    /// The server closed with this code (`None`: the connection ended without one).
    Closed(Option<u16>),
    /// Nothing within the wait.
    Silent,
}

/// A test WebSocket client.
pub struct WsClient {
    pub stream: WsStream,
}

impl WsClient {
    /// The next message, close or silence within `within` (pings and pongs skipped).
    pub async fn next_within(&mut self, within: Duration) -> Next {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let Ok(next) = tokio::time::timeout_at(deadline, self.stream.next()).await else {
                return Next::Silent;
            };
            match next {
                None | Some(Err(_)) => return Next::Closed(None),
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Close(frame))) => {
                    return Next::Closed(frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(WsMessage::Text(text))) => {
                    return Next::Message(
                        serde_json::from_str(text.as_str()).expect("server sent invalid JSON"),
                    )
                }
                Some(Ok(WsMessage::Binary(_))) => panic!("server sent a binary message"),
            }
        }
    }

    /// The next JSON message; panics on close or after `WS_WAIT`.
    pub async fn next(&mut self) -> Value {
        match self.next_within(WS_WAIT).await {
            Next::Message(message) => message,
            other => panic!("expected a message within {WS_WAIT:?}, got {other:?}"),
        }
    }

    /// Reads messages until one of type `kind` satisfies `pick`; returns it whole.
    pub async fn next_of(&mut self, kind: &str, pick: impl Fn(&Value) -> bool) -> Value {
        loop {
            let message = self.next().await;
            if message["type"] == kind && pick(&message["data"]) {
                return message;
            }
        }
    }

    /// Reads until the server closes; returns the close code (other messages skipped).
    pub async fn close_code(&mut self, within: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_within(left).await {
                Next::Message(_) => {}
                Next::Closed(code) => return code,
                Next::Silent => panic!("the connection was not closed within {within:?}"),
            }
        }
    }
}

/// A test SSE client reading the response body.
pub struct SseClient {
    response: reqwest::Response,
    buffer: String,
}

impl SseClient {
    /// The next event's `(event, id, data)` (comments skipped); `None` at the end.
    pub async fn next_event(&mut self) -> Option<(Option<String>, Option<String>, Value)> {
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
                return Some((event, id, data));
            }
            let chunk = tokio::time::timeout(WS_WAIT, self.response.chunk())
                .await
                .expect("no SSE data in time")
                .ok()??;
            self.buffer.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

/// One node: the binary with the cluster's database and Redis and its own data dir.
pub struct Node {
    /// `A`, `B`, `C`, … (for messages).
    pub name: String,
    pub api: Api,
    args: Vec<String>,
    dir: tempfile::TempDir,
    process: Option<Child>,
}

impl std::ops::Deref for Node {
    type Target = Api;
    fn deref(&self) -> &Api {
        &self.api
    }
}

impl Node {
    /// Starts a node on a free port with these `serve` arguments (database and Redis
    /// URLs included by the caller).
    pub async fn start(name: &str, args: Vec<String>) -> Node {
        let dir = tempfile::Builder::new()
            .prefix(&format!("zs-cluster-node{name}-"))
            .tempdir()
            .expect("temp dir");
        let (child, port) = spawn(dir.path(), &args, "127.0.0.1:0").await;
        Node {
            name: name.to_owned(),
            api: Api::new(port),
            args,
            dir,
            process: Some(child),
        }
    }

    /// The node's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().and_then(Child::id)
    }

    /// Kills the node without letting it drain (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.process.take() {
            let _ = child.kill().await;
        }
    }

    /// SIGTERM and wait for the exit (up to 60 s); returns the exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.process.take()?;
        if let Some(pid) = child.id() {
            crate::services::signal(pid, libc::SIGTERM);
        }
        let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
            .await
            .expect("node did not stop within 60 s")
            .expect("wait");
        status.code()
    }

    /// Starts the node again (after `stop` or `kill`) on the same port and data dir.
    pub async fn start_again(&mut self) {
        assert!(
            self.process.is_none(),
            "node {} is still running",
            self.name
        );
        let addr = format!("127.0.0.1:{}", self.api.port);
        for _ in 0..100 {
            // The port can stay busy for a moment after the old process exits.
            let (dir, args, addr) = (self.dir.path().to_owned(), self.args.clone(), addr.clone());
            if let Ok((child, _)) =
                tokio::spawn(async move { spawn(&dir, &args, &addr).await }).await
            {
                self.process = Some(child);
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("could not start node {} again:\n{}", self.name, self.log());
    }
}

/// Spawns `zerostate serve` and waits for its "listening" line; panics if it exits first.
async fn spawn(data_dir: &Path, args: &[String], addr: &str) -> (Child, u16) {
    let log_path = data_dir.join("server.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .expect("log file");
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--addr")
        .arg(addr)
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--no-builtin-agent")
        .args(args)
        .env_remove("ZEROSTATE_DATABASE_URL")
        .env_remove("ZEROSTATE_REDIS_URL")
        .env_remove("ZEROSTATE_SIGNING_KEY")
        // Tests sign up many accounts and open many sockets from one address.
        .env("ZEROSTATE_REGISTRATION_LIMIT", "0")
        .env("ZEROSTATE_MAX_CONNECTIONS_PER_ADDRESS", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start zerostate");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let port = tokio::time::timeout(NODE_START_WAIT, async {
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(url) = line.strip_prefix("zerostate listening on http://") {
                let port = url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                return port.expect("port in listening line");
            }
        }
        panic!(
            "node exited before listening:\n{}",
            std::fs::read_to_string(&log_path).unwrap_or_default()
        );
    })
    .await
    .unwrap_or_else(|_| panic!("node did not start within {NODE_START_WAIT:?}"));
    // Keep draining stdout so the node never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, port)
}

/// Polls `check` every `every` until it answers `Ok`, and returns that; once `within`
/// has passed, fails the test with the last `Err` (what is still missing).
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

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
}

/// A running server.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`
    pub address: String,
    pub port: u16,
    /// A client without a cookie jar: tests pass credentials explicitly.
    pub client: reqwest::Client,
    data_dir: Arc<tempfile::TempDir>,
    options: AppOptions,
    child: Option<Child>,
}

/// Starts a server with default options.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// Starts a server with the given options.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let data_dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    let (child, port) = start(data_dir.path(), &options, "127.0.0.1:0").await;
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        client: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .expect("client"),
        data_dir,
        options,
        child: Some(child),
    }
}

async fn start(data_dir: &Path, options: &AppOptions, addr: &str) -> (Child, u16) {
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
    if !options.builtin_agent {
        cmd.arg("--no-builtin-agent");
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
        panic!("server exited before listening; see {}", data_dir.join("server.log").display());
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

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub async fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("server did not stop within 30 s")
            .expect("wait");
        status.code()
    }

    /// Kills the process without letting it drain (a crash).
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Stops the server and starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        self.stop().await;
        let addr = format!("127.0.0.1:{}", self.port);
        let mut last = None;
        for _ in 0..50 {
            // The port can stay busy for a moment after the old process exits.
            match tokio::time::timeout(Duration::from_secs(30), start_checked(self.data_dir.path(), &self.options, &addr)).await {
                Ok(Some(child)) => {
                    self.child = Some(child);
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
    pub async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
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
        self.register(&unique_email(), "correct horse battery").await
    }

    /// Logs in and returns the session.
    pub async fn login(&self, email: &str, password: &str) -> TestUser {
        let (status, body) = self
            .post("/api/v1/users/login", None, json!({ "email": email, "password": password }))
            .await;
        assert_eq!(status, StatusCode::OK, "login {email}: {body}");
        TestUser::from_auth_body(&body, password)
    }

    /// Creates an API key for the user and returns its secret.
    pub async fn create_api_key(&self, user: &TestUser, name: &str) -> (String, Value) {
        let (status, body) = self.post("/api/v1/api-keys", Some(&user.token), json!({ "name": name })).await;
        assert_eq!(status, StatusCode::CREATED, "create key: {body}");
        (body["key"].as_str().expect("key").to_owned(), body)
    }
}

async fn start_checked(data_dir: &Path, options: &AppOptions, addr: &str) -> Option<Child> {
    // `start` panics when the process exits early (port still busy): catch that by
    // running it in a task.
    let (dir, opts, addr) = (data_dir.to_owned(), options.clone(), addr.to_owned());
    tokio::spawn(async move { start(&dir, &opts, &addr).await.0 }).await.ok()
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
            email: body["user"]["email"].as_str().expect("user.email").to_owned(),
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

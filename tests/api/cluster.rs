//! The cluster backplane seen from outside: nodes started with `--redis-url` on a
//! `redis-server` of the test's own (127.0.0.1, a free port, a temporary directory,
//! killed on drop). Each node here keeps its own SQLite store: what is checked is what
//! the backplane shares (health, stats, limits), not the data.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` for one test; restartable on the same port.
struct Redis {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Redis {
    async fn start() -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
        };
        // A port found free can be taken (by another test's outgoing connection) before
        // redis-server binds it: then it exits at once, and another port is tried.
        for _ in 0..5 {
            if redis.try_spawn().await {
                return redis;
            }
            redis.port = free_port();
        }
        panic!("redis-server did not start on any of five ports");
    }

    /// Starts it again on the same port (after `kill`).
    async fn spawn(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.try_spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts redis-server on this port; whether it accepts connections (false: it
    /// exited, e.g. the port was taken).
    async fn try_spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return true;
            }
            let child = self.child.as_mut().expect("just started");
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn node(&self, real_limits: bool) -> TestApp {
        spawn_app_with(AppOptions {
            extra_args: vec!["--redis-url".into(), self.url()],
            real_limits,
            ..AppOptions::default()
        })
        .await
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls until `check` holds, for at most `limit`.
async fn eventually<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

#[tokio::test]
async fn one_node_reports_itself_as_the_only_node() {
    let app = spawn_app().await;
    let stats = app.ws_stats().await;
    let nodes = stats["nodes"].as_array().expect("nodes");
    assert_eq!(nodes.len(), 1, "{stats}");
    assert!(nodes[0]["node_id"]
        .as_str()
        .is_some_and(|id| !id.is_empty()));
    assert_eq!(
        nodes[0]["current_connections"],
        stats["current_connections"]
    );
}

#[tokio::test]
async fn health_turns_degraded_while_redis_is_down_and_recovers_by_itself() {
    let mut redis = Redis::start().await;
    let app = redis.node(false).await;
    let (status, body) = app.get("/health", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["checks"]["backplane"], "ok");

    redis.kill();
    let started = Instant::now();
    let (status, body) = app.get("/health", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["checks"]["backplane"], "error");
    assert_eq!(body["checks"]["database"], "ok");
    // It keeps serving what it can, without waiting on Redis past its deadlines: a
    // sign-up and a login (the throttle falls back to this node's counters).
    let user = app.new_user().await;
    app.login(&user.email, &user.password).await;
    let (status, _) = app.get("/api/v1/users/me", Some(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "requests while Redis was down took {:?}",
        started.elapsed()
    );

    redis.spawn().await;
    let healthy = eventually(Duration::from_secs(60), || async {
        let (status, body) = app.get("/health", None).await;
        status == StatusCode::OK && body["checks"]["backplane"] == "ok"
    })
    .await;
    assert!(
        healthy,
        "the node turned healthy again; log:\n{}",
        app.log()
    );
}

#[tokio::test]
async fn two_nodes_sum_their_stats_and_share_the_login_throttle() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node(false).await, redis.node(false).await);
    let user = b.new_user().await;
    let (_ws, _welcome) = b.ws(&user.token).await;
    let both = eventually(Duration::from_secs(30), || async {
        let stats = a.ws_stats().await;
        stats["nodes"].as_array().map(Vec::len) == Some(2)
            && stats["current_connections"].as_u64() >= Some(1)
    })
    .await;
    assert!(both, "A sees both nodes: {}", a.ws_stats().await);
    let stats = a.ws_stats().await;
    let ids: Vec<_> = stats["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["node_id"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(ids[0], ids[1]);

    // Five wrong passwords spread over both nodes; the sixth is refused by either.
    let email = unique_email();
    let attempt = |app: &TestApp| {
        let body = json!({ "email": email, "password": "wrong password here" });
        let app = app.address.clone();
        let client = reqwest::Client::new();
        async move {
            client
                .post(format!("{app}/api/v1/users/login"))
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    for n in 0..5 {
        let status = attempt(if n % 2 == 0 { &a } else { &b }).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    assert_eq!(attempt(&a).await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(attempt(&b).await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_registration_limit_counts_across_nodes() {
    let redis = Redis::start().await;
    let (a, b) = (redis.node(true).await, redis.node(true).await);
    // `--registration-limit` defaults to 10 per 10 minutes per address.
    for n in 0..10 {
        let node = if n % 2 == 0 { &a } else { &b };
        let (status, body) = node
            .post(
                "/api/v1/users/register",
                None,
                json!({ "email": unique_email(), "password": "correct horse battery", "full_name": "N" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "sign-up {n}: {body}");
    }
    for node in [&a, &b] {
        let (status, body) = node
            .post(
                "/api/v1/users/register",
                None,
                json!({ "email": unique_email(), "password": "correct horse battery", "full_name": "N" }),
            )
            .await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    }
}

/// Two nodes on one Redis that also share one store (an SQLite file both open, and one
/// signing key), so a user of one is a user of the other.
async fn two_nodes_sharing_a_store(redis: &Redis) -> (TestApp, TestApp, tempfile::TempDir) {
    two_nodes_sharing_a_store_with(redis, false).await
}

/// Like `two_nodes_sharing_a_store`, with each node's built-in agent running or not.
async fn two_nodes_sharing_a_store_with(
    redis: &Redis,
    builtin_agent: bool,
) -> (TestApp, TestApp, tempfile::TempDir) {
    let shared = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", shared.path().join("shared.db").display());
    let key = "a-signing-key-of-at-least-32-characters!!";
    let node = || {
        spawn_app_with(AppOptions {
            extra_args: vec![
                "--redis-url".into(),
                redis.url(),
                "--database-url".into(),
                url.clone(),
                "--signing-key".into(),
                key.into(),
            ],
            builtin_agent,
            ..AppOptions::default()
        })
    };
    let a = node().await;
    let b = node().await;
    (a, b, shared)
}

#[tokio::test]
async fn logout_on_one_node_closes_the_sessions_connections_on_the_other() {
    if on_postgres() {
        // These share one SQLite file between the nodes; on PostgreSQL each app gets
        // a database of its own, and the multi-node suite covers the shared case.
        return;
    }
    let redis = Redis::start().await;
    let (a, b, _shared) = two_nodes_sharing_a_store(&redis).await;
    let user = a.new_user().await;
    let (mut on_b, _) = b.ws(&user.token).await;
    let (mut on_a, _) = a.ws(&user.token).await;
    let (status, body) = a
        .post("/api/v1/users/logout", Some(&user.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let closed = tokio::time::timeout(Duration::from_secs(30), on_b.close_code()).await;
    assert_eq!(
        closed,
        Ok(Some(4001)),
        "B closed the revoked session's connection"
    );
    let closed = tokio::time::timeout(Duration::from_secs(30), on_a.close_code()).await;
    assert_eq!(closed, Ok(Some(4001)));
    // And B refuses the session from now on.
    let refused = b
        .ws_try(WsAuth::Bearer(&user.token), WsOpen::default())
        .await;
    assert_eq!(refused.err(), Some(401));
}

#[tokio::test]
async fn the_connection_cap_is_per_user_across_nodes() {
    if on_postgres() {
        // These share one SQLite file between the nodes; on PostgreSQL each app gets
        // a database of its own, and the multi-node suite covers the shared case.
        return;
    }
    let redis = Redis::start().await;
    let (a, b, _shared) = two_nodes_sharing_a_store(&redis).await;
    let user = a.new_user().await;
    let mut open = Vec::new();
    for n in 0..100 {
        let node = if n % 2 == 0 { &a } else { &b };
        let ws = node
            .ws_try(WsAuth::Bearer(&user.token), WsOpen::default())
            .await
            .unwrap_or_else(|status| panic!("connection {n} refused with {status}"));
        open.push(ws);
    }
    for node in [&a, &b] {
        let refused = node
            .ws_try(WsAuth::Bearer(&user.token), WsOpen::default())
            .await;
        assert_eq!(refused.err(), Some(429), "the 101st connection");
    }
    // Closing some on A frees places for B once A has told the backplane (a report).
    for ws in open.drain(..10) {
        ws.close().await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let freed = loop {
        match b
            .ws_try(WsAuth::Bearer(&user.token), WsOpen::default())
            .await
        {
            Ok(ws) => break Some(ws),
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => break None,
        }
    };
    assert!(freed.is_some(), "places freed on A count on B");
}

#[tokio::test]
async fn live_task_output_written_on_one_node_reaches_the_owner_on_the_other() {
    if on_postgres() {
        // These share one SQLite file between the nodes; on PostgreSQL each app gets
        // a database of its own, and the multi-node suite covers the shared case.
        return;
    }
    let redis = Redis::start().await;
    let (a, b, _shared) = two_nodes_sharing_a_store(&redis).await;
    let user = a.new_user().await;
    let (_, agent) = a.register_agent(&user, "streamer", &["general"]).await;
    let id = a.submit_query(&user, "stream something").await;
    let (status, body) = a.runtime(&agent, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "claim: {body}");
    assert_eq!(body["task"]["id"], id.as_str());
    let (mut on_b, _) = b.ws(&user.token).await;
    let (status, body) = a
        .runtime(
            &agent,
            &format!("/tasks/{id}/output"),
            json!({ "text": "hello from A" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let frame = tokio::time::timeout(
        Duration::from_secs(30),
        on_b.next_of("task_output", |d| d["task_id"] == id.as_str()),
    )
    .await
    .expect("the owner's connection on B got the output written on A");
    assert_eq!(frame["text"], "hello from A");
    assert_eq!(frame["seq"], 1);
}

#[tokio::test]
async fn a_token_rotated_on_one_node_is_refused_on_the_other_before_its_cache_ages_out() {
    if on_postgres() {
        // These share one SQLite file between the nodes; on PostgreSQL each app gets
        // a database of its own, and the multi-node suite covers the shared case.
        return;
    }
    let redis = Redis::start().await;
    let (a, b, _shared) = two_nodes_sharing_a_store(&redis).await;
    let owner = a.new_user().await;
    let (agent, old) = a.register_agent(&owner, "rotated", &["rotated"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    // B verifies the token now, so B remembers it (for up to 10 s).
    let (status, body) = b.runtime(&old, "/claim", json!({ "wait_s": 0 })).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = a
        .post(
            &format!("/api/v1/agents/{id}/token"),
            Some(&owner.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    // The backplane tells B at once; without it B would accept the old token until its
    // cache entry ages out 10 s after the claim.
    let refused = eventually(Duration::from_secs(5), || async {
        b.runtime(&old, "/claim", json!({ "wait_s": 0 })).await.0 == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused, "B refused the rotated token well before 10 s");
}

#[tokio::test]
async fn the_built_in_agents_of_two_nodes_share_one_agent_and_both_keep_working() {
    if on_postgres() {
        // These share one SQLite file between the nodes; on PostgreSQL each app gets
        // a database of its own, and the multi-node suite covers the shared case.
        return;
    }
    let redis = Redis::start().await;
    // B starts after A: with a random token per start, B's start would void A's.
    let (a, b, _shared) = two_nodes_sharing_a_store_with(&redis, true).await;
    let user = a.new_user().await;
    let (status, agents) = a.get("/api/v1/agents", Some(&user.token)).await;
    assert_eq!(status, StatusCode::OK, "{agents}");
    let builtin = agents["agents"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|agent| agent["name"] == "Built-in text agent")
        .count();
    assert_eq!(builtin, 1, "one built-in agent for the cluster: {agents}");
    // Enough tasks that both nodes' built-in agents claim some; every one completes,
    // so neither agent's token was voided by the other's start.
    let mut ids = Vec::new();
    for n in 0..12 {
        let node = if n % 2 == 0 { &a } else { &b };
        ids.push(node.submit_query(&user, &format!("task number {n}")).await);
    }
    for id in &ids {
        a.wait_status(&user, id, "completed").await;
    }
    for node in [&a, &b] {
        assert!(
            !node.log().contains("refused the agent token"),
            "a built-in agent was refused:\n{}",
            node.log()
        );
    }
}

//! The authorization matrix: every route of the API × every kind of caller → the status
//! the contract says, as one table.
//!
//! The routes are those of the OpenAPI document the server serves: an operation without
//! a row fails the test, so a route cannot be added without saying who may call it.
//! Rows for routes the server does not have yet (later parts of the contract) are kept
//! and skipped until the route appears in the document.
//!
//! The callers, in column order: nobody, the owner of the objects (Alice), another user
//! (Bob), an admin, Alice's API key, a revoked session token (Alice's, logged out), an
//! expired one (Alice's, re-signed with the server's key and an `exp` in the past),
//! Alice's agent token and Bob's agent token.

use crate::helpers::{spawn_app_with, unique_email, AppOptions, TestApp, TestUser};
use base64::Engine;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::fmt::Write as _;

/// The server's token signing key, so the test can mint an expired token.
const SIGNING_KEY: &str = "authz-matrix-signing-key-0123456789abcdef-0123456789abcdef";
const PASSWORD: &str = "a long passphrase for the matrix";
/// The capability of Alice's agent: no fixture task asks for it, so claims are controlled.
const AGENT_CAPABILITY: &str = "authz-alice";

/// Who calls, in the order of a row's columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Nobody,
    User,
    OtherUser,
    Admin,
    ApiKey,
    RevokedToken,
    ExpiredToken,
    AgentToken,
    OtherUsersAgentToken,
}

const CALLERS: [Caller; 9] = [
    Caller::Nobody,
    Caller::User,
    Caller::OtherUser,
    Caller::Admin,
    Caller::ApiKey,
    Caller::RevokedToken,
    Caller::ExpiredToken,
    Caller::AgentToken,
    Caller::OtherUsersAgentToken,
];

/// What the `{…}` segment of a path names (always one of Alice's objects).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The path has no parameter.
    None,
    /// Alice's user id.
    AliceId,
    /// A queued task of Alice's, shared by the row's cells.
    QueuedTask,
    /// A new queued task for each cell (the call changes it).
    FreshTask,
    /// A new canceled task for each cell.
    FinishedTask,
    /// A new task running on Alice's agent for each cell.
    RunningTask,
    /// Alice's agent (the one whose token is a column).
    Agent,
    /// A new agent of Alice's for each cell.
    FreshAgent,
    /// A new API key of Alice's for each cell.
    FreshKey,
}

/// Accepted statuses of one cell (one, except where the contract leaves a choice).
type Cell = &'static [u16];

/// One route and the status each caller gets.
struct Row {
    method: &'static str,
    /// The path exactly as the OpenAPI document spells it.
    path: &'static str,
    target: Target,
    body: Option<fn(&Fixtures) -> Value>,
    /// The call can end sessions (logout, password change): the user columns use a new
    /// session, and the fixtures sign in again after each cell.
    ends_sessions: bool,
    expect: [Cell; 9],
}

const fn row(method: &'static str, path: &'static str, target: Target, expect: [Cell; 9]) -> Row {
    Row {
        method,
        path,
        target,
        body: None,
        ends_sessions: false,
        expect,
    }
}

impl Row {
    fn body(mut self, body: fn(&Fixtures) -> Value) -> Self {
        self.body = Some(body);
        self
    }

    fn ends_sessions(mut self) -> Self {
        self.ends_sessions = true;
        self
    }
}

// The shapes of the columns: nobody, user, other user, admin, API key, revoked, expired,
// agent token, other user's agent token.
const UNAUTHORIZED: Cell = &[401];

/// Public: everyone gets the same answer, credentials or not.
const fn public(s: Cell) -> [Cell; 9] {
    [s; 9]
}

/// Any signed-in user (or their API key); agent tokens and dead credentials are 401.
const fn signed_in(s: Cell) -> [Cell; 9] {
    let u = UNAUTHORIZED;
    [u, s, s, s, s, u, u, u, u]
}

/// One of Alice's objects: Alice, an admin and Alice's key get `s`; Bob gets 404.
const fn owned(s: Cell) -> [Cell; 9] {
    let u = UNAUTHORIZED;
    [u, s, &[404], s, s, u, u, u, u]
}

/// An account change an API key may not make: 403 `forbidden_for_api_key`.
const fn session_only(s: Cell) -> [Cell; 9] {
    let u = UNAUTHORIZED;
    [u, s, s, s, &[403], u, u, u, u]
}

/// Admin only: users (and their keys) get 403.
const fn admin_only(s: Cell) -> [Cell; 9] {
    let u = UNAUTHORIZED;
    let f: Cell = &[403];
    [u, f, f, s, f, u, u, u, u]
}

/// The agent runtime: only agent tokens; another user's agent may not touch Alice's
/// task (the contract does not say whether that is 404 or 409).
const fn runtime(s: Cell) -> [Cell; 9] {
    let u = UNAUTHORIZED;
    [u, u, u, u, u, u, u, s, &[404, 409]]
}

fn rows() -> Vec<Row> {
    use Target::*;
    vec![
        // Operations (public).
        row("GET", "/health", None, public(&[200])),
        row("GET", "/ready", None, public(&[200])),
        row("GET", "/metrics", None, public(&[200])),
        row("GET", "/api/v1/openapi.json", None, public(&[200])),
        row("GET", "/api/v1/ws/stats", None, public(&[200])),
        // Users.
        row("POST", "/api/v1/users/register", None, public(&[409])).body(
            |f| json!({ "email": f.alice.email, "password": PASSWORD, "full_name": "Again" }),
        ),
        row("POST", "/api/v1/users/login", None, public(&[200]))
            .body(|f| json!({ "email": f.alice.email, "password": PASSWORD })),
        row("POST", "/api/v1/users/logout", None, session_only(&[204])).ends_sessions(),
        row("GET", "/api/v1/users/me", None, signed_in(&[200])),
        row("PUT", "/api/v1/users/me", None, session_only(&[200]))
            .body(|_| json!({ "full_name": "Matrix" })),
        row(
            "PUT",
            "/api/v1/users/me/password",
            None,
            session_only(&[204]),
        )
        .ends_sessions()
        .body(|_| json!({ "current_password": PASSWORD, "new_password": PASSWORD })),
        // API keys.
        row("GET", "/api/v1/api-keys", None, signed_in(&[200])),
        row("POST", "/api/v1/api-keys", None, session_only(&[201]))
            .body(|_| json!({ "name": "matrix" })),
        // Keys are per user: an admin does not see Alice's either.
        row("DELETE", "/api/v1/api-keys/{id}", FreshKey, {
            let u = UNAUTHORIZED;
            [u, &[204], &[404], &[404], &[403], u, u, u, u]
        }),
        // Agents: Alice's agent is private.
        row("GET", "/api/v1/agents", None, signed_in(&[200])),
        row("GET", "/api/v1/agents/search", None, signed_in(&[200])),
        row("POST", "/api/v1/agents/register", None, signed_in(&[201]))
            .body(|_| json!({ "name": "matrix agent", "capabilities": ["matrix"] })),
        row("GET", "/api/v1/agents/{id}", Agent, owned(&[200])),
        row("PUT", "/api/v1/agents/{id}", Agent, owned(&[200]))
            .body(|_| json!({ "description": "changed by the matrix" })),
        row("DELETE", "/api/v1/agents/{id}", FreshAgent, owned(&[204])),
        row(
            "POST",
            "/api/v1/agents/{id}/token",
            FreshAgent,
            owned(&[201]),
        ),
        // Tasks: Alice's tasks.
        row("GET", "/api/v1/tasks", None, signed_in(&[200])),
        row("POST", "/api/v1/tasks/submit", None, signed_in(&[202]))
            .body(|_| json!({ "query": "from the matrix" })),
        row("GET", "/api/v1/tasks/{id}", QueuedTask, owned(&[200])),
        row("DELETE", "/api/v1/tasks/{id}", FreshTask, owned(&[200])),
        row(
            "GET",
            "/api/v1/tasks/{id}/status",
            QueuedTask,
            owned(&[200]),
        ),
        row(
            "GET",
            "/api/v1/tasks/{id}/result",
            QueuedTask,
            owned(&[409]),
        ),
        row(
            "GET",
            "/api/v1/tasks/{id}/attempts",
            QueuedTask,
            owned(&[200]),
        ),
        row(
            "GET",
            "/api/v1/tasks/{id}/output",
            FinishedTask,
            owned(&[200]),
        ),
        row(
            "GET",
            "/api/v1/tasks/{id}/output/stream",
            FinishedTask,
            owned(&[200]),
        ),
        row(
            "POST",
            "/api/v1/tasks/{id}/cancel",
            FreshTask,
            owned(&[200]),
        ),
        row(
            "POST",
            "/api/v1/tasks/{id}/retry",
            FinishedTask,
            owned(&[202]),
        ),
        // The agent runtime.
        row("POST", "/api/v1/runtime/claim", None, {
            // Nothing is queued for either agent: both get an immediate 204.
            let u = UNAUTHORIZED;
            [u, u, u, u, u, u, u, &[204], &[204]]
        })
        .body(|_| json!({ "wait_s": 0 })),
        row(
            "POST",
            "/api/v1/runtime/tasks/{id}/progress",
            RunningTask,
            runtime(&[200]),
        )
        .body(|_| json!({ "progress": 10 })),
        row(
            "POST",
            "/api/v1/runtime/tasks/{id}/output",
            RunningTask,
            runtime(&[200]),
        )
        .body(|_| json!({ "text": "matrix output" })),
        row(
            "POST",
            "/api/v1/runtime/tasks/{id}/complete",
            RunningTask,
            runtime(&[200]),
        )
        .body(|_| json!({ "result": "done" })),
        row(
            "POST",
            "/api/v1/runtime/tasks/{id}/fail",
            RunningTask,
            runtime(&[200]),
        )
        .body(|_| json!({ "error": "matrix failure", "retryable": false })),
        row(
            "POST",
            "/api/v1/runtime/tasks/{id}/release",
            RunningTask,
            runtime(&[200]),
        ),
        row("POST", "/api/v1/runtime/stop", None, {
            let u = UNAUTHORIZED;
            [u, u, u, u, u, u, u, &[204], &[204]]
        }),
        // Analytics.
        row("GET", "/api/v1/analytics/summary", None, signed_in(&[200])),
        // Notifications: the caller's own `system` messages.
        row("GET", "/api/v1/notifications", None, signed_in(&[200])),
        // Real-time. A plain GET is not an upgrade: 400 says the credentials passed.
        row("GET", "/api/v1/ws/connect", None, signed_in(&[400])),
        row("GET", "/api/v1/events", None, signed_in(&[200])),
        row("POST", "/api/v1/ws/broadcast", None, admin_only(&[202]))
            .body(|_| json!({ "type": "matrix", "data": {} })),
        row(
            "POST",
            "/api/v1/ws/user/{user_id}",
            AliceId,
            admin_only(&[202]),
        )
        .body(|_| json!({ "type": "matrix", "data": {} })),
        row("POST", "/api/v1/ws/send", None, admin_only(&[202]))
            .body(|f| json!({ "user_id": f.alice.id, "type": "matrix", "data": {} })),
    ]
}

/// The accounts, credentials and objects the matrix uses.
struct Fixtures {
    admin: TestUser,
    alice: TestUser,
    bob: TestUser,
    alice_key: String,
    revoked_token: String,
    expired_token: String,
    alice_agent_id: String,
    alice_agent_token: String,
    bob_agent_token: String,
    queued_task: String,
}

impl Fixtures {
    async fn new(app: &TestApp) -> Self {
        // The first account is the admin.
        let admin = app.register(&unique_email(), PASSWORD).await;
        assert_eq!(admin.role, "admin");
        let alice = app.register(&unique_email(), PASSWORD).await;
        let bob = app.register(&unique_email(), PASSWORD).await;
        let (alice_key, _) = app.create_api_key(&alice, "matrix key").await;
        let doomed = app.login(&alice.email, PASSWORD).await;
        let (status, _) = app
            .post("/api/v1/users/logout", Some(&doomed.token), json!({}))
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
        let expired_token = expire(&alice.token);
        let (agent, alice_agent_token) = app
            .register_agent(&alice, "alice's agent", &[AGENT_CAPABILITY])
            .await;
        let (_, bob_agent_token) = app
            .register_agent(&bob, "bob's agent", &[AGENT_CAPABILITY])
            .await;
        let queued_task = app.submit_query(&alice, "a queued task of Alice's").await;
        Self {
            admin,
            alice,
            bob,
            alice_key,
            revoked_token: doomed.token,
            expired_token,
            alice_agent_id: agent["id"].as_str().expect("agent id").to_owned(),
            alice_agent_token,
            bob_agent_token,
            queued_task,
        }
    }

    fn credential(&self, caller: Caller) -> Option<&str> {
        Some(match caller {
            Caller::Nobody => return None,
            Caller::User => &self.alice.token,
            Caller::OtherUser => &self.bob.token,
            Caller::Admin => &self.admin.token,
            Caller::ApiKey => &self.alice_key,
            Caller::RevokedToken => &self.revoked_token,
            Caller::ExpiredToken => &self.expired_token,
            Caller::AgentToken => &self.alice_agent_token,
            Caller::OtherUsersAgentToken => &self.bob_agent_token,
        })
    }

    /// New sessions for the three accounts (after a call that may have ended theirs).
    async fn sign_in_again(&mut self, app: &TestApp) {
        for user in [&mut self.admin, &mut self.alice, &mut self.bob] {
            user.token = app.login(&user.email, PASSWORD).await.token;
        }
    }

    /// A new session for a user column (for calls that end the session they use).
    async fn fresh_credential(&self, app: &TestApp, caller: Caller) -> Option<String> {
        let user = match caller {
            Caller::User => &self.alice,
            Caller::OtherUser => &self.bob,
            Caller::Admin => &self.admin,
            other => return self.credential(other).map(str::to_owned),
        };
        Some(app.login(&user.email, PASSWORD).await.token)
    }

    /// The id the row's path parameter names, creating the object when the cell needs
    /// its own.
    async fn target(&self, app: &TestApp, target: Target) -> Option<String> {
        let alice = &self.alice;
        Some(match target {
            Target::None => return None,
            Target::AliceId => alice.id.clone(),
            Target::QueuedTask => self.queued_task.clone(),
            Target::FreshTask => app.submit_query(alice, "a task for one cell").await,
            Target::FinishedTask => {
                let id = app.submit_query(alice, "a task to cancel").await;
                let (status, body) = app
                    .post(
                        &format!("/api/v1/tasks/{id}/cancel"),
                        Some(&alice.token),
                        json!({}),
                    )
                    .await;
                assert_eq!(status, StatusCode::OK, "cancel: {body}");
                id
            }
            Target::RunningTask => {
                let task = app
                    .submit(
                        alice,
                        json!({ "query": "a task to run", "capability": AGENT_CAPABILITY,
                                "agent_id": self.alice_agent_id }),
                    )
                    .await;
                let id = task["id"].as_str().expect("task id").to_owned();
                // A task an earlier cell handed back (release) is older and comes
                // first; it stays running on the agent, which harms nothing.
                for _ in 0..20 {
                    let (status, body) = app
                        .runtime(&self.alice_agent_token, "/claim", json!({ "wait_s": 5 }))
                        .await;
                    assert_eq!(status, StatusCode::OK, "claim: {body}");
                    if body["task"]["id"] == id.as_str() {
                        return Some(id);
                    }
                }
                panic!("the agent never claimed task {id}")
            }
            Target::Agent => self.alice_agent_id.clone(),
            Target::FreshAgent => {
                let (agent, _) = app
                    .register_agent(alice, "an agent for one cell", &["matrix"])
                    .await;
                agent["id"].as_str().expect("agent id").to_owned()
            }
            Target::FreshKey => {
                let (_, body) = app.create_api_key(alice, "a key for one cell").await;
                body["id"].as_str().expect("key id").to_owned()
            }
        })
    }
}

/// Alice's session token re-signed with the server's key, expired an hour ago.
fn expire(token: &str) -> String {
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    let mut claims: Value = serde_json::from_slice(&bytes).expect("JSON claims");
    let now = chrono::Utc::now().timestamp();
    claims["iat"] = json!(now - 7200);
    claims["exp"] = json!(now - 3600);
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SIGNING_KEY.as_bytes()),
    )
    .expect("sign")
}

/// `(METHOD, path)` of every operation in the served document.
async fn documented_operations(app: &TestApp) -> BTreeSet<(String, String)> {
    let (status, doc) = app.get("/api/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK, "the OpenAPI document");
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().expect("path item").keys() {
            if ["get", "put", "post", "delete", "patch"].contains(&method.as_str()) {
                operations.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    operations
}

/// Sends one cell's request and returns the status (the body is not read: streams stay
/// open, and the status is all the matrix checks).
async fn status_of(
    app: &TestApp,
    method: &str,
    path: &str,
    credential: Option<&str>,
    body: Option<&Value>,
) -> u16 {
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = app.client.request(method, app.url(path));
    if let Some(credential) = credential {
        request = request.bearer_auth(credential);
    }
    if let Some(body) = body {
        request = request.json(body);
    }
    let response = request.send().await.expect("request");
    response.status().as_u16()
}

#[tokio::test]
async fn every_route_answers_every_caller_as_the_contract_says() {
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--signing-key".into(), SIGNING_KEY.into()],
        ..AppOptions::default()
    })
    .await;
    let mut fixtures = Fixtures::new(&app).await;
    let documented = documented_operations(&app).await;
    let rows = rows();

    let has_row = |(method, path): &(String, String)| {
        rows.iter().any(|r| r.method == method && r.path == path)
    };
    let without_row: Vec<_> = documented.iter().filter(|op| !has_row(op)).collect();
    assert!(
        without_row.is_empty(),
        "routes in the OpenAPI document without a row in the authorization matrix \
         (tests/api/authz.rs): {without_row:?}"
    );

    let mut failures = String::new();
    let mut checked = 0;
    for row in &rows {
        if !documented.contains(&(row.method.to_owned(), row.path.to_owned())) {
            eprintln!(
                "authz: {} {} is not served yet; its row waits",
                row.method, row.path
            );
            continue;
        }
        for (caller, expected) in CALLERS.iter().zip(row.expect) {
            let credential = if row.ends_sessions {
                fixtures.fresh_credential(&app, *caller).await
            } else {
                fixtures.credential(*caller).map(str::to_owned)
            };
            let path = match fixtures.target(&app, row.target).await {
                Some(id) => {
                    let start = row.path.find('{').expect("a path parameter");
                    let end = row.path.find('}').expect("a closed parameter");
                    format!("{}{id}{}", &row.path[..start], &row.path[end + 1..])
                }
                None => row.path.to_owned(),
            };
            let body = row.body.map(|make| make(&fixtures));
            let status = status_of(
                &app,
                row.method,
                &path,
                credential.as_deref(),
                body.as_ref(),
            )
            .await;
            checked += 1;
            if row.ends_sessions {
                fixtures.sign_in_again(&app).await;
            }
            if !expected.contains(&status) {
                let _ = writeln!(
                    failures,
                    "{} {} as {caller:?}: {status}, expected {expected:?}",
                    row.method, row.path
                );
            }
        }
    }
    eprintln!("authz: {checked} cells checked");
    assert!(
        failures.is_empty(),
        "the authorization matrix does not hold:\n{failures}"
    );
}

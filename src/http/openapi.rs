//! The OpenAPI 3.1 document of the whole HTTP API, served at `GET /api/v1/openapi.json`.
//!
//! It is generated with `utoipa` from the handlers' own request and response types
//! (they derive `ToSchema`). The `#[utoipa::path]` items live here, one documented twin
//! per route, rather than on the handlers: several resource modules are rewritten in
//! parallel, and one file for the document keeps those rewrites and this one apart.
//! What keeps the twins honest:
//! - the unit test below reads every `.route(` in `src/http` and fails when a route is
//!   not in the document (or the document names a route the router does not have);
//! - the authorization matrix (`tests/api/authz.rs`) needs a row for every operation the
//!   served document lists;
//! - schemathesis (`scripts/test-schemathesis.sh`) checks every answer against it.
//!
//! Where a handler builds its answer with `json!`, the envelope is described by a type
//! here (`AuthResponse`, `TaskList`, …) that names the real inner types (`User`,
//! `TaskView`, `AgentView`, …).
//!
//! The contract's conventions are applied to every operation in one place
//! (`Conventions`): the security schemes, and the error answers every route shares
//! (`401`/`403` when it needs credentials, `400`/`413`/`415` when it takes a body,
//! `400` for query parameters, `404` for an id in the path), all in the contract's
//! `{error, message}` shape. Route-specific answers (`409`, `429`, `503`, …) are listed on
//! the route.

#![allow(dead_code)] // The twins below exist for their `#[utoipa::path]` attribute only.

use super::agents::{self, AgentView};
use super::api_keys::{self, KeyView};
use super::notifications;
use super::output;
use super::realtime;
use super::runtime;
use super::state::AppState;
use super::tasks::{self, TaskView};
use super::users;
use crate::agents::AgentStatus;
use crate::domain::{
    AgentId, ApiKeyId, AttemptOutcome, Capability, Email, FullName, Priority, Role, TaskId,
    TaskStatus, UserId,
};
use crate::store::User;
use crate::tasks::analytics::Summary;
use crate::tasks::WaitingFor;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::borrow::Cow;
use std::sync::LazyLock;
use utoipa::openapi::path::{Operation, Parameter, ParameterIn, PathItem};
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder, Schema};
use utoipa::{Modify, OpenApi, ToSchema};

/// The route that serves the document (public).
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/openapi.json", get(serve))
}

/// Built once: the document depends only on the code.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_json()
        .unwrap_or_else(|e| format!(r#"{{"error":"internal_error","message":"{e}"}}"#))
});

async fn serve() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

/// The document.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "ZeroState API",
        description = "Real-time platform for AI agents and their tasks. Errors are \
            `{\"error\": \"<snake_case_code>\", \"message\": \"…\"}` with the status the \
            contract names. Authentication: `Authorization: Bearer <session token or API key>` \
            or the `zs_session` cookie; the agent runtime takes `Authorization: Bearer zsa_…`.",
        license(name = "MIT")
    ),
    paths(
        health, ready, metrics, openapi_document,
        users_register, users_login, users_logout, users_me, users_update_me,
        users_change_password,
        api_keys_list, api_keys_create, api_keys_revoke,
        agents_list, agents_search, agents_register, agents_read, agents_update,
        agents_delete, agents_token,
        tasks_list, tasks_submit, tasks_read, tasks_delete, tasks_status, tasks_result,
        tasks_cancel, tasks_attempts, tasks_retry, tasks_output, tasks_output_stream,
        runtime_claim, runtime_progress, runtime_complete, runtime_fail, runtime_release,
        runtime_output, runtime_stop,
        analytics_summary, notifications_list,
        ws_connect, events, ws_stats, ws_broadcast, ws_send_to_user, ws_send,
    ),
    components(schemas(ErrorBody)),
    modifiers(&Conventions),
    security(("bearer" = []), ("cookie" = [])),
    tags(
        (name = "operations", description = "Health, readiness, metrics (public)"),
        (name = "users", description = "Accounts and sessions"),
        (name = "api-keys", description = "API keys for scripts"),
        (name = "agents", description = "The agent registry"),
        (name = "tasks", description = "Tasks: submit, follow, cancel"),
        (name = "runtime", description = "What an agent process calls, with its zsa_ token"),
        (name = "analytics", description = "Figures over a window"),
        (name = "realtime", description = "WebSocket, Server-Sent Events, publish, stats"),
    )
)]
pub struct ApiDoc;

// ---------------------------------------------------------------------------------------
// Schemas of the domain types (they live in `domain`, which knows nothing of OpenAPI).

fn string_schema(format: Option<KnownFormat>, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .format(format.map(SchemaFormat::KnownFormat))
        .description(Some(description))
}

macro_rules! domain_schema {
    ($ty:ty, $name:literal, $build:expr) => {
        impl utoipa::PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                let object: Object = $build.build();
                RefOr::T(Schema::Object(object))
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

domain_schema!(
    UserId,
    "UserId",
    string_schema(Some(KnownFormat::Uuid), "A user id")
);
domain_schema!(
    TaskId,
    "TaskId",
    string_schema(Some(KnownFormat::Uuid), "A task id")
);
domain_schema!(
    AgentId,
    "AgentId",
    string_schema(Some(KnownFormat::Uuid), "An agent id")
);
domain_schema!(
    ApiKeyId,
    "ApiKeyId",
    string_schema(Some(KnownFormat::Uuid), "An API key id")
);
domain_schema!(
    Email,
    "Email",
    string_schema(None, "An email address, lower-cased")
);
domain_schema!(
    FullName,
    "FullName",
    string_schema(None, "A display name, at most 200 characters")
);
domain_schema!(
    Role,
    "Role",
    string_schema(None, "The account's role").enum_values(Some(["admin", "user"]))
);
domain_schema!(
    Capability,
    "Capability",
    string_schema(
        None,
        "A capability: 1-64 characters of a-z, 0-9, '_', '.', '-'"
    )
    .pattern(Some("^[a-z0-9][a-z0-9_.-]{0,63}$"))
);
domain_schema!(
    Priority,
    "Priority",
    string_schema(
        None,
        "Queue order: critical before high before normal before low"
    )
    .enum_values(Some(["low", "normal", "high", "critical"]))
);
domain_schema!(
    AgentStatus,
    "AgentStatus",
    string_schema(None, "Whether the agent is reachable").enum_values(Some(["online", "offline"]))
);
domain_schema!(
    AttemptOutcome,
    "AttemptOutcome",
    string_schema(None, "How an attempt ended, or that it is still running")
        .enum_values(Some(AttemptOutcome::ALL.map(AttemptOutcome::as_str)))
);
domain_schema!(
    WaitingFor,
    "WaitingFor",
    string_schema(None, "Why a queued task is not running").enum_values(Some([
        "agent",
        "no_agent_online",
        "run_at",
        "retry_backoff"
    ]))
);
domain_schema!(
    TaskStatus,
    "TaskStatus",
    string_schema(None, "queued → running → completed | failed; canceled")
        .enum_values(Some(TaskStatus::ALL.map(TaskStatus::as_str)))
);

// ---------------------------------------------------------------------------------------
// Envelopes: answers the handlers build with `json!`, described with the real inner types.

/// Every error answer: `{error, message}`.
#[derive(ToSchema)]
pub struct ErrorBody {
    /// A snake_case code (`validation_error`, `unauthorized`, `not_found`, …).
    error: String,
    /// A sentence for a person.
    message: String,
}

/// `GET /health`.
#[derive(ToSchema)]
struct Health {
    /// `healthy`, or `degraded` (with 503) while a dependency is down.
    #[schema(pattern = "^(healthy|degraded)$")]
    status: String,
    service: String,
    version: String,
    uptime_s: u64,
    checks: HealthChecks,
}

#[derive(ToSchema)]
struct HealthChecks {
    /// `ok` or `error`.
    database: String,
    /// `ok`, `error` or `disabled` (single node).
    backplane: String,
}

/// `GET /ready` while accepting traffic.
#[derive(ToSchema)]
struct Ready {
    status: String,
}

/// Register and login: the session token, its lifetime and the account.
#[derive(ToSchema)]
struct AuthResponse {
    /// The session token (also set as the `zs_session` cookie).
    token: String,
    /// Seconds until the token expires.
    expires_in: i64,
    user: User,
}

/// `{"user": …}`.
#[derive(ToSchema)]
struct UserResponse {
    user: User,
}

/// A new API key: the secret `key` is shown only here.
#[derive(ToSchema)]
struct CreatedApiKey {
    id: ApiKeyId,
    name: String,
    prefix: String,
    /// The secret, starting with `zs_`.
    key: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
}

/// `{"api_keys": […]}`.
#[derive(ToSchema)]
struct ApiKeyList {
    api_keys: Vec<KeyView>,
}

/// A page of tasks.
#[derive(ToSchema)]
struct TaskList {
    tasks: Vec<TaskView>,
    /// Pass as `?cursor=` for the next page; null at the end.
    next_cursor: Option<String>,
}

/// A submitted (or retried) task.
#[derive(ToSchema)]
struct Submitted {
    task_id: TaskId,
    status: TaskStatus,
    task: TaskView,
    /// `true` when an earlier submit with the same `idempotency_key` is answered again.
    duplicate: Option<bool>,
}

/// `GET /api/v1/tasks/{id}/attempts`, oldest first.
#[derive(ToSchema)]
struct AttemptList {
    attempts: Vec<tasks::AttemptView>,
}

/// `GET /api/v1/tasks/{id}/status`.
#[derive(ToSchema)]
struct TaskStatusView {
    task_id: TaskId,
    status: TaskStatus,
    progress: u8,
    agent_id: Option<AgentId>,
    updated_at: DateTime<Utc>,
    /// Place in the order the eligible agents take tasks (1 = next); null unless queued.
    queue_position: Option<i64>,
    /// Why a queued task is not running; null unless queued.
    waiting_for: Option<WaitingFor>,
}

/// `GET /api/v1/tasks/{id}/result` once the task finished.
#[derive(ToSchema)]
struct TaskResultView {
    task_id: TaskId,
    status: TaskStatus,
    /// What the agent returned (any JSON), null unless completed.
    result: Option<Value>,
    error: Option<String>,
    duration_ms: Option<i64>,
}

/// One chunk of a task's output.
#[derive(ToSchema)]
struct OutputChunk {
    /// 1, 2, 3, … per task, without gaps.
    seq: u64,
    /// `output` or `log`.
    #[schema(pattern = "^(output|log)$")]
    stream: String,
    text: String,
    at: DateTime<Utc>,
}

/// `GET /api/v1/tasks/{id}/output`.
#[derive(ToSchema)]
struct OutputPage {
    task_id: TaskId,
    /// Chunks with `seq > after`, in order.
    chunks: Vec<OutputChunk>,
    /// The `after` for the next page.
    next: u64,
    /// The task finished and every chunk has been returned.
    complete: bool,
}

/// An append: the last `seq` written.
#[derive(ToSchema)]
struct Appended {
    seq: u64,
}

/// A canceled task.
#[derive(ToSchema)]
struct Canceled {
    task_id: TaskId,
    status: TaskStatus,
}

/// `{"task": …}` (without `max_tasks`).
#[derive(ToSchema)]
struct Claimed {
    task: runtime::ClaimedView,
}

/// `{"tasks": […]}` (with `max_tasks`).
#[derive(ToSchema)]
struct ClaimedBatch {
    tasks: Vec<runtime::ClaimedView>,
}

/// What a claim hands over: one task, or a batch when `max_tasks` was given.
#[derive(ToSchema)]
#[serde(untagged)]
enum ClaimAnswer {
    One(Claimed),
    Batch(ClaimedBatch),
}

/// Progress recorded; the lease is renewed.
#[derive(ToSchema)]
struct ProgressAck {
    task_id: TaskId,
    status: TaskStatus,
    progress: u8,
    lease_expires_at: Option<DateTime<Utc>>,
}

/// A task finished by its agent.
#[derive(ToSchema)]
struct Finished {
    task_id: TaskId,
    status: TaskStatus,
    /// Attempts made so far (on `fail` and `release`).
    attempts: Option<u32>,
}

/// A published message.
#[derive(ToSchema)]
struct Delivered {
    /// Live connections it was written to now (it is also kept for resume).
    delivered: u64,
}

/// `GET /api/v1/ws/stats`.
#[derive(ToSchema)]
struct StatsResponse {
    /// `total_connections`, `current_connections`, `messages_sent`, … (cluster sums).
    stats: Value,
}

// ---------------------------------------------------------------------------------------
// One twin per route. Statuses shared by every route of a kind are added by `Conventions`.

#[utoipa::path(get, path = "/health", tag = "operations", security(()),
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "A dependency is down", body = Health),
    ))]
fn health() {}

#[utoipa::path(get, path = "/ready", tag = "operations", security(()),
    responses(
        (status = 200, description = "Accepting traffic", body = Ready),
        (status = 503, description = "Draining for shutdown", body = ErrorBody),
    ))]
fn ready() {}

#[utoipa::path(get, path = "/metrics", tag = "operations", security(()),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain", body = String)))]
fn metrics() {}

#[utoipa::path(get, path = "/api/v1/openapi.json", tag = "operations", security(()),
    responses((status = 200, description = "This document", body = Object)))]
fn openapi_document() {}

#[utoipa::path(post, path = "/api/v1/users/register", tag = "users", security(()),
    request_body(content = inline(users::RegisterBody), content_type = "application/json"),
    responses(
        (status = 201, description = "Account created and signed in; sets the session cookie", body = AuthResponse),
        (status = 403, description = "Foreign Origin", body = ErrorBody),
        (status = 409, description = "`email_taken`", body = ErrorBody),
        (status = 429, description = "Too many sign-ups from this address", body = ErrorBody),
        (status = 503, description = "Password hashing is saturated", body = ErrorBody),
    ))]
fn users_register() {}

#[utoipa::path(post, path = "/api/v1/users/login", tag = "users", security(()),
    request_body(content = inline(users::LoginBody), content_type = "application/json"),
    responses(
        (status = 200, description = "Signed in; sets the session cookie", body = AuthResponse),
        (status = 401, description = "`invalid_credentials`", body = ErrorBody),
        (status = 403, description = "Foreign Origin", body = ErrorBody),
        (status = 429, description = "Too many failed attempts", body = ErrorBody),
        (status = 503, description = "Password hashing is saturated", body = ErrorBody),
    ))]
fn users_login() {}

#[utoipa::path(post, path = "/api/v1/users/logout", tag = "users",
    responses((status = 204, description = "The session is revoked; its connections are closed")))]
fn users_logout() {}

#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    responses((status = 200, description = "The caller's account", body = UserResponse)))]
fn users_me() {}

#[utoipa::path(put, path = "/api/v1/users/me", tag = "users",
    request_body(content = inline(users::ProfileBody), content_type = "application/json"),
    responses((status = 200, description = "The updated account", body = UserResponse)))]
fn users_update_me() {}

#[utoipa::path(put, path = "/api/v1/users/me/password", tag = "users",
    request_body(content = inline(users::PasswordBody), content_type = "application/json"),
    responses(
        (status = 204, description = "Changed; other sessions are revoked"),
        (status = 429, description = "Too many wrong current passwords", body = ErrorBody),
        (status = 503, description = "Password hashing is saturated", body = ErrorBody),
    ))]
fn users_change_password() {}

#[utoipa::path(get, path = "/api/v1/api-keys", tag = "api-keys",
    responses((status = 200, description = "The caller's keys (never their secrets)", body = ApiKeyList)))]
fn api_keys_list() {}

#[utoipa::path(post, path = "/api/v1/api-keys", tag = "api-keys",
    request_body(content = inline(api_keys::CreateBody), content_type = "application/json"),
    responses((status = 201, description = "Created; `key` is shown only here", body = CreatedApiKey)))]
fn api_keys_create() {}

#[utoipa::path(delete, path = "/api/v1/api-keys/{id}", tag = "api-keys",
    params(("id" = uuid::Uuid, Path, description = "API key id")),
    responses((status = 204, description = "Revoked; it stops working at once")))]
fn api_keys_revoke() {}

#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    params(
        ("q" = Option<String>, Query, description = "Text to find in the name or description"),
        ("capability" = Option<String>, Query, description = "Only agents offering this capability (case-insensitive)"),
        ("all" = Option<String>, Query, description = "`true`: every user's agents (admins only)"),
        ("limit" = Option<String>, Query, description = "Page size, default 50; above 200 counts as 200"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)"),
    ),
    responses((status = 200, description = "A page of agents, newest first", body = agents::AgentList)))]
fn agents_list() {}

#[utoipa::path(get, path = "/api/v1/agents/search", tag = "agents",
    params(
        ("q" = Option<String>, Query, description = "Text to find in the name or description"),
        ("capability" = Option<String>, Query, description = "Only agents offering this capability (case-insensitive)"),
        ("all" = Option<String>, Query, description = "`true`: every user's agents (admins only)"),
        ("limit" = Option<String>, Query, description = "Page size, default 50; above 200 counts as 200"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)"),
    ),
    responses((status = 200, description = "The same list as `GET /api/v1/agents`", body = agents::AgentList)))]
fn agents_search() {}

#[utoipa::path(post, path = "/api/v1/agents/register", tag = "agents",
    request_body(content = inline(agents::RegisterBody), content_type = "application/json"),
    responses((status = 201, description = "Registered; `agent_token` is shown only here", body = agents::Registered)))]
fn agents_register() {}

#[utoipa::path(get, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "Agent id")),
    responses((status = 200, description = "The agent", body = AgentView)))]
fn agents_read() {}

#[utoipa::path(put, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "Agent id")),
    request_body(content = inline(agents::UpdateBody), content_type = "application/json"),
    responses((status = 200, description = "The updated agent (owner or admin)", body = AgentView)))]
fn agents_update() {}

#[utoipa::path(delete, path = "/api/v1/agents/{id}", tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "Agent id")),
    responses((status = 204, description = "Deleted (owner or admin)")))]
fn agents_delete() {}

#[utoipa::path(post, path = "/api/v1/agents/{id}/token", tag = "agents",
    params(("id" = uuid::Uuid, Path, description = "Agent id")),
    responses(
        (status = 201, description = "A new token; the old one stops working at once (owner or admin)", body = agents::NewToken),
        (status = 409, description = "`builtin_agent_token`: the built-in agent's token is the server's", body = ErrorBody),
    ))]
fn agents_token() {}

#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks",
    params(
        ("status" = Option<String>, Query, description = "Only tasks in this status"),
        ("q" = Option<String>, Query, description = "Text to find in the query"),
        ("capability" = Option<String>, Query, description = "Only tasks asking for this capability (case-insensitive)"),
        ("agent_id" = Option<String>, Query, description = "Only tasks of this agent"),
        ("all" = Option<String>, Query, pattern = "^(true|false|1|0)?$", description = "`true`: every user's tasks (admins only)"),
        ("limit" = Option<String>, Query, description = "Page size, default 50; above 200 counts as 200"),
        ("cursor" = Option<String>, Query, description = "`next_cursor` of the previous page (opaque)"),
    ),
    responses((status = 200, description = "A page of tasks, newest first", body = TaskList)))]
fn tasks_list() {}

#[utoipa::path(post, path = "/api/v1/tasks/submit", tag = "tasks",
    request_body(content = inline(tasks::SubmitBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Queued", body = Submitted),
        (status = 200, description = "A duplicate of an earlier submit (same `idempotency_key` within 24 h): that task, `duplicate: true`", body = Submitted),
        (status = 404, description = "`agent_id` names no agent the caller can see", body = ErrorBody),
    ))]
fn tasks_submit() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses((status = 200, description = "The task", body = TaskView)))]
fn tasks_read() {}

#[utoipa::path(delete, path = "/api/v1/tasks/{id}", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Canceled", body = Canceled),
        (status = 409, description = "Already finished", body = ErrorBody),
    ))]
fn tasks_delete() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/status", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses((status = 200, description = "Status and progress", body = TaskStatusView)))]
fn tasks_status() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/result", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "The outcome", body = TaskResultView),
        (status = 409, description = "`not_finished`", body = ErrorBody),
    ))]
fn tasks_result() {}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Canceled", body = Canceled),
        (status = 409, description = "Already finished", body = ErrorBody),
    ))]
fn tasks_cancel() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/attempts", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses((status = 200, description = "Every attempt, oldest first", body = AttemptList)))]
fn tasks_attempts() {}

#[utoipa::path(post, path = "/api/v1/tasks/{id}/retry", tag = "tasks",
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 202, description = "A new task with the same query, capability, priority and agent", body = Submitted),
        (status = 409, description = "The task has not finished", body = ErrorBody),
    ))]
fn tasks_retry() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/output", tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("after" = Option<String>, Query, description = "Chunks after this seq (0: from the start)"),
        ("limit" = Option<String>, Query, description = "Chunks per page, default and at most 200"),
    ),
    responses((status = 200, description = "A page of the task's output", body = OutputPage)))]
fn tasks_output() {}

#[utoipa::path(get, path = "/api/v1/tasks/{id}/output/stream", tag = "tasks",
    params(
        ("id" = uuid::Uuid, Path, description = "Task id"),
        ("after" = Option<String>, Query, description = "Start after this seq (`Last-Event-ID` wins)"),
    ),
    responses((status = 200, description = "Server-Sent Events: `output` per chunk (`id` = seq), then `end` `{status}` when the task finishes", content_type = "text/event-stream", body = String)))]
fn tasks_output_stream() {}

#[utoipa::path(post, path = "/api/v1/runtime/claim", tag = "runtime",
    security(("agent_token" = [])),
    request_body(content = inline(Option<runtime::ClaimBody>), content_type = "application/json", description = "Optional; an empty body asks for an immediate answer"),
    responses(
        (status = 200, description = "Tasks for this agent: `task`, or `tasks` when `max_tasks` was given", body = ClaimAnswer),
        (status = 204, description = "Nothing matched within `wait_s`"),
    ))]
fn runtime_claim() {}

#[utoipa::path(post, path = "/api/v1/runtime/tasks/{id}/progress", tag = "runtime",
    security(("agent_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    request_body(content = inline(runtime::ProgressBody), content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded; the lease is renewed", body = ProgressAck),
        (status = 409, description = "`canceled` (stop working on it) or not this agent's running task", body = ErrorBody),
    ))]
fn runtime_progress() {}

#[utoipa::path(post, path = "/api/v1/runtime/tasks/{id}/complete", tag = "runtime",
    security(("agent_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    request_body(content = inline(runtime::CompleteBody), content_type = "application/json"),
    responses(
        (status = 200, description = "Completed", body = Finished),
        (status = 409, description = "`canceled` or not this agent's running task", body = ErrorBody),
    ))]
fn runtime_complete() {}

#[utoipa::path(post, path = "/api/v1/runtime/tasks/{id}/fail", tag = "runtime",
    security(("agent_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    request_body(content = inline(runtime::FailBody), content_type = "application/json"),
    responses(
        (status = 200, description = "Failed (or queued for another attempt)", body = Finished),
        (status = 409, description = "`canceled` or not this agent's running task", body = ErrorBody),
    ))]
fn runtime_fail() {}

#[utoipa::path(post, path = "/api/v1/runtime/tasks/{id}/release", tag = "runtime",
    security(("agent_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    responses(
        (status = 200, description = "Handed back to the queue without using an attempt", body = Finished),
        (status = 409, description = "Not this agent's running task", body = ErrorBody),
    ))]
fn runtime_release() {}

#[utoipa::path(post, path = "/api/v1/runtime/stop", tag = "runtime",
    security(("agent_token" = [])),
    responses(
        (status = 204, description = "The agent process stops with nothing to hand back: the agent is offline at once (its next call brings it back) and its waiting claims end without a task"),
    ))]
fn runtime_stop() {}

#[utoipa::path(post, path = "/api/v1/runtime/tasks/{id}/output", tag = "runtime",
    security(("agent_token" = [])),
    params(("id" = uuid::Uuid, Path, description = "Task id")),
    request_body(content = inline(output::AppendBody), content_type = "application/json"),
    responses(
        (status = 200, description = "Appended; the lease is renewed", body = Appended),
        (status = 409, description = "`canceled` or not this agent's running task", body = ErrorBody),
        (status = 413, description = "`output_limit`: the task's output is full, or the append is over 64 KiB", body = ErrorBody),
    ))]
fn runtime_output() {}

#[utoipa::path(get, path = "/api/v1/analytics/summary", tag = "analytics",
    params(("window" = Option<String>, Query, pattern = "^(1h|24h|7d)$", description = "1h, 24h (default) or 7d")),
    responses((status = 200, description = "Figures over the caller's tasks (admins: all)", body = Summary)))]
fn analytics_summary() {}

#[utoipa::path(get, path = "/api/v1/notifications", tag = "realtime",
    params(("limit" = Option<String>, Query, pattern = "^\\+?0*([1-9]|[1-9][0-9]|1[0-9][0-9]|200)$", description = "1-200, default 50")),
    responses((status = 200, description = "The caller's recent `system` messages, newest first", body = notifications::ListBody)))]
fn notifications_list() {}

#[utoipa::path(get, path = "/api/v1/ws/connect", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "Session token or API key, for clients that cannot set headers"),
        ("since" = Option<String>, Query, description = "Resume after this cursor"),
    ),
    responses(
        (status = 101, description = "Upgraded to a WebSocket"),
        (status = 400, description = "Not a WebSocket upgrade request", body = ErrorBody),
        (status = 429, description = "Too many real-time connections for this user", body = ErrorBody),
        (status = 503, description = "Draining for shutdown", body = ErrorBody),
    ))]
fn ws_connect() {}

#[utoipa::path(get, path = "/api/v1/events", tag = "realtime",
    params(
        ("token" = Option<String>, Query, description = "Session token or API key"),
        ("since" = Option<String>, Query, description = "Resume after this cursor (`Last-Event-ID` wins)"),
    ),
    responses(
        (status = 200, description = "Server-Sent Events: the real-time messages", content_type = "text/event-stream", body = String),
        (status = 429, description = "Too many real-time connections for this user", body = ErrorBody),
        (status = 503, description = "Draining for shutdown", body = ErrorBody),
    ))]
fn events() {}

#[utoipa::path(get, path = "/api/v1/ws/stats", tag = "realtime", security(()),
    responses((status = 200, description = "Connection and message figures", body = StatsResponse)))]
fn ws_stats() {}

#[utoipa::path(post, path = "/api/v1/ws/broadcast", tag = "realtime",
    request_body(content = inline(realtime::PublishBody), content_type = "application/json"),
    responses((status = 202, description = "Sent to every connected user, kept for resume (admin)", body = Delivered)))]
fn ws_broadcast() {}

#[utoipa::path(post, path = "/api/v1/ws/user/{user_id}", tag = "realtime",
    params(("user_id" = uuid::Uuid, Path, description = "Recipient")),
    request_body(content = inline(realtime::PublishBody), content_type = "application/json"),
    responses((status = 202, description = "Sent to the user's connections, kept for resume (admin)", body = Delivered)))]
fn ws_send_to_user() {}

#[utoipa::path(post, path = "/api/v1/ws/send", tag = "realtime",
    request_body(content = inline(realtime::SendBody), content_type = "application/json"),
    responses(
        (status = 202, description = "Sent to the user's connections, kept for resume (admin)", body = Delivered),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
fn ws_send() {}

// ---------------------------------------------------------------------------------------
// The contract's conventions, applied to every operation.

/// Adds the security schemes and the error answers every route of a kind shares.
struct Conventions;

/// Reusable error answers: (status, component name, description).
const SHARED_ERRORS: [(&str, &str, &str); 6] = [
    ("400", "BadRequest", "Malformed or invalid request"),
    ("401", "Unauthorized", "No valid credentials"),
    (
        "403",
        "Forbidden",
        "Not allowed (role, Origin, or an API key where the contract forbids it)",
    ),
    (
        "404",
        "NotFound",
        "No such object, or not one the caller may see",
    ),
    ("413", "PayloadTooLarge", "Body too large"),
    (
        "415",
        "UnsupportedMediaType",
        "A body that is not application/json",
    ),
];

impl Modify for Conventions {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("A session token or an API key (`zs_…`)"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "cookie",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                super::extract::SESSION_COOKIE,
                "The session cookie set at login and register; changes need an allowed Origin",
            ))),
        );
        components.add_security_scheme(
            "agent_token",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An agent token (`zsa_…`), for the agent runtime only"))
                    .build(),
            ),
        );
        for (_, name, description) in SHARED_ERRORS {
            let response = ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build();
            components
                .responses
                .insert(name.to_owned(), response.into());
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            for op in operations_mut(item) {
                apply_conventions(path, op);
            }
        }
    }
}

/// The operations of a path item (the methods the API uses).
fn operations_mut(item: &mut PathItem) -> impl Iterator<Item = &mut Operation> {
    [
        item.get.as_mut(),
        item.put.as_mut(),
        item.post.as_mut(),
        item.delete.as_mut(),
        item.patch.as_mut(),
    ]
    .into_iter()
    .flatten()
}

/// What the handlers trim from query values: Unicode White_Space, as `str::trim` knows it
/// (spelt out: `\\s` means slightly different sets in different regex engines).
const TRIMMED: &str =
    r"[\t\n\u000b\u000c\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*";

/// The exact form of the query parameters the list handlers parse by hand (as strings,
/// trimmed, empty meaning absent), so the document says precisely what is accepted.
fn query_pattern(path: &str, name: &str) -> Option<String> {
    let body = match name {
        // The notifications take `?limit=` as a plain number (pattern on the route).
        "limit" if path == "/api/v1/notifications" => return None,
        // The agent lists trim `?all=`; the task list takes it as is (pattern on the route).
        "all" if path.starts_with("/api/v1/agents") => "true|false|1|0",
        // `?limit=` (1 or more; above 200 counts as 200) and the paging cursor: positive
        // integers as the handlers parse them.
        "limit" | "cursor" => r"\+?0*[1-9][0-9]{0,17}",
        "status" => "queued|running|completed|failed|canceled",
        // A task output seq (`u64`).
        "after" => r"\+?[0-9]{1,19}",
        "capability" => "[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
        // The forms `Uuid::parse_str` reads: hyphenated, simple, braced and URN.
        "agent_id" => concat!(
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            "|[0-9a-fA-F]{32}",
            "|\\{[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\\}",
            "|urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
        ),
        _ => return None,
    };
    Some(format!("^{TRIMMED}({body})?{TRIMMED}$"))
}

fn apply_conventions(path: &str, op: &mut Operation) {
    let security = op
        .security
        .as_ref()
        .map(|s| serde_json::to_value(s).unwrap_or(Value::Null));
    // No `security` on the operation: the document's (a user's credentials) applies.
    let public = security
        .as_ref()
        .is_some_and(|s| s == &serde_json::json!([{}]));
    let agent = security
        .as_ref()
        .is_some_and(|s| s.to_string().contains("agent_token"));
    let mut shared = Vec::new();
    if !public {
        shared.push("401");
        if !agent {
            shared.push("403");
        }
    }
    let params = op.parameters.as_deref().unwrap_or_default();
    let in_query = |p: &&Parameter| matches!(p.parameter_in, ParameterIn::Query);
    if op.request_body.is_some() {
        shared.extend(["400", "413", "415"]);
    } else if params.iter().any(|p| in_query(&p)) {
        shared.push("400");
    }
    if path.contains('{') {
        shared.push("404");
    }
    for param in op.parameters.iter_mut().flatten() {
        if let Some(pattern) = query_pattern(path, &param.name) {
            if matches!(param.parameter_in, ParameterIn::Query) {
                param.schema = Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(pattern))
                        .into(),
                );
            }
        }
    }
    for status in shared {
        if op.responses.responses.contains_key(status) {
            continue;
        }
        let name = SHARED_ERRORS
            .iter()
            .find(|(s, _, _)| *s == status)
            .map(|(_, name, _)| *name)
            .unwrap_or("BadRequest");
        op.responses
            .responses
            .insert(status.to_owned(), Ref::from_response_name(name).into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// Routes that are the web pages, not the API: not in the document on purpose.
    const NOT_API: [(&str, &str); 3] =
        [("GET", "/"), ("GET", "/{page}"), ("GET", "/static/{*path}")];

    /// Every `(METHOD, path)` the router registers, read from the `.route(` calls in
    /// `src/http` and below (test modules excluded).
    fn registered_routes() -> BTreeSet<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/http");
        let mut routes = BTreeSet::new();
        let mut files = Vec::new();
        let mut dirs = vec![dir];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("a source directory") {
                let path = entry.expect("dir entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        files.sort();
        assert!(files.len() > 5, "src/http has no route files?");
        for file in files {
            let text = std::fs::read_to_string(&file).expect("read source");
            // The unit tests at the end of a file build their own little routers.
            let code = strip_comments(
                text.split("#[cfg(test)]\nmod tests {")
                    .next()
                    .unwrap_or_default(),
            );
            for other in [
                ".nest(",
                ".nest_service(",
                ".route_service(",
                ".merge(Router::new",
            ] {
                assert!(
                    !code.contains(other),
                    "{}: `{other}` registers routes this test cannot read; extend it",
                    file.display()
                );
            }
            let mut rest = code.as_str();
            while let Some(at) = rest.find(".route(") {
                let args = balanced(&rest[at + ".route(".len()..]);
                let (path, methods) = parse_route(args)
                    .unwrap_or_else(|| panic!("{}: cannot read route `{args}`", file.display()));
                assert!(
                    !methods.is_empty(),
                    "{}: no method in `{args}`",
                    file.display()
                );
                for method in methods {
                    routes.insert((method, path.clone()));
                }
                rest = &rest[at + ".route(".len() + args.len()..];
            }
        }
        routes
    }

    /// Removes `//` comments (the code has no `//` inside string literals that matter here).
    fn strip_comments(code: &str) -> String {
        code.lines()
            .map(|l| match l.find("//") {
                Some(i) if !l[..i].contains('"') => &l[..i],
                _ => l,
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The text up to the parenthesis that closes the one just opened.
    fn balanced(text: &str) -> &str {
        let mut depth = 0usize;
        let mut in_string = false;
        let mut prev = ' ';
        for (i, c) in text.char_indices() {
            match c {
                '"' if prev != '\\' => in_string = !in_string,
                '(' | '{' | '[' if !in_string => depth += 1,
                ')' | '}' | ']' if !in_string => {
                    if depth == 0 {
                        return &text[..i];
                    }
                    depth -= 1;
                }
                _ => {}
            }
            prev = c;
        }
        text
    }

    /// `"path", get(a).post(b)` → the path and `[GET, POST]`: the method calls at the top
    /// level of the second argument.
    fn parse_route(args: &str) -> Option<(String, Vec<String>)> {
        let start = args.find('"')? + 1;
        let end = start + args[start..].find('"')?;
        let path = args[start..end].to_owned();
        let handler = &args[end + 1..];
        let mut methods = Vec::new();
        let mut depth = 0usize;
        let mut word = String::new();
        for c in handler.chars() {
            match c {
                '(' => {
                    assert!(
                        depth > 0 || !["any", "on", "any_service"].contains(&word.as_str()),
                        "`{word}(` in a route: list its methods so the document can name them"
                    );
                    if depth == 0
                        && ["get", "post", "put", "delete", "patch", "head", "options"]
                            .contains(&word.as_str())
                    {
                        methods.push(word.to_uppercase());
                    }
                    depth += 1;
                    word.clear();
                }
                ')' => {
                    depth = depth.saturating_sub(1);
                    word.clear();
                }
                c if c.is_alphanumeric() || c == '_' => word.push(c),
                _ => word.clear(),
            }
        }
        Some((path, methods))
    }

    fn documented_routes() -> BTreeSet<(String, String)> {
        let doc = serde_json::to_value(ApiDoc::openapi()).expect("document as JSON");
        let mut routes = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for method in item.as_object().expect("path item").keys() {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    routes.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        routes
    }

    #[test]
    fn every_route_is_in_the_document_and_nothing_else() {
        let registered = registered_routes();
        let documented = documented_routes();
        let api: BTreeSet<_> = registered
            .iter()
            .filter(|(m, p)| !NOT_API.contains(&(m.as_str(), p.as_str())))
            .cloned()
            .collect();
        assert!(
            api.len() > 30,
            "the route reader found only {} routes: {api:?}",
            api.len()
        );
        let missing: Vec<_> = api.difference(&documented).collect();
        assert!(
            missing.is_empty(),
            "routes missing from the OpenAPI document (add a `#[utoipa::path]` twin in \
             src/http/openapi.rs): {missing:?}"
        );
        let ghosts: Vec<_> = documented.difference(&api).collect();
        assert!(
            ghosts.is_empty(),
            "the OpenAPI document lists routes the router does not have: {ghosts:?}"
        );
    }

    #[test]
    fn the_route_reader_reads_chains_and_closures() {
        let (path, methods) =
            parse_route(r#""/api/v1/agents/{id}", get(read).put(update).delete(remove)"#).unwrap();
        assert_eq!(path, "/api/v1/agents/{id}");
        assert_eq!(methods, ["GET", "PUT", "DELETE"]);
        let (_, methods) = parse_route(r#""/", get(|| async { serve("post(x)") })"#).unwrap();
        assert_eq!(methods, ["GET"]);
        assert_eq!(balanced(r#""/a", get(f(x))) .rest"#), r#""/a", get(f(x))"#);
    }

    #[test]
    fn the_document_is_openapi_3_1_with_security_and_error_shapes() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
        let schemes = &doc["components"]["securitySchemes"];
        assert_eq!(schemes["bearer"]["scheme"], "bearer");
        assert_eq!(schemes["cookie"]["in"], "cookie");
        assert_eq!(schemes["cookie"]["name"], "zs_session");
        let error = &doc["components"]["schemas"]["ErrorBody"];
        let required: BTreeSet<_> = error["required"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(required, BTreeSet::from(["error", "message"]));
        // A secured route documents 401; a public one does not.
        let me = &doc["paths"]["/api/v1/users/me"]["get"]["responses"];
        assert!(me.get("401").is_some(), "{me}");
        let health = &doc["paths"]["/health"]["get"]["responses"];
        assert!(health.get("401").is_none(), "{health}");
        // Every documented answer that is an error uses the error shape.
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                for (status, response) in op["responses"].as_object().unwrap() {
                    let code: u16 = status.parse().unwrap();
                    if code < 400 || path == "/health" {
                        continue;
                    }
                    let text = response.to_string();
                    assert!(
                        text.contains("ErrorBody") || text.contains("#/components/responses/"),
                        "{method} {path} {status} is not in the error shape: {text}"
                    );
                }
            }
        }
    }
}

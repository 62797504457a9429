//! `/api/v1/tasks`: submit, list, read, status, result, attempts, cancel and retry.
//! Users see only their own tasks (another user's task is 404, as if it did not exist);
//! admins may read any and list all with `?all=true`.

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{AuthUser, JsonBody};
use super::state::AppState;
use crate::auth::Principal;
use crate::domain::{
    AgentId, AttemptOutcome, Capability, IdempotencyKey, MaxAttempts, Priority, TaskId, TaskQuery,
    TaskStatus, TimeoutSecs,
};
use crate::store::{AttemptRecord, TaskFilter, TaskRecord};
use crate::tasks::{RunAt, Standing, Submission, Submitted, TaskError, Viewer};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Lists: 50 by default, at most 200.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;

/// The task routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/tasks", get(list))
        .route("/api/v1/tasks/submit", post(submit))
        .route("/api/v1/tasks/{id}", get(read).delete(cancel))
        .route("/api/v1/tasks/{id}/status", get(status))
        .route("/api/v1/tasks/{id}/result", get(result))
        .route("/api/v1/tasks/{id}/attempts", get(attempts))
        .route("/api/v1/tasks/{id}/cancel", post(cancel))
        .route("/api/v1/tasks/{id}/retry", post(retry))
}

impl From<TaskError> for ApiError {
    fn from(err: TaskError) -> Self {
        let message = err.to_string();
        match err {
            TaskError::NotFound => ApiError::NotFound("task"),
            TaskError::AgentNotFound => ApiError::NotFoundAs {
                code: "agent_not_found",
                message,
            },
            TaskError::AgentLacksCapability { .. } => ApiError::invalid(message),
            TaskError::NotFinished => ApiError::conflict("not_finished", message),
            TaskError::AlreadyFinished(_) => ApiError::conflict("already_finished", message),
            TaskError::Canceled => ApiError::conflict("canceled", message),
            TaskError::NotYours(_) => ApiError::conflict("task_not_running", message),
            TaskError::Store(e) => e.into(),
        }
    }
}

/// `?limit=&cursor=` as every list takes them.
#[derive(Deserialize, Default)]
pub struct PageQuery {
    limit: Option<String>,
    cursor: Option<String>,
}

/// Parses paging parameters: a limit of 1–200 (default 50) and an opaque cursor from a
/// previous page.
pub fn page_params(page: &PageQuery) -> ApiResult<(u32, Option<i64>)> {
    let limit = match page.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n >= 1 => n.min(i64::from(MAX_LIMIT)) as u32,
            _ => return Err(ApiError::invalid("limit must be a number from 1 to 200")),
        },
    };
    let cursor = match page.cursor.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(ApiError::invalid("cursor is not one this server issued")),
        },
    };
    Ok((limit, cursor))
}

/// A task as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct TaskView {
    id: TaskId,
    user_id: crate::domain::UserId,
    query: String,
    capability: Capability,
    priority: Priority,
    status: TaskStatus,
    progress: u8,
    agent_id: Option<AgentId>,
    result: Option<serde_json::Value>,
    error: Option<String>,
    attempts: u32,
    max_attempts: u32,
    idempotency_key: Option<String>,
    run_at: Option<DateTime<Utc>>,
    /// Its place in the queue (1 = next); null unless queued.
    queue_position: Option<i64>,
    output_bytes: u64,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
}

impl TaskView {
    /// The task with where it stands in the queue (see `TaskService::standing`).
    pub fn new(t: TaskRecord, standing: Standing) -> Self {
        Self {
            id: t.id,
            user_id: t.user_id,
            query: t.query,
            capability: t.capability,
            priority: t.priority,
            status: t.status,
            progress: t.progress,
            agent_id: t.agent_id,
            result: t.result,
            error: t.error,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            idempotency_key: t.idempotency_key,
            run_at: t.run_at,
            queue_position: standing.queue_position,
            output_bytes: t.output_bytes,
            created_at: t.created_at,
            started_at: t.started_at,
            completed_at: t.completed_at,
            updated_at: t.updated_at,
        }
    }

    /// Reads where the task stands and builds its view (one count query if queued).
    pub async fn load(state: &AppState, task: TaskRecord) -> ApiResult<Self> {
        let standing = state.tasks.standing(&task).await?;
        Ok(Self::new(task, standing))
    }
}

/// One attempt as `GET …/attempts` shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AttemptView {
    attempt: u32,
    agent_id: Option<AgentId>,
    started_at: DateTime<Utc>,
    ended_at: Option<DateTime<Utc>>,
    outcome: AttemptOutcome,
    error: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        Self {
            attempt: a.attempt,
            agent_id: a.agent_id,
            started_at: a.started_at,
            ended_at: a.ended_at,
            outcome: a.outcome,
            error: a.error,
        }
    }
}

fn viewer(principal: &Principal) -> Viewer {
    Viewer {
        user_id: principal.user_id,
        admin: principal.is_admin(),
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct SubmitBody {
    query: String,
    capability: Option<String>,
    agent_id: Option<String>,
    priority: Option<String>,
    timeout_s: Option<i64>,
    max_attempts: Option<i64>,
    idempotency_key: Option<String>,
    run_at: Option<String>,
}

#[derive(Deserialize)]
struct ListQuery {
    status: Option<String>,
    q: Option<String>,
    capability: Option<String>,
    agent_id: Option<String>,
    all: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn submit(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    JsonBody(body): JsonBody<SubmitBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let submission = Submission {
        query: TaskQuery::parse(body.query)?,
        capability: match body.capability.as_deref() {
            None => Capability::general(),
            Some(raw) => Capability::parse(raw)?,
        },
        priority: match body.priority.as_deref() {
            None => Priority::default(),
            Some(raw) => Priority::parse(raw)?,
        },
        agent_id: body.agent_id.as_deref().map(AgentId::parse).transpose()?,
        timeout: match body.timeout_s {
            None => TimeoutSecs::DEFAULT,
            Some(raw) => TimeoutSecs::parse(raw)?,
        },
        max_attempts: match body.max_attempts {
            None => MaxAttempts::DEFAULT,
            Some(raw) => MaxAttempts::parse(raw)?,
        },
        idempotency_key: body
            .idempotency_key
            .map(IdempotencyKey::parse)
            .transpose()?,
        run_at: body
            .run_at
            .as_deref()
            .map(|raw| RunAt::parse(raw, Utc::now()))
            .transpose()?,
    };
    let (status, task, duplicate) = match state.tasks.submit(principal.user_id, submission).await? {
        Submitted::New(task) => (StatusCode::ACCEPTED, task, false),
        Submitted::Duplicate(task) => (StatusCode::OK, task, true),
    };
    let mut body = json!({
        "task_id": task.id,
        "status": task.status,
        "task": TaskView::load(&state, task).await?,
    });
    if duplicate {
        body["duplicate"] = json!(true);
    }
    Ok((status, Json(body)))
}

async fn list(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (limit, cursor) = page_params(&query.page)?;
    let all = match query.all.as_deref() {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ApiError::invalid("all must be true or false")),
    };
    if all && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only admins can list every user's tasks".into(),
        ));
    }
    let status = match query.status.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(TaskStatus::parse(raw)?),
    };
    let text = |raw: Option<String>| raw.filter(|v| !v.trim().is_empty());
    let filter = TaskFilter {
        user: (!all).then_some(principal.user_id),
        status,
        q: text(query.q),
        capability: text(query.capability)
            .as_deref()
            .map(Capability::parse)
            .transpose()?,
        agent_id: text(query.agent_id)
            .as_deref()
            .map(AgentId::parse)
            .transpose()?,
        cursor,
        limit,
    };
    let page = state.tasks.list(&filter).await?;
    let mut tasks = Vec::with_capacity(page.items.len());
    for task in page.items {
        tasks.push(TaskView::load(&state, task).await?);
    }
    Ok(Json(json!({
        "tasks": tasks,
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    })))
}

/// A task the caller may see, loaded from the `{id}` of the path: 404 for a malformed
/// id, an unknown task or someone else's (unless the caller is an admin).
pub(super) struct VisibleTask(pub(super) TaskRecord);

impl FromRequestParts<AppState> for VisibleTask {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(principal) = AuthUser::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("task"))?;
        let id = path_id(&id, TaskId::parse, "task")?;
        Ok(Self(state.tasks.get(viewer(&principal), id).await?))
    }
}

async fn read(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
) -> ApiResult<Json<TaskView>> {
    Ok(Json(TaskView::load(&state, task).await?))
}

async fn status(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
) -> ApiResult<Json<serde_json::Value>> {
    let standing = state.tasks.standing(&task).await?;
    Ok(Json(json!({
        "task_id": task.id,
        "status": task.status,
        "progress": task.progress,
        "agent_id": task.agent_id,
        "updated_at": task.updated_at,
        "queue_position": standing.queue_position,
        "waiting_for": standing.waiting_for,
    })))
}

async fn attempts(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
) -> ApiResult<Json<serde_json::Value>> {
    let attempts: Vec<AttemptView> = state
        .tasks
        .attempts(&task)
        .await?
        .into_iter()
        .map(AttemptView::from)
        .collect();
    Ok(Json(json!({ "attempts": attempts })))
}

/// Runs a finished task again as a new task (202); 409 `not_finished` before.
#[tracing::instrument(skip_all, fields(task_id = %task.id))]
async fn retry(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let task = state.tasks.retry(&task).await?;
    let body = json!({
        "task_id": task.id,
        "status": task.status,
        "task": TaskView::load(&state, task).await?,
    });
    Ok((StatusCode::ACCEPTED, Json(body)))
}

async fn result(VisibleTask(task): VisibleTask) -> ApiResult<Json<serde_json::Value>> {
    if !task.status.is_finished() {
        return Err(TaskError::NotFinished.into());
    }
    let duration_ms = match (task.started_at, task.completed_at) {
        (Some(start), Some(end)) => Some((end - start).num_milliseconds().max(0)),
        _ => None,
    };
    Ok(Json(json!({
        "task_id": task.id,
        "status": task.status,
        "result": task.result,
        "error": task.error,
        "duration_ms": duration_ms,
    })))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn cancel(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let task = state
        .tasks
        .cancel(viewer(&principal), path_id(&id, TaskId::parse, "task")?)
        .await?;
    Ok(Json(json!({ "task_id": task.id, "status": task.status })))
}

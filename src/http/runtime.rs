//! `/api/v1/runtime`: what an agent process calls with its `zsa_…` token: claim (a long
//! poll, one task or a batch), progress (renews the lease), complete, fail and release
//! (hand back on a clean stop).

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{parse_json, presented_secret, JsonBody, Presented};
use super::state::AppState;
use crate::agents::tokens::{AgentCredential, Standing};
use crate::auth::secret::AGENT_TOKEN_PREFIX;
use crate::domain::{Capability, TaskId};
use crate::store::{AgentRecord, Outcome, TaskRecord};
use crate::tasks::MAX_CLAIM_BATCH;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::time::Duration;

/// The agent runtime routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runtime/claim", post(claim))
        .route("/api/v1/runtime/tasks/{id}/progress", post(progress))
        .route("/api/v1/runtime/tasks/{id}/complete", post(complete))
        .route("/api/v1/runtime/tasks/{id}/fail", post(fail))
        .route("/api/v1/runtime/tasks/{id}/release", post(release))
        .route("/api/v1/runtime/stop", post(stop))
}

/// An agent authenticated by its `zsa_…` token (Bearer only: agents are not browsers),
/// from memory when the token was verified lately (see `agents::tokens`): the record
/// is the agent as read then, and the credential says whether the token was revoked
/// (or the agent stopped) since.
#[derive(Debug, Clone)]
pub struct AgentAuth(pub AgentRecord, pub AgentCredential);

impl FromRequestParts<AppState> for AgentAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let (token, how) = presented_secret(&parts.headers).ok_or(ApiError::Unauthorized)?;
        if how != Presented::Bearer || !token.starts_with(AGENT_TOKEN_PREFIX) {
            return Err(ApiError::Unauthorized);
        }
        let credential = state
            .agents
            .authenticate(&token)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        Ok(AgentAuth(credential.agent.clone(), credential))
    }
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
pub(super) struct ClaimBody {
    wait_s: Option<f64>,
    /// Present: a batch claim answered `{"tasks":[…]}`.
    max_tasks: Option<i64>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ProgressBody {
    progress: f64,
    message: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CompleteBody {
    #[serde(default)]
    result: serde_json::Value,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct FailBody {
    error: String,
    /// Only an explicit `false` fails the task at once; absent means retry.
    retryable: Option<bool>,
}

#[tracing::instrument(skip_all, fields(agent_id = %agent.id))]
async fn claim(
    State(state): State<AppState>,
    AgentAuth(agent, credential): AgentAuth,
    body: Bytes,
) -> ApiResult<Response> {
    // The body is optional: an empty one asks for an immediate answer.
    let body: ClaimBody = if body.iter().all(u8::is_ascii_whitespace) {
        ClaimBody::default()
    } else {
        parse_json(&body)?
    };
    let wait = match body.wait_s {
        None => Duration::ZERO,
        Some(w) if (0.0..=30.0).contains(&w) => Duration::from_secs_f64(w),
        Some(_) => return Err(ApiError::invalid("wait_s must be between 0 and 30")),
    };
    let max = match body.max_tasks {
        None => 1,
        Some(n) if (1..=i64::from(MAX_CLAIM_BATCH)).contains(&n) => n as u32,
        Some(_) => return Err(ApiError::invalid("max_tasks must be between 1 and 32")),
    };
    // Ends without a task once the token is rotated (or the agent deleted, or its
    // process stops) while the claim waits.
    let tasks = state
        .tasks
        .claim(&agent, wait, max, credential.ended())
        .await?;
    if tasks.is_empty() {
        if credential.standing() == Standing::Revoked {
            return Err(ApiError::Unauthorized);
        }
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let claimed: Vec<ClaimedView> = tasks.into_iter().map(ClaimedView::from).collect();
    let body = match body.max_tasks {
        Some(_) => json!({ "tasks": claimed }),
        None => json!({ "task": claimed.into_iter().next() }),
    };
    Ok(Json(body).into_response())
}

/// A claimed task as its agent sees it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ClaimedView {
    id: TaskId,
    query: String,
    capability: Capability,
    attempt: u32,
    lease_expires_at: Option<DateTime<Utc>>,
}

impl From<TaskRecord> for ClaimedView {
    fn from(task: TaskRecord) -> Self {
        Self {
            id: task.id,
            query: task.query,
            capability: task.capability,
            attempt: task.attempts,
            lease_expires_at: task.lease_expires_at,
        }
    }
}

#[tracing::instrument(skip_all, fields(agent_id = %agent.id, task_id = %id))]
async fn progress(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ProgressBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = path_id(&id, TaskId::parse, "task")?;
    if !(0.0..=100.0).contains(&body.progress) {
        return Err(ApiError::invalid("progress must be between 0 and 100"));
    }
    if let Some(message) = body.message.as_deref() {
        tracing::debug!(message, "agent progress message");
    }
    let task = state
        .tasks
        .progress(&agent, id, body.progress as u8)
        .await?;
    Ok(Json(json!({
        "task_id": task.id,
        "status": task.status,
        "progress": task.progress,
        "lease_expires_at": task.lease_expires_at,
    })))
}

#[tracing::instrument(skip_all, fields(agent_id = %agent.id, task_id = %id))]
async fn complete(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<CompleteBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = path_id(&id, TaskId::parse, "task")?;
    let task = state
        .tasks
        .finish(
            &agent,
            id,
            Outcome::Completed {
                result: body.result,
            },
        )
        .await?;
    Ok(Json(json!({ "task_id": task.id, "status": task.status })))
}

#[tracing::instrument(skip_all, fields(agent_id = %agent.id, task_id = %id))]
async fn fail(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<FailBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = path_id(&id, TaskId::parse, "task")?;
    let error = body.error.trim();
    if error.is_empty() {
        return Err(ApiError::invalid("error must describe what went wrong"));
    }
    // Errors are shown to the task's owner; keep them to a readable size.
    let error: String = error.chars().take(4000).collect();
    let task = state
        .tasks
        .finish(
            &agent,
            id,
            Outcome::Failed {
                error,
                retryable: body.retryable != Some(false),
            },
        )
        .await?;
    Ok(Json(
        json!({ "task_id": task.id, "status": task.status, "attempts": task.attempts }),
    ))
}

/// Hands the task back without using an attempt (the agent is stopping cleanly); the
/// agent counts as offline until its next call. The body, if any, is ignored.
#[tracing::instrument(skip_all, fields(agent_id = %agent.id, task_id = %id))]
async fn release(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
    Path(id): Path<String>,
) -> ApiResult<Json<serde_json::Value>> {
    let id = path_id(&id, TaskId::parse, "task")?;
    let task = state.tasks.release(&agent, id).await?;
    Ok(Json(
        json!({ "task_id": task.id, "status": task.status, "attempts": task.attempts }),
    ))
}

/// The agent process stops with nothing to hand back (an idle reference agent on
/// SIGTERM): the agent is offline at once, not after the silence window, and claims it
/// still has waiting end without a task. Its next call brings it back. 204.
#[tracing::instrument(skip_all, fields(agent_id = %agent.id))]
async fn stop(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
) -> ApiResult<StatusCode> {
    state.agents.stopped(&agent).await?;
    // Its next call must be written (and announced) as coming back online.
    state.tasks.forget_presence(agent.id);
    Ok(StatusCode::NO_CONTENT)
}

//! Task output over HTTP: the agent's append (`POST /api/v1/runtime/tasks/{id}/output`),
//! the owner's pages (`GET /api/v1/tasks/{id}/output?after=&limit=`) and the live
//! Server-Sent Events stream (`GET /api/v1/tasks/{id}/output/stream`).

use super::error::{error_response, path_id, ApiError};
use super::extract::JsonBody;
use super::runtime::AgentAuth;
use super::state::AppState;
use super::tasks::VisibleTask;
use crate::domain::{BatchError, ChunkBatch, NewChunk, OutputStream, TaskId};
use crate::tasks::output::{FollowEvent, OutputError, OutputFollower};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::time::Duration;

/// Chunks per page unless `limit` says otherwise, and at most.
const DEFAULT_LIMIT: u32 = 1000;
const MAX_LIMIT: u32 = 10_000;
/// Heartbeat comment interval on the stream (proxies close silent connections).
const HEARTBEAT: Duration = Duration::from_secs(15);

/// The output routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/runtime/tasks/{id}/output", post(append))
        .route("/api/v1/tasks/{id}/output", get(page))
        .route("/api/v1/tasks/{id}/output/stream", get(stream))
}

/// `{text, stream?}` or `{chunks: [{text, stream?}]}`.
#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct AppendBody {
    text: Option<String>,
    stream: Option<String>,
    chunks: Option<Vec<ChunkBody>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ChunkBody {
    text: String,
    stream: Option<String>,
}

fn parse_stream(raw: Option<&str>) -> Result<OutputStream, ApiError> {
    raw.map_or(Ok(OutputStream::Output), |s| Ok(OutputStream::parse(s)?))
}

/// An append's refusal: any API error, or 413 `output_limit` (a code of its own, so an
/// agent can tell "this task's output is full" from "this request is too big").
enum AppendError {
    Api(ApiError),
    OutputLimit(String),
}

impl From<ApiError> for AppendError {
    fn from(err: ApiError) -> Self {
        AppendError::Api(err)
    }
}

impl IntoResponse for AppendError {
    fn into_response(self) -> Response {
        match self {
            AppendError::Api(err) => err.into_response(),
            AppendError::OutputLimit(message) => {
                error_response(StatusCode::PAYLOAD_TOO_LARGE, "output_limit", &message)
            }
        }
    }
}

impl AppendBody {
    fn into_batch(self) -> Result<ChunkBatch, AppendError> {
        let chunks = match (self.text, self.chunks) {
            (Some(text), None) => vec![NewChunk {
                stream: parse_stream(self.stream.as_deref())?,
                text,
            }],
            (None, Some(chunks)) => chunks
                .into_iter()
                .map(|c| {
                    Ok(NewChunk {
                        stream: parse_stream(c.stream.as_deref())?,
                        text: c.text,
                    })
                })
                .collect::<Result<_, ApiError>>()?,
            _ => return Err(ApiError::invalid("send either text or chunks").into()),
        };
        ChunkBatch::parse(chunks).map_err(|e| match e {
            BatchError::Invalid(e) => ApiError::from(e).into(),
            BatchError::TooLarge => AppendError::OutputLimit(e.to_string()),
        })
    }
}

#[tracing::instrument(skip_all, fields(agent_id = %agent.id, task_id = %id))]
async fn append(
    State(state): State<AppState>,
    AgentAuth(agent, _): AgentAuth,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<AppendBody>,
) -> Result<Json<serde_json::Value>, AppendError> {
    let id = path_id(&id, TaskId::parse, "task")?;
    let batch = body.into_batch()?;
    match state.tasks.append_output(&agent, id, batch).await {
        Ok(seq) => Ok(Json(json!({ "seq": seq }))),
        Err(err @ OutputError::Limit { .. }) => Err(AppendError::OutputLimit(err.to_string())),
        Err(OutputError::Task(err)) => Err(ApiError::from(err).into()),
    }
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<String>,
}

/// A `seq` from a query or header: a whole number, 0 meaning "from the start".
fn parse_after(raw: Option<&str>, what: &str) -> Result<u64, ApiError> {
    match raw.map(str::trim) {
        None | Some("") => Ok(0),
        Some(raw) => raw
            .parse::<u64>()
            .map_err(|_| ApiError::invalid(format!("{what} must be a whole number (a seq)"))),
    }
}

async fn page(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let after = parse_after(query.after.as_deref(), "after")?;
    let limit = match query.limit.as_deref().map(str::trim) {
        None | Some("") => DEFAULT_LIMIT,
        Some(raw) => match raw.parse::<u64>() {
            Ok(n) if n >= 1 => n.min(u64::from(MAX_LIMIT)) as u32,
            _ => {
                return Err(ApiError::invalid(format!(
                    "limit must be a number from 1 to {MAX_LIMIT}"
                )))
            }
        },
    };
    let page = state.tasks.output_page(&task, after, limit).await?;
    Ok(Json(json!({
        "task_id": task.id,
        "chunks": page.chunks,
        "next": page.next,
        "complete": page.complete,
    })))
}

async fn stream(
    State(state): State<AppState>,
    VisibleTask(task): VisibleTask,
    headers: HeaderMap,
    query: Result<Query<PageQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    // `Last-Event-ID` (a reconnecting EventSource) wins over `?after=`.
    let last_event_id = headers
        .get("last-event-id")
        .map(|v| v.to_str().unwrap_or("x"));
    let after = match last_event_id {
        Some(raw) => parse_after(Some(raw), "Last-Event-ID")?,
        None => parse_after(query.after.as_deref(), "after")?,
    };
    let follower = state.tasks.follow_output(&task, after);
    let mut response = Sse::new(events(follower))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// `event: output` per chunk (`id` = seq), then `event: end`; the stream closes after it.
fn events(follower: OutputFollower) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold(Some(follower), |state| async move {
        let mut follower = state?;
        let event = match follower.next().await {
            Ok(Some(FollowEvent::Chunk(c))) => Event::default()
                .event("output")
                .id(c.seq.to_string())
                .data(json!({ "seq": c.seq, "stream": c.stream, "text": c.text }).to_string()),
            Ok(Some(FollowEvent::End(status))) => Event::default()
                .event("end")
                .data(json!({ "status": status }).to_string()),
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "task output stream ended early");
                return None;
            }
        };
        Some((Ok(event), Some(follower)))
    })
}

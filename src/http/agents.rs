//! `/api/v1/agents`: register (the token is shown once), list and search, read, update
//! and delete. Every signed-in user can list and read agents; only the owner or an
//! admin can change one.

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{AuthUser, JsonBody};
use super::state::AppState;
use super::tasks::{page_params, PageQuery};
use crate::agents::{self, Registration};
use crate::auth::Principal;
use crate::domain::{AgentId, Capability};
use crate::store::{AgentChanges, AgentFilter, AgentRecord, StoreError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// The agent registry routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/search", get(list))
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{id}", get(read).put(update).delete(remove))
}

/// An agent as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentView {
    id: AgentId,
    owner_id: crate::domain::UserId,
    name: String,
    description: String,
    capabilities: Vec<Capability>,
    status: &'static str,
    tasks_completed: i64,
    tasks_failed: i64,
    last_seen_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<AgentRecord> for AgentView {
    fn from(a: AgentRecord) -> Self {
        Self {
            id: a.id,
            owner_id: a.owner_id,
            name: a.name,
            description: a.description,
            capabilities: a.capabilities,
            status: if a.online { "online" } else { "offline" },
            tasks_completed: a.tasks_completed,
            tasks_failed: a.tasks_failed,
            last_seen_at: a.last_seen_at,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    capability: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RegisterBody {
    name: String,
    #[serde(default)]
    description: String,
    capabilities: Option<Vec<String>>,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateBody {
    name: Option<String>,
    description: Option<String>,
    capabilities: Option<Vec<String>>,
}

async fn load(state: &AppState, id: AgentId) -> ApiResult<AgentRecord> {
    match state.store.agent(id).await {
        Ok(agent) => Ok(agent),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

/// Only the owner or an admin may change an agent.
fn ensure_may_change(principal: &Principal, agent: &AgentRecord) -> ApiResult<()> {
    if principal.is_admin() || agent.owner_id == principal.user_id {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "only the agent's owner or an admin can change it".into(),
        ))
    }
}

async fn list(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<serde_json::Value>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (limit, cursor) = page_params(&query.page)?;
    let capability = match query.capability.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(Capability::parse(raw)?),
    };
    let q = query
        .q
        .map(|q| q.trim().to_owned())
        .filter(|q| !q.is_empty());
    let filter = AgentFilter {
        q,
        capability,
        cursor,
        limit,
    };
    let page = state.store.list_agents(&filter).await?;
    let agents: Vec<AgentView> = page.items.into_iter().map(AgentView::from).collect();
    Ok(Json(json!({
        "agents": agents,
        "next_cursor": page.next_cursor.map(|c| c.to_string()),
    })))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn register(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let capabilities = match body.capabilities {
        // An agent that names nothing gets the default task capability.
        None => vec![Capability::general()],
        Some(raw) => agents::parse_capabilities(&raw)?,
    };
    let registration = Registration {
        name: agents::parse_name(&body.name)?,
        description: agents::parse_description(&body.description)?,
        capabilities,
    };
    let (agent, token) = state
        .agents
        .register(principal.user_id, registration)
        .await?;
    let body = json!({ "agent": AgentView::from(agent), "agent_token": token.value });
    Ok((StatusCode::CREATED, Json(body)))
}

async fn read(
    State(state): State<AppState>,
    AuthUser(_): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<Json<AgentView>> {
    let agent = load(&state, path_id(&id, AgentId::parse, "agent")?).await?;
    Ok(Json(agent.into()))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn update(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<AgentView>> {
    let agent = load(&state, path_id(&id, AgentId::parse, "agent")?).await?;
    ensure_may_change(&principal, &agent)?;
    let changes = AgentChanges {
        name: body.name.as_deref().map(agents::parse_name).transpose()?,
        description: body
            .description
            .as_deref()
            .map(agents::parse_description)
            .transpose()?,
        capabilities: body
            .capabilities
            .as_deref()
            .map(agents::parse_capabilities)
            .transpose()?,
    };
    match state.agents.update(agent.id, &changes).await {
        Ok(agent) => Ok(Json(agent.into())),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn remove(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let agent = load(&state, path_id(&id, AgentId::parse, "agent")?).await?;
    ensure_may_change(&principal, &agent)?;
    match state.agents.delete(&agent).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

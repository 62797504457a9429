//! `/api/v1/agents`: register (the token is shown once), list and search, read, update,
//! delete and token rotation.
//!
//! Visibility (contract v2): a user sees their own agents and the shared ones; an
//! admin sees every agent (lists: with `?all=true`). An agent the caller may not see is
//! 404, as if it did not exist; one they see but may not change (someone else's shared
//! agent) is 403. Only the owner or an admin changes an agent; only an admin shares one.

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{AuthUser, JsonBody};
use super::state::AppState;
use super::tasks::{page_params, PageQuery};
use crate::agents::{self, AgentStatus, Registration};
use crate::auth::Principal;
use crate::domain::{AgentId, Capability, UserId};
use crate::store::{AgentChanges, AgentFilter, AgentRecord, StoreError};
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The agent registry routes.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/agents", get(list))
        .route("/api/v1/agents/search", get(list))
        .route("/api/v1/agents/register", post(register))
        .route("/api/v1/agents/{id}", get(read).put(update).delete(remove))
        .route("/api/v1/agents/{id}/token", post(rotate_token))
}

/// An agent as the API shows it.
#[derive(Serialize, utoipa::ToSchema)]
pub struct AgentView {
    id: AgentId,
    owner_id: UserId,
    name: String,
    description: String,
    capabilities: Vec<Capability>,
    shared: bool,
    status: AgentStatus,
    current_tasks: i64,
    tasks_completed: i64,
    tasks_failed: i64,
    last_seen_at: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<AgentRecord> for AgentView {
    fn from(a: AgentRecord) -> Self {
        Self {
            status: AgentStatus::of(&a),
            id: a.id,
            owner_id: a.owner_id,
            name: a.name,
            description: a.description,
            capabilities: a.capabilities,
            shared: a.shared,
            current_tasks: a.current_tasks,
            tasks_completed: a.tasks_completed,
            tasks_failed: a.tasks_failed,
            last_seen_at: a.last_seen_at,
            created_at: a.created_at,
            updated_at: a.updated_at,
        }
    }
}

/// One page of agents.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct AgentList {
    agents: Vec<AgentView>,
    /// Where the next page starts; `null` at the end.
    next_cursor: Option<String>,
}

/// `POST /agents/register`'s answer: the only time the token is shown.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Registered {
    agent: AgentView,
    agent_token: String,
}

/// `POST /agents/{id}/token`'s answer.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct NewToken {
    agent_token: String,
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    capability: Option<String>,
    all: Option<String>,
    #[serde(flatten)]
    page: PageQuery,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RegisterBody {
    name: String,
    #[serde(default)]
    description: String,
    capabilities: Option<Vec<String>>,
    #[serde(default)]
    shared: bool,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct UpdateBody {
    name: Option<String>,
    description: Option<String>,
    capabilities: Option<Vec<String>>,
    shared: Option<bool>,
}

/// An agent the caller may see, loaded from the `{id}` of the path, with the caller: 404
/// for a malformed id, an unknown agent or another user's private one (unless the caller
/// is an admin). Every `/agents/{id}` route goes through it, so none can forget the rule.
struct VisibleAgent {
    agent: AgentRecord,
    principal: Principal,
}

impl FromRequestParts<AppState> for VisibleAgent {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(principal) = AuthUser::from_request_parts(parts, state).await?;
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::NotFound("agent"))?;
        let id = path_id(&id, AgentId::parse, "agent")?;
        let agent = match state.store.agent(id).await {
            Ok(agent) if agent.visible_to(principal.user_id, principal.is_admin()) => agent,
            Ok(_) | Err(StoreError::NotFound) => return Err(ApiError::NotFound("agent")),
            Err(e) => return Err(e.into()),
        };
        Ok(Self { agent, principal })
    }
}

impl VisibleAgent {
    /// Only the owner or an admin may change an agent (others who see it, because it
    /// is shared, get 403).
    fn ensure_may_change(&self) -> ApiResult<()> {
        if self.principal.is_admin() || self.agent.owner_id == self.principal.user_id {
            Ok(())
        } else {
            Err(ApiError::Forbidden(
                "only the agent's owner or an admin can change it".into(),
            ))
        }
    }

    /// The server's own agents (the built-in one) run with a token only the server
    /// holds and are always shared: those two things are not for the API to change.
    fn is_system(&self) -> bool {
        self.agent.owner_id == agents::SYSTEM_OWNER
    }
}

/// Parses `?all=`: only admins may list every agent.
fn parse_all(raw: Option<&str>, principal: &Principal) -> ApiResult<bool> {
    let all = match raw.map(str::trim) {
        None | Some("") | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ApiError::invalid("all must be true or false")),
    };
    if all && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only admins can list every user's agents".into(),
        ));
    }
    Ok(all)
}

async fn list(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<AgentList>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let (limit, cursor) = page_params(&query.page)?;
    let all = parse_all(query.all.as_deref(), &principal)?;
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
        visible_to: (!all).then_some(principal.user_id),
        cursor,
        limit,
    };
    let page = state.store.list_agents(&filter).await?;
    Ok(Json(AgentList {
        agents: page.items.into_iter().map(AgentView::from).collect(),
        next_cursor: page.next_cursor.map(|c| c.to_string()),
    }))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn register(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ApiResult<(StatusCode, Json<Registered>)> {
    if body.shared && !principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin can register a shared agent".into(),
        ));
    }
    let capabilities = match body.capabilities {
        // An agent that names nothing gets the default task capability.
        None => vec![Capability::general()],
        Some(raw) => agents::parse_capabilities(&raw)?,
    };
    let registration = Registration {
        name: agents::parse_name(&body.name)?,
        description: agents::parse_description(&body.description)?,
        capabilities,
        shared: body.shared,
    };
    let (agent, token) = state
        .agents
        .register(principal.user_id, registration)
        .await?;
    let body = Registered {
        agent: agent.into(),
        agent_token: token.value,
    };
    Ok((StatusCode::CREATED, Json(body)))
}

async fn read(VisibleAgent { agent, .. }: VisibleAgent) -> Json<AgentView> {
    Json(agent.into())
}

#[tracing::instrument(skip_all, fields(user_id = %visible.principal.user_id))]
async fn update(
    State(state): State<AppState>,
    visible: VisibleAgent,
    JsonBody(body): JsonBody<UpdateBody>,
) -> ApiResult<Json<AgentView>> {
    visible.ensure_may_change()?;
    // Sending the value it already has is no change, so a form that sends the whole
    // agent back works for its owner too.
    let shared = body.shared.filter(|&s| s != visible.agent.shared);
    if shared.is_some() && !visible.principal.is_admin() {
        return Err(ApiError::Forbidden(
            "only an admin can share or unshare an agent".into(),
        ));
    }
    if shared == Some(false) && visible.is_system() {
        return Err(ApiError::conflict(
            "builtin_agent_shared",
            "the built-in agent is always shared",
        ));
    }
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
        shared,
    };
    match state.agents.update(&visible.agent, &changes).await {
        Ok(agent) => Ok(Json(agent.into())),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(user_id = %visible.principal.user_id))]
async fn remove(State(state): State<AppState>, visible: VisibleAgent) -> ApiResult<StatusCode> {
    visible.ensure_may_change()?;
    match state.agents.delete(&visible.agent).await {
        Ok(requeued) => {
            state.tasks.requeued(&requeued).await;
            Ok(StatusCode::NO_CONTENT)
        }
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

#[tracing::instrument(skip_all, fields(user_id = %visible.principal.user_id))]
async fn rotate_token(
    State(state): State<AppState>,
    visible: VisibleAgent,
) -> ApiResult<(StatusCode, Json<NewToken>)> {
    visible.ensure_may_change()?;
    if visible.is_system() {
        return Err(ApiError::conflict(
            "builtin_agent_token",
            "the built-in agent's token is managed by the server",
        ));
    }
    match state.agents.rotate_token(visible.agent.id).await {
        Ok((_, token)) => Ok((
            StatusCode::CREATED,
            Json(NewToken {
                agent_token: token.value,
            }),
        )),
        Err(StoreError::NotFound) => Err(ApiError::NotFound("agent")),
        Err(e) => Err(e.into()),
    }
}

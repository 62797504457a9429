//! `/api/v1/analytics/summary`: task and agent figures over a window, over the caller's
//! tasks (admins: everyone's).

use super::error::{ApiError, ApiResult};
use super::extract::AuthUser;
use super::state::AppState;
use crate::store::StoreError;
use crate::tasks::analytics::{self, AgentFigures, Summary, Window};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use std::collections::HashMap;

/// The analytics routes.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/analytics/summary", get(summary))
}

#[derive(Deserialize)]
struct SummaryQuery {
    window: Option<String>,
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn summary(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    query: Result<Query<SummaryQuery>, QueryRejection>,
) -> ApiResult<Json<Summary>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let window = match query.window.as_deref() {
        None => Window::Day,
        Some(raw) => Window::parse(raw)?,
    };
    let now = Utc::now();
    let user = (!principal.is_admin()).then_some(principal.user_id);
    let stats = state.store.task_stats(user, now - window.length()).await?;
    let mut names = HashMap::new();
    for id in analytics::agents_of(&stats) {
        match state.store.agent(id).await {
            Ok(agent) => {
                names.insert(id, agent.name);
            }
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let (total, online) = state.store.count_agents(user).await?;
    let summary = analytics::summarize(&stats, window, now, AgentFigures { total, online }, &names);
    Ok(Json(summary))
}

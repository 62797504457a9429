//! `GET /api/v1/notifications?limit=`: the caller's recent `system` messages (their own
//! and the broadcasts), newest first, read from the real-time history through the hub's
//! broker (so every node of a cluster lists the same).
//!
//! The pages show these as the dashboard's notifications and the API keys page's
//! security alerts, so a new tab, another device or a reload shows the same list as
//! the tab that was open when the message arrived. The log keeps at least the newest
//! 1000 messages of each user (see `HistoryPolicy`), so what is listed here is bounded
//! by retention, not by this endpoint.

use super::error::{ApiError, ApiResult};
use super::extract::AuthUser;
use super::state::AppState;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::VecDeque;

/// Default and largest number of notifications returned.
const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 200;
/// Messages read from the log per round trip while scanning the retained history.
const PAGE: u32 = 500;
/// A bound on the scan, whatever the retention settings: at most this many pages.
const MAX_PAGES: usize = 40;

/// The notifications route.
pub fn router() -> Router<AppState> {
    Router::new().route("/api/v1/notifications", get(list))
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<u32>,
}

/// One `system` message as the pages show it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Notification {
    /// The message text (data, rendered as text by the pages).
    message: Value,
    /// `info` | `success` | `warning` | `error`, as sent.
    level: Value,
    /// `security` for API key alerts; null when the message had none.
    category: Value,
    /// When it was published, RFC 3339 UTC.
    at: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct ListBody {
    notifications: Vec<Notification>,
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn list(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<ListBody>> {
    let Query(query) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let limit = match query.limit {
        None => DEFAULT_LIMIT,
        Some(n) if (1..=MAX_LIMIT).contains(&n) => n,
        Some(_) => {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {MAX_LIMIT}"
            )))
        }
    };
    // The log is read oldest first; keep the newest `limit` system messages seen.
    let mut newest: VecDeque<Notification> = VecDeque::with_capacity(limit as usize);
    let mut after = None;
    for _ in 0..MAX_PAGES {
        let page = state
            .hub
            .history_page(principal.user_id, after, PAGE)
            .await?
            .messages;
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        let full = page.len() == PAGE as usize;
        for message in page.into_iter().filter(|m| m.kind == "system") {
            let Ok(Value::Object(data)) = serde_json::from_str::<Value>(&message.data_json) else {
                continue;
            };
            if newest.len() == limit as usize {
                newest.pop_front();
            }
            newest.push_back(Notification {
                message: data.get("message").cloned().unwrap_or(Value::Null),
                level: data.get("level").cloned().unwrap_or(Value::Null),
                category: data.get("category").cloned().unwrap_or(Value::Null),
                at: DateTime::<Utc>::from_timestamp_millis(message.created_at_ms)
                    .unwrap_or_default()
                    .to_rfc3339_opts(SecondsFormat::Millis, true),
            });
        }
        if !full {
            break;
        }
    }
    Ok(Json(ListBody {
        notifications: newest.into_iter().rev().collect(),
    }))
}

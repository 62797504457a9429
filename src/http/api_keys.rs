//! `/api/v1/api-keys`: create (the secret is shown once), list, revoke. Creating and
//! revoking need a session: a leaked key must not be able to mint keys that outlive it.

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{AuthUser, JsonBody, SessionUser};
use super::state::{security_alert, AppState};
use crate::auth::secret::{self, API_KEY_PREFIX};
use crate::domain::ApiKeyId;
use crate::store::{ApiKeyRecord, StoreError};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/api-keys", get(list).post(create))
        .route("/api/v1/api-keys/{id}", delete(revoke))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct CreateBody {
    name: String,
    expires_in_days: Option<i64>,
}

/// A key as listed: never its secret or hash.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct KeyView {
    id: ApiKeyId,
    name: String,
    prefix: String,
    created_at: DateTime<Utc>,
    last_used_at: Option<DateTime<Utc>>,
    expires_at: Option<DateTime<Utc>>,
}

impl From<ApiKeyRecord> for KeyView {
    fn from(k: ApiKeyRecord) -> Self {
        Self {
            id: k.id,
            name: k.name,
            prefix: k.prefix,
            created_at: k.created_at,
            last_used_at: k.last_used_at,
            expires_at: k.expires_at,
        }
    }
}

fn parse_name(raw: &str) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(ApiError::invalid("name must be 1-100 printable characters"));
    }
    Ok(name.to_owned())
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn create(
    State(state): State<AppState>,
    SessionUser(AuthUser(principal)): SessionUser,
    JsonBody(body): JsonBody<CreateBody>,
) -> ApiResult<(StatusCode, Json<serde_json::Value>)> {
    let name = parse_name(&body.name)?;
    let now = Utc::now();
    let expires_at = match body.expires_in_days {
        None => None,
        Some(days) if (1..=3650).contains(&days) => Some(now + Duration::days(days)),
        Some(_) => {
            return Err(ApiError::invalid(
                "expires_in_days must be between 1 and 3650",
            ))
        }
    };
    let generated = secret::generate(API_KEY_PREFIX);
    let record = ApiKeyRecord {
        id: ApiKeyId::new(),
        user_id: principal.user_id,
        name,
        prefix: generated.prefix.clone(),
        key_hash: generated.hash.clone(),
        created_at: now,
        last_used_at: None,
        expires_at,
        revoked_at: None,
    };
    let announce = |key: &ApiKeyRecord| {
        security_alert(
            key.user_id,
            &format!("API key \"{}\" was created", key.name),
        )
    };
    state.store.create_api_key(&record, &announce).await?;
    tracing::info!(key_id = %record.id, prefix = %record.prefix, "api key created");
    state.relay.flush().await;
    let body = json!({
        "id": record.id,
        "name": record.name,
        "prefix": record.prefix,
        "key": generated.value,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
    });
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<KeyView> = state
        .store
        .list_api_keys(principal.user_id)
        .await?
        .into_iter()
        .map(KeyView::from)
        .collect();
    Ok(Json(json!({ "api_keys": keys })))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn revoke(
    State(state): State<AppState>,
    SessionUser(AuthUser(principal)): SessionUser,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = path_id(&id, ApiKeyId::parse, "api key")?;
    // The alert names the key as its owner named it (an id means nothing to a person).
    let announce = |key: &ApiKeyRecord| {
        security_alert(
            key.user_id,
            &format!("API key \"{}\" was revoked", key.name),
        )
    };
    match state
        .store
        .revoke_api_key(principal.user_id, id, Utc::now(), &announce)
        .await
    {
        Ok(()) => {}
        Err(StoreError::NotFound) => return Err(ApiError::NotFound("api key")),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(key_id = %id, "api key revoked");
    state.on_credentials_revoked(&[crate::auth::Credential::ApiKey(id)]);
    state.relay.flush().await;
    Ok(StatusCode::NO_CONTENT)
}

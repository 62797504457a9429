//! The real-time endpoints: the WebSocket (`/api/v1/ws/connect`) and its Server-Sent
//! Events twin (`/api/v1/events`), the admin publish API and the public stats.
//!
//! Authentication for the two streams happens here, before any upgrade, so a client
//! without valid credentials gets a JSON 401 (and a foreign Origin a 403) rather than
//! an opened-then-closed socket. The transports take over from a registered
//! `realtime::Connection`.

use super::error::{path_id, ApiError, ApiResult};
use super::extract::{origin_allowed, presented_secret, AdminUser, JsonBody, Presented};
use super::state::AppState;
use crate::auth::{resolve_secret, Principal};
use crate::domain::{MessageType, UserId};
use crate::realtime::{ConnectError, ConnectRequest, Connection, Target, TransportKind};
use crate::transport;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Largest publish body: the contract's 64 KiB.
pub const PUBLISH_BODY_LIMIT: usize = 64 * 1024;

/// The real-time routes; the publish routes carry their own 64 KiB body limit.
pub fn router() -> Router<AppState> {
    let publish = Router::new()
        .route("/api/v1/ws/broadcast", post(broadcast))
        .route("/api/v1/ws/user/{user_id}", post(send_to_user))
        .route("/api/v1/ws/send", post(send))
        // Inner to the application-wide limit, so it is the one that applies here.
        .layer(DefaultBodyLimit::max(PUBLISH_BODY_LIMIT));
    Router::new()
        .route("/api/v1/ws/connect", get(connect))
        .route("/api/v1/events", get(events))
        .route("/api/v1/ws/stats", get(stats))
        .merge(publish)
}

/// Query parameters of the two streams.
#[derive(Debug, Default, Deserialize)]
struct StreamQuery {
    /// A session token or API key, for clients that cannot set headers.
    token: Option<String>,
    /// The cursor to resume after.
    since: Option<String>,
}

/// `GET /api/v1/ws/connect`: authenticate, register, upgrade.
async fn connect(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|_| ApiError::invalid("malformed query string"))?;
    let principal = authenticate(&state, &headers, query.token.as_deref()).await?;
    let upgrade = upgrade.map_err(|rejection| ApiError::BadRequest {
        code: "websocket_required",
        message: rejection.body_text(),
    })?;
    let conn = register(&state, &principal, TransportKind::WebSocket, query.since).await?;
    Ok(transport::websocket::upgrade(upgrade, conn))
}

/// `GET /api/v1/events`: the Server-Sent Events stream.
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StreamQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let Query(query) = query.map_err(|_| ApiError::invalid("malformed query string"))?;
    let principal = authenticate(&state, &headers, query.token.as_deref()).await?;
    // The browser sends `Last-Event-ID` by itself on reconnect; it wins over `?since=`.
    let since = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .filter(|v| !v.trim().is_empty())
        .or(query.since);
    let conn = register(&state, &principal, TransportKind::Sse, since).await?;
    Ok(transport::sse::response(conn, principal.expires_at))
}

/// Origin first (a foreign page must not ride on the cookie, whatever it holds), then
/// the credential: `Authorization: Bearer`, else `?token=`, else the session cookie.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<&str>,
) -> Result<Principal, ApiError> {
    if !origin_allowed(headers, &state.http.allowed_origins) {
        return Err(ApiError::Forbidden("origin not allowed".into()));
    }
    let token = token.map(str::trim).filter(|t| !t.is_empty());
    let secret = match (presented_secret(headers), token) {
        (Some((secret, Presented::Bearer)), _) => secret,
        (_, Some(token)) => token.to_owned(),
        (Some((secret, _)), None) => secret,
        (None, None) => return Err(ApiError::Unauthorized),
    };
    resolve_secret(state.store.as_ref(), &state.signer, &secret)
        .await?
        .ok_or(ApiError::Unauthorized)
}

async fn register(
    state: &AppState,
    principal: &Principal,
    transport: TransportKind,
    since: Option<String>,
) -> Result<Connection, ApiError> {
    let request = ConnectRequest {
        user: principal.user_id,
        credential: Some(principal.credential),
        transport,
        since,
        expires_at: principal.expires_at,
    };
    // Checked before the upgrade so the client gets a 429 it can read.
    state
        .realtime_admission
        .connect(
            &state.hub,
            state.cluster.as_ref(),
            request,
            state.http.realtime_connections_per_user,
        )
        .await
}

/// The per-user cap on real-time connections, exact under parallel connects: one user's
/// connects on this node take turns (the check and the hub's registration happen in one
/// turn), while different users' connects never wait for each other. The count is the
/// cluster's: the backplane admits against every live node's count atomically (see
/// `cluster::Backplane::admit_connection`).
#[derive(Default)]
pub struct Admission {
    // A std mutex: held only to find or drop a user's turn lock, never across an await.
    turns: Mutex<HashMap<UserId, Arc<tokio::sync::Mutex<()>>>>,
}

/// How long a connect waits for its user's turn before it is told to come back.
const TURN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Admission {
    /// Registers the connection with the hub unless its user is at `cap` (429).
    async fn connect(
        &self,
        hub: &crate::realtime::Hub,
        cluster: &dyn crate::cluster::Backplane,
        request: ConnectRequest,
        cap: usize,
    ) -> Result<Connection, ApiError> {
        let user = request.user;
        let turn = {
            let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
            turns.entry(user).or_default().clone()
        };
        let result = match tokio::time::timeout(TURN_WAIT, turn.lock()).await {
            Err(_) => Err(ApiError::Busy {
                retry_after: std::time::Duration::from_secs(5),
            }),
            Ok(_turn) => {
                let here = hub.user_connection_count(user);
                if !cluster.admit_connection(user, here, cap).await {
                    Err(ApiError::RateLimited {
                        retry_after: std::time::Duration::from_secs(30),
                    })
                } else {
                    let connected = hub.connect(request).await;
                    if connected.is_err() {
                        // The place taken is given back while the turn is still held.
                        cluster.connections_changed(&[(user, here)]).await;
                    }
                    connected.map_err(|err| match err {
                        ConnectError::ShuttingDown => {
                            ApiError::Unavailable("draining for shutdown".into())
                        }
                        ConnectError::Revoked => ApiError::Unauthorized,
                    })
                }
            }
        };
        // The last one out removes the user's lock: clones are only made under the map
        // lock, so two references (the map's and ours) mean nobody else holds or waits.
        let mut turns = self.turns.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::strong_count(&turn) == 2 {
            turns.remove(&user);
        }
        result
    }
}

/// `GET /api/v1/ws/stats` (public): the cluster's sums, and `nodes`, one entry per
/// live node (this one's figures as of now, the others' as last reported).
async fn stats(State(state): State<AppState>) -> Json<Value> {
    let stats = crate::cluster::cluster_stats(state.cluster.as_ref(), state.hub.stats()).await;
    Json(json!({ "stats": stats }))
}

/// `{type, data}` of a publish.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct PublishBody {
    #[serde(rename = "type")]
    kind: String,
    data: Value,
}

/// `{user_id, type, data}` of `/api/v1/ws/send`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub(super) struct SendBody {
    user_id: String,
    #[serde(rename = "type")]
    kind: String,
    data: Value,
}

/// A publish turned into domain types.
pub(super) struct Message {
    kind: MessageType,
    data: Value,
}

impl Message {
    pub(super) fn parse(kind: &str, data: Value) -> Result<Self, ApiError> {
        let kind = MessageType::parse_publishable(kind)?;
        if !data.is_object() {
            return Err(ApiError::invalid("data must be a JSON object"));
        }
        Ok(Self { kind, data })
    }
}

/// `POST /api/v1/ws/broadcast` (admin): every connected user, kept for resume.
#[tracing::instrument(skip_all, fields(admin = %admin.user_id))]
async fn broadcast(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Response> {
    let message = Message::parse(&body.kind, body.data)?;
    publish(&state, Target::Everyone, message).await
}

/// `POST /api/v1/ws/user/{user_id}` (admin).
#[tracing::instrument(skip_all, fields(admin = %admin.user_id))]
async fn send_to_user(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    Path(user_id): Path<String>,
    JsonBody(body): JsonBody<PublishBody>,
) -> ApiResult<Response> {
    let user = path_id(&user_id, UserId::parse, "user")?;
    let message = Message::parse(&body.kind, body.data)?;
    publish_to_user(&state, user, message).await
}

/// `POST /api/v1/ws/send` (admin): the same with the user in the body.
#[tracing::instrument(skip_all, fields(admin = %admin.user_id))]
async fn send(
    State(state): State<AppState>,
    AdminUser(admin): AdminUser,
    JsonBody(body): JsonBody<SendBody>,
) -> ApiResult<Response> {
    let user = UserId::parse(&body.user_id)?;
    let message = Message::parse(&body.kind, body.data)?;
    publish_to_user(&state, user, message).await
}

async fn publish_to_user(state: &AppState, user: UserId, message: Message) -> ApiResult<Response> {
    if !state.store.user_exists(user).await? {
        return Err(ApiError::NotFound("user"));
    }
    publish(state, Target::User(user), message).await
}

async fn publish(state: &AppState, target: Target, message: Message) -> ApiResult<Response> {
    let published = state
        .hub
        .publish(target, message.kind, message.data)
        .await?;
    // This node's fan-out, plus the connections the other nodes hold for the target
    // (as they last told the backplane): every node delivers every publication.
    let elsewhere = state.cluster.remote_connections(target).await;
    let delivered = published.delivered as u64 + elsewhere;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "delivered": delivered })),
    )
        .into_response())
}

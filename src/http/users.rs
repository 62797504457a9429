//! `/api/v1/users`: register, login, logout, me, profile and password.

use super::error::{ApiError, ApiResult};
use super::extract::{
    is_https, AuthUser, ClientIp, JsonBody, SameOrigin, SessionUser, SESSION_COOKIE,
};
use super::state::AppState;
use crate::auth::{password, tokens::SESSION_TTL};
use crate::domain::{Email, FullName, Password};
use crate::store::{NewUser, SessionRecord, StoreError, User};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/users/register", post(register))
        .route("/api/v1/users/login", post(login))
        .route("/api/v1/users/logout", post(logout))
        .route("/api/v1/users/me", get(me).put(update_me))
        .route("/api/v1/users/me/password", put(change_password))
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct RegisterBody {
    email: String,
    password: String,
    #[serde(default)]
    full_name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct LoginBody {
    email: String,
    password: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct ProfileBody {
    full_name: String,
}

#[derive(Deserialize, utoipa::ToSchema)]
pub(super) struct PasswordBody {
    current_password: String,
    new_password: String,
}

#[tracing::instrument(skip_all)]
async fn register(
    State(state): State<AppState>,
    _: SameOrigin,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(body): JsonBody<RegisterBody>,
) -> ApiResult<Response> {
    let email = Email::parse(&body.email)?;
    let full_name = FullName::parse(&body.full_name)?;
    let password = password::parse_new(body.password)?;
    // Counted before the hash, so sign-ups sent in parallel are limited too.
    state
        .registrations
        .check(ip)
        .await
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let password_hash = state.hasher.hash(password).await?;
    let new = NewUser {
        email,
        full_name,
        password_hash,
        role: None,
    };
    let user = match state.store.create_user(new).await {
        Ok(user) => user,
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::conflict(
                "email_taken",
                "an account with this email already exists",
            ))
        }
        Err(e) => return Err(e.into()),
    };
    tracing::info!(user_id = %user.id, role = user.role.as_str(), "account created");
    let response = start_session(&state, &headers, user).await?;
    Ok((StatusCode::CREATED, response).into_response())
}

#[tracing::instrument(skip_all)]
async fn login(
    State(state): State<AppState>,
    _: SameOrigin,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    JsonBody(body): JsonBody<LoginBody>,
) -> ApiResult<Response> {
    // Counted before the password is checked, so parallel guesses are limited too; it
    // stays counted as a failure unless the password turns out right.
    let attempt = state
        .throttle
        .begin(&body.email, ip)
        .await
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let candidate = Password::candidate(body.password);
    let found = match Email::parse(&body.email) {
        Ok(email) => match state.store.user_credentials(&email).await {
            Ok(found) => Some(found),
            Err(StoreError::NotFound) => None,
            Err(e) => return Err(e.into()),
        },
        Err(_) => None,
    };
    let stored = found.as_ref().map_or_else(
        || password::decoy_hash().to_owned(),
        |f| f.password_hash.clone(),
    );
    // An unparseable email cannot belong to an account: same answer as a wrong password.
    let matches = state.hasher.verify(candidate, stored).await?;
    let Some(found) = found.filter(|_| matches) else {
        tracing::info!(%ip, "failed login");
        return Err(ApiError::InvalidCredentials);
    };
    attempt.succeeded().await;
    start_session(&state, &headers, found.user).await
}

/// Creates a session, signs its token, and answers with the token, the user and the cookie.
async fn start_session(state: &AppState, headers: &HeaderMap, user: User) -> ApiResult<Response> {
    let now = Utc::now();
    let session = SessionRecord {
        id: crate::domain::SessionId::new(),
        user_id: user.id,
        created_at: now,
        expires_at: now + SESSION_TTL,
        revoked_at: None,
    };
    state.store.create_session(&session).await?;
    let token = state
        .signer
        .issue(user.id, session.id, now, session.expires_at)?;
    let max_age = SESSION_TTL.num_seconds();
    let cookie = session_cookie(&token, max_age, is_https(headers));
    let body = json!({ "token": token, "expires_in": max_age, "user": user });
    let mut response = Json(body).into_response();
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

fn session_cookie(value: &str, max_age: i64, secure: bool) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let cookie = format!(
        "{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Lax; Max-Age={max_age}{secure}"
    );
    // Tokens are base64url and dots, always a valid header value.
    HeaderValue::from_str(&cookie).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    SessionUser(user): SessionUser,
) -> ApiResult<Response> {
    if let Some(session) = user.session() {
        match state.store.revoke_session(session, Utc::now()).await {
            Ok(()) | Err(StoreError::NotFound) => {}
            Err(e) => return Err(e.into()),
        }
        state.on_credentials_revoked(&[user.0.credential]);
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    let cookie = session_cookie("", 0, is_https(&headers));
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    Ok(response)
}

async fn me(
    State(state): State<AppState>,
    AuthUser(principal): AuthUser,
) -> ApiResult<Json<serde_json::Value>> {
    let user = state.store.user_by_id(principal.user_id).await?;
    Ok(Json(json!({ "user": user })))
}

#[tracing::instrument(skip_all, fields(user_id = %principal.user_id))]
async fn update_me(
    State(state): State<AppState>,
    SessionUser(AuthUser(principal)): SessionUser,
    JsonBody(body): JsonBody<ProfileBody>,
) -> ApiResult<Json<serde_json::Value>> {
    let name = FullName::parse(&body.full_name)?;
    let user = state
        .store
        .update_full_name(principal.user_id, &name)
        .await?;
    Ok(Json(json!({ "user": user })))
}

#[tracing::instrument(skip_all, fields(user_id = %user.0.user_id))]
async fn change_password(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    SessionUser(user): SessionUser,
    JsonBody(body): JsonBody<PasswordBody>,
) -> ApiResult<StatusCode> {
    let account = state.store.user_by_id(user.0.user_id).await?;
    let found = state.store.user_credentials(&account.email).await?;
    let new_password = password::parse_new(body.new_password)?;
    // The current password is a guess like any login: the same throttle applies.
    let attempt = state
        .throttle
        .begin(account.email.as_str(), ip)
        .await
        .map_err(|retry_after| ApiError::RateLimited { retry_after })?;
    let current = Password::candidate(body.current_password);
    if !state.hasher.verify(current, found.password_hash).await? {
        return Err(ApiError::Forbidden("current password is wrong".into()));
    }
    attempt.succeeded().await;
    let hash = state.hasher.hash(new_password).await?;
    state.store.set_password_hash(account.id, &hash).await?;
    // Every other session ends now; the one that changed the password stays signed in.
    let revoked = state
        .store
        .revoke_other_sessions(account.id, user.session(), Utc::now())
        .await?;
    let revoked: Vec<_> = revoked
        .into_iter()
        .map(crate::auth::Credential::Session)
        .collect();
    state.on_credentials_revoked(&revoked);
    tracing::info!(sessions_revoked = revoked.len(), "password changed");
    Ok(StatusCode::NO_CONTENT)
}

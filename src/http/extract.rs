//! Extractors: authentication (`AuthUser`, `AdminUser`, `SessionUser` for what an API key
//! may not do), the caller's address (`ClientIp`, behind trusted proxies only), the
//! same-origin guard of login and register (`SameOrigin`), the JSON-only middleware
//! (`require_json`, 415), and a JSON body reader with a deadline whose rejections speak
//! the contract's error format.

use super::error::ApiError;
use super::server::Draining;
use super::state::AppState;
use crate::auth::{resolve_secret, Credential, Principal};
use crate::config::{canonical, TrustedProxies};
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap, Method};
use serde::de::DeserializeOwned;
use std::net::{IpAddr, SocketAddr};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "zs_session";

/// How a request presented its credentials; cookies need a CSRF check, bearers do not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    Bearer,
    Cookie,
    Query,
}

/// Finds the credential in a request: `Authorization: Bearer`, else the session cookie.
pub fn presented_secret(headers: &HeaderMap) -> Option<(String, Presented)> {
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() {
            return Some((token.trim().to_owned(), Presented::Bearer));
        }
        return None;
    }
    cookie_value(headers, SESSION_COOKIE).map(|v| (v, Presented::Cookie))
}

/// The value of a cookie, if the request carries it.
pub fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// Whether a request's `Origin` (if any) may act: the server's own origin (same host)
/// or one in the allowed list. A request without `Origin` is not from a cross-site page.
pub fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let origin = origin.trim_end_matches('/');
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    matches!((origin_host, host), (Some(o), Some(h)) if o.eq_ignore_ascii_case(h))
}

/// Whether the client reached us over TLS (through a proxy that says so).
pub fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// The signed-in user making the request.
#[derive(Debug, Clone)]
pub struct AuthUser(pub Principal);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if let Some(existing) = parts.extensions.get::<AuthUser>() {
            return Ok(existing.clone());
        }
        let (secret, how) = presented_secret(&parts.headers).ok_or(ApiError::Unauthorized)?;
        let changes_state = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if how == Presented::Cookie
            && changes_state
            && !origin_allowed(&parts.headers, &state.http.allowed_origins)
        {
            return Err(ApiError::Forbidden("origin not allowed".into()));
        }
        let principal = resolve_secret(state.store.as_ref(), &state.signer, &secret)
            .await?
            .ok_or(ApiError::Unauthorized)?;
        let user = AuthUser(principal);
        parts.extensions.insert(user.clone());
        Ok(user)
    }
}

impl AuthUser {
    /// The session behind this request, if it used one (not an API key).
    pub fn session(&self) -> Option<crate::domain::SessionId> {
        match self.0.credential {
            Credential::Session(id) => Some(id),
            Credential::ApiKey(_) => None,
        }
    }
}

/// A signed-in admin; 403 for anyone else.
#[derive(Debug, Clone)]
pub struct AdminUser(pub Principal);

impl FromRequestParts<AppState> for AdminUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let AuthUser(principal) = AuthUser::from_request_parts(parts, state).await?;
        if !principal.is_admin() {
            return Err(ApiError::Forbidden("admin role required".into()));
        }
        Ok(AdminUser(principal))
    }
}

/// The address of the client: the peer's, unless the peer is one of the trusted proxies
/// (`--trusted-proxies`); then `X-Forwarded-For` is read from the right, skipping the
/// trusted proxies' own entries, and the first other address is the client. Nobody else
/// can pick their own address with the header.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

impl FromRequestParts<AppState> for ClientIp {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ci| canonical(ci.0.ip()))
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        Ok(ClientIp(client_ip(
            peer,
            &parts.headers,
            &state.http.trusted_proxies,
        )))
    }
}

/// See [`ClientIp`].
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    if !trusted.contains(peer) {
        return peer;
    }
    let mut client = peer;
    let hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .collect::<Vec<_>>();
    for hop in hops.into_iter().rev() {
        let Ok(addr) = hop.trim().parse::<IpAddr>() else {
            // A garbled entry: nothing left of it can be believed.
            break;
        };
        client = canonical(addr);
        if !trusted.contains(client) {
            break;
        }
    }
    client
}

/// Login and register refuse a foreign `Origin` (403), cookie or not: otherwise a page
/// elsewhere could sign its visitor into the attacker's account (login CSRF).
#[derive(Debug, Clone, Copy)]
pub struct SameOrigin;

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        if origin_allowed(&parts.headers, &state.http.allowed_origins) {
            Ok(SameOrigin)
        } else {
            Err(ApiError::Forbidden("origin not allowed".into()))
        }
    }
}

/// A signed-in user acting through a session, not an API key: for the account's own
/// credentials and profile (API keys, password, profile, logout), which a leaked key must
/// not be able to take over. An API key gets 403 `forbidden_for_api_key`.
#[derive(Debug, Clone)]
pub struct SessionUser(pub AuthUser);

impl FromRequestParts<AppState> for SessionUser {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let user = AuthUser::from_request_parts(parts, state).await?;
        match user.0.credential {
            Credential::Session(_) => Ok(SessionUser(user)),
            Credential::ApiKey(_) => Err(ApiError::ForbiddenForApiKey),
        }
    }
}

/// Refuses a request body that is not `application/json` (415) before any handler runs:
/// a cross-site form can only send `text/plain`, `multipart/form-data` or
/// `application/x-www-form-urlencoded`, so this is what stops it. A request without a
/// body needs no Content-Type.
pub async fn require_json(req: Request, next: axum::middleware::Next) -> axum::response::Response {
    use axum::response::IntoResponse;
    if has_body(req.headers()) && !is_json(req.headers()) {
        return ApiError::UnsupportedMediaType.into_response();
    }
    next.run(req).await
}

fn has_body(headers: &HeaderMap) -> bool {
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match length {
        Some(n) => n > 0,
        None => headers.contains_key(header::TRANSFER_ENCODING),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or_default().trim();
    essence.eq_ignore_ascii_case("application/json")
}

/// A JSON body, read up to the router's body limit (`DefaultBodyLimit`). Malformed JSON
/// and missing fields are 400 with a message; bodies over the limit are 413.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let bytes = read_body(req, state).await?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Reads a whole request body up to the router's body limit, within the body timeout
/// (408 after it, however the bytes trickle in), and gives up at once when the server
/// starts draining (503), so a half-sent request does not hold the shutdown.
pub async fn read_body(req: Request, state: &AppState) -> Result<axum::body::Bytes, ApiError> {
    let draining = req
        .extensions()
        .get::<Draining>()
        .map(|d| d.0.clone())
        .unwrap_or_default();
    let read = axum::body::Bytes::from_request(req, state);
    let bytes = tokio::select! {
        // A body that is already here wins over the drain.
        biased;
        read = read => read,
        () = tokio::time::sleep(state.http.body_timeout) => return Err(ApiError::RequestTimeout),
        () = draining.cancelled() => {
            return Err(ApiError::Unavailable("draining for shutdown".into()))
        }
    };
    bytes.map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest {
                code: "invalid_body",
                message: "the request body could not be read".into(),
            }
        }
    })
}

/// Parses a JSON body with the contract's error for each way it can be wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    // Every body of the API is an object: without this check serde would also read a
    // struct from a JSON array of its fields (`[null, null]`).
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(ApiError::BadRequest {
            code: "invalid_json",
            message: "request body must be a JSON object".into(),
        });
    }
    serde_json::from_slice(bytes).map_err(|e| {
        let code = if e.is_data() {
            "validation_error"
        } else {
            "invalid_json"
        };
        ApiError::BadRequest {
            code,
            message: e.to_string(),
        }
    })
}

/// The default body limit: 1 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 1024 * 1024;

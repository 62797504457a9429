//! The one error type of the HTTP boundary and its one mapping to status codes.
//! Internal details (database errors, panics) are logged with the request id and never
//! sent: the client gets `{"error": "internal_error", "message": "…"}`.

use crate::domain::ParseError;
use crate::store::StoreError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use std::time::Duration;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed or a field is invalid.
    #[error("{message}")]
    BadRequest { code: &'static str, message: String },
    /// 401: no valid credentials.
    #[error("authentication required")]
    Unauthorized,
    /// 401 on login: unknown email or wrong password, deliberately indistinguishable.
    #[error("invalid email or password")]
    InvalidCredentials,
    /// 403: authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// 403: the action needs a session; an API key may not do it.
    #[error("an API key cannot do this; sign in with a session")]
    ForbiddenForApiKey,
    /// 404: no such object, or not one the caller may see.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// 404 with the code the contract names for the case (`agent_not_found`).
    #[error("{message}")]
    NotFoundAs { code: &'static str, message: String },
    /// 409: the object's state forbids the change.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
    /// 413: the body is larger than this endpoint accepts.
    #[error("request body is too large")]
    PayloadTooLarge,
    /// 408: the request body did not arrive in time.
    #[error("the request body did not arrive in time")]
    RequestTimeout,
    /// 415: a body that is not `application/json`.
    #[error("request bodies must be application/json")]
    UnsupportedMediaType,
    /// 429 with `Retry-After`.
    #[error("too many attempts, retry in {} s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    /// 503: draining or a dependency is down.
    #[error("{0}")]
    Unavailable(String),
    /// 503 with `Retry-After`: too busy right now (every password-hashing turn taken).
    #[error("the server is busy, retry in {} s", retry_after.as_secs())]
    Busy { retry_after: Duration },
    /// 500: logged in full, answered vaguely.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            code: "validation_error",
            message: message.into(),
        }
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        ApiError::Conflict {
            code,
            message: message.into(),
        }
    }

    fn status_and_code(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::BadRequest { code, .. } => (StatusCode::BAD_REQUEST, code),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            ApiError::InvalidCredentials => (StatusCode::UNAUTHORIZED, "invalid_credentials"),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            ApiError::ForbiddenForApiKey => (StatusCode::FORBIDDEN, "forbidden_for_api_key"),
            ApiError::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request_timeout"),
            ApiError::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
            }
            ApiError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            ApiError::NotFoundAs { code, .. } => (StatusCode::NOT_FOUND, code),
            ApiError::Conflict { code, .. } => (StatusCode::CONFLICT, code),
            ApiError::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
            ApiError::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            ApiError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "not_ready"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal_error"),
        }
    }
}

/// Builds the contract's error body for any status and code.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({ "error": code, "message": message });
    (status, Json(body)).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(err) = &self {
            tracing::error!(error = format!("{err:#}"), "request failed");
        }
        let mut response = error_response(status, code, &self.to_string());
        if let ApiError::RateLimited { retry_after } | ApiError::Busy { retry_after } = self {
            let secs = retry_after.as_secs().max(1).to_string();
            if let Ok(value) = HeaderValue::from_str(&secs) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
        }
        response
    }
}

impl From<ParseError> for ApiError {
    fn from(err: ParseError) -> Self {
        ApiError::invalid(err.0)
    }
}

impl From<crate::auth::password::HashError> for ApiError {
    fn from(err: crate::auth::password::HashError) -> Self {
        use crate::auth::password::HashError;
        match err {
            HashError::Busy { retry_after } => ApiError::Busy { retry_after },
            HashError::Failed(err) => ApiError::Internal(err),
        }
    }
}

impl From<crate::auth::password::NewPasswordError> for ApiError {
    fn from(err: crate::auth::password::NewPasswordError) -> Self {
        use crate::auth::password::NewPasswordError;
        match err {
            NewPasswordError::Weak(message) => ApiError::BadRequest {
                code: "weak_password",
                message: message.into(),
            },
            NewPasswordError::Invalid(err) => err.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound => ApiError::NotFound("resource"),
            StoreError::Conflict { .. } => {
                ApiError::conflict("conflict", "conflicts with an existing record")
            }
            other => ApiError::Internal(other.into()),
        }
    }
}

/// Parses an id taken from a request path. A malformed id names no object, so it gets
/// the same 404 as an unknown one (and says nothing about which ids exist).
pub fn path_id<T>(
    raw: &str,
    parse: impl Fn(&str) -> Result<T, ParseError>,
    what: &'static str,
) -> ApiResult<T> {
    parse(raw).map_err(|_| ApiError::NotFound(what))
}

/// The result type of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

/// The answer when a handler panicked: logged here, a plain 500 for the client.
pub fn panic_response(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let detail = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("unknown panic");
    tracing::error!(panic = detail, "handler panicked");
    error_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        "internal error",
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::routing::get;
    use tower::ServiceExt;

    #[tokio::test]
    async fn a_panicking_handler_answers_500_in_the_contract_format() {
        let app = axum::Router::new()
            .route(
                "/boom",
                get(|| async {
                    panic!("secret detail");
                    #[allow(unreachable_code)]
                    ""
                }),
            )
            .layer(tower_http::catch_panic::CatchPanicLayer::custom(
                panic_response,
            ));
        let request = axum::http::Request::get("/boom")
            .body(Body::empty())
            .unwrap();
        let response = app.oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1024)
            .await
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"], "internal_error");
        assert!(!body.to_string().contains("secret detail"));
    }
}

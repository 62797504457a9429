//! `/health`, `/ready` and `/metrics`: public, for operators and load balancers.

use super::error::ApiError;
use super::state::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
}

async fn health(State(state): State<AppState>) -> Response {
    let database_ok = state.store.ping().await.is_ok();
    let status = if database_ok { "healthy" } else { "degraded" };
    let body = json!({
        "status": status,
        "service": "zerostate-api",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started_at.elapsed().as_secs(),
        "checks": {
            "database": if database_ok { "ok" } else { "error" },
            "backplane": "disabled",
        },
    });
    let code = if database_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn ready(State(state): State<AppState>) -> Response {
    if state.readiness.is_ready() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        ApiError::Unavailable("draining for shutdown".into()).into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

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

/// The longest the database check may take before it counts as down.
const DATABASE_DEADLINE: std::time::Duration = std::time::Duration::from_secs(2);

/// `checks.database` and `checks.backplane` are probed at once, each within its own
/// deadline, so a dependency
/// that hangs makes the node `degraded` (503) instead of hanging the probe.
async fn health(State(state): State<AppState>) -> Response {
    let (database, backplane) = tokio::join!(
        tokio::time::timeout(DATABASE_DEADLINE, state.store.ping()),
        state.cluster.health()
    );
    let database_ok = matches!(database, Ok(Ok(())));
    // The broker and the backplane share the one Redis: either failing to reach it is
    // the backplane being down.
    let backplane = if state.hub.broker_healthy() {
        backplane
    } else {
        crate::cluster::BackplaneHealth::Unreachable
    };
    let healthy = database_ok && !backplane.is_degraded();
    let body = json!({
        "status": if healthy { "healthy" } else { "degraded" },
        "service": "zerostate-api",
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": state.started_at.elapsed().as_secs(),
        "checks": {
            "database": if database_ok { "ok" } else { "error" },
            "backplane": backplane.as_str(),
        },
    });
    let code = if healthy {
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

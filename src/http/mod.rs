//! The HTTP face of the server: one router merged from one module per resource, the
//! layers every request goes through (request id, tracing, metrics, JSON-only bodies,
//! body limit and timeout), the accept loop (`server`), and the embedded web pages.

mod agents;
mod analytics;
mod api_keys;
pub mod error;
pub mod extract;
mod health;
mod notifications;
mod observe;
mod openapi;
mod output;
mod pages;
#[cfg(test)]
mod props;
pub mod realtime;
mod runtime;
pub mod server;
pub mod state;
mod tasks;
mod users;

pub use state::{AppState, HttpSettings, Readiness};

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request};
use axum::Router;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the whole application router.
pub fn router(state: AppState) -> Router {
    let body_limit = state.http.body_limit;
    let body_timeout = state.http.body_timeout;
    Router::new()
        .merge(health::router())
        .merge(users::router())
        .merge(api_keys::router())
        .merge(agents::router())
        .merge(tasks::router())
        .merge(runtime::router())
        .merge(output::router())
        .merge(analytics::router())
        .merge(notifications::router())
        .merge(realtime::router())
        .merge(openapi::router())
        .merge(pages::router())
        .fallback(pages::not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        // Any body reader (not only `JsonBody`, which has a whole-body deadline) fails
        // when the client stops sending for this long.
        .layer(RequestBodyTimeoutLayer::new(body_timeout))
        .layer(axum::middleware::from_fn(extract::require_json))
        // A bug must not cost the client its connection or show it a stack trace: a
        // panicking handler answers 500 in the contract's format (the panic is logged).
        .layer(CatchPanicLayer::custom(error::panic_response))
        .layer(axum::middleware::from_fn(observe::record_metrics))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
            // Only the method, the path (never the query, which may hold `?token=`) and
            // the request id are recorded.
            let id = req
                .headers()
                .get(&REQUEST_ID)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
        })
        .on_response(DefaultOnResponse::new().level(Level::INFO)))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .with_state(state)
}

//! The web pages and static files, embedded in the binary from `web/`.
//!
//! Signed-in pages answer a visit without a valid session with a redirect to the login
//! page, so a signed-out visitor never sees an empty shell.

use super::error::error_response;
use super::extract::presented_secret;
use super::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;

#[derive(RustEmbed)]
#[folder = "web/"]
#[exclude = "*.md"]
struct Assets;

/// Pages that need a signed-in user.
const SIGNED_IN_PAGES: [&str; 6] = [
    "dashboard.html",
    "agents.html",
    "tasks.html",
    "analytics.html",
    "settings.html",
    "api-keys.html",
];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { serve_asset("index.html") }))
        .route("/{page}", get(page))
        .route("/static/{*path}", get(static_file))
}

async fn page(
    State(state): State<AppState>,
    Path(page): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !page.ends_with(".html") {
        return not_found_response();
    }
    if SIGNED_IN_PAGES.contains(&page.as_str()) && !signed_in(&state, &headers).await {
        return Redirect::to("/login.html").into_response();
    }
    serve_asset(&page)
}

async fn signed_in(state: &AppState, headers: &HeaderMap) -> bool {
    let Some((secret, _)) = presented_secret(headers) else {
        return false;
    };
    matches!(
        crate::auth::resolve_secret(state.store.as_ref(), &state.signer, &secret).await,
        Ok(Some(_))
    )
}

async fn static_file(Path(path): Path<String>) -> Response {
    serve_asset(&format!("static/{path}"))
}

fn serve_asset(path: &str) -> Response {
    let Some(file) = Assets::get(path) else {
        return not_found_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
    let mut response = (
        [
            (header::CONTENT_TYPE, mime.as_ref().to_owned()),
            // Pages and scripts change with each release: revalidate, never serve stale.
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::ETAG, etag),
        ],
        file.data,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if path.ends_with(".html") {
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(PAGE_POLICY),
        );
        headers.insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("same-origin"),
        );
        headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    }
    response
}

/// The pages load only their own scripts, styles and images and talk only to their own
/// origin (WebSocket and SSE included): an injected script has nowhere to come from and
/// nowhere to send anything.
const PAGE_POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; \
    base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

fn not_found_response() -> Response {
    error_response(StatusCode::NOT_FOUND, "not_found", "no such page")
}

/// The answer for any path no route matched.
pub async fn not_found(uri: Uri) -> Response {
    let message = format!("no route for {}", uri.path());
    error_response(StatusCode::NOT_FOUND, "not_found", &message)
}

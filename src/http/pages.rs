//! The web pages and static files, embedded in the binary from `web/`.
//!
//! Signed-in pages answer a visit without a valid session with a redirect to the login
//! page, so a signed-out visitor never sees an empty shell.
//!
//! Each page file (`web/<page>.html`) holds only what is its own: a first-line directive
//! `<!--zs layout="app|public" title="…" page="…" script="…"-->` and its `<main>`. The
//! head, header, status indicator and tail every page repeats are written once, in
//! `web/layouts/`, and the page is assembled from them when first served (then kept):
//! one copy of each, and the served HTML carries the guide's markup exactly.

use super::error::error_response;
use super::extract::presented_secret;
use super::state::AppState;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use rust_embed::RustEmbed;
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::OnceLock;

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
    if !page.ends_with(".html") || assembled(&page).is_none() {
        return not_found_for(&headers, &format!("/{page}"));
    }
    if SIGNED_IN_PAGES.contains(&page.as_str()) && !signed_in(&state, &headers).await {
        return Redirect::to("/login.html").into_response();
    }
    serve_asset(&page)
}

/// The assembled pages, built once from the embedded files.
fn assembled(page: &str) -> Option<&'static Assembled> {
    static PAGES: OnceLock<HashMap<String, Assembled>> = OnceLock::new();
    PAGES
        .get_or_init(|| {
            Assets::iter()
                .filter(|path| path.ends_with(".html") && !path.contains('/'))
                .filter_map(|path| {
                    let file = Assets::get(&path)?;
                    let text = std::str::from_utf8(&file.data).ok()?;
                    let html = assemble(text)?;
                    Some((path.into_owned(), Assembled::new(html)))
                })
                .collect()
        })
        .get(page)
}

/// A page ready to send, with its validator.
struct Assembled {
    html: String,
    etag: String,
}

impl Assembled {
    fn new(html: String) -> Self {
        let etag = format!(
            "\"{}\"",
            hex::encode(&Sha256::digest(html.as_bytes())[..12])
        );
        Self { html, etag }
    }
}

/// Puts a page file into its layout; `None` when the file has no valid directive or
/// names a layout that does not exist (it is then not a page).
fn assemble(source: &str) -> Option<String> {
    let (first, body) = source.split_once('\n')?;
    let directive = first.trim().strip_prefix("<!--zs ")?.strip_suffix("-->")?;
    let attrs = parse_attributes(directive);
    let layout_name = attrs.get("layout")?;
    let layout = Assets::get(&format!("layouts/{layout_name}.html"))?;
    let layout = std::str::from_utf8(&layout.data).ok()?.to_owned();
    let script_tag = match attrs.get("script") {
        Some(script) => {
            format!("<script type=\"module\" src=\"/static/js/pages/{script}.js\"></script>")
        }
        None => String::new(),
    };
    let title = attrs
        .get("title")
        .map(|t| t.as_ref())
        .unwrap_or("ZeroState");
    let page = attrs.get("page").map(|t| t.as_ref()).unwrap_or("");
    // `{{body}}` last, so that page text that happens to contain a placeholder is kept.
    Some(
        layout
            .replace("{{title}}", title)
            .replace("{{page}}", page)
            .replace("{{script_tag}}", &script_tag)
            .replace("{{body}}", body.trim_end()),
    )
}

/// `key="value"` pairs of a directive (values without quotes inside).
fn parse_attributes(text: &str) -> HashMap<&str, Cow<'_, str>> {
    let mut attrs = HashMap::new();
    let mut rest = text;
    while let Some((key, after)) = rest.split_once("=\"") {
        let Some((value, tail)) = after.split_once('"') else {
            break;
        };
        attrs.insert(key.trim(), Cow::Borrowed(value));
        rest = tail;
    }
    attrs
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

async fn static_file(Path(path): Path<String>, headers: HeaderMap) -> Response {
    let path = format!("static/{path}");
    if Assets::get(&path).is_none() {
        return not_found_for(&headers, &format!("/{path}"));
    }
    serve_asset(&path)
}

fn serve_asset(path: &str) -> Response {
    let (body, etag): (Cow<'static, [u8]>, String) = if let Some(page) = assembled(path) {
        (Cow::Borrowed(page.html.as_bytes()), page.etag.clone())
    } else if let Some(file) = Assets::get(path) {
        let etag = format!("\"{}\"", hex::encode(&file.metadata.sha256_hash()[..12]));
        (file.data, etag)
    } else {
        return not_found_response();
    };
    let mime = mime_guess::from_path(path).first_or_octet_stream();
    let mut response = (
        [
            (header::CONTENT_TYPE, mime.as_ref().to_owned()),
            // Pages and scripts change with each release: revalidate, never serve stale.
            (header::CACHE_CONTROL, "no-cache".to_owned()),
            (header::ETAG, etag),
        ],
        body,
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
pub async fn not_found(uri: Uri, headers: HeaderMap) -> Response {
    not_found_for(&headers, uri.path())
}

/// A 404 that a browser shows as a page (it asked for HTML, outside `/api/`); everyone
/// else, and everything under `/api/`, gets the contract's JSON error.
fn not_found_for(headers: &HeaderMap, path: &str) -> Response {
    let wants_html = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/html"));
    if wants_html && !path.starts_with("/api/") {
        let mut response = serve_asset("404.html");
        *response.status_mut() = StatusCode::NOT_FOUND;
        return response;
    }
    let message = format!("no route for {path}");
    error_response(StatusCode::NOT_FOUND, "not_found", &message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_page_is_assembled_with_the_guides_indicator_on_signed_in_pages() {
        for page in SIGNED_IN_PAGES {
            let html = &assembled(page).expect(page).html;
            assert!(html.starts_with("<!doctype html>"), "{page}");
            assert!(html.contains("<div id=\"ws-status\" class=\"fixed bottom-4 right-4 z-50 opacity-0 transition-opacity duration-300\">"), "{page}");
            assert!(
                html.contains("<script src=\"/static/js/websocket.js\"></script>"),
                "{page}"
            );
            assert!(!html.contains("{{"), "{page}");
        }
        for page in ["index.html", "login.html", "signup.html", "404.html"] {
            let html = &assembled(page).expect(page).html;
            assert!(!html.contains("websocket.js"), "{page}");
            assert!(!html.contains("{{"), "{page}");
        }
    }

    #[test]
    fn directives_are_read_and_bad_ones_refused() {
        let attrs = parse_attributes(r#"layout="app" title="A · B" page="x""#);
        assert_eq!(attrs["title"], "A · B");
        assert_eq!(attrs["page"], "x");
        assert!(assemble("<main></main>\n").is_none());
        assert!(assemble("<!--zs layout=\"nope\"-->\n<main></main>").is_none());
    }
}

//! Health, readiness, metrics, error format and shutdown.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn health_reports_database_and_version() {
    let app = spawn_app().await;
    let (status, body) = app.get("/health", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "zerostate-api");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["backplane"], "disabled");
    assert!(body["version"].as_str().is_some_and(|v| !v.is_empty()));
    assert!(body["uptime_s"].as_u64().is_some());
}

#[tokio::test]
async fn ready_while_serving() {
    let app = spawn_app().await;
    let (status, body) = app.get("/ready", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn metrics_count_requests_by_route_and_status() {
    let app = spawn_app().await;
    app.get("/health", None).await;
    app.get("/api/v1/users/me", None).await;
    let text = app.metrics().await;
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/health",status="200"}"#),
        "{text}"
    );
    assert!(
        text.contains(r#"route="/api/v1/users/me",status="401""#),
        "{text}"
    );
    assert!(
        text.contains("http_request_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test]
async fn unknown_routes_get_a_json_404() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/nope", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"], "not_found");
    assert!(body["message"].is_string());
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/health")).send().await.unwrap();
    assert!(resp.headers().get("x-request-id").is_some());
}

#[tokio::test]
async fn malformed_json_and_oversized_bodies_get_clear_errors() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/v1/users/register"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_json");

    let (status, body) = app
        .post("/api/v1/users/register", None, json!({ "email": "x@y.z" }))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"], "validation_error", "{body}");

    let huge = "x".repeat(1024 * 1024 + 10);
    let (status, body) = app
        .post(
            "/api/v1/users/register",
            None,
            json!({ "email": "a@b.c", "password": huge, "full_name": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"], "payload_too_large");
}

#[tokio::test]
async fn sigterm_drains_and_exits_zero() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    assert_eq!(
        app.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::OK
    );
    assert_eq!(app.stop().await, Some(0));
    assert!(app.client.get(app.url("/health")).send().await.is_err());
}

#[tokio::test]
async fn pages_are_served_and_signed_in_pages_need_a_session() {
    let app = spawn_app().await;
    let resp = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let resp = app
        .client
        .get(app.url("/dashboard.html"))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection());
    assert_eq!(resp.headers()["location"], "/login.html");
    let user = app.new_user().await;
    let resp = app
        .client
        .get(app.url("/dashboard.html"))
        .header("cookie", format!("zs_session={}", user.token))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = app
        .client
        .get(app.url("/static/js/websocket.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .contains("javascript"));
}

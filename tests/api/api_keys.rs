//! API keys: create, use, list, revoke, expiry.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn a_key_is_shown_once_authenticates_as_its_owner_and_is_listed() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (key, created) = app.create_api_key(&user, "ci script").await;
    assert!(key.starts_with("zs_"));
    assert!(key.starts_with(created["prefix"].as_str().unwrap()));
    assert_eq!(created["name"], "ci script");
    assert!(created["id"].is_string() && created["created_at"].is_string());
    assert!(created["expires_at"].is_null());

    let (_, list) = app.get("/api/v1/api-keys", Some(&user.token)).await;
    let listed = &list["api_keys"][0];
    assert_eq!(listed["id"], created["id"]);
    assert!(listed["last_used_at"].is_null());
    assert!(
        listed.get("key").is_none(),
        "the secret must never be listed: {list}"
    );

    let (status, me) = app.get("/api/v1/users/me", Some(&key)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["user"]["id"], user.id.as_str());
    let (_, list) = app.get("/api/v1/api-keys", Some(&user.token)).await;
    assert!(list["api_keys"][0]["last_used_at"].is_string(), "{list}");
}

#[tokio::test]
async fn revoking_a_key_takes_effect_at_once() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (key, created) = app.create_api_key(&user, "temp").await;
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.get("/api/v1/users/me", Some(&key)).await.0,
        StatusCode::OK
    );
    assert_eq!(
        app.delete(&format!("/api/v1/api-keys/{id}"), Some(&user.token))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        app.get("/api/v1/users/me", Some(&key)).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, list) = app.get("/api/v1/api-keys", Some(&user.token)).await;
    assert_eq!(list["api_keys"].as_array().unwrap().len(), 0);
    // Twice: gone.
    assert_eq!(
        app.delete(&format!("/api/v1/api-keys/{id}"), Some(&user.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn keys_are_private_to_their_owner() {
    let app = spawn_app().await;
    let owner = app.new_user().await;
    let other = app.new_user().await;
    let (key, created) = app.create_api_key(&owner, "mine").await;
    let id = created["id"].as_str().unwrap();
    let (_, list) = app.get("/api/v1/api-keys", Some(&other.token)).await;
    assert_eq!(list["api_keys"].as_array().unwrap().len(), 0);
    assert_eq!(
        app.delete(&format!("/api/v1/api-keys/{id}"), Some(&other.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete("/api/v1/api-keys/not-a-uuid", Some(&other.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/users/me", Some(&key)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn key_validation_and_expiry_date() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for bad in [
        json!({ "name": "" }),
        json!({ "name": "x", "expires_in_days": 0 }),
        json!({}),
    ] {
        let (status, body) = app.post("/api/v1/api-keys", Some(&user.token), bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    let (status, body) = app
        .post(
            "/api/v1/api-keys",
            Some(&user.token),
            json!({ "name": "short-lived", "expires_in_days": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let expires =
        chrono::DateTime::parse_from_rfc3339(body["expires_at"].as_str().unwrap()).unwrap();
    let hours = (expires.with_timezone(&chrono::Utc) - chrono::Utc::now()).num_hours();
    assert!((23..=24).contains(&hours), "{hours}");
    assert_eq!(
        app.post("/api/v1/api-keys", None, json!({ "name": "x" }))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let (key, _) = app.create_api_key(&user, "durable").await;
    app.restart().await;
    assert_eq!(
        app.get("/api/v1/users/me", Some(&key)).await.0,
        StatusCode::OK
    );
}

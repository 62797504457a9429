//! Accounts and sessions.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn first_account_is_admin_and_later_ones_are_users() {
    let app = spawn_app().await;
    let first = app.new_user().await;
    let second = app.new_user().await;
    assert_eq!(first.role, "admin");
    assert_eq!(second.role, "user");
}

#[tokio::test]
async fn register_returns_token_user_and_cookie() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/v1/users/register"))
        .json(&json!({ "email": "Ada@Example.com", "password": "correct horse battery", "full_name": "Ada" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().unwrap();
    assert!(
        cookie.starts_with(&format!("zs_session={token}")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    assert!(
        !cookie.contains("Secure"),
        "plain http must not set Secure: {cookie}"
    );
    assert!(body["expires_in"].as_i64().unwrap() > 0);
    let user = &body["user"];
    assert_eq!(user["email"], "ada@example.com");
    assert_eq!(user["full_name"], "Ada");
    for field in ["id", "role", "created_at"] {
        assert!(user[field].is_string(), "{field} missing: {body}");
    }
    assert!(user.get("password_hash").is_none());

    // The cookie alone authenticates.
    let resp = app
        .client
        .get(app.url("/api/v1/users/me"))
        .header("cookie", format!("zs_session={token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_is_secure_behind_https() {
    let app = spawn_app().await;
    let resp = app
        .client
        .post(app.url("/api/v1/users/register"))
        .header("x-forwarded-proto", "https")
        .json(&json!({ "email": unique_email(), "password": "correct horse battery", "full_name": "" }))
        .send()
        .await
        .unwrap();
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("; Secure"));
}

#[tokio::test]
async fn register_validation_and_duplicates() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (status, body) = app
        .post(
            "/api/v1/users/register",
            None,
            json!({ "email": user.email, "password": "another password", "full_name": "" }),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "email_taken");
    for bad in [
        json!({ "email": "not-an-email", "password": "correct horse battery", "full_name": "" }),
        json!({ "email": unique_email(), "password": "short", "full_name": "" }),
    ] {
        let (status, body) = app.post("/api/v1/users/register", None, bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
}

#[tokio::test]
async fn login_checks_password_with_one_answer_for_every_failure() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let logged_in = app.login(&user.email, &user.password).await;
    assert_ne!(logged_in.token, user.token);
    let (s1, b1) = app
        .post(
            "/api/v1/users/login",
            None,
            json!({ "email": user.email, "password": "wrong password" }),
        )
        .await;
    let (s2, b2) = app
        .post(
            "/api/v1/users/login",
            None,
            json!({ "email": unique_email(), "password": "wrong password" }),
        )
        .await;
    assert_eq!(s1, StatusCode::UNAUTHORIZED);
    assert_eq!(b1, b2);
    assert_eq!(s2, StatusCode::UNAUTHORIZED);
    assert_eq!(b1["error"], "invalid_credentials");
}

#[tokio::test]
async fn me_and_profile_update() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (status, body) = app.get("/api/v1/users/me", Some(&user.token)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user"]["id"], user.id.as_str());
    let (status, body) = app
        .put(
            "/api/v1/users/me",
            Some(&user.token),
            json!({ "full_name": "New Name" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["user"]["full_name"], "New Name");
    let (_, body) = app.get("/api/v1/users/me", Some(&user.token)).await;
    assert_eq!(body["user"]["full_name"], "New Name");
}

#[tokio::test]
async fn unauthenticated_and_forged_tokens_get_401() {
    let app = spawn_app().await;
    let (status, body) = app.get("/api/v1/users/me", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"], "unauthorized");
    for token in [
        "garbage",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.",
        "zs_0000",
        "zsa_0000",
    ] {
        assert_eq!(
            app.get("/api/v1/users/me", Some(token)).await.0,
            StatusCode::UNAUTHORIZED,
            "{token}"
        );
    }
}

#[tokio::test]
async fn logout_revokes_the_session_at_once() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.login(&user.email, &user.password).await;
    let resp = app
        .client
        .post(app.url("/api/v1/users/logout"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    assert_eq!(
        app.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    // Only that session ended.
    assert_eq!(
        app.get("/api/v1/users/me", Some(&other.token)).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn password_change_revokes_other_sessions_and_swaps_the_password() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other = app.login(&user.email, &user.password).await;
    // Used once before the change: a session the server verified (and may remember)
    // must be refused at once all the same.
    assert_eq!(
        app.get("/api/v1/users/me", Some(&other.token)).await.0,
        StatusCode::OK
    );
    let (status, body) = app
        .put(
            "/api/v1/users/me/password",
            Some(&user.token),
            json!({ "current_password": "wrong one!", "new_password": "new password 1" }),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    let (status, _) = app
        .put(
            "/api/v1/users/me/password",
            Some(&user.token),
            json!({ "current_password": user.password, "new_password": "tiny" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = app
        .put(
            "/api/v1/users/me/password",
            Some(&user.token),
            json!({ "current_password": user.password, "new_password": "new password 1" }),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    assert_eq!(
        app.get("/api/v1/users/me", Some(&other.token)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::OK
    );
    let (status, _) = app
        .post(
            "/api/v1/users/login",
            None,
            json!({ "email": user.email, "password": user.password }),
        )
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    app.login(&user.email, "new password 1").await;
}

#[tokio::test]
async fn repeated_failures_are_throttled_per_address() {
    // The test client stands for a reverse proxy: its X-Forwarded-For names the client.
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--trusted-proxies".into(), "127.0.0.0/8".into()],
        ..Default::default()
    })
    .await;
    let user = app.new_user().await;
    let attempt = |from: &'static str, password: &'static str| {
        app.client
            .post(app.url("/api/v1/users/login"))
            .header("x-forwarded-for", from)
            .json(&json!({ "email": user.email, "password": password }))
            .send()
    };
    let mut throttled = None;
    for _ in 0..10 {
        let resp = attempt("203.0.113.7", "wrong password").await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            throttled = Some(resp);
            break;
        }
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    let resp = throttled.expect("no 429 after 10 failures");
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "rate_limited");
    // Even the right password is refused from that address for now...
    let resp = attempt("203.0.113.7", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    // ...but the owner signs in from elsewhere.
    let resp = attempt("198.51.100.9", "correct horse battery")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn cookie_requests_from_a_foreign_origin_cannot_change_state() {
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--allowed-origins".into(), "https://app.example.com".into()],
        ..Default::default()
    })
    .await;
    let user = app.new_user().await;
    let put = |origin: Option<String>| {
        let mut req = app
            .client
            .put(app.url("/api/v1/users/me"))
            .header("cookie", format!("zs_session={}", user.token))
            .json(&json!({ "full_name": "x" }));
        if let Some(origin) = origin {
            req = req.header("origin", origin);
        }
        req.send()
    };
    let resp = put(Some("https://evil.example".into())).await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "forbidden");
    assert_eq!(
        put(Some("https://app.example.com".into()))
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    assert_eq!(
        put(Some(app.address.clone())).await.unwrap().status(),
        StatusCode::OK
    );
    // A bearer token is not a CSRF vector: any origin may use it.
    let resp = app
        .client
        .put(app.url("/api/v1/users/me"))
        .bearer_auth(&user.token)
        .header("origin", "https://evil.example")
        .json(&json!({ "full_name": "y" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn data_survives_a_restart() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    app.restart().await;
    // The session token (signed with the key kept in the data dir) still works...
    assert_eq!(
        app.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::OK
    );
    // ...and so does the password.
    app.login(&user.email, &user.password).await;
    // A single node keeps its key in the data directory; on PostgreSQL (several
    // nodes) the database keeps it, and the token surviving the restart shows it.
    assert_eq!(app.data_dir().join("signing.key").exists(), !on_postgres());
}

#[tokio::test]
async fn there_is_no_default_secret() {
    let a = spawn_app().await;
    let b = spawn_app().await;
    let user = a.new_user().await;
    if !on_postgres() {
        // On PostgreSQL each app's database keeps its key; the token check below is
        // the same proof for both backends.
        let key_a = std::fs::read(a.data_dir().join("signing.key")).unwrap();
        let key_b = std::fs::read(b.data_dir().join("signing.key")).unwrap();
        assert_ne!(key_a, key_b);
    }
    // The same account exists on b (same id would not matter: the signature does).
    b.register(&user.email, &user.password).await;
    assert_eq!(
        b.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn nodes_sharing_a_database_share_the_signing_key() {
    let a = spawn_app().await;
    // Only PostgreSQL is shared by several nodes; on SQLite there is no second node.
    let Some(b) = spawn_node_on_same_database(&a).await else {
        return;
    };
    let user = a.new_user().await;
    // Neither node was given --signing-key: the key was made once, in the database,
    // so a session from one node is good on the other.
    assert_eq!(
        b.get("/api/v1/users/me", Some(&user.token)).await.0,
        StatusCode::OK
    );
    assert!(!a.data_dir().join("signing.key").exists());
    assert!(!b.data_dir().join("signing.key").exists());
}

#[tokio::test]
async fn operator_commands_create_and_promote_accounts() {
    let mut app = spawn_app().await;
    let first = app.new_user().await;
    let user = app.new_user().await;
    assert_eq!(user.role, "user");
    app.stop().await;
    let out = std::process::Command::new(BIN)
        .args(["users", "promote", &user.email])
        .args(app.storage_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(BIN)
        .args([
            "users",
            "create",
            "--email",
            "ops@example.com",
            "--password",
            "ops password",
        ])
        .args(app.storage_args())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.restart().await;
    let promoted = app.login(&user.email, &user.password).await;
    assert_eq!(promoted.role, "admin");
    let ops = app.login("ops@example.com", "ops password").await;
    assert_eq!(ops.role, "user");
    assert_eq!(first.role, "admin");
}

#[tokio::test]
async fn x_forwarded_for_from_an_untrusted_peer_is_ignored() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    // Each guess claims another address, but the peer is not a trusted proxy: all of
    // them count against the peer, so the sixth is refused.
    let mut statuses = Vec::new();
    for n in 0..6 {
        let resp = app
            .client
            .post(app.url("/api/v1/users/login"))
            .header("x-forwarded-for", format!("203.0.113.{n}"))
            .json(&json!({ "email": user.email, "password": "wrong password" }))
            .send()
            .await
            .unwrap();
        statuses.push(resp.status());
    }
    assert_eq!(statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    assert_eq!(statuses[5], StatusCode::TOO_MANY_REQUESTS);
}

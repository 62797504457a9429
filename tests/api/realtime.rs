//! The real-time hub over real sockets: authentication, the protocol, routing,
//! publishing, resume, retention, backpressure, revocation, stats and shutdown.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

/// An app with an admin (the first account) and a plain user.
async fn app_with_admin() -> (TestApp, TestUser, TestUser) {
    app_with_admin_and(AppOptions::default()).await
}

async fn app_with_admin_and(options: AppOptions) -> (TestApp, TestUser, TestUser) {
    let app = spawn_app_with(options).await;
    let admin = app.new_user().await;
    assert_eq!(admin.role, "admin");
    let user = app.new_user().await;
    (app, admin, user)
}

fn assert_durable(message: &Value, kind: &str) {
    assert_eq!(message["type"], kind, "{message}");
    assert!(
        message["cursor"].as_str().is_some_and(|c| !c.is_empty()),
        "no cursor: {message}"
    );
    let ts = message["timestamp"].as_str().expect("timestamp");
    assert!(
        chrono::DateTime::parse_from_rfc3339(ts).is_ok(),
        "timestamp {ts}"
    );
}

fn assert_control(message: &Value, kind: &str) {
    assert_eq!(message["type"], kind, "{message}");
    assert!(
        message.get("cursor").is_none(),
        "control messages carry no cursor: {message}"
    );
    assert!(message["timestamp"].is_string(), "{message}");
}

#[tokio::test]
async fn connecting_without_valid_credentials_is_refused_before_the_upgrade() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    assert_eq!(
        app.ws_try(WsAuth::None, WsOpen::default()).await.err(),
        Some(401)
    );
    assert_eq!(
        app.ws_try(WsAuth::Bearer("not-a-token"), WsOpen::default())
            .await
            .err(),
        Some(401)
    );
    assert_eq!(
        app.ws_try(WsAuth::Query("zs_unknown"), WsOpen::default())
            .await
            .err(),
        Some(401)
    );

    // The 401 is the contract's JSON error, not an opened-then-closed socket.
    let response = app
        .client
        .get(app.url("/api/v1/ws/connect"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"], "unauthorized");

    // A logged-out session no longer connects.
    let session = app.login(&user.email, &user.password).await;
    assert!(app
        .ws_try(WsAuth::Bearer(&session.token), WsOpen::default())
        .await
        .is_ok());
    let (status, _) = app
        .post("/api/v1/users/logout", Some(&session.token), json!({}))
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.ws_try(WsAuth::Bearer(&session.token), WsOpen::default())
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn every_credential_form_connects_and_gets_welcome_first() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (key, _) = app.create_api_key(&user, "realtime").await;
    for auth in [
        WsAuth::Bearer(&user.token),
        WsAuth::Cookie(&user.token),
        WsAuth::Query(&user.token),
        WsAuth::Bearer(&key),
        WsAuth::Query(&key),
    ] {
        let mut client = app
            .ws_try(auth, WsOpen::default())
            .await
            .unwrap_or_else(|s| panic!("{auth:?}: {s}"));
        let welcome = client.next().await;
        assert_control(&welcome, "welcome");
        assert!(
            welcome["data"]["cursor"]
                .as_str()
                .is_some_and(|c| !c.is_empty()),
            "{welcome}"
        );
        assert!(welcome["data"]["server_time"].is_string(), "{welcome}");
        client.close().await;
    }
}

#[tokio::test]
async fn a_foreign_origin_is_refused_and_the_own_origin_is_not() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let evil = WsOpen {
        origin: Some("https://evil.example"),
        ..Default::default()
    };
    assert_eq!(
        app.ws_try(WsAuth::Cookie(&user.token), evil).await.err(),
        Some(403)
    );
    assert_eq!(
        app.ws_try(WsAuth::Bearer(&user.token), evil).await.err(),
        Some(403)
    );
    let own = format!("http://127.0.0.1:{}", app.port);
    let same = WsOpen {
        origin: Some(&own),
        ..Default::default()
    };
    assert!(app.ws_try(WsAuth::Cookie(&user.token), same).await.is_ok());
}

#[tokio::test]
async fn ping_gets_pong_and_bad_client_messages_get_errors_without_closing() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;

    ws.send_json(json!({ "type": "ping" })).await;
    let pong = ws.next().await;
    assert_control(&pong, "pong");
    assert!(
        pong["data"]["received"].is_string() && pong["data"]["server_time"].is_string(),
        "{pong}"
    );

    ws.send(WsMessage::text("{not json")).await;
    let error = ws.next().await;
    assert_control(&error, "error");
    assert_eq!(error["data"]["code"], "invalid_json");
    assert!(error["data"]["message"].is_string());

    ws.send_json(json!({ "type": "launch_missiles" })).await;
    assert_eq!(ws.next().await["data"]["code"], "unknown_type");

    for garbage in [
        "",
        "null",
        "[1,2]",
        "\"ping\"",
        "{\"type\":42}",
        "\u{0}\u{1}",
    ] {
        ws.send(WsMessage::text(garbage)).await;
        let reply = ws.next().await;
        assert_eq!(reply["type"], "error", "{garbage:?} → {reply}");
    }
    ws.send(WsMessage::binary(vec![0xff, 0x00, 0x13])).await;
    assert_eq!(ws.next().await["type"], "error");

    // Still open and answering.
    ws.send_json(json!({ "type": "ping" })).await;
    assert_eq!(ws.next().await["type"], "pong");
}

#[tokio::test]
async fn an_inbound_message_over_64_kib_closes_with_1009() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;
    // Exactly 64 KiB is allowed (and is not JSON, so it gets an error message).
    ws.send(WsMessage::text("x".repeat(64 * 1024))).await;
    assert_eq!(ws.next().await["data"]["code"], "invalid_json");
    ws.send(WsMessage::text("x".repeat(64 * 1024 + 1))).await;
    assert_eq!(ws.close_code().await, Some(1009));
}

#[tokio::test]
async fn user_messages_reach_every_tab_of_their_owner_and_nobody_else() {
    let (app, admin, alice) = app_with_admin().await;
    let bob = app.new_user().await;
    let (mut a1, _) = app.ws(&alice.token).await;
    let (mut a2, _) = app.ws(&alice.token).await;
    let (mut b1, _) = app.ws(&bob.token).await;
    let (mut b2, _) = app.ws(&bob.token).await;

    let sent = app
        .publish_ok(
            &admin.token,
            &alice.id,
            "notification",
            json!({ "for": "alice" }),
        )
        .await;
    assert_eq!(sent["delivered"], 2);
    app.publish_ok(
        &admin.token,
        &bob.id,
        "notification",
        json!({ "for": "bob" }),
    )
    .await;

    // Delivery follows publish order, so if Alice's message had leaked to Bob it would
    // arrive before his own.
    let (m1, m2) = (a1.next().await, a2.next().await);
    assert_durable(&m1, "notification");
    assert_eq!(m1["data"]["for"], "alice");
    assert_eq!(m1, m2, "every tab gets the same message, same cursor");
    for b in [&mut b1, &mut b2] {
        let m = b.next().await;
        assert_eq!(
            m["data"]["for"], "bob",
            "bob got someone else's message: {m}"
        );
    }
    // Alice's next message is the broadcast, not Bob's.
    let (status, body) = app
        .broadcast(&admin.token, "announcement", json!({ "text": "<b>hi</b>" }))
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["delivered"], 4);
    let a_next = a1.next().await;
    assert_eq!(a_next["type"], "announcement");
    assert_eq!(
        a_next["data"]["text"], "<b>hi</b>",
        "data is passed through as data"
    );
    for c in [&mut a2, &mut b1, &mut b2] {
        assert_eq!(
            c.next().await,
            a_next,
            "a broadcast is the same message for everyone"
        );
    }
}

#[tokio::test]
async fn only_admins_publish_and_invalid_messages_are_refused() {
    let (app, admin, user) = app_with_admin().await;
    let data = json!({ "message": "hi" });

    // Not signed in, then signed in without the admin role.
    assert_eq!(
        app.post(
            "/api/v1/ws/broadcast",
            None,
            json!({ "type": "x", "data": {} })
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.broadcast(&user.token, "system", data.clone()).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.publish_to(&user.token, &user.id, "system", data.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let send = json!({ "user_id": user.id, "type": "system", "data": data });
    assert_eq!(
        app.post("/api/v1/ws/send", Some(&user.token), send.clone())
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, body) = app.broadcast(&user.token, "system", data.clone()).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );

    // The admin's /ws/send reaches the user.
    let (mut ws, _) = app.ws(&user.token).await;
    let (status, body) = app.post("/api/v1/ws/send", Some(&admin.token), send).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["delivered"], 1);
    assert_eq!(ws.next().await["data"]["message"], "hi");

    for bad_type in [
        "",
        "Upper",
        "1abc",
        "has-dash",
        "has space",
        &"a".repeat(65),
        "welcome",
        "pong",
        "resumed",
        "reset",
        "error",
    ] {
        let (status, body) = app.broadcast(&admin.token, bad_type, data.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "type {bad_type:?}: {body}");
        assert!(
            body["error"].is_string() && body["message"].is_string(),
            "{body}"
        );
    }
    assert_eq!(
        app.broadcast(&admin.token, &"a".repeat(64), data.clone())
            .await
            .0,
        StatusCode::ACCEPTED
    );
    for bad_data in [json!("text"), json!([1]), json!(null), json!(3)] {
        let (status, body) = app.broadcast(&admin.token, "note", bad_data.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "data {bad_data}: {body}");
    }
    let (status, _) = app
        .post(
            "/api/v1/ws/broadcast",
            Some(&admin.token),
            json!({ "type": "note" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let big = json!({ "type": "note", "data": { "blob": "x".repeat(64 * 1024) } });
    for path in [
        "/api/v1/ws/broadcast".to_owned(),
        format!("/api/v1/ws/user/{}", user.id),
    ] {
        let (status, body) = app.post(&path, Some(&admin.token), big.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}: {body}");
    }
    let almost = json!({ "type": "note", "data": { "blob": "x".repeat(60 * 1024) } });
    assert_eq!(
        app.post("/api/v1/ws/broadcast", Some(&admin.token), almost)
            .await
            .0,
        StatusCode::ACCEPTED
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .publish_to(&admin.token, &unknown, "note", json!({}))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found")),
        "{body}"
    );
    let (status, _) = app
        .post(
            "/api/v1/ws/send",
            Some(&admin.token),
            json!({ "user_id": unknown, "type": "note", "data": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // A path that names no user, malformed or not, is 404; a malformed body is 400.
    assert_eq!(
        app.publish_to(&admin.token, "not-a-uuid", "note", json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    let (status, _) = app
        .post(
            "/api/v1/ws/send",
            Some(&admin.token),
            json!({ "user_id": "not-a-uuid", "type": "note", "data": {} }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_client_that_reconnects_with_its_cursor_gets_what_it_missed_once_in_order() {
    let (app, admin, user) = app_with_admin().await;
    let other = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 0 }))
        .await;
    let seen = ws.next().await;
    let cursor = seen["cursor"].as_str().unwrap().to_owned();
    ws.close().await;

    // While away: own messages, a broadcast, and someone else's message.
    for n in 1..=3 {
        app.publish_ok(&admin.token, &user.id, "note", json!({ "n": n }))
            .await;
    }
    assert_eq!(
        app.broadcast(&admin.token, "announcement", json!({ "n": 4 }))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    app.publish_ok(&admin.token, &other.id, "note", json!({ "secret": true }))
        .await;
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 5 }))
        .await;

    let (mut ws, welcome) = app.ws_since(&user.token, &cursor).await;
    let mut last = String::new();
    for n in 1..=5 {
        let m = ws.next().await;
        assert_durable(&m, if n == 4 { "announcement" } else { "note" });
        assert_eq!(
            m["data"]["n"], n,
            "replay out of order or with a stranger's message: {m}"
        );
        last = m["cursor"].as_str().unwrap().to_owned();
    }
    let resumed = ws.next().await;
    assert_control(&resumed, "resumed");
    assert_eq!(resumed["data"]["from"], cursor.as_str());
    assert_eq!(resumed["data"]["to"], last.as_str());
    assert_eq!(resumed["data"]["replayed"], 5);
    // welcome names the newest message addressed to this user.
    assert_eq!(welcome["data"]["cursor"], last.as_str());

    // Live delivery continues after the replay, with no duplicate.
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 6 }))
        .await;
    assert_eq!(ws.next().await["data"]["n"], 6);

    // Resuming from the newest cursor replays nothing.
    let (mut again, _) = app.ws_since(&user.token, &last).await;
    let m = again.next().await;
    assert_eq!(m["data"]["n"], 6);
    let resumed = again.next().await;
    assert_eq!(
        (
            resumed["type"].as_str(),
            resumed["data"]["replayed"].as_u64()
        ),
        (Some("resumed"), Some(1))
    );
}

#[tokio::test]
async fn resume_works_across_a_server_restart() {
    let (mut app, admin, user) = app_with_admin().await;
    let (mut ws, _) = app.ws(&user.token).await;
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 1 }))
        .await;
    let cursor = ws.next().await["cursor"].as_str().unwrap().to_owned();
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 2 }))
        .await;
    assert_eq!(ws.next().await["data"]["n"], 2);
    drop(ws);
    app.restart().await;
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 3 }))
        .await;

    let (mut ws, _) = app.ws_since(&user.token, &cursor).await;
    assert_eq!(ws.next().await["data"]["n"], 2);
    assert_eq!(ws.next().await["data"]["n"], 3);
    let resumed = ws.next().await;
    assert_eq!(resumed["type"], "resumed", "{resumed}");
    assert_eq!(resumed["data"]["replayed"], 2);
}

#[tokio::test]
async fn a_gap_beyond_retention_or_a_foreign_cursor_gets_reset() {
    let options = AppOptions {
        extra_args: ["--history-max-per-user", "2", "--history-max-age-s", "1"]
            .map(String::from)
            .to_vec(),
        ..Default::default()
    };
    let (app, admin, user) = app_with_admin_and(options).await;

    for since in ["garbage", "abc-1-", "00ff00ff00ff00ff-1", "-5"] {
        let (mut ws, _) = app.ws_since(&user.token, since).await;
        let reset = ws.next().await;
        assert_control(&reset, "reset");
        assert!(reset["data"]["reason"].is_string(), "{reset}");
        // Live delivery continues after a reset.
        app.publish_ok(
            &admin.token,
            &user.id,
            "note",
            json!({ "after_reset": since }),
        )
        .await;
        assert_eq!(ws.next().await["data"]["after_reset"], since);
    }

    let (mut ws, _) = app.ws(&user.token).await;
    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 0 }))
        .await;
    let cursor = ws.next().await["cursor"].as_str().unwrap().to_owned();
    drop(ws);
    for n in 1..=6 {
        app.publish_ok(&admin.token, &user.id, "note", json!({ "n": n }))
            .await;
    }
    // The prune job runs about every second here; wait (bounded) until the gap is gone.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let (mut ws, _) = app.ws_since(&user.token, &cursor).await;
        let first = ws.next().await;
        if first["type"] == "reset" {
            assert_eq!(first["data"]["reason"], "history_expired", "{first}");
            break;
        }
        // Still replayable: then it must be a complete replay starting right after.
        assert_eq!(
            first["data"]["n"], 1,
            "a replay must not have holes: {first}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "history never expired"
        );
        ws.close().await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let stats = app.ws_stats().await;
    assert!(stats["resets"].as_u64().unwrap() >= 5, "{stats}");
}

#[tokio::test]
async fn a_client_that_never_reads_is_closed_with_4008_while_others_keep_receiving() {
    let (app, admin, user) = app_with_admin().await;
    let stalled_open = WsOpen {
        small_recv_buffer: true,
        ..Default::default()
    };
    let (mut stalled, _) = app.ws_with(&user.token, stalled_open).await;
    let (mut fast, _) = app.ws(&user.token).await;

    const COUNT: usize = 400;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(COUNT);
        while seen.len() < COUNT {
            let m = fast.next().await;
            seen.push(m["data"]["n"].as_u64().unwrap());
        }
        seen
    });
    let blob = "x".repeat(32 * 1024);
    for n in 0..COUNT {
        app.publish_ok(
            &admin.token,
            &user.id,
            "bulk",
            json!({ "n": n, "blob": blob }),
        )
        .await;
    }
    let seen = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("the fast client fell behind")
        .unwrap();
    assert_eq!(
        seen,
        (0..COUNT as u64).collect::<Vec<_>>(),
        "the fast client must get everything in order"
    );

    // The stalled client, reading at last, finds what fit in the buffers, then 4008.
    assert_eq!(stalled.close_code().await, Some(4008));
    let stats = app.ws_stats().await;
    assert!(stats["slow_disconnects"].as_u64().unwrap() >= 1, "{stats}");
}

#[tokio::test]
async fn logout_closes_the_sessions_connections_with_4001() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let other_session = app.login(&user.email, &user.password).await;
    let (mut doomed, _) = app.ws(&other_session.token).await;
    let (mut kept, _) = app.ws(&user.token).await;
    let (status, _) = app
        .post(
            "/api/v1/users/logout",
            Some(&other_session.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(doomed.close_code().await, Some(4001));
    // Another session of the same user stays connected.
    kept.send_json(json!({ "type": "ping" })).await;
    assert_eq!(kept.next().await["type"], "pong");
}

#[tokio::test]
async fn api_key_changes_alert_the_owner_and_a_revoked_key_is_disconnected() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (mut session_ws, _) = app.ws(&user.token).await;

    let (key, created) = app.create_api_key(&user, "deploy bot").await;
    let alert = session_ws.next().await;
    assert_durable(&alert, "system");
    assert_eq!(alert["data"]["level"], "warning");
    assert_eq!(alert["data"]["category"], "security");
    assert!(
        alert["data"]["message"]
            .as_str()
            .unwrap()
            .contains("deploy bot"),
        "{alert}"
    );

    let mut key_ws = app
        .ws_try(WsAuth::Query(&key), WsOpen::default())
        .await
        .unwrap();
    assert_eq!(key_ws.next().await["type"], "welcome");
    let id = created["id"].as_str().unwrap();
    assert_eq!(
        app.delete(&format!("/api/v1/api-keys/{id}"), Some(&user.token))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(key_ws.close_code().await, Some(4001));
    let alert = session_ws.next().await;
    assert_eq!(
        (alert["type"].as_str(), alert["data"]["category"].as_str()),
        (Some("system"), Some("security"))
    );
    assert_eq!(
        app.ws_try(WsAuth::Query(&key), WsOpen::default())
            .await
            .err(),
        Some(401)
    );
}

#[tokio::test]
async fn stats_count_connections_and_messages_written() {
    let (app, admin, user) = app_with_admin().await;
    let before = app.ws_stats().await;
    for field in ["total_connections", "current_connections", "messages_sent"] {
        assert!(before[field].is_u64(), "{field}: {before}");
    }
    assert_eq!(before["current_connections"], 0);

    let (mut ws, _) = app.ws(&user.token).await;
    for n in 0..3 {
        app.publish_ok(&admin.token, &user.id, "note", json!({ "n": n }))
            .await;
        ws.next().await;
    }
    // welcome + 3 messages were written. The counter moves just after each write, so
    // allow it a moment to catch up with what the client already read.
    let sent_before = before["messages_sent"].as_u64().unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stats = loop {
        let stats = app.ws_stats().await;
        if stats["messages_sent"].as_u64().unwrap() >= sent_before + 4
            || tokio::time::Instant::now() > deadline
        {
            break stats;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        stats["messages_sent"].as_u64().unwrap(),
        sent_before + 4,
        "{stats}"
    );
    assert_eq!(stats["current_connections"], 1);
    assert_eq!(
        stats["total_connections"].as_u64().unwrap(),
        before["total_connections"].as_u64().unwrap() + 1
    );

    // A broadcast nobody else hears is not counted as sent to them.
    ws.close().await;
    eventually(
        Duration::from_secs(10),
        Duration::from_millis(50),
        async || {
            if app.ws_stats().await["current_connections"] == 0 {
                return Ok(());
            }
            Err("connection never left the stats".to_owned())
        },
    )
    .await;
    let (_, body) = app.broadcast(&admin.token, "note", json!({})).await;
    assert_eq!(body["delivered"], 0);
    assert_eq!(
        app.ws_stats().await["messages_sent"].as_u64().unwrap(),
        sent_before + 4
    );

    let metrics = app.metrics().await;
    assert!(
        metrics.contains("zerostate_realtime_messages_sent_total"),
        "metrics lack real-time counters"
    );
}

#[tokio::test]
async fn shutdown_closes_connections_with_1012() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;
    let mut app = app;
    let (code, exit) = tokio::join!(ws.close_code(), app.stop());
    assert_eq!(code, Some(1012));
    assert_eq!(exit, Some(0));
}

#[tokio::test]
async fn a_silent_client_is_closed_after_75_seconds_and_a_live_one_is_not() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    // A raw socket that completes the handshake and then neither reads nor writes: a
    // WebSocket library would answer the server's pings and not be silent.
    let mut silent = raw_websocket(&app, &user.token).await;
    let (mut live, _) = app.ws(&user.token).await;
    // The live client keeps reading, so its WebSocket layer answers the server's pings.
    let reader = tokio::spawn(async move {
        use futures_util::StreamExt;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(85);
        while let Ok(Some(Ok(message))) =
            tokio::time::timeout_at(deadline, live.stream.next()).await
        {
            assert!(
                !message.is_close(),
                "the live client was closed: {message:?}"
            );
        }
        live
    });
    let mut live = reader.await.unwrap();
    live.send_json(json!({ "type": "ping" })).await;
    assert_eq!(live.next().await["type"], "pong");

    let mut bytes = Vec::new();
    use tokio::io::AsyncReadExt;
    let _ = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut bytes)).await;
    let codes = close_codes(&bytes);
    assert_eq!(codes, vec![1001], "frames received: {bytes:?}");
}

/// Opens a WebSocket by hand and returns the socket after the 101 response.
async fn raw_websocket(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = app.tcp().await;
    let request = format!(
        "GET /api/v1/ws/connect HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nAuthorization: Bearer {token}\r\n\r\n",
        app.port
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        socket.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    socket
}

/// The status codes of the close frames in a stream of server (unmasked) frames.
fn close_codes(mut bytes: &[u8]) -> Vec<u16> {
    let mut codes = Vec::new();
    while bytes.len() >= 2 {
        let opcode = bytes[0] & 0x0f;
        let (len, header) = match bytes[1] & 0x7f {
            126 if bytes.len() >= 4 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
            127 if bytes.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(n) as usize, 10)
            }
            n if n < 126 => (n as usize, 2),
            _ => break,
        };
        let Some(payload) = bytes.get(header..header + len) else {
            break;
        };
        if opcode == 0x8 && payload.len() >= 2 {
            codes.push(u16::from_be_bytes([payload[0], payload[1]]));
        }
        bytes = &bytes[header + len..];
    }
    codes
}

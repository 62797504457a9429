//! The Server-Sent Events fallback: same authentication, messages and resume as the
//! WebSocket, with cursors as event ids.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn the_event_stream_needs_credentials() {
    let app = spawn_app().await;
    let response = app
        .client
        .get(app.url("/api/v1/events"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let user = app.new_user().await;
    let response = app
        .client
        .get(app.url("/api/v1/events"))
        .header("cookie", format!("zs_session={}", user.token))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn events_carry_cursors_as_ids_and_last_event_id_resumes() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let user = app.new_user().await;

    let mut sse = app.sse(&user.token, None).await;
    let welcome = sse.next_event().await.expect("welcome");
    assert_eq!(welcome.event.as_deref(), Some("welcome"));
    assert!(welcome.id.is_none(), "control messages carry no id");
    assert_eq!(welcome.data["type"], "welcome");

    for n in 1..=2 {
        app.publish_ok(&admin.token, &user.id, "note", json!({ "n": n }))
            .await;
    }
    let first = sse.next_event().await.expect("first");
    assert_eq!(first.event.as_deref(), Some("note"));
    assert_eq!(first.data["data"]["n"], 1);
    assert_eq!(
        first.id.as_deref(),
        first.data["cursor"].as_str(),
        "the event id is the cursor"
    );
    let second = sse.next_event().await.expect("second");
    assert_eq!(second.data["data"]["n"], 2);
    drop(sse);

    app.publish_ok(&admin.token, &user.id, "note", json!({ "n": 3 }))
        .await;
    let mut sse = app.sse(&user.token, first.id.as_deref()).await;
    assert_eq!(sse.next_event().await.unwrap().data["type"], "welcome");
    for n in 2..=3 {
        let e = sse.next_event().await.unwrap();
        assert_eq!(e.data["data"]["n"], n, "{:?}", e);
    }
    let resumed = sse.next_event().await.unwrap();
    assert_eq!(resumed.event.as_deref(), Some("resumed"));
    assert_eq!(resumed.data["data"]["replayed"], 2);

    // `?token=` and `?since=` work too (for clients that cannot set headers).
    let url = format!(
        "/api/v1/events?token={}&since={}",
        urlencode(&user.token),
        urlencode(second.id.as_deref().unwrap())
    );
    let response = app.client.get(app.url(&url)).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
}

#[tokio::test]
async fn logout_ends_the_event_stream() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let session = app.login(&user.email, &user.password).await;
    let mut sse = app.sse(&session.token, None).await;
    assert!(sse.next_event().await.is_some());
    app.post("/api/v1/users/logout", Some(&session.token), json!({}))
        .await;
    assert!(
        sse.next_event().await.is_none(),
        "the stream must end on revocation"
    );
}

#[tokio::test]
async fn an_idle_stream_gets_a_heartbeat_comment_every_25_seconds() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let mut response = app
        .client
        .get(app.url("/api/v1/events"))
        .bearer_auth(&user.token)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let mut seen = String::new();
    // Nothing is published: the only thing after `welcome` can be the heartbeat.
    let heartbeat = tokio::time::timeout(std::time::Duration::from_secs(40), async {
        while let Ok(Some(chunk)) = response.chunk().await {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen
                .lines()
                .any(|l| l.starts_with(':') && l.contains("heartbeat"))
            {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(
        heartbeat,
        Ok(true),
        "no heartbeat comment; stream so far: {seen:?}"
    );
}

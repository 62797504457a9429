//! Tasks through the user API: submit and its validation, ownership, listing and
//! paging, status, result and cancel.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn submit_answers_202_with_the_queued_task_and_defaults() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (status, body) = app
        .post(
            "/api/v1/tasks/submit",
            Some(&user.token),
            json!({ "query": "count words" }),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["status"], "queued");
    let task = &body["task"];
    assert_eq!(body["task_id"], task["id"]);
    assert_eq!(task["user_id"], user.id.as_str());
    assert_eq!(task["query"], "count words");
    assert_eq!(task["capability"], "general");
    assert_eq!(task["priority"], "normal");
    assert_eq!(task["progress"], 0);
    assert_eq!(task["attempts"], 0);
    assert_eq!(task["max_attempts"], 3);
    assert_eq!(task["queue_position"], 1);
    for null in [
        "agent_id",
        "result",
        "error",
        "started_at",
        "completed_at",
        "idempotency_key",
        "run_at",
    ] {
        assert!(task[null].is_null(), "{null} should be null: {task}");
    }
    assert!(task["created_at"].is_string() && task["updated_at"].is_string());

    let id = task["id"].as_str().unwrap();
    let (status, st) = app
        .get(&format!("/api/v1/tasks/{id}/status"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(st["task_id"], id);
    assert_eq!(st["status"], "queued");
    assert_eq!(st["progress"], 0);
    assert!(st["agent_id"].is_null() && st["updated_at"].is_string());
    assert_eq!(st["queue_position"], 1);
    assert_eq!(st["waiting_for"], "no_agent_online");
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/result"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "not_finished");
}

#[tokio::test]
async fn invalid_submissions_are_400() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    for body in [
        json!({}),
        json!({ "query": "" }),
        json!({ "query": "   " }),
        json!({ "query": "x".repeat(10_001) }),
        json!({ "query": "q", "priority": "urgent" }),
        json!({ "query": "q", "timeout_s": 0 }),
        json!({ "query": "q", "timeout_s": 3601 }),
        json!({ "query": "q", "capability": "no spaces" }),
    ] {
        let (status, answer) = app
            .post("/api/v1/tasks/submit", Some(&user.token), body.clone())
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {answer}");
        assert!(answer["error"].is_string() && answer["message"].is_string());
    }
    let (status, _) = app
        .post("/api/v1/tasks/submit", None, json!({ "query": "q" }))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let ok = app.submit(&user, json!({ "query": "x".repeat(10_000), "priority": "critical", "timeout_s": 3600, "capability": "Text" })).await;
    assert_eq!(
        (ok["priority"].as_str(), ok["capability"].as_str()),
        (Some("critical"), Some("text"))
    );
}

#[tokio::test]
async fn another_users_task_is_not_found_and_lists_are_private() {
    let app = spawn_app().await;
    let admin = app.new_user().await; // the first account is admin
    assert_eq!(admin.role, "admin");
    let alice = app.new_user().await;
    let bob = app.new_user().await;
    let id = app.submit_query(&alice, "alice's secret").await;
    app.submit_query(&bob, "bob's").await;

    for path in [
        format!("/api/v1/tasks/{id}"),
        format!("/api/v1/tasks/{id}/status"),
        format!("/api/v1/tasks/{id}/result"),
    ] {
        let (status, body) = app.get(&path, Some(&bob.token)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: {body}");
        assert_eq!(body["error"], "not_found");
    }
    assert_eq!(
        app.post(
            &format!("/api/v1/tasks/{id}/cancel"),
            Some(&bob.token),
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.delete(&format!("/api/v1/tasks/{id}"), Some(&bob.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get("/api/v1/tasks/not-a-uuid", Some(&bob.token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.task(&alice, &id).await["status"],
        "queued",
        "bob's cancel must not have worked"
    );

    let (_, list) = app.get("/api/v1/tasks", Some(&bob.token)).await;
    let tasks = list["tasks"].as_array().unwrap();
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0]["query"], "bob's");
    assert_eq!(
        app.get("/api/v1/tasks?all=true", Some(&bob.token)).await.0,
        StatusCode::FORBIDDEN
    );

    let (_, own) = app.get("/api/v1/tasks", Some(&admin.token)).await;
    assert_eq!(own["tasks"].as_array().unwrap().len(), 0);
    let (_, all) = app.get("/api/v1/tasks?all=true", Some(&admin.token)).await;
    assert_eq!(all["tasks"].as_array().unwrap().len(), 2);
    assert_eq!(app.task(&admin, &id).await["query"], "alice's secret");
}

#[tokio::test]
async fn lists_are_newest_first_paged_and_filtered_by_status() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.submit_query(&user, &format!("task {i}")).await);
    }
    let (status, _) = app
        .post(
            &format!("/api/v1/tasks/{}/cancel", ids[1]),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tasks?limit=2&cursor={c}"),
            None => "/api/v1/tasks?limit=2".to_owned(),
        };
        let (status, page) = app.get(&path, Some(&user.token)).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let tasks = page["tasks"].as_array().unwrap();
        assert!(tasks.len() <= 2);
        seen.extend(tasks.iter().map(|t| t["id"].as_str().unwrap().to_owned()));
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(seen, newest_first);

    let (_, canceled) = app
        .get("/api/v1/tasks?status=canceled", Some(&user.token))
        .await;
    let canceled = canceled["tasks"].as_array().unwrap();
    assert_eq!(canceled.len(), 1);
    assert_eq!(canceled[0]["id"], ids[1].as_str());
    assert!(canceled[0]["completed_at"].is_string());
    assert_eq!(
        app.get("/api/v1/tasks?status=done", Some(&user.token))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/api/v1/tasks?limit=0", Some(&user.token)).await.0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/api/v1/tasks?cursor=abc", Some(&user.token))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn cancel_works_from_queued_by_both_routes_and_is_409_once_finished() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let a = app.submit_query(&user, "a").await;
    let b = app.submit_query(&user, "b").await;
    let (mut ws, _) = app.ws(&user.token).await;
    let (status, body) = app
        .delete(&format!("/api/v1/tasks/{a}"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({ "task_id": a, "status": "canceled" }));
    let update = ws
        .next_of("task_update", |d| d["task_id"] == a.as_str())
        .await;
    assert_eq!(update["status"], "canceled");
    let (status, _) = app
        .post(
            &format!("/api/v1/tasks/{b}/cancel"),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{b}/cancel"),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(body["error"], "already_finished");
    let (status, result) = app
        .get(&format!("/api/v1/tasks/{a}/result"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["status"], "canceled");
    assert!(result["duration_ms"].is_null(), "never started: {result}");
}

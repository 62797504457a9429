//! Task execution controls (contract v2, Tasks): retries with backoff, `retryable:
//! false`, `release`, attempt history, idempotency keys, `run_at`, fair scheduling,
//! queue position and `waiting_for`, the retry endpoint, list filters, batched claims,
//! `task_update`'s `error` and the queue gauges.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A server whose first retry waits up to `base_ms` (then 2×, 4×, …).
async fn app_with_backoff(base_ms: u64) -> TestApp {
    spawn_app_with(AppOptions {
        extra_args: vec!["--retry-backoff-base-ms".into(), base_ms.to_string()],
        ..AppOptions::default()
    })
    .await
}

fn millis(value: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(value.as_str().expect("a time"))
        .expect("RFC 3339")
        .timestamp_millis()
}

async fn attempts_of(app: &TestApp, user: &TestUser, id: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/attempts"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["attempts"].as_array().expect("attempts").clone()
}

async fn status_of(app: &TestApp, user: &TestUser, id: &str) -> Value {
    let (status, body) = app
        .get(&format!("/api/v1/tasks/{id}/status"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// An agent that runs every user's tasks: registered as shared by an admin.
async fn shared_agent(app: &TestApp, admin: &TestUser, name: &str) -> (Value, String) {
    let (agent, token) = app
        .register_agent_as(
            admin,
            json!({ "name": name, "capabilities": ["general"], "shared": true }),
        )
        .await;
    assert_eq!(agent["shared"], true, "an admin registers a shared agent");
    (agent, token)
}

#[tokio::test]
async fn a_failing_agent_retries_with_growing_gaps_then_the_task_fails() {
    let app = app_with_backoff(400).await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "flaky", &["general"]).await;
    // Many tasks, because full jitter makes one gap random: on average the second wait
    // (uniform up to 800 ms) is twice the first (up to 400 ms).
    const TASKS: usize = 24;
    let mut ids = Vec::new();
    for i in 0..TASKS {
        let task = app
            .submit(
                &user,
                json!({ "query": format!("flaky {i}"), "max_attempts": 3 }),
            )
            .await;
        assert_eq!(task["max_attempts"], 3);
        ids.push(task["id"].as_str().unwrap().to_owned());
    }
    let mut failed = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while failed < TASKS * 3 {
        assert!(Instant::now() < deadline, "only {failed} attempts made");
        let (status, body) = app
            .runtime(&token, "/claim", json!({ "wait_s": 2, "max_tasks": 32 }))
            .await;
        if status == StatusCode::NO_CONTENT {
            continue;
        }
        for task in body["tasks"].as_array().unwrap() {
            let (status, answer) = app
                .runtime(
                    &token,
                    &format!("/tasks/{}/fail", task["id"].as_str().unwrap()),
                    json!({ "error": format!("flake {}", task["attempt"]) }),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{answer}");
            failed += 1;
        }
    }
    let (mut first, mut second) = (Vec::new(), Vec::new());
    for id in &ids {
        let task = app.task(&user, id).await;
        assert_eq!(
            (task["status"].as_str(), task["attempts"].as_u64()),
            (Some("failed"), Some(3)),
            "{task}"
        );
        assert_eq!(task["error"], "flake 3");
        let attempts = attempts_of(&app, &user, id).await;
        let numbers: Vec<u64> = attempts
            .iter()
            .map(|a| a["attempt"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, [1, 2, 3], "{attempts:?}");
        assert!(
            attempts.iter().all(|a| a["outcome"] == "failed"),
            "{attempts:?}"
        );
        assert_eq!(attempts[0]["error"], "flake 1");
        let gap =
            |n: usize| millis(&attempts[n + 1]["started_at"]) - millis(&attempts[n]["ended_at"]);
        first.push(gap(0));
        second.push(gap(1));
    }
    assert!(
        first.iter().chain(&second).all(|g| *g >= 0),
        "{first:?} {second:?}"
    );
    // Caps 400 ms and 800 ms, with room for a loaded machine's scheduling.
    assert!(first.iter().all(|g| *g < 400 + 1500), "{first:?}");
    let mean = |v: &[i64]| v.iter().sum::<i64>() as f64 / v.len() as f64;
    assert!(
        mean(&second) > mean(&first),
        "the gaps should grow: first {first:?}, second {second:?}"
    );
}

#[tokio::test]
async fn retryable_false_fails_at_once_and_error_follows_the_attempts() {
    let app = app_with_backoff(50).await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "strict", &["general"]).await;
    let (mut ws, _) = app.ws(&user.token).await;

    // A retryable failure: the update says why it will be retried, the next attempt's
    // updates and the completion carry no error.
    let id = app.submit_query(&user, "second time lucky").await;
    let (_, claim) = app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(claim["task"]["attempt"], 1);
    app.runtime(
        &token,
        &format!("/tasks/{id}/fail"),
        json!({ "error": "flake" }),
    )
    .await;
    let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 10 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["attempt"], 2);
    app.runtime(
        &token,
        &format!("/tasks/{id}/complete"),
        json!({ "result": "ok" }),
    )
    .await;
    let mut updates = Vec::new();
    loop {
        let update = ws
            .next_of("task_update", |d| d["task_id"] == id.as_str())
            .await;
        for key in [
            "task_id", "status", "query", "progress", "agent_id", "attempt", "error",
        ] {
            assert!(update.get(key).is_some(), "{key} missing: {update}");
        }
        let done = update["status"] == "completed";
        updates.push(update);
        if done {
            break;
        }
    }
    let seen: Vec<(String, u64, Value)> = updates
        .iter()
        .map(|u| {
            (
                u["status"].as_str().unwrap().to_owned(),
                u["attempt"].as_u64().unwrap(),
                u["error"].clone(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("queued".into(), 0, Value::Null),
            ("running".into(), 1, Value::Null),
            ("queued".into(), 1, json!("flake")),
            ("running".into(), 2, Value::Null),
            ("completed".into(), 2, Value::Null),
        ]
    );
    let done = app.task(&user, &id).await;
    assert!(done["error"].is_null(), "{done}");

    // `retryable: false`: failed at once, whatever attempts remain.
    let id = app.submit_query(&user, "hopeless").await;
    app.runtime(&token, "/claim", json!({})).await;
    let (status, body) = app
        .runtime(
            &token,
            &format!("/tasks/{id}/fail"),
            json!({ "error": "bad input", "retryable": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["status"].as_str(), body["attempts"].as_u64()),
        (Some("failed"), Some(1))
    );
    let update = ws
        .next_of("task_update", |d| {
            d["task_id"] == id.as_str() && d["status"] == "failed"
        })
        .await;
    assert_eq!(update["error"], "bad input");
    let attempts = attempts_of(&app, &user, &id).await;
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0]["outcome"], "failed");
    assert_eq!(attempts[0]["error"], "bad input");
    assert!(attempts[0]["ended_at"].is_string());
}

#[tokio::test]
async fn release_costs_no_attempt_and_turns_the_agent_offline() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (agent, token) = app.register_agent(&user, "polite", &["general"]).await;
    let agent_id = agent["id"].as_str().unwrap().to_owned();
    let id = app
        .submit(&user, json!({ "query": "hand me back", "max_attempts": 1 }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for round in 0..3 {
        let (status, claim) = app.runtime(&token, "/claim", json!({})).await;
        assert_eq!(status, StatusCode::OK, "round {round}");
        assert_eq!(claim["task"]["attempt"], 1, "no attempt was used");
        let (_, online) = app
            .get(&format!("/api/v1/agents/{agent_id}"), Some(&user.token))
            .await;
        assert_eq!(online["status"], "online");
        let (status, body) = app
            .runtime(&token, &format!("/tasks/{id}/release"), json!({}))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["status"].as_str(), body["attempts"].as_u64()),
            (Some("queued"), Some(0))
        );
        let (_, offline) = app
            .get(&format!("/api/v1/agents/{agent_id}"), Some(&user.token))
            .await;
        assert_eq!(
            offline["status"], "offline",
            "a clean stop is offline at once"
        );
    }
    let task = app.task(&user, &id).await;
    assert_eq!(
        (task["status"].as_str(), task["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    assert!(task["error"].is_null());
    let outcomes: Vec<Value> = attempts_of(&app, &user, &id)
        .await
        .iter()
        .map(|a| json!([a["attempt"], a["outcome"], a["agent_id"]]))
        .collect();
    assert_eq!(outcomes, vec![json!([1, "handed_back", agent_id]); 3]);
    // Releasing what is not ours (any more) is refused.
    let (status, _) = app
        .runtime(&token, &format!("/tasks/{id}/release"), json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn twenty_parallel_submits_with_one_idempotency_key_create_one_task() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let mut calls = Vec::new();
    for _ in 0..20 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/tasks/submit"),
            user.token.clone(),
        );
        calls.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": "charge the card", "idempotency_key": "order-1234" }))
                .send()
                .await
                .unwrap();
            (response.status(), response.json::<Value>().await.unwrap())
        }));
    }
    let (mut created, mut duplicates, mut ids) = (0, 0, HashSet::new());
    for call in calls {
        let (status, body) = call.await.unwrap();
        ids.insert(body["task_id"].as_str().unwrap().to_owned());
        assert_eq!(body["task"]["idempotency_key"], "order-1234");
        match status {
            StatusCode::ACCEPTED => {
                created += 1;
                assert!(body.get("duplicate").is_none(), "{body}");
            }
            StatusCode::OK => {
                duplicates += 1;
                assert_eq!(body["duplicate"], true);
                assert_eq!(body["task"]["id"], body["task_id"]);
            }
            other => panic!("{other}: {body}"),
        }
    }
    assert_eq!((created, duplicates, ids.len()), (1, 19, 1));
    let (_, list) = app.get("/api/v1/tasks", Some(&user.token)).await;
    assert_eq!(list["tasks"].as_array().unwrap().len(), 1);

    // The key is per user; and it must be 1-200 characters.
    let other = app.new_user().await;
    let theirs = app
        .submit(
            &other,
            json!({ "query": "q", "idempotency_key": "order-1234" }),
        )
        .await;
    assert!(!ids.contains(theirs["id"].as_str().unwrap()));
    for key in [json!(""), json!("k".repeat(201)), json!(5)] {
        let (status, body) = app
            .post(
                "/api/v1/tasks/submit",
                Some(&user.token),
                json!({ "query": "q", "idempotency_key": key }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{key}: {body}");
    }
}

#[tokio::test]
async fn a_task_with_run_at_is_not_handed_out_before_its_time() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "punctual", &["general"]).await;
    let run_at = chrono::Utc::now() + chrono::Duration::seconds(3);
    let task = app
        .submit(
            &user,
            json!({ "query": "later", "run_at": run_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true) }),
        )
        .await;
    let id = task["id"].as_str().unwrap().to_owned();
    assert_eq!(millis(&task["run_at"]), run_at.timestamp_millis());
    assert_eq!(task["status"], "queued");
    let status = status_of(&app, &user, &id).await;
    assert_eq!(status["waiting_for"], "run_at", "{status}");
    assert_eq!(status["queue_position"], 1);
    assert_eq!(
        app.runtime(&token, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    // A waiting claim gets it once it is due, not before.
    let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 15 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["id"], id.as_str());
    let started = app.task(&user, &id).await;
    assert!(
        millis(&started["started_at"]) >= run_at.timestamp_millis(),
        "started {} before run_at {run_at}",
        started["started_at"]
    );

    let far = chrono::Utc::now() + chrono::Duration::days(31);
    for run_at in [json!(far.to_rfc3339()), json!("tomorrow"), json!(12)] {
        let (status, body) = app
            .post(
                "/api/v1/tasks/submit",
                Some(&user.token),
                json!({ "query": "q", "run_at": run_at }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{run_at}: {body}");
    }
    for max in [0, 11] {
        let (status, _) = app
            .post(
                "/api/v1/tasks/submit",
                Some(&user.token),
                json!({ "query": "q", "max_attempts": max }),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
    }
}

#[tokio::test]
async fn one_users_backlog_does_not_delay_another_users_task_by_more_than_a_few_claims() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let a = app.new_user().await;
    let b = app.new_user().await;
    let (_, token) = shared_agent(&app, &admin, "shared worker").await;
    // A's backlog, submitted as fast as the server takes it.
    let mut calls = Vec::new();
    for i in 0..500 {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/tasks/submit"),
            a.token.clone(),
        );
        calls.push(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "query": format!("a {i}") }))
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::ACCEPTED);
        });
        if calls.len() == 25 {
            futures_util::future::join_all(calls.drain(..)).await;
        }
    }
    futures_util::future::join_all(calls).await;
    // The agent works through some of A's tasks, one at a time.
    for _ in 0..3 {
        let (status, claim) = app.runtime(&token, "/claim", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let id = claim["task"]["id"].as_str().unwrap();
        app.runtime(
            &token,
            &format!("/tasks/{id}/complete"),
            json!({ "result": 1 }),
        )
        .await;
    }
    let b_task = app.submit_query(&b, "b's only task").await;
    let status = status_of(&app, &b, &b_task).await;
    assert_eq!(status["queue_position"], 1, "{status}");
    assert_eq!(status["waiting_for"], "agent", "{status}");
    let mut claims = 0;
    loop {
        claims += 1;
        assert!(claims <= 3, "B's task was not among the next 3 claims");
        let (status, claim) = app.runtime(&token, "/claim", json!({})).await;
        assert_eq!(status, StatusCode::OK);
        let id = claim["task"]["id"].as_str().unwrap().to_owned();
        app.runtime(
            &token,
            &format!("/tasks/{id}/complete"),
            json!({ "result": 1 }),
        )
        .await;
        if id == b_task {
            break;
        }
    }
    // An agent that takes many at once spreads them over users too.
    let b2 = app.submit_query(&b, "b's second").await;
    let (_, batch) = app
        .runtime(&token, "/claim", json!({ "max_tasks": 3 }))
        .await;
    let ids: Vec<&str> = batch["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.contains(&b2.as_str()), "{batch}");
}

#[tokio::test]
async fn waiting_for_says_why_a_task_waits_and_queue_position_counts_from_one() {
    let app = app_with_backoff(60_000).await;
    let user = app.new_user().await;
    let first = app
        .submit(&user, json!({ "query": "render", "capability": "gpu" }))
        .await;
    let second = app
        .submit(
            &user,
            json!({ "query": "render more", "capability": "gpu" }),
        )
        .await;
    let (first, second) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    for (id, position) in [(first, 1), (second, 2)] {
        let status = status_of(&app, &user, id).await;
        assert_eq!(status["waiting_for"], "no_agent_online", "{status}");
        assert_eq!(status["queue_position"], position, "{status}");
        assert_eq!(app.task(&user, id).await["queue_position"], position);
    }
    // Registered but never connected: still no agent online.
    let (_, token) = app.register_agent(&user, "renderer", &["gpu"]).await;
    assert_eq!(
        status_of(&app, &user, first).await["waiting_for"],
        "no_agent_online"
    );
    let (status, claim) = app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["id"], first);
    let running = status_of(&app, &user, first).await;
    assert!(running["waiting_for"].is_null() && running["queue_position"].is_null());
    assert!(app.task(&user, first).await["queue_position"].is_null());
    let waiting = status_of(&app, &user, second).await;
    assert_eq!(
        waiting["waiting_for"], "agent",
        "online but busy: {waiting}"
    );
    assert_eq!(waiting["queue_position"], 1);

    // A failed attempt waits out its backoff (up to 60 s here; with full jitter it may
    // also be over at once, and then the task waits for the busy agent again).
    app.runtime(
        &token,
        &format!("/tasks/{first}/fail"),
        json!({ "error": "oom" }),
    )
    .await;
    let backing_off = status_of(&app, &user, first).await;
    assert!(
        ["retry_backoff", "agent"].contains(&backing_off["waiting_for"].as_str().unwrap()),
        "{backing_off}"
    );
    assert_eq!(app.task(&user, first).await["error"], "oom");
}

#[tokio::test]
async fn retry_runs_a_finished_task_again_as_a_new_task() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (agent, token) = app
        .register_agent(&user, "picky", &["general", "text"])
        .await;
    let original = app
        .submit(
            &user,
            json!({ "query": "again", "capability": "text", "priority": "high",
                    "agent_id": agent["id"], "max_attempts": 5 }),
        )
        .await;
    let id = original["id"].as_str().unwrap();
    let retry = |id: &str| format!("/api/v1/tasks/{id}/retry");
    let (status, body) = app.post(&retry(id), Some(&user.token), json!({})).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a queued task is not finished: {body}"
    );
    app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(
        app.post(&retry(id), Some(&user.token), json!({})).await.0,
        StatusCode::CONFLICT
    );
    app.runtime(
        &token,
        &format!("/tasks/{id}/complete"),
        json!({ "result": 1 }),
    )
    .await;
    let (status, body) = app.post(&retry(id), Some(&user.token), json!({})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let again = &body["task"];
    assert_ne!(again["id"], original["id"]);
    assert_eq!(body["task_id"], again["id"]);
    assert_eq!(body["status"], "queued");
    for field in [
        "query",
        "capability",
        "priority",
        "max_attempts",
        "agent_id",
    ] {
        assert_eq!(again[field], original[field], "{field}");
    }
    assert_eq!(
        (again["status"].as_str(), again["attempts"].as_u64()),
        (Some("queued"), Some(0))
    );
    // Failed and canceled tasks can be retried too; someone else's is not found.
    let canceled = app.submit_query(&user, "stop").await;
    app.delete(&format!("/api/v1/tasks/{canceled}"), Some(&user.token))
        .await;
    assert_eq!(
        app.post(&retry(&canceled), Some(&user.token), json!({}))
            .await
            .0,
        StatusCode::ACCEPTED
    );
    let stranger = app.new_user().await;
    assert_eq!(
        app.post(&retry(id), Some(&stranger.token), json!({}))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn lists_filter_by_query_text_capability_and_agent_with_paging() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (agent, token) = app
        .register_agent(&user, "worker", &["general", "text"])
        .await;
    for i in 0..5 {
        app.submit(
            &user,
            json!({ "query": format!("Invoice {i}"), "capability": "text" }),
        )
        .await;
    }
    app.submit_query(&user, "weather report").await;
    let (_, claim) = app.runtime(&token, "/claim", json!({})).await;
    let claimed = claim["task"]["id"].as_str().unwrap().to_owned();

    let list = |query: &str| {
        let path = format!("/api/v1/tasks?{query}");
        let app = &app;
        let token = user.token.clone();
        async move {
            let (status, body) = app.get(&path, Some(&token)).await;
            assert_eq!(status, StatusCode::OK, "{path}: {body}");
            body
        }
    };
    let names = |body: &Value| -> Vec<String> {
        body["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["query"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        names(&list("q=invoice").await).len(),
        5,
        "case-insensitive substring"
    );
    assert_eq!(names(&list("q=report").await), ["weather report"]);
    assert_eq!(names(&list("capability=general").await), ["weather report"]);
    assert_eq!(names(&list("capability=text&q=3").await), ["Invoice 3"]);
    let by_agent = list(&format!("agent_id={}", agent["id"].as_str().unwrap())).await;
    assert_eq!(by_agent["tasks"][0]["id"], claimed.as_str());
    assert_eq!(by_agent["tasks"].as_array().unwrap().len(), 1);
    // Paging keeps the filter.
    let page1 = list("q=invoice&limit=2").await;
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = list(&format!("q=invoice&limit=2&cursor={cursor}")).await;
    let page3 = list(&format!(
        "q=invoice&limit=2&cursor={}",
        page2["next_cursor"].as_str().unwrap()
    ))
    .await;
    assert!(page3["next_cursor"].is_null());
    let all: Vec<String> = [names(&page1), names(&page2), names(&page3)].concat();
    assert_eq!(
        all,
        [
            "Invoice 4",
            "Invoice 3",
            "Invoice 2",
            "Invoice 1",
            "Invoice 0"
        ]
    );
    for bad in ["capability=no%20spaces", "agent_id=nope", "status=done"] {
        let (status, _) = app
            .get(&format!("/api/v1/tasks?{bad}"), Some(&user.token))
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test]
async fn a_batched_claim_takes_up_to_max_tasks() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "batcher", &["general"]).await;
    let mut submitted = HashSet::new();
    for i in 0..5 {
        submitted.insert(app.submit_query(&user, &format!("t{i}")).await);
    }
    let (status, first) = app
        .runtime(&token, "/claim", json!({ "max_tasks": 3 }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let first = first["tasks"].as_array().unwrap().clone();
    assert_eq!(first.len(), 3);
    assert!(first
        .iter()
        .all(|t| t["attempt"] == 1 && t["lease_expires_at"].is_string()));
    let (_, rest) = app
        .runtime(&token, "/claim", json!({ "max_tasks": 32 }))
        .await;
    let rest = rest["tasks"].as_array().unwrap().clone();
    assert_eq!(rest.len(), 2);
    let claimed: HashSet<String> = first
        .iter()
        .chain(&rest)
        .map(|t| t["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(claimed, submitted);
    assert_eq!(
        app.runtime(&token, "/claim", json!({ "max_tasks": 4 }))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    for bad in [json!(0), json!(33), json!("x")] {
        assert_eq!(
            app.runtime(&token, "/claim", json!({ "max_tasks": bad }))
                .await
                .0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
}

#[tokio::test]
async fn metrics_show_queue_depth_running_tasks_and_agents_online() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "measured", &["general"]).await;
    for i in 0..3 {
        app.submit(
            &user,
            json!({ "query": format!("m{i}"), "capability": "general" }),
        )
        .await;
    }
    app.runtime(&token, "/claim", json!({})).await;
    eventually(
        Duration::from_secs(15),
        Duration::from_millis(200),
        async || {
            let text = app.metrics().await;
            let has = |line: &str| text.lines().any(|l| l.trim() == line);
            if has("zerostate_tasks_queued{capability=\"general\"} 2")
                && has("zerostate_tasks_running 1")
                && has("zerostate_agents_online 1")
            {
                return Ok(());
            }
            Err(format!("gauges missing:\n{text}"))
        },
    )
    .await;
}

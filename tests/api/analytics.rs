//! The analytics summary, checked against a known set of tasks driven through the
//! runtime API.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn an_empty_window_gives_zeros_and_nulls_and_bad_windows_are_400() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (status, body) = app
        .get("/api/v1/analytics/summary", Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tasks"]["total"], 0);
    // Nothing finished: no rate at all, not 0 %.
    assert!(body["tasks"]["success_rate"].is_null(), "{body}");
    assert_eq!(body["tasks"]["throughput_per_min"], 0.0);
    assert_eq!(
        body["tasks"]["duration_ms"],
        json!({ "p50": null, "p95": null, "p99": null })
    );
    for s in ["queued", "running", "completed", "failed", "canceled"] {
        assert_eq!(body["tasks"]["by_status"][s], 0, "{s}");
    }
    assert_eq!(body["agents"], json!({ "total": 0, "online": 0 }));
    assert!(body["top_agents"].as_array().unwrap().is_empty());
    // 24 h in one-hour buckets (25 when the window does not start on the hour).
    let buckets = body["timeseries"].as_array().unwrap();
    assert!((24..=25).contains(&buckets.len()), "{}", buckets.len());
    assert!(buckets
        .iter()
        .all(|b| b["submitted"] == 0 && b["t"].is_string()));
    for (window, min, max) in [("1h", 12, 13), ("7d", 7, 8)] {
        let (status, body) = app
            .get(
                &format!("/api/v1/analytics/summary?window={window}"),
                Some(&user.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let n = body["timeseries"].as_array().unwrap().len();
        assert!((min..=max).contains(&n), "{window}: {n}");
    }
    for bad in ["2h", "", "1d", "24H"] {
        let (status, body) = app
            .get(
                &format!("/api/v1/analytics/summary?window={bad}"),
                Some(&user.token),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
}

/// Claims the next task as `token`, waits `ms`, then completes (or fails) it.
async fn run_one(app: &TestApp, token: &str, ms: u64, complete: bool) {
    let (status, claim) = app.runtime(token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "{claim}");
    let id = claim["task"]["id"].as_str().unwrap().to_owned();
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let (what, body) = if complete {
        ("complete", json!({ "result": "ok" }))
    } else {
        ("fail", json!({ "error": "no", "retryable": false }))
    };
    assert_eq!(
        app.runtime(token, &format!("/tasks/{id}/{what}"), body)
            .await
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn figures_match_a_known_set_of_tasks() {
    let app = spawn_app().await;
    let admin = app.new_user().await;
    let user = app.new_user().await;
    let stranger = app.new_user().await;
    let (worker, token) = app.register_agent(&user, "worker", &["general"]).await;
    app.register_agent(&user, "idle", &["general"]).await;

    for i in 0..6 {
        app.submit_query(&user, &format!("t{i}")).await;
    }
    // Oldest first: three completions of 100/200/300 ms, one failure, one left queued,
    // one canceled.
    run_one(&app, &token, 100, true).await;
    run_one(&app, &token, 200, true).await;
    run_one(&app, &token, 300, true).await;
    run_one(&app, &token, 0, false).await;
    let (_, list) = app
        .get("/api/v1/tasks?status=queued", Some(&user.token))
        .await;
    let newest = list["tasks"][0]["id"].as_str().unwrap().to_owned();
    app.delete(&format!("/api/v1/tasks/{newest}"), Some(&user.token))
        .await;

    let (status, s) = app
        .get("/api/v1/analytics/summary?window=1h", Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let tasks = &s["tasks"];
    assert_eq!(tasks["total"], 6);
    assert_eq!(
        tasks["by_status"],
        json!({ "queued": 1, "running": 0, "completed": 3, "failed": 1, "canceled": 1 })
    );
    assert_eq!(tasks["success_rate"], 0.75);
    assert!((tasks["throughput_per_min"].as_f64().unwrap() - 3.0 / 60.0).abs() < 1e-9);
    let p = |k: &str| tasks["duration_ms"][k].as_i64().unwrap();
    assert!((200..1200).contains(&p("p50")), "p50 {}", p("p50"));
    assert!(
        (300..1500).contains(&p("p95")) && p("p95") == p("p99"),
        "{}",
        tasks["duration_ms"]
    );
    assert!(p("p50") < p("p95"));
    let sum = |k: &str| {
        s["timeseries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b[k].as_u64().unwrap())
            .sum::<u64>()
    };
    assert_eq!(
        (sum("submitted"), sum("completed"), sum("failed")),
        (6, 3, 1)
    );
    assert_eq!(s["agents"], json!({ "total": 2, "online": 1 }));
    let top: &Value = &s["top_agents"][0];
    assert_eq!(top["agent_id"], worker["id"]);
    assert_eq!(top["name"], "worker");
    assert_eq!(top["completed"], 3);
    assert_eq!(top["success_rate"], 0.75);
    assert!(
        (200..1200).contains(&top["avg_ms"].as_i64().unwrap()),
        "{top}"
    );
    assert_eq!(s["top_agents"].as_array().unwrap().len(), 1);

    // Another user sees only their own (none); an admin sees everyone's.
    let (_, theirs) = app
        .get("/api/v1/analytics/summary?window=1h", Some(&stranger.token))
        .await;
    assert_eq!(theirs["tasks"]["total"], 0);
    assert!(theirs["top_agents"].as_array().unwrap().is_empty());
    // The user's two agents are private: the stranger does not count them.
    assert_eq!(theirs["agents"], json!({ "total": 0, "online": 0 }));
    let (_, all) = app
        .get("/api/v1/analytics/summary?window=7d", Some(&admin.token))
        .await;
    assert_eq!(all["tasks"]["total"], 6);
    assert_eq!(all["agents"]["total"], 2);
}

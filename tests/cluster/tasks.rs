//! Tasks across nodes: a task submitted on A, claimed by an agent long-polling C, streams
//! its `task_update`s to the owner's client on B, and the long poll on C is woken by the
//! submit on A (CONTRACT.md "Running": "an agent long-polling one node is woken by a
//! submit on another").

use crate::cluster::Cluster;
use serde_json::json;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_submitted_on_a_and_claimed_on_c_streams_its_updates_to_the_owner_on_b() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let owner = a.new_user().await;
    let (_, agent_token) = a.register_agent(&owner, "cluster-agent").await;
    let (mut ws, _) = b.ws(&owner.token).await;

    // The agent parks a 30 s long poll on C before anything is queued.
    let poll = {
        let (c, token) = (c.api.clone(), agent_token.clone());
        tokio::spawn(async move {
            let answer = c
                .post(
                    "/api/v1/runtime/claim",
                    Some(&token),
                    json!({ "wait_s": 30 }),
                )
                .await;
            (answer, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let submitted_at = Instant::now();
    let id = a.submit_query(&owner, "cross-node work").await;
    let ((status, claimed), answered_at) = poll.await.expect("long poll");
    assert_eq!(
        status,
        200,
        "the long poll on C must be woken by the submit on A: {claimed}\n{}",
        cluster.logs()
    );
    assert_eq!(claimed["task"]["id"], id.as_str());
    // Woken, not timed out: a generous bound well under the poll's own 30 s.
    assert!(
        answered_at.duration_since(submitted_at) < Duration::from_secs(20),
        "the claim answered {:?} after the submit",
        answered_at.duration_since(submitted_at)
    );

    // The agent works on C; the owner on B sees every step, in order.
    let runtime = |path: String, body: serde_json::Value| {
        let (c, token) = (c.api.clone(), agent_token.clone());
        async move {
            let (status, body) = c
                .post(&format!("/api/v1/runtime{path}"), Some(&token), body)
                .await;
            assert_eq!(status, 200, "runtime {path}: {body}");
        }
    };
    runtime(
        format!("/tasks/{id}/progress"),
        json!({ "progress": 50, "message": "half" }),
    )
    .await;
    runtime(
        format!("/tasks/{id}/complete"),
        json!({ "result": "done on C" }),
    )
    .await;

    let mut statuses = Vec::new();
    let mut progress = Vec::new();
    while statuses.last().map(String::as_str) != Some("completed") {
        let update = ws
            .next_of("task_update", |d| d["task_id"] == id.as_str())
            .await;
        let data = &update["data"];
        statuses.push(data["status"].as_str().unwrap_or_default().to_owned());
        progress.push(data["progress"].clone());
    }
    statuses.dedup();
    assert_eq!(
        statuses,
        ["queued", "running", "completed"],
        "the owner on B sees the task's life in order"
    );
    assert!(
        progress.iter().any(|p| p == 50),
        "the progress report on C reaches B: {progress:?}"
    );
    let (status, task) = b
        .get(&format!("/api/v1/tasks/{id}"), Some(&owner.token))
        .await;
    assert_eq!(status, 200);
    assert_eq!(task["status"], "completed", "{task}");
}

//! Crash consistency (issue 9, transactional publish): a store change and the
//! `task_update` announcing it must commit together. Agents work through thousands of
//! tasks over HTTP while the server is SIGKILLed and restarted dozens of times; at the
//! end every task's stored status must equal the status of the last `task_update` for
//! it in the message history (read by resuming a WebSocket from the start of history).
//! Before the outbox, a kill between the store write and the publish left tasks
//! `completed` whose last update said `running`, forever.

use crate::helpers::{spawn_app_with, AppOptions, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TASKS: usize = 2_000;
const AGENT_LOOPS: usize = 8;
const KILLS: usize = 30;
/// Per request: a request to a dead server fails fast (connection refused); one caught
/// by a kill mid-flight fails when the socket closes.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// Generous: the machine is shared and the build is a debug one.
const FINISH_WITHIN: Duration = Duration::from_secs(600);

/// One agent's loop over the runtime API: claim a few, report progress, complete.
/// Every failure (the server is down, or the task was taken back after a lease ran
/// out) is shrugged off and the loop goes on, as a real agent would across restarts.
async fn agent_loop(base: String, token: String, stop: Arc<AtomicBool>, done: Arc<AtomicU64>) {
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .expect("client");
    let post = |path: String, body: Value| {
        let request = client
            .post(format!("{base}/api/v1/runtime{path}"))
            .bearer_auth(&token)
            .json(&body);
        async move {
            let response = request.send().await.ok()?;
            let status = response.status();
            let body = response.json::<Value>().await.unwrap_or(Value::Null);
            Some((status, body))
        }
    };
    while !stop.load(Ordering::Relaxed) {
        let claimed = match post("/claim".into(), json!({ "wait_s": 1, "max_tasks": 4 })).await {
            Some((StatusCode::OK, body)) => body["tasks"].as_array().cloned().unwrap_or_default(),
            _ => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        for task in claimed {
            let id = task["id"].as_str().expect("task id").to_owned();
            let progress = post(format!("/tasks/{id}/progress"), json!({ "progress": 50 })).await;
            if !matches!(progress, Some((StatusCode::OK, _))) {
                continue;
            }
            // Retried while the server is down: the outcome must not depend on whether
            // the answer to a completion that was committed got lost in a crash.
            for _ in 0..200 {
                match post(
                    format!("/tasks/{id}/complete"),
                    json!({ "result": { "ok": true } }),
                )
                .await
                {
                    Some((StatusCode::OK, _)) => {
                        done.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    Some(_) => break,
                    None => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
    }
}

/// Every task of `user`, id → status, through the paged list.
async fn stored_statuses(
    app: &crate::helpers::TestApp,
    user: &TestUser,
) -> HashMap<String, String> {
    let mut statuses = HashMap::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/tasks?limit=200&cursor={c}"),
            None => "/api/v1/tasks?limit=200".to_owned(),
        };
        let (status, page) = app.get(&path, Some(&user.token)).await;
        assert_eq!(status, StatusCode::OK, "list tasks: {page}");
        for task in page["tasks"].as_array().expect("tasks") {
            statuses.insert(
                task["id"].as_str().unwrap().to_owned(),
                task["status"].as_str().unwrap().to_owned(),
            );
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return statuses,
        }
    }
}

/// The status in the last `task_update` of each task, from the whole history: a
/// WebSocket resuming from `<epoch>-0`, read until its `resumed` message.
async fn announced_statuses(
    app: &crate::helpers::TestApp,
    user: &TestUser,
) -> HashMap<String, String> {
    let (probe, welcome) = app.ws(&user.token).await;
    probe.close().await;
    let newest = welcome["data"]["cursor"]
        .as_str()
        .expect("cursor")
        .to_owned();
    let epoch = newest
        .rsplit_once('-')
        .expect("epoch-seq cursor")
        .0
        .to_owned();
    let (mut ws, _) = app.ws_since(&user.token, &format!("{epoch}-0")).await;
    let mut statuses = HashMap::new();
    loop {
        let m = ws.next().await;
        match m["type"].as_str() {
            Some("task_update") => {
                statuses.insert(
                    m["data"]["task_id"].as_str().unwrap().to_owned(),
                    m["data"]["status"].as_str().unwrap().to_owned(),
                );
            }
            Some("resumed") => return statuses,
            Some("reset") => panic!("the history could not be replayed: {m}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkilled_dozens_of_times_the_store_and_the_history_never_disagree() {
    let mut app = spawn_app_with(AppOptions {
        extra_args: vec![
            // A task whose claim or progress answer died with the server comes back soon.
            "--task-lease-s".into(),
            "2".into(),
            "--retry-backoff-base-ms".into(),
            "50".into(),
            // Keep the whole history for the final comparison.
            "--history-max-per-user".into(),
            "1000000".into(),
        ],
        ..AppOptions::default()
    })
    .await;
    let user = app.new_user().await;
    let mut tokens = Vec::new();
    for n in 0..AGENT_LOOPS {
        tokens.push(
            app.register_agent(&user, &format!("crash-{n}"), &["general"])
                .await
                .1,
        );
    }
    // Submitted up front, in parallel; enough attempts that lost leases rarely fail one
    // (a failed task is fine too: it only has to be announced as failed).
    let submitters: Vec<_> = (0..4)
        .map(|s| {
            let (client, url, token) = (
                app.client.clone(),
                app.url("/api/v1/tasks/submit"),
                user.token.clone(),
            );
            tokio::spawn(async move {
                for n in (s..TASKS).step_by(4) {
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "query": format!("crash task {n}"), "max_attempts": 10 }))
                        .send()
                        .await
                        .expect("submit");
                    assert_eq!(response.status(), StatusCode::ACCEPTED);
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.unwrap();
    }

    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let agents: Vec<_> = tokens
        .into_iter()
        .map(|token| {
            tokio::spawn(agent_loop(
                app.address.clone(),
                token,
                stop.clone(),
                done.clone(),
            ))
        })
        .collect();

    // Kill while the agents work: at varying moments, so kills land inside every kind
    // of request (claim, progress, complete) and inside the reaper's passes.
    for kill in 0..KILLS {
        let pause = 150 + (kill * 97) % 500;
        tokio::time::sleep(Duration::from_millis(pause as u64)).await;
        app.crash_restart().await;
    }

    // Then let the agents finish everything (leases of tasks whose claim answer was
    // lost run out and the tasks come back).
    crate::helpers::eventually(FINISH_WITHIN, Duration::from_millis(500), async || {
        let statuses = stored_statuses(&app, &user).await;
        let unfinished = statuses
            .values()
            .filter(|s| !matches!(s.as_str(), "completed" | "failed"))
            .count();
        if statuses.len() == TASKS && unfinished == 0 {
            return Ok(());
        }
        Err(format!(
            "{unfinished} of {} tasks unfinished ({} completions answered)",
            statuses.len(),
            done.load(Ordering::Relaxed)
        ))
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for agent in agents {
        agent.await.unwrap();
    }

    let stored = stored_statuses(&app, &user).await;
    let announced = announced_statuses(&app, &user).await;
    let disagreeing: Vec<String> = stored
        .iter()
        .filter(|(id, status)| announced.get(*id) != Some(*status))
        .map(|(id, status)| {
            format!(
                "{id}: stored {status}, last announced {:?}",
                announced.get(id)
            )
        })
        .collect();
    assert!(
        disagreeing.is_empty(),
        "{} of {} tasks disagree with their last task_update:\n{}",
        disagreeing.len(),
        stored.len(),
        disagreeing.join("\n")
    );
}

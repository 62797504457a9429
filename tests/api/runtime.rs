//! The agent runtime and the reference agent `zerostate agent run`: full lifecycle with
//! progress over the WebSocket, failure, cancel, lease expiry, racing agents, restart,
//! priority order, timeout, long-poll wake-up, and the built-in agent.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// A command that reports progress in three steps and answers with the query in
/// capitals.
const STEPPED: &str = "q=$(cat); echo PROGRESS 25; sleep 0.3; echo PROGRESS 50; sleep 0.3; \
                       echo PROGRESS 75; sleep 0.3; printf 'upper: %s\\n' \"$(printf %s \"$q\" | tr a-z A-Z)\"";

#[tokio::test]
async fn reference_agent_runs_a_task_with_progress_seen_live_by_its_owner() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (agent, token) = app.register_agent(&user, "shell", &["general"]).await;
    let (mut ws, _) = app.ws(&user.token).await;
    let mut process = app.spawn_agent(&token, STEPPED, 1);

    let id = app.submit_query(&user, "hello world").await;
    // Every task_update for this task, in order, until it completes.
    let mut updates: Vec<Value> = Vec::new();
    loop {
        let update = ws
            .next_of("task_update", |d| d["task_id"] == id.as_str())
            .await;
        let finished = update["status"] != "queued" && update["status"] != "running";
        updates.push(update);
        if finished {
            break;
        }
    }
    let statuses: Vec<&str> = updates
        .iter()
        .map(|u| u["status"].as_str().unwrap())
        .collect();
    let progress: Vec<u64> = updates
        .iter()
        .map(|u| u["progress"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses.first(), Some(&"queued"), "{updates:?}");
    assert_eq!(
        statuses.last(),
        Some(&"completed"),
        "{updates:?}\n{}",
        process.log()
    );
    for step in [25, 50, 75, 100] {
        assert!(
            progress.contains(&step),
            "progress {step} missing: {progress:?}"
        );
    }
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress out of order: {progress:?}"
    );
    let last = updates.last().unwrap();
    assert_eq!(last["result"], "upper: HELLO WORLD");
    assert_eq!(last["agent_id"], agent["id"]);
    assert_eq!(last["query"], "hello world");

    let (status, result) = app
        .get(&format!("/api/v1/tasks/{id}/result"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["status"], "completed");
    assert_eq!(result["result"], "upper: HELLO WORLD");
    assert!(result["error"].is_null());
    let ms = result["duration_ms"].as_i64().unwrap();
    assert!((800..20_000).contains(&ms), "duration_ms {ms}");

    let task = app.task(&user, &id).await;
    assert_eq!(task["attempts"], 1);
    assert_eq!(task["progress"], 100);
    let (_, agent_now) = app
        .get(
            &format!("/api/v1/agents/{}", agent["id"].as_str().unwrap()),
            Some(&user.token),
        )
        .await;
    assert_eq!(agent_now["tasks_completed"], 1);
    assert_eq!(agent_now["status"], "online");
    assert!(agent_now["last_seen_at"].is_string());
    assert_eq!(
        process.stop().await,
        Some(0),
        "agent should exit cleanly on SIGTERM:\n{}",
        process.log()
    );
}

#[tokio::test]
async fn a_non_zero_exit_fails_the_task_with_the_end_of_stderr() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "failing", &["general"]).await;
    let _process = app.spawn_agent(
        &token,
        "echo partial; echo 'boom: disk on fire' >&2; exit 3",
        1,
    );
    let id = app.submit_query(&user, "anything").await;
    let task = app.wait_task(&user, &id, |t| t["status"] == "failed").await;
    let error = task["error"].as_str().unwrap();
    assert!(
        error.contains("status 3") && error.contains("boom: disk on fire"),
        "{error}"
    );
    assert_eq!(task["attempts"], 1, "a non-zero exit is not retried");
    let (status, result) = app
        .get(&format!("/api/v1/tasks/{id}/result"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(result["status"], "failed");
    assert!(result["result"].is_null());
}

#[tokio::test]
async fn canceling_a_running_task_stops_the_agents_command() {
    let app = TestApp::with_lease(3).await; // renewals every second
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "sleeper", &["general"]).await;
    let pid_file = app.data_dir().join("cmd.pid");
    let cmd = format!(
        "echo $$ > {}; echo PROGRESS 10; sleep 60; echo never",
        pid_file.display()
    );
    let process = app.spawn_agent(&token, &cmd, 1);
    let id = app.submit_query(&user, "long job").await;
    app.wait_task(&user, &id, |t| t["progress"] == 10).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(process_alive(pid));

    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{id}/cancel"),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({ "task_id": id, "status": "canceled" }));

    wait_gone(pid, Duration::from_secs(10), || {
        format!("the command still runs after cancel:\n{}", process.log())
    })
    .await;
    let task = app.task(&user, &id).await;
    assert_eq!(task["status"], "canceled");
    assert!(task["result"].is_null());
    // Finished tasks cannot be canceled again, by either route.
    let (status, body) = app
        .delete(&format!("/api/v1/tasks/{id}"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[tokio::test]
async fn the_runtime_answers_409_canceled_to_the_agent_of_a_canceled_task() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "manual", &["general"]).await;
    let id = app.submit_query(&user, "x").await;
    let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 0 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["id"], id.as_str());
    let (status, _) = app
        .delete(&format!("/api/v1/tasks/{id}"), Some(&user.token))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .runtime(
            &token,
            &format!("/tasks/{id}/progress"),
            json!({ "progress": 50 }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("canceled"))
    );
    let (status, body) = app
        .runtime(
            &token,
            &format!("/tasks/{id}/complete"),
            json!({ "result": "late" }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("canceled"))
    );
}

#[tokio::test]
async fn a_killed_agents_task_is_requeued_and_completed_by_another_agent() {
    let app = TestApp::with_lease(2).await;
    let user = app.new_user().await;
    let (first, first_token) = app.register_agent(&user, "doomed", &["general"]).await;
    let (second, second_token) = app.register_agent(&user, "survivor", &["general"]).await;
    let pid_file = app.data_dir().join("doomed.pid");
    let cmd = format!(
        "echo $$ > {}; echo PROGRESS 5; sleep 60",
        pid_file.display()
    );
    let mut doomed = app.spawn_agent(&first_token, &cmd, 1);
    let id = app.submit_query(&user, "survive me").await;
    let running = app.wait_task(&user, &id, |t| t["progress"] == 5).await;
    assert_eq!(running["agent_id"], first["id"]);
    assert_eq!(running["attempts"], 1);

    doomed.kill().await;
    // The orphaned command would otherwise sleep on; it is not what is tested here.
    if let Ok(pid) = std::fs::read_to_string(&pid_file) {
        if let Ok(pid) = pid.trim().parse() {
            kill_process_group(pid);
        }
    }
    let requeued = app.wait_task(&user, &id, |t| t["status"] == "queued").await;
    assert_eq!(requeued["attempts"], 1);

    let _survivor = app.spawn_agent(&second_token, "echo recovered", 1);
    let done = app.wait_status(&user, &id, "completed").await;
    assert_eq!(done["attempts"], 2, "{done}");
    assert_eq!(done["agent_id"], second["id"]);
    assert_eq!(done["result"], "recovered");
}

#[tokio::test]
async fn a_task_lost_three_times_fails_with_a_clear_error() {
    let app = TestApp::with_lease(1).await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "flaky", &["general"]).await;
    let id = app.submit_query(&user, "cursed").await;
    for attempt in 1..=3 {
        // Claim and then go silent, like an agent that dies each time.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 5 })).await;
            if status == StatusCode::OK {
                assert_eq!(claim["task"]["attempt"], attempt, "{claim}");
                break;
            }
            assert!(Instant::now() < deadline, "task was not re-queued");
        }
    }
    let task = app.wait_status(&user, &id, "failed").await;
    assert_eq!(task["error"], "agent lost the task 3 times");
    assert_eq!(task["attempts"], 3);
}

#[tokio::test]
async fn two_agents_racing_for_200_tasks_run_each_exactly_once() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token_a) = app.register_agent(&user, "racer a", &["general"]).await;
    let (_, token_b) = app.register_agent(&user, "racer b", &["general"]).await;
    let runs = app.data_dir().join("runs.log");
    // One short line per run, appended (O_APPEND writes this small are atomic).
    let cmd = format!("echo \"$ZEROSTATE_TASK_ID\" >> {}; echo ok", runs.display());
    let _a = app.spawn_agent(&token_a, &cmd, 4);
    let _b = app.spawn_agent(&token_b, &cmd, 4);

    let mut submitted = HashSet::new();
    for i in 0..200 {
        submitted.insert(app.submit_query(&user, &format!("task {i}")).await);
    }
    eventually(
        Duration::from_secs(120),
        Duration::from_millis(200),
        async || {
            let (_, page) = app
                .get(
                    "/api/v1/tasks?status=completed&limit=200",
                    Some(&user.token),
                )
                .await;
            if page["tasks"].as_array().unwrap().len() == 200 {
                return Ok(());
            }
            Err(format!(
                "not all tasks completed: {}",
                page["tasks"].as_array().unwrap().len()
            ))
        },
    )
    .await;
    let (_, page) = app.get("/api/v1/tasks?limit=200", Some(&user.token)).await;
    let tasks = page["tasks"].as_array().unwrap();
    assert!(
        tasks
            .iter()
            .all(|t| t["attempts"] == 1 && t["result"] == "ok"),
        "a task was retried or failed"
    );
    let lines: Vec<String> = std::fs::read_to_string(&runs)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    let ran: HashSet<String> = lines.iter().cloned().collect();
    assert_eq!(lines.len(), 200, "some task ran twice (or was lost)");
    assert_eq!(
        ran, submitted,
        "the set of runs differs from the set of tasks"
    );
    let agents: HashSet<&str> = tasks
        .iter()
        .map(|t| t["agent_id"].as_str().unwrap())
        .collect();
    assert_eq!(agents.len(), 2, "both agents should have taken tasks");
}

#[tokio::test]
async fn a_restart_keeps_queued_tasks_and_the_running_one_completes() {
    let mut app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "steady", &["general"]).await;
    let process = app.spawn_agent(&token, "echo PROGRESS 10; sleep 3; echo finished", 1);
    let ids: Vec<String> = vec![
        app.submit_query(&user, "one").await,
        app.submit_query(&user, "two").await,
        app.submit_query(&user, "three").await,
    ];
    app.wait_task(&user, &ids[0], |t| t["progress"] == 10).await;
    assert_eq!(app.task(&user, &ids[1]).await["status"], "queued");

    app.restart().await;
    // Sessions are stored, so the same token still works after the restart.
    assert_eq!(app.task(&user, &ids[2]).await["status"], "queued");
    for id in &ids {
        let task = app.wait_status(&user, id, "completed").await;
        assert_eq!(task["result"], "finished", "{task}\n{}", process.log());
        assert_eq!(
            task["attempts"], 1,
            "the agent reconnected and kept its lease: {task}"
        );
    }
}

#[tokio::test]
async fn a_restart_recovers_a_running_task_whose_agent_died_with_it() {
    let mut app = TestApp::with_lease(2).await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "manual", &["general"]).await;
    let id = app.submit_query(&user, "orphan").await;
    let (status, _) = app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    app.kill().await;
    app.restart().await;
    let task = app.wait_status(&user, &id, "queued").await;
    assert_eq!(task["attempts"], 1);
    let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 1 })).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["attempt"], 2);
}

#[tokio::test]
async fn claims_follow_priority_then_age() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "picker", &["general"]).await;
    let mut by_name = std::collections::HashMap::new();
    for (name, priority) in [
        ("low", "low"),
        ("normal 1", "normal"),
        ("high", "high"),
        ("critical", "critical"),
        ("normal 2", "normal"),
        ("default", ""),
    ] {
        let body = if priority.is_empty() {
            json!({ "query": name })
        } else {
            json!({ "query": name, "priority": priority })
        };
        let task = app.submit(&user, body).await;
        by_name.insert(task["id"].as_str().unwrap().to_owned(), name);
    }
    let mut order = Vec::new();
    loop {
        let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 0 })).await;
        if status == StatusCode::NO_CONTENT {
            break;
        }
        order.push(by_name[claim["task"]["id"].as_str().unwrap()]);
    }
    assert_eq!(
        order,
        ["critical", "high", "normal 1", "normal 2", "default", "low"]
    );
}

#[tokio::test]
async fn a_task_that_runs_too_long_fails_and_its_command_is_stopped() {
    let app = TestApp::with_lease(3).await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "slow", &["general"]).await;
    let pid_file = app.data_dir().join("slow.pid");
    let cmd = format!(
        "echo $$ > {}; echo PROGRESS 1; sleep 60",
        pid_file.display()
    );
    let _process = app.spawn_agent(&token, &cmd, 1);
    let task = app
        .submit(&user, json!({ "query": "forever", "timeout_s": 1 }))
        .await;
    let id = task["id"].as_str().unwrap();
    let failed = app.wait_status(&user, id, "failed").await;
    assert_eq!(failed["error"], "timed out after 1 s");
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_gone(pid, Duration::from_secs(10), || {
        "the timed-out command still runs".to_owned()
    })
    .await;
}

#[tokio::test]
async fn a_waiting_claim_gets_a_new_task_within_milliseconds() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "waiter", &["general"]).await;
    let claim = {
        let (client, url, token) = (
            app.client.clone(),
            app.url("/api/v1/runtime/claim"),
            token.clone(),
        );
        tokio::spawn(async move {
            let response = client
                .post(url)
                .bearer_auth(token)
                .json(&json!({ "wait_s": 20 }))
                .send()
                .await
                .unwrap();
            let status = response.status();
            (
                status,
                Instant::now(),
                response.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let submitted_at = Instant::now();
    let id = app.submit_query(&user, "wake up").await;
    let (status, answered_at, body) = claim.await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["task"]["id"], id.as_str());
    let waited = answered_at.duration_since(submitted_at);
    assert!(
        waited < Duration::from_millis(500),
        "claim answered {waited:?} after the submit"
    );
    assert!(
        body["task"]["lease_expires_at"].is_string() && body["task"]["attempt"] == 1,
        "{body}"
    );
}

#[tokio::test]
async fn claims_respect_capabilities_and_targeted_agents() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (text, text_token) = app.register_agent(&user, "texter", &["text"]).await;
    let (_, general_token) = app
        .register_agent(&user, "generalist", &["general", "text"])
        .await;
    let text_task = app
        .submit(
            &user,
            json!({ "query": "t", "capability": "text", "agent_id": text["id"] }),
        )
        .await;
    let general_task = app.submit(&user, json!({ "query": "g" })).await;
    // The generalist may not take the task reserved for the texter.
    let (status, claim) = app.runtime(&general_token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["id"], general_task["id"]);
    assert_eq!(
        app.runtime(&general_token, "/claim", json!({})).await.0,
        StatusCode::NO_CONTENT
    );
    let (status, claim) = app.runtime(&text_token, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(claim["task"]["id"], text_task["id"]);
    assert_eq!(claim["task"]["capability"], "text");

    let missing = uuid::Uuid::new_v4().to_string();
    let (status, body) = app
        .post(
            "/api/v1/tasks/submit",
            Some(&user.token),
            json!({ "query": "q", "agent_id": missing }),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _) = app
        .post(
            "/api/v1/tasks/submit",
            Some(&user.token),
            json!({ "query": "q", "agent_id": "nope" }),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = app
        .post(
            "/api/v1/tasks/submit",
            Some(&user.token),
            json!({ "query": "q", "agent_id": text["id"] }),
        )
        .await;
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "the texter cannot run `general` tasks"
    );
}

#[tokio::test]
async fn runtime_calls_check_the_agent_and_the_task_state() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "one", &["general"]).await;
    let (_, other_token) = app.register_agent(&user, "two", &["general"]).await;
    assert_eq!(
        app.runtime("zsa_nope", "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.runtime(&user.token, "/claim", json!({})).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.runtime(&token, "/claim", json!({ "wait_s": 31 }))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.runtime(&token, "/claim", json!({ "wait_s": 0 }))
            .await
            .0,
        StatusCode::NO_CONTENT
    );

    let id = app.submit_query(&user, "json please").await;
    let (_, claim) = app.runtime(&token, "/claim", json!({})).await;
    assert_eq!(claim["task"]["id"], id.as_str());
    let path = |what: &str| format!("/tasks/{id}/{what}");
    assert_eq!(
        app.runtime(&other_token, &path("progress"), json!({ "progress": 5 }))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.runtime(&token, &path("progress"), json!({ "progress": 101 }))
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = app
        .runtime(
            &token,
            &path("progress"),
            json!({ "progress": 40, "message": "halfway" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["lease_expires_at"].is_string());
    assert_eq!(app.task(&user, &id).await["progress"], 40);
    let (status, _) = app
        .runtime(
            &token,
            &path("complete"),
            json!({ "result": { "answer": 42, "list": [1, 2] } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let task = app.task(&user, &id).await;
    assert_eq!(task["result"], json!({ "answer": 42, "list": [1, 2] }));
    let (status, body) = app
        .runtime(&token, &path("progress"), json!({ "progress": 50 }))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        app.runtime(&token, &path("fail"), json!({ "error": "late" }))
            .await
            .0,
        StatusCode::CONFLICT
    );
}

#[tokio::test]
async fn a_retryable_failure_requeues_until_the_third_attempt() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "retrier", &["general"]).await;
    let id = app.submit_query(&user, "try hard").await;
    for attempt in 1..=3 {
        // A retry waits out a backoff (up to 1 s, then 2 s): a waiting claim gets it.
        let (status, claim) = app.runtime(&token, "/claim", json!({ "wait_s": 10 })).await;
        assert_eq!(status, StatusCode::OK, "attempt {attempt}");
        assert_eq!(claim["task"]["attempt"], attempt);
        let (status, body) = app
            .runtime(
                &token,
                &format!("/tasks/{id}/fail"),
                json!({ "error": format!("flake {attempt}"), "retryable": true }),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            body["status"],
            if attempt < 3 { "queued" } else { "failed" }
        );
    }
    let task = app.task(&user, &id).await;
    assert_eq!(
        (task["status"].as_str(), task["error"].as_str()),
        (Some("failed"), Some("flake 3"))
    );
}

#[tokio::test]
async fn the_builtin_agent_completes_a_new_users_first_task() {
    let app = spawn_app_with(AppOptions {
        builtin_agent: true,
        ..AppOptions::default()
    })
    .await;
    let user = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;
    let query = "Rust makes systems programming safe. The borrow checker rejects data races. \
                 Cargo builds Rust projects. Lunch was pleasant.";
    let id = app.submit_query(&user, query).await;
    let mut progress = Vec::new();
    let done = loop {
        let update = ws
            .next_of("task_update", |d| d["task_id"] == id.as_str())
            .await;
        progress.push(update["progress"].as_u64().unwrap());
        if update["status"] == "completed" || update["status"] == "failed" {
            break update;
        }
    };
    assert_eq!(done["status"], "completed", "{done}");
    for step in [10, 40, 70, 100] {
        assert!(progress.contains(&step), "{progress:?}");
    }
    let task = app.task(&user, &id).await;
    let result = &task["result"];
    assert_eq!(result["statistics"]["sentences"], 4);
    assert_eq!(result["keywords"][0]["word"], "rust");
    assert!(result["summary"].as_str().unwrap().contains("Rust"));

    let (_, agents) = app
        .get("/api/v1/agents?capability=text", Some(&user.token))
        .await;
    let builtin = &agents["agents"][0];
    assert_eq!(builtin["capabilities"], json!(["general", "text"]));
    assert_eq!(builtin["status"], "online");
    assert_eq!(task["agent_id"], builtin["id"]);
}

#[tokio::test]
async fn a_stopped_agent_hands_its_running_task_back_at_once() {
    let app = spawn_app().await; // 30 s lease: a quick re-queue cannot be lease expiry
    let user = app.new_user().await;
    let (agent, token) = app.register_agent(&user, "polite", &["general"]).await;
    let pid_file = app.data_dir().join("polite.pid");
    let cmd = format!(
        "echo $$ > {}; echo PROGRESS 30; sleep 60",
        pid_file.display()
    );
    let mut process = app.spawn_agent(&token, &cmd, 1);
    let id = app.submit_query(&user, "interrupted").await;
    app.wait_task(&user, &id, |t| t["progress"] == 30).await;
    let pid: u32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();

    let started = Instant::now();
    assert_eq!(process.stop().await, Some(0), "{}", process.log());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        started.elapsed()
    );
    assert!(!process_alive(pid), "the command outlived its agent");
    let task = app.wait_status(&user, &id, "queued").await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        task["error"].is_null(),
        "a clean stop is no failure: {task}"
    );
    assert_eq!(task["attempts"], 0, "a hand-back uses no attempt: {task}");
    let (_, attempts) = app
        .get(&format!("/api/v1/tasks/{id}/attempts"), Some(&user.token))
        .await;
    assert_eq!(
        attempts["attempts"][0]["outcome"], "handed_back",
        "{attempts}"
    );
    let (_, agent) = app
        .get(
            &format!("/api/v1/agents/{}", agent["id"].as_str().unwrap()),
            Some(&user.token),
        )
        .await;
    assert_eq!(
        agent["status"], "offline",
        "a stopped agent is offline at once"
    );
}

#[tokio::test]
async fn an_idle_reference_agent_stopped_with_sigterm_is_offline_at_once() {
    // A silence window far beyond the test: only the agent's own stop can explain an
    // offline status.
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--agent-offline-after-s".into(), "600".into()],
        ..Default::default()
    })
    .await;
    let user = app.new_user().await;
    let (mut ws, _) = app.ws(&user.token).await;
    let (agent, token) = app.register_agent(&user, "idle", &["idle"]).await;
    let id = agent["id"].as_str().unwrap().to_owned();
    let of_agent = |d: &Value| d["agent_id"] == id.as_str();
    let mut process = app.spawn_agent(&token, "cat", 2);
    ws.next_of("agent_update", |d| of_agent(d) && d["status"] == "online")
        .await;

    // Its two claims wait on the server; SIGTERM.
    assert_eq!(process.stop().await, Some(0), "{}", process.log());
    let offline = ws
        .next_of("agent_update", |d| of_agent(d) && d["status"] == "offline")
        .await;
    assert_eq!(offline["action"], "updated");
    let (_, read) = app
        .get(&format!("/api/v1/agents/{id}"), Some(&user.token))
        .await;
    assert_eq!(read["status"], "offline", "{read}");
    // Nothing was left waiting on the server for a process that is gone: a task
    // submitted now is not taken (a claim re-checks the queue every second).
    let task = app
        .submit(&user, json!({ "query": "after", "capability": "idle" }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.task(&user, &task).await["status"], "queued");
}

//! The terminal client (`zerostate tasks submit --follow`, `zerostate tasks watch`)
//! against a live server, with the test acting as the agent through the runtime API.

use crate::helpers::{spawn_app, TestApp, BIN};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::process::{Output, Stdio};
use std::time::Duration;
use tokio::process::{Child, Command};

/// Starts `zerostate tasks ARGS` with the server and API key in its environment.
fn cli(app: &TestApp, api_key: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .arg("tasks")
        .args(args)
        .env("ZEROSTATE_SERVER", &app.address)
        .env("ZEROSTATE_API_KEY", api_key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start zerostate tasks")
}

/// Waits for the command to exit and returns what it printed.
async fn finished(child: Child) -> Output {
    tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the client did not exit within 60 s")
        .expect("wait for the client")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Claims the next task as the agent (long polls until one comes).
async fn claim(app: &TestApp, agent: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = app.runtime(agent, "/claim", json!({ "wait_s": 5 })).await;
        if status == StatusCode::OK {
            return body["task"].clone();
        }
        assert_eq!(status, StatusCode::NO_CONTENT, "claim: {body}");
        assert!(
            tokio::time::Instant::now() < deadline,
            "no task to claim within 30 s"
        );
    }
}

/// Sends output chunks as the agent.
async fn output(app: &TestApp, agent: &str, id: &str, body: Value) {
    let (status, answer) = app
        .runtime(agent, &format!("/tasks/{id}/output"), body)
        .await;
    assert_eq!(status, StatusCode::OK, "output: {answer}");
}

/// A user, an API key and a registered agent (token) on a fresh server.
async fn setup() -> (TestApp, String, String) {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (key, _) = app.create_api_key(&user, "terminal client").await;
    let (_, agent) = app.register_agent(&user, "cli-agent", &["general"]).await;
    (app, key, agent)
}

#[tokio::test]
async fn follow_prints_the_whole_output_then_the_result_and_exits_0() {
    let (app, key, agent) = setup().await;
    let child = cli(
        &app,
        &key,
        &["submit", "write three hundred lines", "--follow"],
    );
    let task = claim(&app, &agent).await;
    assert_eq!(task["query"], "write three hundred lines");
    let id = task["id"].as_str().expect("task id").to_owned();

    // Streamed live while the client follows: three batches and a log line between.
    let mut expected = String::new();
    for batch in 0..3 {
        let chunks: Vec<Value> = (0..100)
            .map(|i| {
                let line = format!("line {}\n", batch * 100 + i);
                expected.push_str(&line);
                json!({ "text": line })
            })
            .collect();
        output(&app, &agent, &id, json!({ "chunks": chunks })).await;
        if batch == 0 {
            output(
                &app,
                &agent,
                &id,
                json!({ "text": "thinking…\n", "stream": "log" }),
            )
            .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    output(
        &app,
        &agent,
        &id,
        json!({ "text": "no newline at the end" }),
    )
    .await;
    expected.push_str("no newline at the end\n");
    let (status, body) = app
        .runtime(
            &agent,
            &format!("/tasks/{id}/complete"),
            json!({ "result": "the end" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "complete: {body}");

    let out = finished(child).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "stderr: {stderr}");
    assert_eq!(stdout, format!("{expected}the end\n"));
    assert!(
        stderr.contains("thinking…"),
        "log stream on stderr: {stderr}"
    );
    assert!(stderr.contains(&id), "the task id on stderr: {stderr}");
}

#[tokio::test]
async fn follow_exits_1_when_the_task_fails() {
    let (app, key, agent) = setup().await;
    let child = cli(
        &app,
        &key,
        &[
            "submit",
            "this will break",
            "--follow",
            "--priority",
            "high",
        ],
    );
    let task = claim(&app, &agent).await;
    let id = task["id"].as_str().expect("task id").to_owned();
    output(&app, &agent, &id, json!({ "text": "partial answer\n" })).await;
    let (status, body) = app
        .runtime(
            &agent,
            &format!("/tasks/{id}/fail"),
            json!({ "error": "the model crashed", "retryable": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "fail: {body}");

    let out = finished(child).await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert_eq!(stdout, "partial answer\n");
    assert!(
        stderr.contains("task failed: the model crashed"),
        "stderr: {stderr}"
    );
}

#[tokio::test]
async fn watch_replays_a_finished_task_and_a_canceled_one_exits_3() {
    let (app, key, agent) = setup().await;
    let user_task = {
        let out = finished(cli(&app, &key, &["submit", "count to two"])).await;
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout).trim().to_owned()
    };
    let task = claim(&app, &agent).await;
    assert_eq!(task["id"], user_task.as_str(), "submit prints the task id");
    let id = user_task;
    output(
        &app,
        &agent,
        &id,
        json!({ "chunks": [{ "text": "one " }, { "text": "two" }] }),
    )
    .await;
    let (status, body) = app
        .runtime(
            &agent,
            &format!("/tasks/{id}/complete"),
            json!({ "result": { "count": 2 } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "complete: {body}");

    let out = finished(cli(&app, &key, &["watch", &id])).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "one two\n{\n  \"count\": 2\n}\n");

    // A canceled task: non-zero, and not the failure status.
    let out = finished(cli(&app, &key, &["submit", "never mind"])).await;
    let canceled = text(&out.stdout).trim().to_owned();
    let (status, body) = app
        .post(
            &format!("/api/v1/tasks/{canceled}/cancel"),
            Some(&key),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "cancel: {body}");
    let out = finished(cli(&app, &key, &["watch", &canceled])).await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("task canceled"));
}

#[tokio::test]
async fn without_an_api_key_the_client_says_so() {
    let app = spawn_app().await;
    let out = finished(cli(&app, "", &["submit", "hello"])).await;
    assert_ne!(out.status.code(), Some(0));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("ZEROSTATE_API_KEY"), "stderr: {stderr}");
    let out = finished(cli(&app, "zs_not_a_key", &["submit", "hello"])).await;
    assert_ne!(out.status.code(), Some(0));
    assert!(text(&out.stderr).contains("401"), "{}", text(&out.stderr));
}

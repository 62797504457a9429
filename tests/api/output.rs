//! Task output (contract v2, "Task output" and the runtime `output` append): chunks
//! numbered gaplessly, paged with `?after=`, streamed as SSE from the start or from
//! `Last-Event-ID`, delivered live as `task_output`, limited, and streamed by the
//! reference agent from a shell command's stdout and stderr.

use crate::helpers::{eventually, spawn_app, spawn_app_with, AppOptions, TestApp, TestUser};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio::time::Instant;

const CHUNKS: u64 = 5000;
const BATCH: u64 = 50;

/// A user, an agent of theirs, and a task that agent is running.
async fn running_task(app: &TestApp) -> (TestUser, String, String) {
    let user = app.new_user().await;
    let (_, agent) = app.register_agent(&user, "streamer", &["general"]).await;
    let id = app.submit_query(&user, "stream something").await;
    let (status, body) = app.runtime(&agent, "/claim", json!({})).await;
    assert_eq!(status, StatusCode::OK, "claim: {body}");
    assert_eq!(body["task"]["id"], id.as_str());
    (user, agent, id)
}

fn chunk_text(seq: u64) -> String {
    format!("token {seq:05} ")
}

/// `GET …/output?after=` until it has nothing more (or `complete`), into `into`.
async fn fill(app: &TestApp, user: &TestUser, id: &str, into: &mut BTreeMap<u64, String>) -> bool {
    fill_counting(app, user, id, into, &mut 0).await
}

/// `fill`, counting the chunks it added in `added`.
async fn fill_counting(
    app: &TestApp,
    user: &TestUser,
    id: &str,
    into: &mut BTreeMap<u64, String>,
    added: &mut u64,
) -> bool {
    loop {
        let after = contiguous(into);
        let (status, page) = app
            .get(
                &format!("/api/v1/tasks/{id}/output?after={after}&limit=700"),
                Some(&user.token),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "page: {page}");
        let chunks = page["chunks"].as_array().expect("chunks");
        for c in chunks {
            let text = c["text"].as_str().unwrap().to_owned();
            if into.insert(c["seq"].as_u64().unwrap(), text).is_none() {
                *added += 1;
            }
        }
        if page["complete"] == true {
            return true;
        }
        if chunks.is_empty() {
            return false;
        }
        assert_eq!(page["next"], chunks.last().unwrap()["seq"]);
    }
}

/// The highest `seq` up to which nothing is missing.
fn contiguous(have: &BTreeMap<u64, String>) -> u64 {
    let mut n = 0;
    while have.contains_key(&(n + 1)) {
        n += 1;
    }
    n
}

/// Reads `…/output/stream` with a plain HTTP client until `end` (or the deadline);
/// returns the output events as (id, data) and the end event's data.
async fn read_stream(
    base: &str,
    token: &str,
    id: &str,
    last_event_id: Option<&str>,
) -> (Vec<(String, Value)>, Option<Value>) {
    let mut req = reqwest::Client::new()
        .get(format!("{base}/api/v1/tasks/{id}/output/stream"))
        .bearer_auth(token);
    if let Some(last) = last_event_id {
        req = req.header("last-event-id", last);
    }
    let mut response = req.send().await.expect("stream request");
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buffer = String::new();
    let mut outputs = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (mut event, mut event_id, mut data) = (None, None, None);
            for line in block.lines() {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value).to_owned();
                match field {
                    "event" => event = Some(value),
                    "id" => event_id = Some(value),
                    "data" => data = Some(serde_json::from_str::<Value>(&value).unwrap()),
                    _ => {}
                }
            }
            match (event.as_deref(), data) {
                (Some("output"), Some(data)) => outputs.push((event_id.expect("id"), data)),
                (Some("end"), Some(data)) => return (outputs, Some(data)),
                _ => {}
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, response.chunk()).await {
            Ok(Ok(Some(bytes))) => buffer.push_str(&String::from_utf8_lossy(&bytes)),
            _ => return (outputs, None),
        }
    }
}

#[tokio::test]
async fn five_thousand_chunks_arrive_in_order_across_three_dropped_connections() {
    let app = spawn_app().await;
    let (user, agent, id) = running_task(&app).await;

    // The agent: 5,000 chunks in batches of 50, paced so the watcher's drops fall
    // mid-stream, then complete.
    let writer = {
        let (url, client, agent, id) = (
            app.address.clone(),
            app.client.clone(),
            agent.clone(),
            id.clone(),
        );
        tokio::spawn(async move {
            for first in (1..=CHUNKS).step_by(BATCH as usize) {
                let chunks: Vec<Value> = (first..first + BATCH)
                    .map(|seq| json!({ "text": chunk_text(seq), "stream": if seq % 10 == 0 { "log" } else { "output" } }))
                    .collect();
                let resp = client
                    .post(format!("{url}/api/v1/runtime/tasks/{id}/output"))
                    .bearer_auth(&agent)
                    .json(&json!({ "chunks": chunks }))
                    .send()
                    .await
                    .expect("append");
                assert_eq!(resp.status(), StatusCode::OK);
                let body: Value = resp.json().await.unwrap();
                assert_eq!(
                    body["seq"],
                    first + BATCH - 1,
                    "seq is the last one written"
                );
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            let resp = client
                .post(format!("{url}/api/v1/runtime/tasks/{id}/complete"))
                .bearer_auth(&agent)
                .json(&json!({ "result": "done" }))
                .send()
                .await
                .expect("complete");
            assert_eq!(resp.status(), StatusCode::OK);
        })
    };

    // The watcher: live frames, three drops, gaps filled with `?after=`.
    let mut have: BTreeMap<u64, String> = BTreeMap::new();
    let mut drops = 0;
    let (mut live, mut paged) = (0u64, 0u64);
    let (mut ws, _) = app.ws(&user.token).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    while contiguous(&have) < CHUNKS {
        assert!(
            Instant::now() < deadline,
            "only {} chunks after 120 s",
            contiguous(&have)
        );
        let message = ws.next().await;
        if message["type"] == "task_update" && message["data"]["status"] == "completed" {
            // Nothing follows the end: whatever is still missing is read by page.
            fill_counting(&app, &user, &id, &mut have, &mut paged).await;
            continue;
        }
        if message["type"] != "task_output" {
            continue;
        }
        assert!(
            message.get("cursor").is_none(),
            "task_output carries no cursor: {message}"
        );
        let data = &message["data"];
        assert_eq!(data["task_id"], id.as_str());
        let seq = data["seq"].as_u64().unwrap();
        if seq > contiguous(&have) + 1 {
            fill_counting(&app, &user, &id, &mut have, &mut paged).await;
        }
        if have
            .insert(seq, data["text"].as_str().unwrap().to_owned())
            .is_none()
        {
            live += 1;
        }
        if drops < 3 && seq >= 1000 * (drops + 1) {
            drops += 1;
            drop(ws);
            tokio::time::sleep(Duration::from_millis(150)).await;
            ws = app.ws(&user.token).await.0;
            fill_counting(&app, &user, &id, &mut have, &mut paged).await;
        }
    }
    writer.await.unwrap();
    assert_eq!(drops, 3);
    assert!(
        live > 0 && paged > 0,
        "live {live}, paged {paged}: both paths were used"
    );
    assert_eq!(live + paged, CHUNKS, "no chunk counted twice");
    // After the task finished, the last page says so.
    app.wait_status(&user, &id, "completed").await;
    assert!(
        fill(&app, &user, &id, &mut have).await,
        "complete once finished"
    );
    let expected: Vec<String> = (1..=CHUNKS).map(chunk_text).collect();
    assert_eq!(
        have.keys().copied().collect::<Vec<_>>(),
        (1..=CHUNKS).collect::<Vec<_>>()
    );
    assert_eq!(have.values().cloned().collect::<Vec<_>>(), expected);

    let task = app.task(&user, &id).await;
    let bytes: usize = expected.iter().map(String::len).sum();
    assert_eq!(task["output_bytes"], bytes as u64);

    // The SSE stream from the start equals them, with `id` = seq and the stream kept.
    let (events, end) = read_stream(&app.address, &user.token, &id, None).await;
    assert_eq!(end, Some(json!({ "status": "completed" })));
    assert_eq!(events.len() as u64, CHUNKS);
    for (i, (event_id, data)) in events.iter().enumerate() {
        let seq = i as u64 + 1;
        assert_eq!(event_id, &seq.to_string());
        assert_eq!(data["seq"], seq);
        assert_eq!(data["text"], chunk_text(seq));
        assert_eq!(data["stream"], if seq % 10 == 0 { "log" } else { "output" });
    }

    // `Last-Event-ID` resumes after that chunk.
    let (events, end) = read_stream(&app.address, &user.token, &id, Some("4990")).await;
    assert_eq!(end, Some(json!({ "status": "completed" })));
    let ids: Vec<&str> = events.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(
        ids,
        (4991..=5000).map(|n| n.to_string()).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn the_stream_follows_live_output_and_ends_when_the_task_does() {
    let app = spawn_app().await;
    let (user, agent, id) = running_task(&app).await;
    let reader = {
        let (base, token, id) = (app.address.clone(), user.token.clone(), id.clone());
        tokio::spawn(async move { read_stream(&base, &token, &id, None).await })
    };
    // The reader is connected before anything is written: it follows live.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, text) in ["Hello", ", ", "world"].iter().enumerate() {
        let (status, body) = app
            .runtime(
                &agent,
                &format!("/tasks/{id}/output"),
                json!({ "text": text }),
            )
            .await;
        assert_eq!(
            (status, body["seq"].as_u64()),
            (StatusCode::OK, Some(i as u64 + 1))
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (status, _) = app
        .runtime(
            &agent,
            &format!("/tasks/{id}/output"),
            json!({ "text": "oops", "stream": "log" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .runtime(
            &agent,
            &format!("/tasks/{id}/fail"),
            json!({ "error": "boom", "retryable": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (events, end) = tokio::time::timeout(Duration::from_secs(60), reader)
        .await
        .expect("stream ended")
        .unwrap();
    assert_eq!(end, Some(json!({ "status": "failed" })));
    let texts: Vec<&str> = events
        .iter()
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["Hello", ", ", "world", "oops"]);
    assert_eq!(events[3].1["stream"], "log");
}

#[tokio::test]
async fn limits_answer_413_output_limit_and_store_nothing() {
    let app = spawn_app_with(AppOptions {
        extra_args: vec!["--task-output-max-bytes".into(), "100".into()],
        ..AppOptions::default()
    })
    .await;
    let (user, agent, id) = running_task(&app).await;
    let path = format!("/tasks/{id}/output");

    let (status, body) = app
        .runtime(&agent, &path, json!({ "text": "x".repeat(64 * 1024 + 1) }))
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("output_limit"))
    );
    let (status, _) = app
        .runtime(&agent, &path, json!({ "text": "a".repeat(60) }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .runtime(
            &agent,
            &path,
            json!({ "chunks": [{ "text": "b".repeat(30) }, { "text": "c".repeat(20) }] }),
        )
        .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("output_limit"))
    );
    let (status, body) = app
        .runtime(&agent, &path, json!({ "text": "d".repeat(40) }))
        .await;
    assert_eq!(
        (status, body["seq"].as_u64()),
        (StatusCode::OK, Some(2)),
        "{body}"
    );

    // Bad input is 400.
    for bad in [
        json!({ "text": "x", "stream": "stderr" }),
        json!({}),
        json!({ "text": "" }),
        json!({ "chunks": [] }),
    ] {
        let (status, body) = app.runtime(&agent, &path, bad.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
    }
    let (status, body) = app
        .get(
            &format!("/api/v1/tasks/{id}/output?after=x"),
            Some(&user.token),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (_, page) = app
        .get(&format!("/api/v1/tasks/{id}/output"), Some(&user.token))
        .await;
    let seqs: Vec<u64> = page["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    assert_eq!(page["complete"], false, "still running");
    assert_eq!(app.task(&user, &id).await["output_bytes"], 100);

    // `/metrics` counts the bytes stored.
    let metrics = app.metrics().await;
    let counted: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("zerostate_task_output_bytes_total "))
        .expect("output bytes counter")
        .trim()
        .parse()
        .unwrap();
    assert_eq!(counted, 100.0);
}

#[tokio::test]
async fn canceled_tasks_refuse_output_and_others_see_nothing() {
    let app = spawn_app().await;
    let (user, agent, id) = running_task(&app).await;
    let path = format!("/tasks/{id}/output");
    let (status, _) = app.runtime(&agent, &path, json!({ "text": "first" })).await;
    assert_eq!(status, StatusCode::OK);

    // Another user: 404 on the page and on the stream; another agent: 404 on append.
    let stranger = app.new_user().await;
    for route in ["output", "output/stream"] {
        let (status, _) = app
            .get(
                &format!("/api/v1/tasks/{id}/{route}"),
                Some(&stranger.token),
            )
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{route}");
    }
    let (_, other_agent) = app.register_agent(&stranger, "other", &["general"]).await;
    let (status, _) = app
        .runtime(&other_agent, &path, json!({ "text": "x" }))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = app.get(&format!("/api/v1/tasks/{id}/output"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let (status, _) = app
        .post(
            &format!("/api/v1/tasks/{id}/cancel"),
            Some(&user.token),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app.runtime(&agent, &path, json!({ "text": "late" })).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::CONFLICT, Some("canceled"))
    );

    let (_, page) = app
        .get(&format!("/api/v1/tasks/{id}/output"), Some(&user.token))
        .await;
    assert_eq!(page["complete"], true);
    assert_eq!(page["chunks"].as_array().unwrap().len(), 1);
    let (events, end) = read_stream(&app.address, &user.token, &id, None).await;
    assert_eq!(
        (events.len(), end),
        (1, Some(json!({ "status": "canceled" })))
    );
}

#[tokio::test]
async fn the_reference_agent_streams_lines_live_and_keeps_progress_out_of_the_result() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "shell", &["general"]).await;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let exec = format!(
        "echo first line; echo PROGRESS 40 reading the input; \
         while [ ! -e {go} ]; do sleep 0.05; done; \
         echo second line; echo a warning >&2; echo PROGRESS 90 almost; echo third line",
        go = go.display()
    );
    let mut agent = app.spawn_agent(&token, &exec, 1);
    let (mut ws, _) = app.ws(&user.token).await;
    let id = app.submit_query(&user, "hello").await;

    // The first line arrives while the command is still blocked: streamed live.
    let first = ws
        .next_of("task_output", |d| d["task_id"] == id.as_str())
        .await;
    assert_eq!(
        (first["seq"].as_u64(), first["text"].as_str()),
        (Some(1), Some("first line\n"))
    );
    assert_eq!(first["stream"], "output");
    assert_eq!(app.task(&user, &id).await["status"], "running");
    std::fs::write(&go, "").unwrap();

    let task = app.wait_status(&user, &id, "completed").await;
    assert_eq!(
        task["result"],
        "first line\nsecond line\nthird line",
        "{}",
        agent.log()
    );
    let (_, page) = app
        .get(&format!("/api/v1/tasks/{id}/output"), Some(&user.token))
        .await;
    assert_eq!(page["complete"], true);
    let chunks = page["chunks"].as_array().unwrap();
    let output: String = chunks
        .iter()
        .filter(|c| c["stream"] == "output")
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    let log: String = chunks
        .iter()
        .filter(|c| c["stream"] == "log")
        .map(|c| c["text"].as_str().unwrap())
        .collect();
    assert_eq!(output, "first line\nsecond line\nthird line\n");
    assert_eq!(log, "a warning\n");
    assert!(!page.to_string().contains("PROGRESS"));
    agent.stop().await;
}

/// Whether the process exists and is not a zombie (an orphan whose reaper is slow).
fn running(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

#[tokio::test]
async fn killing_the_reference_agent_kills_its_command() {
    let app = spawn_app().await;
    let user = app.new_user().await;
    let (_, token) = app.register_agent(&user, "shell", &["general"]).await;
    let dir = tempfile::tempdir().unwrap();
    let pids = dir.path().join("pids");
    // The shell, and a child it forks (the case `kill_on_drop` and a parent-death
    // signal alone miss).
    let exec = format!(
        "sleep 300 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; echo started; wait",
        pids = pids.display()
    );
    let mut agent = app.spawn_agent(&token, &exec, 1);
    let id = app.submit_query(&user, "run forever").await;
    let started = eventually(
        Duration::from_secs(30),
        Duration::from_millis(50),
        async || {
            std::fs::read_to_string(&pids)
                .map_err(|_| format!("the command never started: {}", agent.log()))
        },
    )
    .await;
    let pids: Vec<u32> = started
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| running(*p)));
    app.wait_status(&user, &id, "running").await;

    agent.kill().await; // SIGKILL: no chance to clean up.
    eventually(
        Duration::from_secs(60),
        Duration::from_millis(50),
        async || {
            if !pids.iter().any(|p| running(*p)) {
                return Ok(());
            }
            let states: Vec<String> = pids
                .iter()
                .map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default())
                .collect();
            Err(format!(
                "the command outlived its agent: {states:?}\nagent log:\n{}",
                agent.log()
            ))
        },
    )
    .await;
}

#[tokio::test]
async fn the_builtin_agent_streams_its_findings_as_it_computes_them() {
    let app = spawn_app_with(AppOptions {
        builtin_agent: true,
        ..AppOptions::default()
    })
    .await;
    let user = app.new_user().await;
    let id = app
        .submit_query(
            &user,
            "Rust makes systems programming safe. The borrow checker keeps Rust programs \
             free of data races. Cats sleep all day.",
        )
        .await;
    let task = app.wait_status(&user, &id, "completed").await;
    let (_, page) = app
        .get(&format!("/api/v1/tasks/{id}/output"), Some(&user.token))
        .await;
    assert_eq!(page["complete"], true);
    let chunks = page["chunks"].as_array().unwrap();
    assert!(chunks.len() > 10, "streamed in many chunks: {page}");
    let text: String = chunks.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(text.contains("Keywords: rust (2)"), "{text}");
    // The summary in the result is the one streamed, word by word.
    let summary = task["result"]["summary"].as_str().unwrap();
    let streamed = text
        .split("Summary:")
        .nth(1)
        .expect("summary streamed")
        .trim();
    assert_eq!(streamed, summary);
    assert_eq!(task["output_bytes"], text.len() as u64);
}

#[tokio::test]
async fn the_reference_agent_refuses_a_server_without_a_scheme() {
    let out = tokio::process::Command::new(crate::helpers::BIN)
        .args([
            "agent",
            "run",
            "--server",
            "localhost:8080",
            "--exec",
            "true",
        ])
        .env("ZEROSTATE_AGENT_TOKEN", "zsa_not_used")
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--server must be a URL starting with http://"),
        "{stderr}"
    );
}

//! Task queue benchmark: how many tasks per second go through submit → claim →
//! complete, with every `task_update` persisted and routed, on one node.
//!
//! It starts the server binary itself (fresh data directory, loopback, built-in agent
//! off), registers one agent, and runs `--workers` agent loops (long-poll claim, one
//! progress report, complete) against it while `--tasks` tasks are submitted. It reports
//! the submit rate, the end-to-end rate, and the submit → completed latency percentiles.
//!
//! ```sh
//! cargo build --release --examples
//! ./target/release/examples/task_bench --bin target/release/zerostate --tasks 2000 --workers 8
//! ```

mod support;

use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{percentile, BenchServer};

struct Options {
    bin: String,
    tasks: usize,
    workers: usize,
}

fn parse_args() -> Options {
    let (bin, flags) = support::flags();
    let mut opts = Options {
        bin,
        tasks: 1000,
        workers: 4,
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--tasks" => opts.tasks = value.parse().expect("--tasks N"),
            "--workers" => opts.workers = value.parse().expect("--workers N"),
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

async fn post(http: &reqwest::Client, url: String, token: &str, body: Value) -> (u16, Value) {
    let resp = http
        .post(url)
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// One agent loop: claim, report progress once, complete; until `done` tasks are done.
async fn worker(
    http: reqwest::Client,
    base: String,
    token: String,
    left: Arc<tokio::sync::Semaphore>,
) {
    loop {
        let (status, body) = post(
            &http,
            format!("{base}/api/v1/runtime/claim"),
            &token,
            json!({"wait_s": 1}),
        )
        .await;
        if status == 204 {
            if left.available_permits() == 0 {
                return;
            }
            continue;
        }
        let id = body["task"]["id"].as_str().expect("task id").to_owned();
        post(
            &http,
            format!("{base}/api/v1/runtime/tasks/{id}/progress"),
            &token,
            json!({"progress": 50}),
        )
        .await;
        let (status, _) = post(
            &http,
            format!("{base}/api/v1/runtime/tasks/{id}/complete"),
            &token,
            json!({"result": "ok"}),
        )
        .await;
        assert_eq!(status, 200, "complete refused");
        if let Ok(permit) = left.try_acquire() {
            permit.forget();
        }
    }
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let server = BenchServer::start(&opts.bin).await;
    let base = server.base.clone();
    let http = reqwest::Client::new();
    let user = server.sign_up_admin(&http).await;
    let (_, body) = post(
        &http,
        format!("{base}/api/v1/agents/register"),
        &user,
        json!({"name": "bench", "capabilities": ["general"]}),
    )
    .await;
    let agent = body["agent_token"]
        .as_str()
        .expect("agent token")
        .to_owned();

    let left = Arc::new(tokio::sync::Semaphore::new(opts.tasks));
    let workers: Vec<_> = (0..opts.workers)
        .map(|_| {
            tokio::spawn(worker(
                http.clone(),
                base.clone(),
                agent.clone(),
                left.clone(),
            ))
        })
        .collect();
    let started = Instant::now();
    for n in 0..opts.tasks {
        let (status, _) = post(
            &http,
            format!("{base}/api/v1/tasks/submit"),
            &user,
            json!({"query": format!("task {n}")}),
        )
        .await;
        assert_eq!(status, 202, "submit refused");
    }
    let submitted = started.elapsed().as_secs_f64();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(300), w).await;
    }
    let finished = started.elapsed().as_secs_f64();

    // Latency from the stored timestamps: created_at → completed_at of every task.
    let mut latencies = Vec::with_capacity(opts.tasks);
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{base}/api/v1/tasks?limit=200&status=completed");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = http
            .get(url)
            .bearer_auth(&user)
            .send()
            .await
            .expect("list")
            .json()
            .await
            .expect("json");
        for task in page["tasks"].as_array().into_iter().flatten() {
            let at = |f: &str| {
                chrono::DateTime::parse_from_rfc3339(task[f].as_str().unwrap_or_default()).ok()
            };
            if let (Some(a), Some(b)) = (at("created_at"), at("completed_at")) {
                latencies.push((b - a).num_milliseconds() as f64);
            }
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!("tasks: {}, workers: {}", opts.tasks, opts.workers);
    println!(
        "submitted in {submitted:.2} s ({:.0} tasks/s)",
        opts.tasks as f64 / submitted
    );
    println!(
        "all completed in {finished:.2} s ({:.0} tasks/s end to end); {} completed",
        opts.tasks as f64 / finished,
        latencies.len()
    );
    println!(
        "submit -> completed: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
}

//! Task queue benchmark: how many tasks per second go through submit → claim → three
//! progress reports → complete, with every `task_update` persisted, routed and received
//! by the owner's WebSocket, on one node.
//!
//! It starts the server binary itself (fresh data directory, loopback, built-in agent
//! off), registers one agent, opens one WebSocket as the submitting user, and runs
//! `--workers` agent loops (long-poll claim, progress 25/50/75, complete) against it while
//! `--submitters` clients submit `--tasks` tasks. The clock stops when the WebSocket has
//! received every task's `completed` update (and all six updates per task are counted).
//! It reports the submit rate, the end-to-end rate, and the submit → completed latency
//! percentiles, and the server's and its own CPU time per task (from `/proc`).
//!
//! ```sh
//! cargo build --release --examples
//! ./target/release/examples/task_bench --bin target/release/zerostate --tasks 5000 --workers 8
//! ```

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{clock_ticks, cpu_ticks, percentile, post, BenchServer};
use tokio_tungstenite::tungstenite::Message;

struct Options {
    bin: String,
    tasks: usize,
    workers: usize,
    submitters: usize,
}

fn parse_args() -> Options {
    let (bin, flags) = support::flags();
    let mut opts = Options {
        bin,
        tasks: 2000,
        workers: 8,
        submitters: 4,
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--tasks" => opts.tasks = value.parse().expect("--tasks N"),
            "--workers" => opts.workers = value.parse().expect("--workers N"),
            "--submitters" => opts.submitters = value.parse().expect("--submitters N"),
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

/// One agent loop: claim, report progress three times, complete; until every task is
/// done.
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
        for progress in [25, 50, 75] {
            let (status, _) = post(
                &http,
                format!("{base}/api/v1/runtime/tasks/{id}/progress"),
                &token,
                json!({ "progress": progress }),
            )
            .await;
            assert_eq!(status, 200, "progress refused");
        }
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
    let agent = server.register_agent(&http, &user).await;

    // The owner's WebSocket: counts every task_update and notes the last completion.
    let ws = server.connect_ws(&user).await;
    let updates = Arc::new(AtomicUsize::new(0));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    {
        let updates = updates.clone();
        tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                if value["type"] == "task_update" {
                    updates.fetch_add(1, Ordering::Relaxed);
                    if value["data"]["status"] == "completed" {
                        let _ = done_tx.send(());
                    }
                }
            }
        });
    }

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
    let cpu_before = cpu_ticks(server.pid);
    let own_cpu_before = cpu_ticks(std::process::id());
    let next = Arc::new(AtomicUsize::new(0));
    let submitters: Vec<_> = (0..opts.submitters.max(1))
        .map(|_| {
            let (http, base, user, next) = (http.clone(), base.clone(), user.clone(), next.clone());
            let total = opts.tasks;
            tokio::spawn(async move {
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= total {
                        return;
                    }
                    let (status, _) = post(
                        &http,
                        format!("{base}/api/v1/tasks/submit"),
                        &user,
                        json!({"query": format!("task {n}")}),
                    )
                    .await;
                    assert_eq!(status, 202, "submit refused");
                }
            })
        })
        .collect();
    for s in submitters {
        s.await.expect("submitter");
    }
    let submitted = started.elapsed().as_secs_f64();
    let mut completed = 0;
    while completed < opts.tasks {
        match tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await {
            Ok(Some(())) => completed += 1,
            _ => panic!("only {completed} completions delivered"),
        }
    }
    let finished = started.elapsed().as_secs_f64();
    // The server's own CPU per task: steadier than the rate on a shared machine.
    let cpu_s = cpu_ticks(server.pid).saturating_sub(cpu_before) as f64 / clock_ticks();
    // This tool's own CPU (agents, submitters, the WebSocket): it shares the machine's
    // cores with the server, so it bounds what one machine can show.
    let own_cpu_s =
        cpu_ticks(std::process::id()).saturating_sub(own_cpu_before) as f64 / clock_ticks();
    for w in workers {
        let _ = tokio::time::timeout(Duration::from_secs(30), w).await;
    }
    let delivered = updates.load(Ordering::Relaxed);

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
    println!(
        "tasks: {}, agent loops: {}, submitters: {}",
        opts.tasks, opts.workers, opts.submitters
    );
    println!(
        "submitted in {submitted:.2} s ({:.0} tasks/s)",
        opts.tasks as f64 / submitted
    );
    println!(
        "all completed and delivered in {finished:.2} s ({:.0} tasks/s end to end); \
         {} completed in the store, {delivered} task_updates received ({} expected)",
        opts.tasks as f64 / finished,
        latencies.len(),
        opts.tasks * 6
    );
    println!(
        "server CPU: {:.2} s, {:.2} ms per task ({:.0}% of one core while running)",
        cpu_s,
        cpu_s * 1000.0 / opts.tasks as f64,
        cpu_s * 100.0 / finished
    );
    println!(
        "this tool's CPU (the agents, submitters and WebSocket): {:.2} s, {:.2} ms per task",
        own_cpu_s,
        own_cpu_s * 1000.0 / opts.tasks as f64
    );
    println!(
        "submit -> completed: p50 {:.0} ms, p95 {:.0} ms, p99 {:.0} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
}

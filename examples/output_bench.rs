//! Task output benchmark: how many output chunks per second go end to end, from an
//! agent's batched `output` append (stored in SQLite with its gapless `seq`) to the
//! task owner's WebSocket as a live `task_output` frame.
//!
//! It starts the server binary itself (fresh data directory, loopback, built-in agent
//! off), signs up the owner, opens their WebSocket, registers one agent and has it
//! claim `--tasks` tasks. Then every task streams at once: `--chunks` chunks of about 20
//! bytes each, `--batch` chunks per append, one append after the other per task (as an
//! agent that batches its tokens would), then `complete`. The clock runs from the first
//! append to the moment the owner holds every chunk of every task in order: live
//! `task_output` frames from the socket, and, where the server skipped frames for a
//! connection whose queue was busy, the gap read with `?after=` as a page does.
//!
//! ```sh
//! cargo build --release --examples
//! ./target/release/examples/output_bench --bin target/release/zerostate --tasks 100 --chunks 2000 --batch 100
//! ```

mod support;

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{percentile, post, BenchServer};
use tokio_tungstenite::tungstenite::Message;

struct Options {
    bin: String,
    tasks: usize,
    chunks: u64,
    batch: u64,
}

fn parse_args() -> Options {
    let (bin, flags) = support::flags();
    let mut opts = Options {
        bin,
        tasks: 100,
        chunks: 2000,
        batch: 100,
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--tasks" => opts.tasks = value.parse().expect("--tasks N"),
            "--chunks" => opts.chunks = value.parse().expect("--chunks N"),
            "--batch" => opts.batch = value.parse().expect("--batch N"),
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

/// What the owner has of each task's output: every chunk up to `contiguous`, and
/// those beyond it that arrived early.
#[derive(Default)]
struct Have {
    contiguous: u64,
    ahead: std::collections::BTreeSet<u64>,
}

impl Have {
    /// Adds a chunk; returns whether it was new.
    fn add(&mut self, seq: u64) -> bool {
        if seq <= self.contiguous || !self.ahead.insert(seq) {
            return false;
        }
        while self.ahead.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
        true
    }
}

/// The owner's view: live frames from the socket, gaps filled with `?after=`.
#[derive(Default)]
struct Owner {
    tasks: HashMap<String, Have>,
    live: u64,
    paged: u64,
    complete_tasks: usize,
    done_at: Option<Instant>,
}

impl Owner {
    /// How far `task`'s output is held without a gap (0: nothing yet).
    fn contiguous(&self, task: &str) -> u64 {
        self.tasks.get(task).map_or(0, |h| h.contiguous)
    }

    fn add(&mut self, task: &str, seq: u64, live: bool, chunks: u64, tasks: usize) {
        let have = self.tasks.entry(task.to_owned()).or_default();
        let before = have.contiguous;
        if have.add(seq) {
            if live {
                self.live += 1;
            } else {
                self.paged += 1;
            }
        }
        if before < chunks && have.contiguous >= chunks {
            self.complete_tasks += 1;
            if self.complete_tasks == tasks {
                self.done_at = Some(Instant::now());
            }
        }
    }
}

/// Reads a task's output after `after` by page, as the task page does for a gap.
async fn output_after(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    task: &str,
    after: u64,
) -> reqwest::Result<reqwest::Response> {
    http.get(format!(
        "{base}/api/v1/tasks/{task}/output?after={after}&limit=10000"
    ))
    .bearer_auth(token)
    .send()
    .await
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let server = BenchServer::start(&opts.bin).await;
    let base = server.base.clone();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.tasks * 2)
        .build()
        .expect("client");
    let owner_token = server.sign_up_admin(&http).await;
    let owner = Arc::new(Mutex::new(Owner::default()));
    let (chunks, ntasks) = (opts.chunks, opts.tasks);
    let expected = ntasks as u64 * chunks;

    // The owner's live connection. A gap in a task's `seq` (frames the server skipped
    // for a connection whose queue was busy) is filled by the filler below.
    let ws = server.connect_ws(&owner_token).await;
    let (gap_tx, mut gap_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let closed = Arc::new(Mutex::new(None::<String>));
    {
        let (owner, closed) = (owner.clone(), closed.clone());
        tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            while let Some(msg) = stream.next().await {
                let text = match msg {
                    Ok(Message::Text(text)) => text,
                    Ok(Message::Close(frame)) => {
                        *closed.lock().unwrap() = Some(format!("{frame:?}"));
                        break;
                    }
                    Ok(_) => continue,
                    Err(err) => {
                        *closed.lock().unwrap() = Some(err.to_string());
                        break;
                    }
                };
                let value: Value = serde_json::from_str(&text).unwrap_or_default();
                // A finished task: whatever is still missing is read by page, as the
                // task page does on `task_update`.
                if value["type"] == "task_update" && value["data"]["status"] == "completed" {
                    if let Some(task) = value["data"]["task_id"].as_str() {
                        let _ = gap_tx.send(task.to_owned());
                    }
                    continue;
                }
                if value["type"] != "task_output" {
                    continue;
                }
                let data = &value["data"];
                let task = data["task_id"].as_str().unwrap_or_default();
                let seq = data["seq"].as_u64().unwrap_or(0);
                let mut owner = owner.lock().unwrap();
                let gap = owner
                    .tasks
                    .get(task)
                    .map_or(seq > 1, |h| seq > h.contiguous + 1 && h.ahead.is_empty());
                owner.add(task, seq, true, chunks, ntasks);
                if gap {
                    let _ = gap_tx.send(task.to_owned());
                }
            }
        });
    }
    // The filler: reads a task's missing chunks with `?after=`, as a page would.
    {
        let (owner, http, base, token) = (
            owner.clone(),
            http.clone(),
            base.clone(),
            owner_token.clone(),
        );
        tokio::spawn(async move {
            while let Some(task) = gap_rx.recv().await {
                loop {
                    let after = owner.lock().unwrap().contiguous(&task);
                    let page = output_after(&http, &base, &token, &task, after).await;
                    // Only once the run is over and the server gone.
                    let Ok(page) = page else { return };
                    let page: Value = page.json().await.unwrap_or_default();
                    let got = page["chunks"].as_array().cloned().unwrap_or_default();
                    let mut owner = owner.lock().unwrap();
                    for c in &got {
                        owner.add(&task, c["seq"].as_u64().unwrap_or(0), false, chunks, ntasks);
                    }
                    // Done with this gap once what we have is contiguous again.
                    let contiguous = owner.tasks.get(&task).is_none_or(|h| h.ahead.is_empty());
                    if got.is_empty() || contiguous {
                        break;
                    }
                }
            }
        });
    }
    let owner_ref = owner.clone();
    let owner = owner_token;

    // One agent claims every task.
    let agent = server.register_agent(&http, &owner).await;
    for n in 0..opts.tasks {
        let (status, _) = post(
            &http,
            format!("{base}/api/v1/tasks/submit"),
            &owner,
            json!({"query": format!("stream {n}"), "timeout_s": 3600}),
        )
        .await;
        assert_eq!(status, 202, "submit refused");
    }
    let mut tasks = Vec::with_capacity(opts.tasks);
    while tasks.len() < opts.tasks {
        let (status, body) = post(
            &http,
            format!("{base}/api/v1/runtime/claim"),
            &agent,
            json!({}),
        )
        .await;
        assert_eq!(status, 200, "claim found nothing");
        tasks.push(body["task"]["id"].as_str().expect("task id").to_owned());
    }

    // Every task streams at once.
    let started = Instant::now();
    let mut streamers = Vec::with_capacity(opts.tasks);
    for (t, id) in tasks.iter().enumerate() {
        let (http, base, agent, id) = (http.clone(), base.clone(), agent.clone(), id.clone());
        let (chunks, batch) = (opts.chunks, opts.batch);
        streamers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0;
            while seq < chunks {
                let n = batch.min(chunks - seq);
                // About 20 bytes each, like an LLM token with its metadata trimmed.
                let body: Vec<Value> = (seq + 1..=seq + n)
                    .map(|s| json!({ "text": format!("tok {t:03}/{s:07} ") }))
                    .collect();
                let sent = Instant::now();
                let (status, answer) = post(
                    &http,
                    format!("{base}/api/v1/runtime/tasks/{id}/output"),
                    &agent,
                    json!({ "chunks": body }),
                )
                .await;
                assert_eq!(status, 200, "append refused: {answer}");
                latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                seq += n;
                assert_eq!(answer["seq"], seq);
            }
            let (status, _) = post(
                &http,
                format!("{base}/api/v1/runtime/tasks/{id}/complete"),
                &agent,
                json!({ "result": "done" }),
            )
            .await;
            assert_eq!(status, 200, "complete refused");
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for s in streamers {
        latencies.extend(s.await.expect("streamer"));
    }
    let appended = started.elapsed().as_secs_f64();
    // A safety net: should a `task_update` have been missed, tasks still incomplete
    // two seconds after the last append are read by page.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let missing: Vec<String> = {
            let o = owner_ref.lock().unwrap();
            if o.done_at.is_some() {
                break;
            }
            tasks
                .iter()
                .filter(|t| o.tasks.get(*t).is_none_or(|h| h.contiguous < opts.chunks))
                .cloned()
                .collect()
        };
        assert!(
            Instant::now() < deadline,
            "{} tasks incomplete after 120 s",
            missing.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        if started.elapsed().as_secs_f64() > appended + 2.0 {
            for task in missing {
                let after = owner_ref.lock().unwrap().contiguous(&task);
                let page: Value = output_after(&http, &base, &owner, &task, after)
                    .await
                    .expect("page")
                    .json()
                    .await
                    .expect("page json");
                let mut o = owner_ref.lock().unwrap();
                for c in page["chunks"].as_array().into_iter().flatten() {
                    o.add(
                        &task,
                        c["seq"].as_u64().unwrap_or(0),
                        false,
                        opts.chunks,
                        opts.tasks,
                    );
                }
            }
        }
    }
    let (delivered, live, paged) = {
        let o = owner_ref.lock().unwrap();
        let at = o.done_at.expect("done");
        ((at - started).as_secs_f64(), o.live, o.paged)
    };

    // The store holds exactly what was sent.
    let (_, page) = (
        (),
        http.get(format!(
            "{base}/api/v1/tasks/{}/output?after={}&limit=10",
            tasks[0],
            opts.chunks - 1
        ))
        .bearer_auth(&owner)
        .send()
        .await
        .expect("page")
        .json::<Value>()
        .await
        .expect("json"),
    );
    assert_eq!(page["next"], opts.chunks, "stored: {page}");

    latencies.sort_by(f64::total_cmp);
    println!(
        "tasks: {}, chunks per task: {}, chunks per append: {}",
        opts.tasks, opts.chunks, opts.batch
    );
    println!(
        "appended {expected} chunks in {appended:.2} s ({:.0} chunks/s stored, {:.0} appends/s)",
        expected as f64 / appended,
        latencies.len() as f64 / appended
    );
    println!(
        "the owner had all {expected} chunks, in order, after {delivered:.2} s \
         ({:.0} chunks/s end to end): {live} live as task_output, {paged} by ?after= pages; \
         socket closed: {}",
        expected as f64 / delivered,
        closed.lock().unwrap().as_deref().unwrap_or("no")
    );
    println!(
        "append latency: p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        percentile(&latencies, 0.99)
    );
}

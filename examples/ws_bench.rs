//! Real-time hub benchmark: memory per idle connection and broadcast fan-out.
//!
//! It starts the server binary itself (fresh data directory, loopback, built-in agent
//! off), signs up an admin, opens `--connections` idle WebSockets, and reads the
//! server's resident memory from `/proc/PID/status` before and after: the difference
//! divided by the connection count is the cost of one idle connection. Then it
//! broadcasts `--messages` messages and measures how long every connection takes to
//! receive each one (publish → last receipt), and the delivered-message rate.
//!
//! ```sh
//! cargo build --release && ulimit -n 65536 &&
//! cargo run --release --example ws_bench -- --connections 5000 --messages 200
//! ```
//! Figures and the machine they came from go in `docs/BENCHMARKS.md`.

mod support;

use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{percentile, BenchServer};
use tokio_tungstenite::tungstenite::Message;

struct Options {
    bin: String,
    connections: usize,
    messages: usize,
}

fn parse_args() -> Options {
    let (bin, flags) = support::flags();
    let mut opts = Options {
        bin,
        connections: 2000,
        messages: 100,
    };
    for (flag, value) in flags {
        match flag.as_str() {
            "--connections" => opts.connections = value.parse().expect("--connections N"),
            "--messages" => opts.messages = value.parse().expect("--messages N"),
            other => panic!("unknown flag {other}"),
        }
    }
    opts
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let opts = parse_args();
    let server = BenchServer::start(&opts.bin).await;
    let (base, pid) = (server.base.clone(), server.pid);
    let http = reqwest::Client::new();
    let token = server.sign_up_admin(&http).await;

    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);
    let received = Arc::new(AtomicUsize::new(0));
    let (lat_tx, mut lat_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let opened = Instant::now();
    for _ in 0..opts.connections {
        let ws = server.connect_ws(&token).await;
        let (received, lat_tx, ready_tx) = (received.clone(), lat_tx.clone(), ready_tx.clone());
        tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                match value["type"].as_str() {
                    Some("welcome") => {
                        let _ = ready_tx.send(());
                    }
                    Some("bench") => {
                        received.fetch_add(1, Ordering::Relaxed);
                        let seq = value["data"]["n"].as_u64().unwrap_or(0) as usize;
                        let _ = lat_tx.send((seq, Instant::now()));
                    }
                    _ => {}
                }
            }
        });
    }
    for _ in 0..opts.connections {
        ready_rx.recv().await.expect("welcome");
    }
    let open_secs = opened.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid);
    let per_conn = (rss_after.saturating_sub(rss_before) as f64 * 1024.0) / opts.connections as f64;
    println!(
        "connections: {} opened in {:.2} s",
        opts.connections, open_secs
    );
    println!("server RSS: {rss_before} KiB idle -> {rss_after} KiB with connections");
    println!("memory per idle connection: {:.0} bytes", per_conn);

    let mut sent_at = Vec::with_capacity(opts.messages);
    let started = Instant::now();
    for n in 0..opts.messages {
        sent_at.push(Instant::now());
        let resp = http
            .post(format!("{base}/api/v1/ws/broadcast"))
            .bearer_auth(&token)
            .json(&serde_json::json!({"type": "bench", "data": {"n": n}}))
            .send()
            .await
            .expect("broadcast");
        assert_eq!(resp.status().as_u16(), 202, "broadcast refused");
    }
    let expected = opts.connections * opts.messages;
    let mut last_receipt = vec![sent_at[0]; opts.messages];
    let mut got = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while got < expected && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(5), lat_rx.recv()).await {
            Ok(Some((seq, at))) => {
                if seq < opts.messages && at > last_receipt[seq] {
                    last_receipt[seq] = at;
                }
                got += 1;
            }
            _ => break,
        }
    }
    let total = started.elapsed().as_secs_f64();
    let mut fanout_ms: Vec<f64> = (0..opts.messages)
        .map(|i| (last_receipt[i] - sent_at[i]).as_secs_f64() * 1000.0)
        .collect();
    fanout_ms.sort_by(f64::total_cmp);
    println!(
        "broadcasts: {} x {} connections, {got}/{expected} delivered in {total:.2} s ({:.0} msg/s)",
        opts.messages,
        opts.connections,
        got as f64 / total
    );
    println!(
        "publish -> last connection received: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&fanout_ms, 0.5),
        percentile(&fanout_ms, 0.99),
        fanout_ms.last().copied().unwrap_or(0.0)
    );
    println!("server RSS after broadcasts: {} KiB", rss_kib(pid));
}

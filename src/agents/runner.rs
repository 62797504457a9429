//! The agent loop shared by the reference agent (`zerostate agent run`) and the
//! built-in agent: long-poll `claim`, run the task through an `Executor`, report each
//! progress step, renew the lease while the work runs, and finish with `complete` or
//! `fail`. It speaks only the public HTTP runtime API, so the built-in agent proves the
//! same path every external agent uses.
//!
//! Output the executor produces is batched: lines collect until `FLUSH_LINES` of them
//! or `FLUSH_EVERY` has passed since the first, then go out in one `output` call (one
//! transaction on the server, however many lines). While a call is out, new lines wait
//! in the bounded event queue, so a command that prints faster than the server takes
//! it is slowed down (its pipe fills) rather than buffered without bound.
//!
//! Failure handling: a server that is down or restarting is retried with capped
//! exponential backoff; a 409/404 on progress means the task is no longer ours
//! (canceled, timed out, re-queued) and the work is stopped; a 401 means the token was
//! revoked or the agent deleted, which no retry can fix, so the runner stops. On
//! shutdown (SIGTERM) the runner stops claiming, stops running work and hands it back
//! with `release`, which uses no attempt, so another agent can take it at once; and it
//! tells the server it stops (`stop`), which ends its waiting claims on the server (so
//! none takes a task for a process on its way out) and shows the agent offline at
//! once, busy or idle, instead of after the silence window.

use crate::domain::OutputStream;
use crate::shutdown::Shutdown;
use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// How long one claim waits on the server.
const CLAIM_WAIT_S: u64 = 25;
/// The longest pause between lease renewals, however long the lease.
const MAX_RENEW_EVERY: Duration = Duration::from_secs(10);
/// The shortest pause between lease renewals, however short the lease.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(200);
/// Backoff after a failed call to the server: doubles from the first to the last.
const BACKOFF_FIRST: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);
/// How long a finished result is retried while the server is unreachable; after that
/// the lease will have expired and the task gone to another agent anyway.
const REPORT_FOR: Duration = Duration::from_secs(120);
/// Events (progress steps, output lines) an executor may have in flight before it
/// waits for the runner.
const EVENT_QUEUE: usize = 1024;
/// Output goes out once this many lines are waiting…
const FLUSH_LINES: usize = 256;
/// …or this long after the first of them was printed.
const FLUSH_EVERY: Duration = Duration::from_millis(25);
/// Text one `output` call carries at most (the server's limit per append).
const MAX_APPEND_BYTES: usize = crate::domain::MAX_APPEND_BYTES;
/// After a failed `output` call, the next try waits this long.
const OUTPUT_RETRY: Duration = Duration::from_millis(500);
/// Once stopping, a worker still waits this long for the answer to its claim: the
/// `stop` call ends the claim on the server, so the answer normally comes at once (and
/// a task it brings is handed back), rather than a task being taken for nobody.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// The `stop` call gives up after this: the server may be gone already.
const STOP_TIMEOUT: Duration = Duration::from_secs(3);

/// A task as the claim hands it out.
#[derive(Debug, Clone, Deserialize)]
pub struct ClaimedTask {
    pub id: String,
    pub query: String,
    pub capability: String,
    pub attempt: u32,
    pub lease_expires_at: DateTime<Utc>,
}

/// How an execution ended.
#[derive(Debug, Clone)]
pub enum ExecOutcome {
    Completed(serde_json::Value),
    Failed {
        error: String,
        retryable: bool,
    },
    /// Stopped because `cancel` fired; nothing to report.
    Stopped,
}

/// What an executor reports while it works, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskEvent {
    /// Progress (0–100), with an optional note for the owner.
    Progress { value: u8, message: Option<String> },
    /// Text streamed as the task's output (or log).
    Output { stream: OutputStream, text: String },
}

/// Runs the work of one task. Implementations send progress and output on `events`
/// in order, and stop promptly once `cancel` fires.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(
        &self,
        task: &ClaimedTask,
        events: mpsc::Sender<TaskEvent>,
        cancel: CancellationToken,
    ) -> ExecOutcome;
}

/// Where and how an agent connects.
#[derive(Debug, Clone)]
pub struct RunnerConfig {
    /// Base URL of the server, e.g. `http://127.0.0.1:8080`.
    pub server: String,
    /// The `zsa_…` agent token.
    pub token: String,
    /// Tasks run at the same time.
    pub concurrency: usize,
}

/// Runs `concurrency` claim loops until `shutdown`, or until the server refuses the
/// token (an error).
pub async fn run(
    config: RunnerConfig,
    executor: Arc<dyn Executor>,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let base = parse_server(&config.server)?;
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        client,
        base,
        token: config.token,
    };
    // The workers stop on the caller's shutdown, or on a fatal error of one of them;
    // the latter must not trigger the caller's (for the built-in agent: the server's).
    let shutdown = Stop {
        outer: shutdown,
        local: CancellationToken::new(),
    };
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..config.concurrency.max(1) {
        let api = api.clone();
        let executor = executor.clone();
        let shutdown = shutdown.clone();
        workers.spawn(async move { work(worker, api, executor, shutdown).await });
    }
    // On the caller's shutdown the server hears at once that the agent stops: its
    // claims still waiting there end (the workers get their answers within the grace)
    // and it shows offline.
    let announce = {
        let (api, outer) = (api.clone(), shutdown.outer.clone());
        tokio::spawn(async move {
            outer.triggered().await;
            api.stop().await;
        })
    };
    let mut outcome = Ok(());
    while let Some(joined) = workers.join_next().await {
        let result = joined.map_err(anyhow::Error::from).and_then(|r| r);
        if let Err(err) = result {
            // One worker's fatal error (token refused) stops the others.
            shutdown.local.cancel();
            if outcome.is_ok() {
                outcome = Err(err);
            }
        }
    }
    if shutdown.outer.is_triggered() {
        let _ = announce.await;
        // Once more, now that every worker is done: a call that was still out during
        // the first one (a last progress report) may have shown the agent online again.
        api.stop().await;
    } else {
        announce.abort();
    }
    outcome
}

/// Checks the server's base URL: `http://` or `https://` and a host. A URL without a
/// scheme (`localhost:8080`) would otherwise fail on every call with an obscure error.
pub fn parse_server(raw: &str) -> anyhow::Result<String> {
    let raw = raw.trim().trim_end_matches('/');
    let url = reqwest::Url::parse(raw).ok().filter(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    });
    match url {
        Some(_) => Ok(raw.to_owned()),
        None => anyhow::bail!(
            "--server must be a URL starting with http:// or https:// (for example \
             http://127.0.0.1:8080), not {raw:?}"
        ),
    }
}

/// Why a runner stops: the caller's shutdown, or a fatal error in one of its workers.
#[derive(Clone)]
struct Stop {
    outer: Shutdown,
    local: CancellationToken,
}

impl Stop {
    fn is_triggered(&self) -> bool {
        self.outer.is_triggered() || self.local.is_cancelled()
    }

    async fn triggered(&self) {
        tokio::select! {
            _ = self.outer.triggered() => {}
            _ = self.local.cancelled() => {}
        }
    }

    /// `STOP_GRACE` after the stop began.
    async fn grace_over(&self) {
        self.triggered().await;
        tokio::time::sleep(STOP_GRACE).await;
    }
}

/// One claim-execute-report loop.
async fn work(
    worker: usize,
    api: Api,
    executor: Arc<dyn Executor>,
    shutdown: Stop,
) -> anyhow::Result<()> {
    let mut backoff = Backoff::default();
    while !shutdown.is_triggered() {
        // Not dropped at once on shutdown: the server ends the claim (see `run`), and
        // a task it still brings is handed back by `run_task`.
        let claimed = tokio::select! {
            r = api.claim() => r,
            _ = shutdown.grace_over() => break,
        };
        match claimed {
            Ok(Claim::Task(task)) => {
                backoff.reset();
                tracing::info!(worker, task_id = %task.id, attempt = task.attempt, "running task");
                run_task(&api, executor.as_ref(), task, &shutdown).await;
            }
            Ok(Claim::Nothing) => backoff.reset(),
            Ok(Claim::Unauthorized) => {
                anyhow::bail!(
                    "the server refused the agent token (revoked, or the agent was deleted)"
                )
            }
            Err(err) => {
                let pause = backoff.next();
                tracing::warn!(worker, error = %err, retry_in_ms = pause.as_millis() as u64, "claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.triggered() => break,
                }
            }
        }
    }
    Ok(())
}

/// Runs one task to the end, renewing its lease meanwhile, streaming its output in
/// batches, and reports how it ended.
async fn run_task(api: &Api, executor: &dyn Executor, task: ClaimedTask, shutdown: &Stop) {
    let renew_every = renew_interval(task.lease_expires_at);
    let cancel = CancellationToken::new();
    let (events_tx, mut events) = mpsc::channel::<TaskEvent>(EVENT_QUEUE);
    let execution = executor.execute(&task, events_tx, cancel.clone());
    tokio::pin!(execution);

    let mut last_progress = 0u8;
    let mut lost = false;
    let mut stopping = false;
    let mut events_open = true;
    let mut output = OutputBuffer::default();
    let mut renew_at = tokio::time::Instant::now() + renew_every;
    let outcome = loop {
        let flush_at = output.flush_at();
        tokio::select! {
            outcome = &mut execution => break outcome,
            // Events are read even once the task is lost or stopping (and then
            // dropped), so an executor blocked on a full queue still gets to see
            // `cancel`. While output waits to be sent, no more is taken.
            event = events.recv(), if events_open && !output.full() => match event {
                Some(_) if lost || stopping => {}
                Some(TaskEvent::Output { stream, text }) => output.push(stream, text),
                Some(TaskEvent::Progress { value, message }) => {
                    last_progress = value;
                    renew_at = tokio::time::Instant::now() + renew_every;
                    if api.progress(&task.id, value, message.as_deref()).await == Report::Gone {
                        lost = true;
                        cancel.cancel();
                    }
                }
                None => events_open = false,
            },
            _ = tokio::time::sleep_until(flush_at.unwrap_or(renew_at)), if flush_at.is_some() && !lost && !stopping => {
                match output.flush(api, &task.id).await {
                    Report::Accepted => renew_at = tokio::time::Instant::now() + renew_every,
                    Report::Gone => {
                        lost = true;
                        cancel.cancel();
                    }
                    Report::Retry => {}
                }
            }
            _ = tokio::time::sleep_until(renew_at), if !lost && !stopping => {
                renew_at = tokio::time::Instant::now() + renew_every;
                if api.progress(&task.id, last_progress, None).await == Report::Gone {
                    lost = true;
                    cancel.cancel();
                }
            }
            _ = shutdown.triggered(), if !stopping => {
                stopping = true;
                cancel.cancel();
            }
        }
    };
    // What the executor reported just before it finished still goes out, in order,
    // before the final report (which sets 100 on completion anyway): a result must
    // never arrive ahead of the output that led to it.
    if !lost && !stopping {
        while let Ok(event) = events.try_recv() {
            match event {
                TaskEvent::Output { stream, text } => output.push(stream, text),
                TaskEvent::Progress { value, message } => {
                    if api.progress(&task.id, value, message.as_deref()).await == Report::Gone {
                        lost = true;
                        break;
                    }
                }
            }
        }
        if !lost && output.drain(api, &task.id).await == Report::Gone {
            lost = true;
        }
    }
    if lost {
        tracing::info!(task_id = %task.id, "task no longer ours (canceled, timed out or re-queued); stopped");
        return;
    }
    let body = match outcome {
        ExecOutcome::Completed(result) => ("complete", json!({ "result": result })),
        // Whatever else the work says once we stopped it is our doing, not the task's.
        _ if stopping => ("release", json!({})),
        ExecOutcome::Failed { error, retryable } => {
            ("fail", json!({ "error": error, "retryable": retryable }))
        }
        // A clean stop: the task goes back without costing an attempt.
        ExecOutcome::Stopped => ("release", json!({})),
    };
    // While shutting down there is no time to wait out a restart: one try.
    let deadline = if shutdown.is_triggered() {
        Duration::ZERO
    } else {
        REPORT_FOR
    };
    api.finish(&task.id, body.0, &body.1, deadline).await;
}

/// A third of the lease (as the server gave it), within bounds, so two renewals can
/// fail before the lease is lost.
fn renew_interval(lease_expires_at: DateTime<Utc>) -> Duration {
    let lease = (lease_expires_at - Utc::now()).to_std().unwrap_or_default();
    (lease / 3).clamp(MIN_RENEW_EVERY, MAX_RENEW_EVERY)
}

/// Capped exponential backoff with a little jitter, so a fleet of agents does not
/// reconnect in lockstep after a restart.
#[derive(Default)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let base = BACKOFF_FIRST
            .saturating_mul(1 << self.failures.min(8))
            .min(BACKOFF_MAX);
        self.failures = self.failures.saturating_add(1);
        let jitter = rand::random::<u64>() % (base.as_millis() as u64 / 4 + 1);
        base + Duration::from_millis(jitter)
    }

    fn reset(&mut self) {
        self.failures = 0;
    }
}

/// What a claim brought.
enum Claim {
    Task(ClaimedTask),
    Nothing,
    Unauthorized,
}

/// What the server said to a progress report.
#[derive(Debug, PartialEq, Eq)]
enum Report {
    Accepted,
    /// 409/404: the task is not ours any more.
    Gone,
    /// Network or server trouble: try again at the next renewal.
    Retry,
}

/// What the server said to an `output` call.
#[derive(Debug, PartialEq, Eq)]
enum OutputReport {
    Accepted,
    /// 409/404: the task is not ours any more.
    Gone,
    /// 413: the task's output is full; the rest of it is dropped (the task goes on).
    Full,
    /// Network or server trouble: keep the lines and try again shortly.
    Retry,
}

/// Output lines waiting to be sent, in order.
#[derive(Default)]
struct OutputBuffer {
    lines: std::collections::VecDeque<(OutputStream, String)>,
    bytes: usize,
    /// When the waiting lines go out at the latest.
    due: Option<tokio::time::Instant>,
    /// The server refused more output for this task (413): drop the rest.
    full: bool,
}

impl OutputBuffer {
    /// Queues a line, split so that no piece passes the server's per-append limit.
    fn push(&mut self, stream: OutputStream, text: String) {
        if self.full || text.is_empty() {
            return;
        }
        let mut rest = text.as_str();
        while !rest.is_empty() {
            let mut cut = rest.len().min(MAX_APPEND_BYTES);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            self.bytes += cut;
            self.lines.push_back((stream, rest[..cut].to_owned()));
            rest = &rest[cut..];
        }
        self.due
            .get_or_insert_with(|| tokio::time::Instant::now() + FLUSH_EVERY);
    }

    /// When the buffer should be flushed: now when it holds a batch, else when the
    /// first waiting line has waited `FLUSH_EVERY`.
    fn flush_at(&self) -> Option<tokio::time::Instant> {
        if self.lines.len() >= FLUSH_LINES || self.bytes >= MAX_APPEND_BYTES {
            Some(tokio::time::Instant::now())
        } else {
            self.due
        }
    }

    /// Too much is waiting: take no more until some of it is sent.
    fn full(&self) -> bool {
        self.lines.len() >= 4 * FLUSH_LINES || self.bytes >= 4 * MAX_APPEND_BYTES
    }

    /// Sends one batch from the front: at most `FLUSH_LINES` lines and
    /// `MAX_APPEND_BYTES` bytes.
    async fn flush(&mut self, api: &Api, task: &str) -> Report {
        let (mut count, mut bytes) = (0, 0);
        for (_, text) in &self.lines {
            if count == FLUSH_LINES || (count > 0 && bytes + text.len() > MAX_APPEND_BYTES) {
                break;
            }
            count += 1;
            bytes += text.len();
        }
        if count == 0 {
            self.due = None;
            return Report::Accepted;
        }
        let batch: Vec<_> = self.lines.range(..count).cloned().collect();
        let report = api.output(task, &batch).await;
        match report {
            OutputReport::Accepted => {
                self.lines.drain(..count);
                self.bytes -= bytes;
            }
            OutputReport::Full => {
                tracing::warn!(
                    task_id = task,
                    "the task's output is full; the rest is not sent"
                );
                self.full = true;
                self.lines.clear();
                self.bytes = 0;
            }
            OutputReport::Gone => return Report::Gone,
            OutputReport::Retry => {
                self.due = Some(tokio::time::Instant::now() + OUTPUT_RETRY);
                return Report::Retry;
            }
        }
        self.due = (!self.lines.is_empty()).then(tokio::time::Instant::now);
        Report::Accepted
    }

    /// Sends everything waiting (before the final report), retrying trouble for a
    /// while; what cannot be sent in that time is given up (the result still goes).
    async fn drain(&mut self, api: &Api, task: &str) -> Report {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(30);
        while !self.lines.is_empty() {
            match self.flush(api, task).await {
                Report::Gone => return Report::Gone,
                Report::Retry if tokio::time::Instant::now() > give_up => {
                    tracing::warn!(task_id = task, "giving up on the rest of the output");
                    return Report::Retry;
                }
                Report::Retry => tokio::time::sleep(OUTPUT_RETRY).await,
                Report::Accepted => {}
            }
        }
        Report::Accepted
    }
}

/// The runtime API, as the agent sees it.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: String,
    token: String,
}

#[derive(Deserialize)]
struct ClaimBody {
    task: ClaimedTask,
}

impl Api {
    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.client
            .post(format!("{}/api/v1/runtime{path}", self.base))
            .bearer_auth(&self.token)
    }

    async fn claim(&self) -> anyhow::Result<Claim> {
        let response = self
            .post("/claim")
            .timeout(Duration::from_secs(CLAIM_WAIT_S + 10))
            .json(&json!({ "wait_s": CLAIM_WAIT_S }))
            .send()
            .await?;
        match response.status() {
            StatusCode::OK => Ok(Claim::Task(response.json::<ClaimBody>().await?.task)),
            StatusCode::NO_CONTENT => Ok(Claim::Nothing),
            StatusCode::UNAUTHORIZED => Ok(Claim::Unauthorized),
            other => anyhow::bail!("claim answered {other}"),
        }
    }

    /// Tells the server this agent process stops (see the module doc). Best effort.
    async fn stop(&self) {
        match self.post("/stop").timeout(STOP_TIMEOUT).send().await {
            Ok(r) if r.status().is_success() => tracing::info!("the server knows the agent stops"),
            Ok(r) => tracing::warn!(status = %r.status(), "the server did not take the stop"),
            Err(err) => tracing::warn!(error = %err, "could not tell the server the agent stops"),
        }
    }

    async fn progress(&self, task: &str, progress: u8, message: Option<&str>) -> Report {
        let mut body = json!({ "progress": progress });
        if let Some(message) = message {
            body["message"] = json!(message);
        }
        let sent = self
            .post(&format!("/tasks/{task}/progress"))
            .timeout(Duration::from_secs(10))
            .json(&body)
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => Report::Accepted,
            Ok(r) if matches!(r.status(), StatusCode::CONFLICT | StatusCode::NOT_FOUND) => {
                Report::Gone
            }
            Ok(r) => {
                tracing::warn!(task_id = task, status = %r.status(), "progress report refused");
                Report::Retry
            }
            Err(err) => {
                tracing::warn!(task_id = task, error = %err, "progress report failed");
                Report::Retry
            }
        }
    }

    /// Appends one batch of output.
    async fn output(&self, task: &str, chunks: &[(OutputStream, String)]) -> OutputReport {
        let chunks: Vec<_> = chunks
            .iter()
            .map(|(stream, text)| json!({ "stream": stream, "text": text }))
            .collect();
        let sent = self
            .post(&format!("/tasks/{task}/output"))
            .timeout(Duration::from_secs(10))
            .json(&json!({ "chunks": chunks }))
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => OutputReport::Accepted,
            Ok(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE => OutputReport::Full,
            Ok(r) if matches!(r.status(), StatusCode::CONFLICT | StatusCode::NOT_FOUND) => {
                OutputReport::Gone
            }
            Ok(r) => {
                tracing::warn!(task_id = task, status = %r.status(), "output refused");
                OutputReport::Retry
            }
            Err(err) => {
                tracing::warn!(task_id = task, error = %err, "output not sent");
                OutputReport::Retry
            }
        }
    }

    /// Sends `complete` or `fail`, retrying network trouble until `retry_for` runs out.
    async fn finish(&self, task: &str, what: &str, body: &serde_json::Value, retry_for: Duration) {
        let give_up = tokio::time::Instant::now() + retry_for;
        let mut backoff = Backoff::default();
        loop {
            let sent = self
                .post(&format!("/tasks/{task}/{what}"))
                .timeout(Duration::from_secs(10))
                .json(body)
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => {
                    tracing::info!(task_id = task, what, "task reported");
                    return;
                }
                Ok(r) if r.status() == StatusCode::PAYLOAD_TOO_LARGE && what == "complete" => {
                    // Retrying the same body cannot help; the owner should learn why
                    // rather than see the task retried until it is lost three times.
                    tracing::warn!(
                        task_id = task,
                        "result too large for the server; failing the task"
                    );
                    let body = json!({
                        "error": "the result is larger than the server accepts",
                        "retryable": false,
                    });
                    return Box::pin(self.finish(task, "fail", &body, retry_for)).await;
                }
                Ok(r) if r.status().is_client_error() => {
                    // 409 (canceled meanwhile, timed out) or 404: nothing left to report.
                    tracing::info!(task_id = task, what, status = %r.status(), "report not accepted");
                    return;
                }
                Ok(r) => {
                    tracing::warn!(task_id = task, what, status = %r.status(), "report failed")
                }
                Err(err) => tracing::warn!(task_id = task, what, error = %err, "report failed"),
            }
            let pause = backoff.next();
            if tokio::time::Instant::now() + pause > give_up {
                tracing::warn!(
                    task_id = task,
                    what,
                    "giving up on the report; the lease will return the task to the queue"
                );
                return;
            }
            tokio::time::sleep(pause).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_need_a_scheme() {
        assert_eq!(
            parse_server("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(parse_server("https://zs.example.com").is_ok());
        for bad in ["127.0.0.1:8080", "localhost:8080", "ftp://x", "", "http://"] {
            let err = parse_server(bad).unwrap_err().to_string();
            assert!(err.contains("http://"), "{bad}: {err}");
        }
    }

    #[tokio::test]
    async fn long_lines_are_split_at_character_boundaries_within_the_append_limit() {
        let mut buffer = OutputBuffer::default();
        assert!(buffer.flush_at().is_none());
        let line = "é".repeat(MAX_APPEND_BYTES); // twice the limit in bytes
        buffer.push(OutputStream::Output, line.clone());
        assert_eq!(buffer.lines.len(), 2);
        assert!(buffer
            .lines
            .iter()
            .all(|(_, t)| t.len() <= MAX_APPEND_BYTES));
        let joined: String = buffer.lines.iter().map(|(_, t)| t.as_str()).collect();
        assert_eq!(joined, line);
        // A full batch is due at once.
        assert!(buffer.flush_at().unwrap() <= tokio::time::Instant::now());

        let mut small = OutputBuffer::default();
        small.push(OutputStream::Log, "one line\n".into());
        let due = small.flush_at().expect("due");
        assert!(
            due > tokio::time::Instant::now() && due <= tokio::time::Instant::now() + FLUSH_EVERY
        );
    }
}

//! The agent loop shared by the reference agent (`zerostate agent run`) and the
//! built-in agent: long-poll `claim`, run the task through an `Executor`, report each
//! progress step, renew the lease while the work runs, and finish with `complete` or
//! `fail`. It speaks only the public HTTP runtime API, so the built-in agent proves the
//! same path every external agent uses.
//!
//! Failure handling: a server that is down or restarting is retried with capped
//! exponential backoff; a 409/404 on progress means the task is no longer ours
//! (canceled, timed out, re-queued) and the work is stopped; a 401 means the token was
//! revoked or the agent deleted, which no retry can fix, so the runner stops. On
//! shutdown (SIGTERM) the runner stops claiming, stops running work and hands it back
//! with `release`, which uses no attempt, so another agent can take it at once.

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
/// Progress steps an executor may have in flight before it waits for the runner.
const PROGRESS_QUEUE: usize = 32;

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

/// Runs the work of one task. Implementations send progress (0–100) on `progress` in
/// order, and stop promptly once `cancel` fires.
#[async_trait]
pub trait Executor: Send + Sync + 'static {
    async fn execute(
        &self,
        task: &ClaimedTask,
        progress: mpsc::Sender<u8>,
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
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTP client")?;
    let api = Api {
        client,
        base: config.server.trim_end_matches('/').to_owned(),
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
    outcome
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
        let claimed = tokio::select! {
            r = api.claim() => r,
            _ = shutdown.triggered() => break,
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

/// Runs one task to the end, renewing its lease meanwhile, and reports how it ended.
async fn run_task(api: &Api, executor: &dyn Executor, task: ClaimedTask, shutdown: &Stop) {
    let renew_every = renew_interval(task.lease_expires_at);
    let cancel = CancellationToken::new();
    let (progress_tx, mut progress_rx) = mpsc::channel::<u8>(PROGRESS_QUEUE);
    let execution = executor.execute(&task, progress_tx, cancel.clone());
    tokio::pin!(execution);

    let mut last_progress = 0u8;
    let mut lost = false;
    let mut stopping = false;
    let mut progress_open = true;
    let mut renew_at = tokio::time::Instant::now() + renew_every;
    let outcome = loop {
        tokio::select! {
            outcome = &mut execution => break outcome,
            // Steps are read even once the task is lost or stopping (and then
            // dropped), so an executor blocked on a full queue still gets to see
            // `cancel`.
            step = progress_rx.recv(), if progress_open => match step {
                Some(_) if lost || stopping => {}
                Some(p) => {
                    last_progress = p;
                    renew_at = tokio::time::Instant::now() + renew_every;
                    if api.progress(&task.id, p).await == Report::Gone {
                        lost = true;
                        cancel.cancel();
                    }
                }
                None => progress_open = false,
            },
            _ = tokio::time::sleep_until(renew_at), if !lost && !stopping => {
                renew_at = tokio::time::Instant::now() + renew_every;
                if api.progress(&task.id, last_progress).await == Report::Gone {
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
    // Steps the executor queued just before it finished still go out, in order, before
    // the final report (which sets 100 on completion anyway).
    if !lost && !stopping {
        while let Ok(p) = progress_rx.try_recv() {
            if api.progress(&task.id, p).await == Report::Gone {
                lost = true;
                break;
            }
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

    async fn progress(&self, task: &str, progress: u8) -> Report {
        let sent = self
            .post(&format!("/tasks/{task}/progress"))
            .timeout(Duration::from_secs(10))
            .json(&json!({ "progress": progress }))
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

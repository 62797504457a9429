//! Tasks: submission (with idempotency keys and delayed start), the durable queue with
//! leases and fair scheduling, the runtime operations agents call (claim, progress,
//! complete, fail, release), retries with backoff, the reaper that recovers lost and
//! overdue work, and analytics. Every change of a task's status or progress is sent to
//! its owner as `task_update`: the store writes the message into its outbox in the
//! change's own transaction (`store::outbox`), and the caller is answered once the
//! relay has published it (`realtime::outbox`), so a crash can never leave a change
//! stored and unannounced.
//!
//! Nothing lives only in memory: the store holds the queue, the leases, the attempts
//! and the backoffs, so a restart loses nothing. Memory holds only shortcuts: `wake`,
//! which lets an agent waiting in a long-poll claim hear about a new (or newly due) task
//! within milliseconds (a missed wake-up costs at most `RECHECK_EVERY`), and the
//! presence throttle.

pub mod analytics;
mod metrics_gauges;
pub mod output;

use crate::agents::AgentAction;
use crate::agents::AgentService;
use crate::domain::{
    AgentId, Capability, IdempotencyKey, MaxAttempts, Priority, TaskId, TaskQuery, TaskStatus,
    TimeoutSecs, UserId,
};
use crate::realtime::{Hub, Relay};
use crate::shutdown::Shutdown;
use crate::store::{
    AgentRecord, Announcement, AttemptRecord, Backoff, Inserted, NewTask, Outcome, Page, Store,
    StoreError, TaskFilter, TaskRecord,
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The default lease an agent holds on a claimed task; progress calls renew it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Longest `wait_s` a claim may ask for.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);
/// Most tasks one claim may take (`max_tasks`).
pub const MAX_CLAIM_BATCH: u32 = 32;
/// The first retry waits up to this long by default; each later one up to twice as long.
pub const DEFAULT_RETRY_BACKOFF_BASE: Duration = Duration::from_secs(1);
/// No retry waits longer than this.
pub const RETRY_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// How long an idempotency key names its task.
pub const IDEMPOTENCY_WINDOW: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// How far ahead `run_at` may be.
pub const MAX_RUN_AT_AHEAD: chrono::TimeDelta = chrono::TimeDelta::days(30);
/// A waiting claim also re-checks the queue this often, so a wake-up that was missed
/// (or one sent by another node, later) delays a task by at most this much.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the reaper looks for expired leases, timeouts and silent agents.
const REAP_EVERY: Duration = Duration::from_secs(1);
/// Tasks that become due within this long get a timer that wakes waiting claims at
/// that moment; later ones are found by the periodic re-check.
const WAKE_TIMER_HORIZON: Duration = Duration::from_secs(120);
/// Presence is written at most this often per agent: the store keeps it to the second,
/// and a busy agent would otherwise add two writes to every runtime call.
const PRESENCE_EVERY: Duration = Duration::from_millis(500);
/// Bounds the in-memory presence map (one entry per active agent); beyond it the map
/// starts over, which costs each agent one extra presence write.
const PRESENCE_MAP_MAX: usize = 10_000;

/// Queue settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a claim or a progress report holds the task for the agent.
    pub lease: Duration,
    /// Most bytes of output one task may store (`--task-output-max-bytes`).
    pub output_max_bytes: u64,
    /// The cap of the first retry's delay (`--retry-backoff-base-ms`); it doubles per
    /// attempt up to `RETRY_BACKOFF_MAX`.
    pub retry_backoff_base: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
            output_max_bytes: crate::domain::DEFAULT_TASK_OUTPUT_MAX_BYTES,
            retry_backoff_base: DEFAULT_RETRY_BACKOFF_BASE,
        }
    }
}

impl QueueSettings {
    fn backoff(&self) -> Backoff {
        Backoff {
            base_ms: self.retry_backoff_base.as_millis().max(1) as i64,
            max_ms: RETRY_BACKOFF_MAX.as_millis() as i64,
        }
    }
}

/// Who is looking at tasks.
#[derive(Debug, Clone, Copy)]
pub struct Viewer {
    pub user_id: UserId,
    pub admin: bool,
}

impl Viewer {
    fn may_see(&self, task: &TaskRecord) -> bool {
        self.admin || task.user_id == self.user_id
    }
}

/// A validated submission.
#[derive(Debug, Clone)]
pub struct Submission {
    pub query: TaskQuery,
    pub capability: Capability,
    pub priority: Priority,
    pub agent_id: Option<AgentId>,
    pub timeout: TimeoutSecs,
    pub max_attempts: MaxAttempts,
    pub idempotency_key: Option<IdempotencyKey>,
    pub run_at: Option<RunAt>,
}

/// A start time: in RFC 3339, at most `MAX_RUN_AT_AHEAD` from now (a time in the past
/// means "now").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunAt(DateTime<Utc>);

impl RunAt {
    pub fn parse(raw: &str, now: DateTime<Utc>) -> Result<Self, crate::domain::ParseError> {
        let at = DateTime::parse_from_rfc3339(raw.trim())
            .map_err(|_| crate::domain::ParseError::new("run_at must be an RFC 3339 time"))?
            .with_timezone(&Utc);
        if at > now + MAX_RUN_AT_AHEAD {
            return Err(crate::domain::ParseError::new(
                "run_at must be at most 30 days ahead",
            ));
        }
        Ok(Self(at))
    }

    pub fn get(self) -> DateTime<Utc> {
        self.0
    }
}

/// Why a queued task is not running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitingFor {
    /// Agents that may run it are online, but busy.
    Agent,
    /// No online agent the owner may use offers its capability.
    NoAgentOnline,
    /// Its `run_at` has not come.
    RunAt,
    /// It failed an attempt and waits out the retry backoff.
    RetryBackoff,
}

/// Where a task stands in the queue (both `None` unless it is queued).
#[derive(Debug, Clone, Copy, Default)]
pub struct Standing {
    pub queue_position: Option<i64>,
    pub waiting_for: Option<WaitingFor>,
}

/// What a submit did.
#[derive(Debug, Clone)]
pub enum Submitted {
    New(TaskRecord),
    /// The idempotency key already named this task: nothing was created.
    Duplicate(TaskRecord),
}

/// The `task_update` message: every change of a task's status or progress, to its
/// owner. `error` is always present: null unless the task failed, or the attempt
/// failed and will be retried.
#[derive(Debug, Serialize)]
pub struct TaskUpdate<'a> {
    pub task_id: TaskId,
    pub status: TaskStatus,
    pub query: &'a str,
    pub progress: u8,
    pub agent_id: Option<AgentId>,
    /// The current attempt while running, else the attempts used.
    pub attempt: u32,
    pub error: Option<&'a str>,
    /// The result rides along on completion, so a watcher needs no extra request.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<&'a serde_json::Value>,
}

/// What a change of `task` announces: `task_update` to its owner (the `announce`
/// function the store's task methods take).
pub fn task_update(task: &TaskRecord) -> Vec<Announcement> {
    vec![Announcement::new(
        Some(task.user_id),
        "task_update",
        &TaskUpdate::of(task),
    )]
}

impl<'a> TaskUpdate<'a> {
    pub fn of(task: &'a TaskRecord) -> Self {
        Self {
            task_id: task.id,
            status: task.status,
            query: &task.query,
            progress: task.progress,
            agent_id: task.agent_id,
            attempt: task.attempts,
            error: task.error.as_deref(),
            result: (task.status == TaskStatus::Completed)
                .then_some(task.result.as_ref().unwrap_or(&serde_json::Value::Null)),
        }
    }
}

/// Why a task operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    /// No such task, or not one the caller may see.
    #[error("task not found")]
    NotFound,
    /// `agent_id` names no agent the submitter's tasks may run on.
    #[error("agent not found")]
    AgentNotFound,
    /// The named agent does not offer the task's capability, so it could never run it.
    #[error("agent {agent} does not offer capability {capability}")]
    AgentLacksCapability {
        agent: AgentId,
        capability: Capability,
    },
    /// The result (or a retry) was asked for before the task finished.
    #[error("the task has not finished yet")]
    NotFinished,
    /// Cancel of a finished task.
    #[error("the task already finished ({0})")]
    AlreadyFinished(TaskStatus),
    /// The owner canceled the task; the agent should stop.
    #[error("the task was canceled")]
    Canceled,
    /// The task is not this agent's running task (finished, timed out, re-queued).
    #[error("the task is not running on this agent ({0})")]
    NotYours(TaskStatus),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The task service. Cheap to clone.
#[derive(Clone)]
pub struct TaskService {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// For transient output frames (see `output`).
    hub: Hub,
    /// Publishes what the store's outbox holds; awaited after each announced change.
    relay: Relay,
    agents: AgentService,
    settings: QueueSettings,
    /// Bumped whenever a task becomes claimable; waiting claims watch it.
    wake: watch::Sender<u64>,
    /// Ends waiting claims at shutdown, so draining is not held up by long polls.
    shutdown: Shutdown,
    /// Wakes the followers of each task's output (see `output`).
    feeds: output::Feeds,
    /// When each agent's presence was last written from this node (see
    /// `PRESENCE_EVERY`). A std mutex: held for a map lookup, never across an await.
    presence: Mutex<HashMap<AgentId, Instant>>,
    /// The `/metrics` queue gauges.
    gauges: metrics_gauges::QueueGauges,
}

impl TaskService {
    /// Waiting claims give up when `shutdown` fires.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        relay: Relay,
        agents: AgentService,
        settings: QueueSettings,
        shutdown: Shutdown,
    ) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                store,
                hub,
                relay,
                agents,
                settings,
                wake,
                shutdown,
                feeds: output::Feeds::default(),
                presence: Mutex::new(HashMap::new()),
                gauges: metrics_gauges::QueueGauges::default(),
            }),
        }
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// Enqueues a task for `user` and wakes waiting agents. With an idempotency key
    /// the user already used within 24 h, creates nothing and returns that task.
    pub async fn submit(&self, user: UserId, sub: Submission) -> Result<Submitted, TaskError> {
        if let Some(agent_id) = sub.agent_id {
            let agent = match self.store().agent(agent_id).await {
                // Tenancy: only an agent that may run this user's tasks (theirs or a
                // shared one); any other is as unknown as a missing one.
                Ok(agent) if agent.runs_tasks_of(user) => agent,
                Ok(_) | Err(StoreError::NotFound) => return Err(TaskError::AgentNotFound),
                Err(e) => return Err(e.into()),
            };
            if !agent.capabilities.contains(&sub.capability) {
                return Err(TaskError::AgentLacksCapability {
                    agent: agent_id,
                    capability: sub.capability,
                });
            }
        }
        let new = NewTask {
            id: TaskId::new(),
            user_id: user,
            query: sub.query,
            capability: sub.capability,
            priority: sub.priority,
            agent_id: sub.agent_id,
            timeout: sub.timeout,
            max_attempts: sub.max_attempts,
            idempotency_key: sub.idempotency_key,
            run_at: sub.run_at.map(RunAt::get),
            created_at: Utc::now(),
        };
        let task = match self
            .store()
            .insert_task(&new, IDEMPOTENCY_WINDOW, &task_update)
            .await?
        {
            Inserted::New(task) => task,
            Inserted::Duplicate(task) => {
                tracing::info!(task_id = %task.id, user_id = %user, "duplicate submit (idempotency key)");
                return Ok(Submitted::Duplicate(task));
            }
        };
        tracing::info!(task_id = %task.id, user_id = %user, capability = %task.capability, "task submitted");
        metrics::counter!("zerostate_tasks_submitted_total").increment(1);
        self.announced(std::slice::from_ref(&task)).await;
        self.wake_when_due(task.available_at);
        Ok(Submitted::New(task))
    }

    /// Submits a finished task again as a new task: same query, capability, priority,
    /// agent, timeout and attempts.
    pub async fn retry(&self, task: &TaskRecord) -> Result<TaskRecord, TaskError> {
        if !task.status.is_finished() {
            return Err(TaskError::NotFinished);
        }
        let sub = Submission {
            query: TaskQuery::parse(task.query.clone()).map_err(StoreError::from)?,
            capability: task.capability.clone(),
            priority: task.priority,
            agent_id: task.requested_agent_id,
            timeout: TimeoutSecs::parse(i64::from(task.timeout_s)).map_err(StoreError::from)?,
            max_attempts: MaxAttempts::parse(i64::from(task.max_attempts))
                .map_err(StoreError::from)?,
            idempotency_key: None,
            run_at: None,
        };
        match self.submit(task.user_id, sub).await? {
            Submitted::New(task) | Submitted::Duplicate(task) => Ok(task),
        }
    }

    /// Tasks the store put back in the queue outside the queue's own paths (their
    /// agent was deleted; the deletion announced them): wakes waiting claims, so they
    /// run again at once.
    pub async fn requeued(&self, tasks: &[TaskRecord]) {
        if !tasks.is_empty() {
            self.wake();
        }
    }

    /// A task the viewer may see.
    pub async fn get(&self, viewer: Viewer, id: TaskId) -> Result<TaskRecord, TaskError> {
        match self.store().task(id).await {
            Ok(task) if viewer.may_see(&task) => Ok(task),
            Ok(_) | Err(StoreError::NotFound) => Err(TaskError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The task's attempts, oldest first (the caller has checked it may see it).
    pub async fn attempts(&self, task: &TaskRecord) -> Result<Vec<AttemptRecord>, TaskError> {
        Ok(self.store().task_attempts(task.id).await?)
    }

    /// Where a queued task stands: its place in the order its agents would take tasks,
    /// and why it is not running. Both `None` for a task that is not queued.
    pub async fn standing(&self, task: &TaskRecord) -> Result<Standing, TaskError> {
        if task.status != TaskStatus::Queued {
            return Ok(Standing::default());
        }
        let now = Utc::now();
        let Some(found) = self.store().queue_standing(task, now).await? else {
            // It left the queue since it was read.
            return Ok(Standing::default());
        };
        let waiting_for = if task.available_at > now {
            if task.run_at.is_some_and(|r| r >= task.available_at) {
                WaitingFor::RunAt
            } else {
                WaitingFor::RetryBackoff
            }
        } else if found.eligible_online_agents == 0 {
            WaitingFor::NoAgentOnline
        } else {
            WaitingFor::Agent
        };
        Ok(Standing {
            queue_position: Some(found.position.max(1)),
            waiting_for: Some(waiting_for),
        })
    }

    /// One page of tasks; the caller has already decided whose (`filter.user`).
    pub async fn list(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, TaskError> {
        Ok(self.store().list_tasks(filter).await?)
    }

    /// Cancels a queued or running task. A running task's agent learns of it on its
    /// next progress or completion call (409 `canceled`).
    pub async fn cancel(&self, viewer: Viewer, id: TaskId) -> Result<TaskRecord, TaskError> {
        let owner = (!viewer.admin).then_some(viewer.user_id);
        match self
            .store()
            .cancel_task(id, owner, Utc::now(), &task_update)
            .await?
        {
            Some(task) => {
                tracing::info!(task_id = %id, "task canceled");
                count_finished(task.status);
                self.announced(std::slice::from_ref(&task)).await;
                Ok(task)
            }
            None => {
                let task = self.get(viewer, id).await?;
                Err(TaskError::AlreadyFinished(task.status))
            }
        }
    }

    /// Takes up to `max` tasks the agent may run, waiting up to `wait` for at least
    /// one. Returns none when nothing came, once `ended` fires (the caller's token was
    /// revoked: checked before every attempt) or when the server is shutting down.
    pub async fn claim(
        &self,
        agent: &AgentRecord,
        wait: Duration,
        max: u32,
        ended: &CancellationToken,
    ) -> Result<Vec<TaskRecord>, TaskError> {
        self.seen(agent.id).await;
        let max = max.clamp(1, MAX_CLAIM_BATCH);
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        // Subscribing before the first attempt means a submit that lands between the
        // attempt and the wait still wakes us.
        let mut wake = self.inner.wake.subscribe();
        loop {
            wake.borrow_and_update();
            if ended.is_cancelled() {
                return Ok(Vec::new());
            }
            let now = Utc::now();
            let tasks = self
                .store()
                .claim_tasks(agent.id, max, self.lease_until(now), now, &task_update)
                .await?;
            if !tasks.is_empty() {
                metrics::counter!("zerostate_tasks_claimed_total").increment(tasks.len() as u64);
                for task in &tasks {
                    tracing::info!(task_id = %task.id, agent_id = %agent.id, attempt = task.attempts, "task claimed");
                }
                self.announced_to_agent(&tasks);
                return Ok(tasks);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.inner.shutdown.is_triggered() {
                return Ok(Vec::new());
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(left.min(RECHECK_EVERY)) => {}
                _ = self.inner.shutdown.triggered() => return Ok(Vec::new()),
                _ = ended.cancelled() => return Ok(Vec::new()),
            }
        }
    }

    /// Records progress of the agent's running task and renews its lease.
    pub async fn progress(
        &self,
        agent: &AgentRecord,
        id: TaskId,
        progress: u8,
    ) -> Result<TaskRecord, TaskError> {
        self.seen(agent.id).await;
        let now = Utc::now();
        match self
            .store()
            .report_progress(
                id,
                agent.id,
                progress,
                self.lease_until(now),
                now,
                &task_update,
            )
            .await?
        {
            Some((task, changed)) => {
                if changed {
                    self.announced_to_agent(std::slice::from_ref(&task));
                }
                Ok(task)
            }
            None => Err(self.why_not_running(agent.id, id).await),
        }
    }

    /// Ends the agent's running attempt with a result or an error.
    pub async fn finish(
        &self,
        agent: &AgentRecord,
        id: TaskId,
        outcome: Outcome,
    ) -> Result<TaskRecord, TaskError> {
        self.seen(agent.id).await;
        match self
            .store()
            .finish_attempt(
                id,
                agent.id,
                &outcome,
                self.inner.settings.backoff(),
                Utc::now(),
                &task_update,
            )
            .await?
        {
            Some(task) => {
                tracing::info!(task_id = %id, agent_id = %agent.id, status = %task.status, "attempt finished");
                count_finished(task.status);
                self.announced_to_agent(std::slice::from_ref(&task));
                if task.status == TaskStatus::Queued {
                    self.wake_when_due(task.available_at);
                }
                Ok(task)
            }
            None => Err(self.why_not_running(agent.id, id).await),
        }
    }

    /// Hands the agent's running task back without using an attempt: the agent is
    /// stopping cleanly, so it is offline at once (its next call brings it back).
    pub async fn release(&self, agent: &AgentRecord, id: TaskId) -> Result<TaskRecord, TaskError> {
        let offline = AgentRecord {
            online: false,
            ..agent.clone()
        };
        // The agent's audience, read before the change: the announcement of it going
        // offline is written in the release's transaction.
        let audience = self.inner.agents.audience().await;
        let announce = |(task, went_offline): &(TaskRecord, bool)| {
            let mut messages = task_update(task);
            if *went_offline {
                messages.extend(audience.announce(&offline, AgentAction::Updated));
            }
            messages
        };
        match self
            .store()
            .release_task(id, agent.id, Utc::now(), &announce)
            .await?
        {
            Some((task, went_offline)) => {
                tracing::info!(task_id = %id, agent_id = %agent.id, "task handed back");
                metrics::counter!("zerostate_tasks_handed_back_total").increment(1);
                self.forget_presence(agent.id);
                if went_offline {
                    tracing::info!(agent_id = %agent.id, "agent offline (stopped)");
                }
                self.announced_to_agent(std::slice::from_ref(&task));
                self.wake();
                Ok(task)
            }
            None => Err(self.why_not_running(agent.id, id).await),
        }
    }

    /// At shutdown: the agents this server runs itself (the built-in agent) hand their
    /// running tasks back, in-process, without using attempts. Called while the
    /// listener still serves, so the updates reach their owners.
    pub async fn hand_back_server_agents(&self) {
        match self
            .store()
            .release_server_agent_tasks(Utc::now(), &task_update)
            .await
        {
            Ok(tasks) => {
                for task in &tasks {
                    tracing::info!(task_id = %task.id, "task handed back at shutdown");
                }
                self.announced(&tasks).await;
                if !tasks.is_empty() {
                    self.wake();
                }
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not hand back the built-in agent's tasks")
            }
        }
    }

    /// Explains to an agent why its task is no longer its to report on.
    async fn why_not_running(&self, agent: AgentId, id: TaskId) -> TaskError {
        match self.store().task(id).await {
            Ok(task) if task.status == TaskStatus::Canceled => TaskError::Canceled,
            Ok(task) if task.agent_id == Some(agent) || task.status == TaskStatus::Queued => {
                TaskError::NotYours(task.status)
            }
            // Another agent's task: as far as this agent is concerned it does not exist.
            Ok(_) | Err(StoreError::NotFound) => TaskError::NotFound,
            Err(e) => e.into(),
        }
    }

    /// One pass of the reaper: overdue tasks fail, tasks with expired leases go back to
    /// the queue after a backoff (or fail once their attempts are used up), silent
    /// agents go offline, and the queue gauges are refreshed.
    pub async fn reap(&self) -> Result<(), StoreError> {
        // Timeouts first, so an overdue task whose lease also ran out fails rather than
        // being retried.
        let timed_out = self
            .store()
            .fail_timed_out(Utc::now(), &task_update)
            .await?;
        for task in &timed_out {
            tracing::info!(task_id = %task.id, "task timed out");
            count_finished(task.status);
        }
        self.announced(&timed_out).await;
        let expired = self
            .store()
            .requeue_expired(self.inner.settings.backoff(), Utc::now(), &task_update)
            .await?;
        for task in &expired {
            tracing::warn!(task_id = %task.id, status = %task.status, attempts = task.attempts, "lease expired");
            metrics::counter!("zerostate_task_leases_expired_total").increment(1);
            count_finished(task.status);
        }
        self.announced(&expired).await;
        for task in &expired {
            if task.status == TaskStatus::Queued {
                self.wake_when_due(task.available_at);
            }
        }
        self.inner.agents.sweep_offline().await?;
        let gauges = self.store().queue_gauges().await?;
        self.inner.gauges.set(&gauges);
        Ok(())
    }

    /// Runs `reap` every `REAP_EVERY` until shutdown.
    pub async fn run_reaper(self, shutdown: Shutdown) {
        let mut tick = tokio::time::interval(REAP_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(err) = self.reap().await {
                        tracing::warn!(error = %err, "reaper pass failed");
                    }
                }
                _ = shutdown.triggered() => break,
            }
        }
    }

    fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.inner.settings.lease).unwrap_or_default()
    }

    /// Records a sign of life, at most every `PRESENCE_EVERY` per agent.
    async fn seen(&self, agent: AgentId) {
        let now = Instant::now();
        let due = {
            let mut presence = self
                .inner
                .presence
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match presence.get(&agent) {
                Some(last) if now.duration_since(*last) < PRESENCE_EVERY => false,
                _ => {
                    if presence.len() >= PRESENCE_MAP_MAX {
                        presence.clear();
                    }
                    presence.insert(agent, now);
                    true
                }
            }
        };
        if due {
            self.inner.agents.seen(agent).await;
        }
    }

    /// After the agent went offline, its next call must be written (and announced).
    pub fn forget_presence(&self, agent: AgentId) {
        self.inner
            .presence
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&agent);
    }

    /// Wakes the claims waiting on this node and, in a cluster, on every other (a
    /// backplane signal, at most once: a missed one costs at most `RECHECK_EVERY`).
    fn wake(&self) {
        self.wake_from_peer();
        self.inner
            .hub
            .signal_cluster(crate::cluster::Signal::ClaimWake);
    }

    /// Wakes the claims waiting on this node only (another node's submit).
    pub fn wake_from_peer(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Wakes waiting claims now, or when a task that is not yet due becomes due (a
    /// `run_at` or a backoff), so it does not wait for the periodic re-check.
    fn wake_when_due(&self, due: DateTime<Utc>) {
        let delay = (due - Utc::now()).to_std().unwrap_or_default();
        if delay.is_zero() {
            self.wake();
        } else if delay <= WAKE_TIMER_HORIZON {
            let (service, shutdown) = (self.clone(), self.inner.shutdown.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => service.wake(),
                    _ = shutdown.triggered() => {}
                }
            });
        }
    }

    /// After the store committed changes of `tasks` (and their `task_update`s, in its
    /// outbox): ends the output feeds of finished ones, and waits until the relay has
    /// published the updates, so the caller's answer comes after them as it always did
    /// (the owner's own submit or cancel, the reaper, the shutdown's hand-back). For a
    /// submit the wait is also backpressure: submits that did not wait outran the
    /// agents, and the longer queue made every queue-position read dearer (3,000 tasks,
    /// 8 agent loops, 4 submitters: 383-393 tasks/s end to end instead of 712-739).
    async fn announced(&self, tasks: &[TaskRecord]) {
        if !tasks.is_empty() {
            self.end_feeds(tasks);
            self.inner.relay.flush().await;
        }
    }

    /// Like [`announced`](Self::announced), for an agent's call: the agent is not the
    /// audience of its task's `task_update`s, so its answer does not wait for the
    /// relay (the owner's updates still go out in commit order, from the outbox). An
    /// agent loop that waited would spend most of each call behind the relay's pass,
    /// which shares the one writer with every other change.
    fn announced_to_agent(&self, tasks: &[TaskRecord]) {
        if !tasks.is_empty() {
            self.end_feeds(tasks);
            self.inner.relay.nudge();
        }
    }

    /// Ends the output feeds of the tasks that finished.
    fn end_feeds(&self, tasks: &[TaskRecord]) {
        for task in tasks.iter().filter(|t| t.status.is_finished()) {
            self.inner.feeds.finished(task.id, task.status);
        }
    }
}

/// Counts a task reaching a final status (a re-queue is not one).
fn count_finished(status: TaskStatus) {
    if status.is_finished() {
        metrics::counter!("zerostate_tasks_finished_total", "status" => status.as_str())
            .increment(1);
    }
}

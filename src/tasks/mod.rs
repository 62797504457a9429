//! Tasks: submission, the durable queue with leases, the runtime operations agents call
//! (claim, progress, complete, fail), the reaper that recovers lost and overdue work,
//! and analytics. Every change of a task's status or progress is sent to its owner as
//! `task_update`, after the store has it.
//!
//! Nothing lives only in memory: the store holds the queue, the leases and the
//! attempts, so a restart loses nothing. The one piece of memory is `wake`, which lets
//! an agent waiting in a long-poll claim hear about a new task within milliseconds; a
//! missed wake-up costs at most `RECHECK_EVERY`.

pub mod analytics;

use crate::agents::AgentService;
use crate::domain::{
    AgentId, Capability, MessageType, Priority, TaskId, TaskQuery, TaskStatus, TimeoutSecs, UserId,
};
use crate::realtime::{Hub, Target};
use crate::shutdown::Shutdown;
use crate::store::{
    AgentRecord, NewTask, Outcome, Page, Store, StoreError, TaskFilter, TaskRecord,
};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// Attempts a task gets before a lost lease or a retryable failure fails it for good.
pub const MAX_ATTEMPTS: u32 = 3;
/// The default lease an agent holds on a claimed task; progress calls renew it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);
/// Longest `wait_s` a claim may ask for.
pub const MAX_CLAIM_WAIT: Duration = Duration::from_secs(30);
/// A waiting claim also re-checks the queue this often, so a wake-up that was missed
/// (or one sent by another node, later) delays a task by at most this much.
const RECHECK_EVERY: Duration = Duration::from_secs(1);
/// How often the reaper looks for expired leases, timeouts and silent agents.
const REAP_EVERY: Duration = Duration::from_secs(1);

/// Queue settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct QueueSettings {
    /// How long a claim or a progress report holds the task for the agent.
    pub lease: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            lease: DEFAULT_LEASE,
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
    /// The result was asked for before the task finished.
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
    hub: Hub,
    agents: AgentService,
    settings: QueueSettings,
    /// Bumped whenever a task becomes claimable; waiting claims watch it.
    wake: watch::Sender<u64>,
    /// Ends waiting claims at shutdown, so draining is not held up by long polls.
    shutdown: Shutdown,
}

impl TaskService {
    /// Waiting claims give up when `shutdown` fires.
    pub fn new(
        store: Arc<dyn Store>,
        hub: Hub,
        agents: AgentService,
        settings: QueueSettings,
        shutdown: Shutdown,
    ) -> Self {
        let (wake, _) = watch::channel(0);
        Self {
            inner: Arc::new(Inner {
                store,
                hub,
                agents,
                settings,
                wake,
                shutdown,
            }),
        }
    }

    fn store(&self) -> &dyn Store {
        self.inner.store.as_ref()
    }

    /// Enqueues a task for `user` and wakes waiting agents.
    pub async fn submit(&self, user: UserId, sub: Submission) -> Result<TaskRecord, TaskError> {
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
            created_at: Utc::now(),
        };
        let task = self.store().insert_task(&new).await?;
        tracing::info!(task_id = %task.id, user_id = %user, capability = %task.capability, "task submitted");
        metrics::counter!("zerostate_tasks_submitted_total").increment(1);
        self.publish(&task).await;
        self.wake();
        Ok(task)
    }

    /// Announces tasks the store put back in the queue outside the queue's own paths
    /// (their agent was deleted) and wakes waiting claims, so they run again at once.
    pub async fn requeued(&self, tasks: &[TaskRecord]) {
        for task in tasks {
            self.publish(task).await;
        }
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

    /// One page of tasks; the caller has already decided whose (`filter.user`).
    pub async fn list(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, TaskError> {
        Ok(self.store().list_tasks(filter).await?)
    }

    /// Cancels a queued or running task. A running task's agent learns of it on its
    /// next progress or completion call (409 `canceled`).
    pub async fn cancel(&self, viewer: Viewer, id: TaskId) -> Result<TaskRecord, TaskError> {
        let owner = (!viewer.admin).then_some(viewer.user_id);
        match self.store().cancel_task(id, owner, Utc::now()).await? {
            Some(task) => {
                tracing::info!(task_id = %id, "task canceled");
                count_finished(task.status);
                self.publish(&task).await;
                Ok(task)
            }
            None => {
                let task = self.get(viewer, id).await?;
                Err(TaskError::AlreadyFinished(task.status))
            }
        }
    }

    /// Takes the next task the agent may run, waiting up to `wait` for one. Returns
    /// `None` when nothing came (or the server is shutting down).
    pub async fn claim(
        &self,
        agent: &AgentRecord,
        wait: Duration,
    ) -> Result<Option<TaskRecord>, TaskError> {
        self.inner.agents.seen(agent.id).await;
        let deadline = Instant::now() + wait.min(MAX_CLAIM_WAIT);
        // Subscribing before the first attempt means a submit that lands between the
        // attempt and the wait still wakes us.
        let mut wake = self.inner.wake.subscribe();
        loop {
            wake.borrow_and_update();
            let now = Utc::now();
            let lease_until =
                now + chrono::Duration::from_std(self.inner.settings.lease).unwrap_or_default();
            if let Some(task) = self
                .store()
                .claim_task(agent.id, &agent.capabilities, lease_until, now)
                .await?
            {
                tracing::info!(task_id = %task.id, agent_id = %agent.id, attempt = task.attempts, "task claimed");
                metrics::counter!("zerostate_tasks_claimed_total").increment(1);
                self.publish(&task).await;
                return Ok(Some(task));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.inner.shutdown.is_triggered() {
                return Ok(None);
            }
            tokio::select! {
                _ = wake.changed() => {}
                _ = tokio::time::sleep(left.min(RECHECK_EVERY)) => {}
                _ = self.inner.shutdown.triggered() => return Ok(None),
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
        self.inner.agents.seen(agent.id).await;
        let now = Utc::now();
        let lease_until =
            now + chrono::Duration::from_std(self.inner.settings.lease).unwrap_or_default();
        match self
            .store()
            .report_progress(id, agent.id, progress, lease_until, now)
            .await?
        {
            Some((task, changed)) => {
                if changed {
                    self.publish(&task).await;
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
        self.inner.agents.seen(agent.id).await;
        match self
            .store()
            .finish_attempt(id, agent.id, &outcome, MAX_ATTEMPTS, Utc::now())
            .await?
        {
            Some(task) => {
                tracing::info!(task_id = %id, agent_id = %agent.id, status = %task.status, "attempt finished");
                count_finished(task.status);
                self.publish(&task).await;
                if task.status == TaskStatus::Queued {
                    self.wake();
                }
                Ok(task)
            }
            None => Err(self.why_not_running(agent.id, id).await),
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
    /// the queue (or fail after `MAX_ATTEMPTS`), silent agents go offline.
    pub async fn reap(&self) -> Result<(), StoreError> {
        // Timeouts first, so an overdue task whose lease also ran out fails rather than
        // being retried.
        for task in self.store().fail_timed_out(Utc::now()).await? {
            tracing::info!(task_id = %task.id, "task timed out");
            count_finished(task.status);
            self.publish(&task).await;
        }
        let mut requeued = false;
        for task in self
            .store()
            .requeue_expired(MAX_ATTEMPTS, Utc::now())
            .await?
        {
            tracing::warn!(task_id = %task.id, status = %task.status, attempts = task.attempts, "lease expired");
            requeued |= task.status == TaskStatus::Queued;
            metrics::counter!("zerostate_task_leases_expired_total").increment(1);
            count_finished(task.status);
            self.publish(&task).await;
        }
        if requeued {
            self.wake();
        }
        self.inner.agents.sweep_offline().await
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

    fn wake(&self) {
        self.inner.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Sends the owner `task_update`. A failed publish is logged: the change is stored,
    /// and the owner's client reloads on reconnect.
    async fn publish(&self, task: &TaskRecord) {
        let mut data = json!({
            "task_id": task.id,
            "status": task.status,
            "query": task.query,
            "progress": task.progress,
            "agent_id": task.agent_id,
        });
        if let Some(error) = &task.error {
            data["error"] = json!(error);
        }
        // The result rides along on completion, so a watcher needs no extra request.
        if task.status == TaskStatus::Completed {
            data["result"] = task.result.clone().unwrap_or(serde_json::Value::Null);
        }
        if let Err(err) = self
            .inner
            .hub
            .publish(
                Target::User(task.user_id),
                MessageType::known("task_update"),
                data,
            )
            .await
        {
            tracing::warn!(task_id = %task.id, error = format!("{err:#}"), "task_update not published");
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

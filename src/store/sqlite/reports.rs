//! The runtime's writes (agents' claims and reports: progress, the end of an attempt),
//! committed in groups.
//!
//! Claims, progress reports and completions are the runtime's most frequent writes (an
//! agent makes five or more per task) and each alone costs the one writer connection a
//! transaction: the UPDATE, the task's `task_update` in the outbox, the commit, two
//! round trips to the connection's thread with the writer idle in between. Those that
//! wait for the writer at the same time are therefore run together: one task (the
//! runner) takes the writer, then everything queued by then (up to [`GROUP_MAX`]), and
//! runs it as one transaction: one UPDATE … FROM per kind of report present (progress,
//! renewal, completion, failure), then each claim's picks in turn (each pick sees the
//! ones before it, as consecutive claims would), and one outbox INSERT with the commit.
//! Each caller gets exactly the answer it would have had alone.
//!
//! - Order: two reports for one task never share a group (the later waits for the
//!   next), so a task's reports, and so its `task_update`s, keep their order. A group's
//!   claims run after its reports, and their announcements come after the reports':
//!   a task that a failed report put back in the queue and a claim took again is
//!   announced queued, then running.
//! - Cancellation: the runner is a task of its own, so a caller that goes away (its
//!   HTTP request dropped) cannot abort the group the others are in; its report is
//!   still applied, as it would be had it been alone and already sent. A claim whose
//!   caller is gone when its group starts is left out (it would take tasks nobody
//!   receives, back in the queue only when their leases run out); one whose caller
//!   goes while the group runs is like a claim whose answer is lost on the way back.
//! - Bounds: at most [`QUEUE_MAX`] writes wait; beyond, one is refused at once.
//!   A caller waits at most [`ANSWER_DEADLINE`] for its answer.
//! - Failure: a group that fails is rolled back as a whole (the writer's transaction
//!   guard) and each of its reports is run again alone, so an error reaches only the
//!   caller whose report causes it.

use super::tasks::{backoff_sql, claim_one, claim_sql, task_from_row, TASK_COLUMNS};
use super::{outbox, SqliteStore, WriteTx, BEGIN};
use crate::domain::{AgentId, TaskId};
use crate::store::{to_millis, Announce, Announcement, Backoff, Outcome, StoreError, TaskRecord};
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Claims and reports per group (a report binds at most 7 parameters, far below
/// SQLite's parameter limit; a claim runs its own statements).
const GROUP_MAX: usize = 128;
/// Claims and reports that may wait for a group; one more is refused.
const QUEUE_MAX: usize = 8192;
/// The longest a caller waits for its group's answer (the writer's acquire timeout,
/// plus the group's own work, plus running it again alone).
const ANSWER_DEADLINE: Duration = Duration::from_secs(45);

/// One report of an agent about its running task.
pub(super) struct Report {
    pub(super) id: TaskId,
    pub(super) agent: AgentId,
    pub(super) at: DateTime<Utc>,
    pub(super) change: Change,
    pub(super) announce: Announce<'static, TaskRecord>,
}

/// One claim of an agent: up to `max` tasks (`TaskStore::claim_tasks`).
pub(super) struct Claim {
    pub(super) agent: AgentId,
    pub(super) max: u32,
    pub(super) lease_until: DateTime<Utc>,
    pub(super) at: DateTime<Utc>,
    pub(super) announce: Announce<'static, TaskRecord>,
}

/// What a report changes.
pub(super) enum Change {
    /// `TaskStore::report_progress`: the value, and the lease's new end.
    Progress {
        progress: u8,
        lease_until: DateTime<Utc>,
    },
    /// `TaskStore::finish_attempt`.
    Finish { outcome: Outcome, backoff: Backoff },
}

/// What a report's caller gets: for progress, the task and whether its value changed;
/// for a finish, the task. `None`: not this agent's running task.
pub(super) type Answer = Result<Option<(TaskRecord, bool)>, StoreError>;

/// What a claim's caller gets: the tasks it took, in the order it took them.
pub(super) type ClaimAnswer = Result<Vec<TaskRecord>, StoreError>;

/// A write waiting for a group, with where its answer goes.
enum Item {
    Report(Report, oneshot::Sender<Answer>),
    Claim(Claim, oneshot::Sender<ClaimAnswer>),
}

/// The writes waiting for a group, and whether a runner is on its way.
#[derive(Default)]
pub(super) struct Reports {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<Item>,
    /// A runner task exists; it clears this (under the lock) when it finds nothing left.
    running: bool,
}

impl Reports {
    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while it is held; the queue stays consistent regardless.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl SqliteStore {
    /// Queues the report for the next group and waits for its answer.
    pub(super) async fn report_in_group(&self, report: Report) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Item::Report(report, reply))?;
        answered(answer).await?
    }

    /// Queues the claim for the next group and waits for the tasks it took.
    pub(super) async fn claim_in_group(&self, claim: Claim) -> ClaimAnswer {
        let (reply, answer) = oneshot::channel();
        self.enqueue(Item::Claim(claim, reply))?;
        answered(answer).await?
    }

    /// Queues a write, starting a runner if none is on its way.
    fn enqueue(&self, item: Item) -> Result<(), StoreError> {
        let start_runner = {
            let mut queue = self.reports.queue();
            if queue.waiting.len() >= QUEUE_MAX {
                return Err(failure("too many agent writes waiting for the database"));
            }
            queue.waiting.push_back(item);
            !std::mem::replace(&mut queue.running, true)
        };
        if start_runner {
            tokio::spawn(self.clone().run_groups());
        }
        Ok(())
    }

    /// The runner: takes the writer, then a group, until nothing is left.
    async fn run_groups(self) {
        let _stopped = RunnerGuard(&self);
        loop {
            // The writer first: writes that come while it is busy join this group.
            let tx = self.write_tx().await;
            let group = self.next_group();
            if group.is_empty() {
                return;
            }
            let (mut reports, mut claims) = (Vec::new(), Vec::new());
            for item in group {
                match item {
                    Item::Report(report, reply) => reports.push((report, reply)),
                    // A claim whose caller has gone (its long poll dropped) takes
                    // nothing: its tasks would wait for their leases to run out.
                    Item::Claim(_, reply) if reply.is_closed() => {}
                    Item::Claim(claim, reply) => claims.push((claim, reply)),
                }
            }
            let (reports, report_replies): (Vec<Report>, Vec<_>) = reports.into_iter().unzip();
            let (claims, claim_replies): (Vec<Claim>, Vec<_>) = claims.into_iter().unzip();
            let writes = Writes {
                reports: &reports,
                claims: &claims,
            };
            if writes.len() == 0 {
                // Only claims whose callers had gone: the writer goes back unused.
                continue;
            }
            let answers = match tx {
                Ok(tx) => run_group(tx, writes).await,
                Err(err) => Err(err),
            };
            match answers {
                Ok(answers) => {
                    for (reply, answer) in report_replies.into_iter().zip(answers.reported) {
                        let _ = reply.send(Ok(answer));
                    }
                    for (reply, tasks) in claim_replies.into_iter().zip(answers.taken) {
                        let _ = reply.send(Ok(tasks));
                    }
                }
                Err(err) if writes.len() == 1 => {
                    if let Some(reply) = report_replies.into_iter().next() {
                        let _ = reply.send(Err(err));
                    } else if let Some(reply) = claim_replies.into_iter().next() {
                        let _ = reply.send(Err(err));
                    }
                }
                Err(err) => {
                    // Nothing of the group was kept: each write again, alone, so an
                    // error reaches only the caller whose write causes it.
                    tracing::debug!(error = %err, writes = writes.len(), "group failed; each write alone");
                    for (report, reply) in reports.iter().zip(report_replies) {
                        let alone = self.alone(Writes::report(report)).await;
                        let _ = reply.send(alone.map(|mut a| a.reported.pop().flatten()));
                    }
                    for (claim, reply) in claims.iter().zip(claim_replies) {
                        let alone = self.alone(Writes::claim(claim)).await;
                        let _ = reply.send(alone.map(|mut a| a.taken.pop().unwrap_or_default()));
                    }
                }
            }
        }
    }

    /// Runs writes as a group of their own on a fresh transaction.
    async fn alone(&self, writes: Writes<'_>) -> Result<GroupAnswers, StoreError> {
        run_group(self.write_tx().await?, writes).await
    }

    /// Takes the next group off the queue: the oldest writes, at most one report per
    /// task. Empty (and the runner marked gone, under the same lock) when nothing waits.
    fn next_group(&self) -> Vec<Item> {
        let mut queue = self.reports.queue();
        if queue.waiting.is_empty() {
            queue.running = false;
            return Vec::new();
        }
        let mut tasks = HashSet::new();
        let mut group = Vec::new();
        let mut later = VecDeque::new();
        while let Some(item) = queue.waiting.pop_front() {
            let fits = group.len() < GROUP_MAX
                && match &item {
                    Item::Report(report, _) => tasks.insert(report.id),
                    Item::Claim(..) => true,
                };
            if fits {
                group.push(item);
            } else {
                later.push_back(item);
            }
        }
        queue.waiting = later;
        group
    }
}

/// Waits (at most [`ANSWER_DEADLINE`]) for a group's answer.
async fn answered<T>(answer: oneshot::Receiver<T>) -> Result<T, StoreError> {
    match tokio::time::timeout(ANSWER_DEADLINE, answer).await {
        Ok(Ok(answer)) => Ok(answer),
        Ok(Err(_)) => Err(failure("the agent's write was dropped")),
        Err(_) => Err(failure("the agent's write was not answered in time")),
    }
}

/// Marks the runner gone if it ends early (a panic): the reports it leaves are
/// dropped, so their callers get an error rather than waiting for nobody.
struct RunnerGuard<'a>(&'a SqliteStore);

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.reports.queue();
            queue.waiting.clear();
            queue.running = false;
        }
    }
}

/// One group's writes, by kind, each in queue order.
#[derive(Clone, Copy)]
struct Writes<'a> {
    reports: &'a [Report],
    claims: &'a [Claim],
}

impl<'a> Writes<'a> {
    /// One report alone.
    fn report(report: &'a Report) -> Self {
        Self {
            reports: std::slice::from_ref(report),
            claims: &[],
        }
    }

    /// One claim alone.
    fn claim(claim: &'a Claim) -> Self {
        Self {
            reports: &[],
            claims: std::slice::from_ref(claim),
        }
    }

    fn len(&self) -> usize {
        self.reports.len() + self.claims.len()
    }
}

/// What a group answers, in the order of its [`Writes`]: each report's answer, each
/// claim's tasks.
struct GroupAnswers {
    reported: Vec<Option<(TaskRecord, bool)>>,
    taken: Vec<Vec<TaskRecord>>,
}

/// A statement being bound.
type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// One group's transaction: its statements run in turn, the first carrying `BEGIN`.
struct Group {
    tx: WriteTx,
    begun: bool,
    /// The rows each statement returned, by task (one report per task).
    changed: HashMap<TaskId, TaskRecord>,
}

impl Group {
    /// Runs `WITH report(<columns>) AS (VALUES …) <update> RETURNING …` with one row of
    /// values per report (`bind` binds a report's), and answers the rows it changed.
    async fn update(
        &mut self,
        columns: &[&str],
        update: &str,
        reports: &[&Report],
        bind: impl for<'q> Fn(Query<'q>, &Report) -> Query<'q>,
    ) -> Result<Vec<SqliteRow>, StoreError> {
        let (conn, sql) = self.next(format!(
            "WITH report({}) AS (VALUES {}) {update} RETURNING {TASK_COLUMNS}",
            columns.join(", "),
            placeholders(reports.len(), columns.len()),
        ));
        let mut query = sqlx::query(&sql);
        for r in reports {
            query = bind(query, r);
        }
        Ok(query.fetch_all(conn).await?)
    }

    /// The connection for the group's next statement, and the statement's text: the
    /// first one carries `BEGIN`.
    fn next(&mut self, sql: String) -> (&mut sqlx::SqliteConnection, String) {
        if self.begun {
            (self.tx.conn(), sql)
        } else {
            self.begun = true;
            (self.tx.opening(), format!("{BEGIN}{sql}"))
        }
    }

    /// Runs the claim's picks (each one statement, as `claim_tasks` alone would), until
    /// it has `max` tasks or finds none.
    async fn claim(&mut self, claim: &Claim, sql: &str) -> Result<Vec<TaskRecord>, StoreError> {
        let mut taken = Vec::new();
        for _ in 0..claim.max.max(1) {
            let (conn, sql) = self.next(sql.to_owned());
            let task = claim_one(conn, &sql, claim.agent, claim.lease_until, claim.at).await?;
            match task {
                Some(task) => taken.push(task),
                None => break,
            }
        }
        Ok(taken)
    }

    /// Keeps the tasks of `rows` as changed.
    fn keep(&mut self, rows: &[SqliteRow]) -> Result<(), StoreError> {
        for row in rows {
            let task = task_from_row(row)?;
            self.changed.insert(task.id, task);
        }
        Ok(())
    }
}

/// Runs one group as one transaction; the answers are in the group's order.
async fn run_group(tx: WriteTx, writes: Writes<'_>) -> Result<GroupAnswers, StoreError> {
    let Writes { reports, claims } = writes;
    let mut group = Group {
        tx,
        begun: false,
        changed: HashMap::new(),
    };
    let progress: Vec<&Report> = reports
        .iter()
        .filter(|r| matches!(r.change, Change::Progress { .. }))
        .collect();
    // Progress: first a real change, then a plain renewal for the rest; the rows the
    // first statement matches tell which values changed, without a read-then-write.
    if !progress.is_empty() {
        let rows = group
            .update(
                &["r_id", "r_agent", "r_progress", "r_lease", "r_at"],
                "UPDATE tasks SET progress = r_progress, lease_expires_at = r_lease, updated_at = r_at
                   FROM report
                  WHERE id = r_id AND agent_id = r_agent AND status = 'running'
                    AND progress != r_progress",
                &progress,
                |q, r| {
                    let Change::Progress { progress, lease_until } = r.change else {
                        return q;
                    };
                    q.bind(r.id.to_string())
                        .bind(r.agent.to_string())
                        .bind(i64::from(progress))
                        .bind(to_millis(lease_until))
                        .bind(to_millis(r.at))
                },
            )
            .await?;
        group.keep(&rows)?;
    }
    let unchanged: Vec<&Report> = progress
        .iter()
        .copied()
        .filter(|r| !group.changed.contains_key(&r.id))
        .collect();
    let mut renewed = HashMap::new();
    if !unchanged.is_empty() {
        let rows = group
            .update(
                &["r_id", "r_agent", "r_lease"],
                "UPDATE tasks SET lease_expires_at = r_lease
                   FROM report
                  WHERE id = r_id AND agent_id = r_agent AND status = 'running'",
                &unchanged,
                |q, r| {
                    let Change::Progress { lease_until, .. } = r.change else {
                        return q;
                    };
                    q.bind(r.id.to_string())
                        .bind(r.agent.to_string())
                        .bind(to_millis(lease_until))
                },
            )
            .await?;
        for row in &rows {
            let task = task_from_row(row)?;
            renewed.insert(task.id, task);
        }
    }
    let completed: Vec<&Report> = reports
        .iter()
        .filter(|r| {
            matches!(
                r.change,
                Change::Finish {
                    outcome: Outcome::Completed { .. },
                    ..
                }
            )
        })
        .collect();
    if !completed.is_empty() {
        let rows = group
            .update(
                &["r_id", "r_agent", "r_result", "r_at"],
                "UPDATE tasks SET status = 'completed', progress = 100, result = r_result,
                                  error = NULL, attempt_outcome = 'completed',
                                  lease_expires_at = NULL, completed_at = r_at, updated_at = r_at
                   FROM report
                  WHERE id = r_id AND agent_id = r_agent AND status = 'running'",
                &completed,
                |q, r| {
                    let Change::Finish {
                        outcome: Outcome::Completed { result },
                        ..
                    } = &r.change
                    else {
                        return q;
                    };
                    q.bind(r.id.to_string())
                        .bind(r.agent.to_string())
                        .bind(result.to_string())
                        .bind(to_millis(r.at))
                },
            )
            .await?;
        group.keep(&rows)?;
    }
    let failed: Vec<&Report> = reports
        .iter()
        .filter(|r| {
            matches!(
                r.change,
                Change::Finish {
                    outcome: Outcome::Failed { .. },
                    ..
                }
            )
        })
        .collect();
    if !failed.is_empty() {
        // Every SET expression sees the row as it was, so `retry` decides consistently
        // for all columns.
        let retry = "r_retryable AND attempts < max_attempts";
        let rows = group
            .update(
                &["r_id", "r_agent", "r_retryable", "r_error", "r_at", "r_base", "r_max"],
                &format!(
                    "UPDATE tasks SET
                        status = CASE WHEN {retry} THEN 'queued' ELSE 'failed' END,
                        agent_id = CASE WHEN {retry} THEN requested_agent_id ELSE agent_id END,
                        progress = CASE WHEN {retry} THEN 0 ELSE progress END,
                        started_at = CASE WHEN {retry} THEN NULL ELSE started_at END,
                        completed_at = CASE WHEN {retry} THEN NULL ELSE r_at END,
                        available_at = CASE WHEN {retry} THEN r_at + {backoff} ELSE available_at END,
                        attempt_outcome = 'failed',
                        error = r_error, lease_expires_at = NULL, updated_at = r_at
                       FROM report
                      WHERE id = r_id AND agent_id = r_agent AND status = 'running'",
                    backoff = backoff_sql("r_base", "r_max"),
                ),
                &failed,
                |q, r| {
                    let Change::Finish {
                        outcome: Outcome::Failed { error, retryable },
                        backoff,
                    } = &r.change
                    else {
                        return q;
                    };
                    q.bind(r.id.to_string())
                        .bind(r.agent.to_string())
                        .bind(*retryable)
                        .bind(error.clone())
                        .bind(to_millis(r.at))
                        .bind(backoff.base_ms)
                        .bind(backoff.max_ms)
                },
            )
            .await?;
        group.keep(&rows)?;
    }
    let mut taken = Vec::with_capacity(claims.len());
    if !claims.is_empty() {
        let sql = claim_sql();
        for claim in claims {
            taken.push(group.claim(claim, &sql).await?);
        }
    }
    // The announcements in the group's order (one report per task: each task's in
    // order), the claims' after the reports'.
    let mut announcements: Vec<Announcement> = reports
        .iter()
        .filter_map(|r| group.changed.get(&r.id).map(|task| (r.announce)(task)))
        .flatten()
        .collect();
    for (claim, tasks) in claims.iter().zip(&taken) {
        announcements.extend(tasks.iter().flat_map(claim.announce));
    }
    let Group {
        tx, mut changed, ..
    } = group;
    outbox::write_and_commit(tx, &announcements).await?;
    let answers = reports
        .iter()
        .map(|r| match changed.remove(&r.id) {
            Some(task) => Some((task, true)),
            None => renewed.remove(&r.id).map(|task| (task, false)),
        })
        .collect();
    Ok(GroupAnswers {
        reported: answers,
        taken,
    })
}

/// `(?1, …, ?k), (?k+1, …)`: `rows` rows of `width` numbered parameters.
fn placeholders(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|i| {
            let params: Vec<String> = (1..=width).map(|j| format!("?{}", i * width + j)).collect();
            format!("({})", params.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A store error that is not about the data (the group could not run).
fn failure(message: &str) -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::other(message.to_owned())))
}

#[cfg(test)]
mod tests {
    use super::placeholders;
    use crate::domain::{Priority, TaskStatus};
    use crate::store::conformance::{add_agent, add_user, test_task};
    use crate::store::sqlite::SqliteStore;
    use crate::store::{silent, TaskStore};
    use std::time::Duration;

    /// A claim whose caller went away while it waited for the writer takes nothing: the
    /// task stays queued for the next claim instead of waiting out a lease.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_whose_caller_has_gone_takes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let user = add_user(&store).await;
        let agent = add_agent(&store, user, false).await;
        let new = test_task(user, Priority::Normal, "q");
        store
            .insert_task(&new, chrono::Duration::hours(24), &silent)
            .await
            .unwrap();
        // The writer is busy, so the claim waits in the queue; then its caller goes.
        let busy = store.write_tx().await.unwrap();
        let claim = tokio::spawn({
            let store = store.clone();
            async move {
                let now = chrono::Utc::now();
                let lease = now + chrono::Duration::seconds(30);
                store.claim_tasks(agent, 1, lease, now, &silent).await
            }
        });
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while store.reports.queue().waiting.is_empty() {
            assert!(tokio::time::Instant::now() < deadline, "the claim queued");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        claim.abort();
        assert!(claim.await.unwrap_err().is_cancelled());
        drop(busy);
        // The runner finds only the abandoned claim and leaves the queue empty.
        while !store.reports.queue().waiting.is_empty() || store.reports.queue().running {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the runner finished"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let task = store.task(new.id).await.unwrap();
        assert_eq!((task.status, task.attempts), (TaskStatus::Queued, 0));
    }

    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(placeholders(2, 3), "(?1, ?2, ?3), (?4, ?5, ?6)");
        assert_eq!(placeholders(1, 1), "(?1)");
    }
}

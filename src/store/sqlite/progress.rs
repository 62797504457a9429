//! Progress reports, committed in groups.
//!
//! A progress report is the runtime's most frequent write (an agent reports several per
//! task) and on its own costs the one writer connection a transaction: the UPDATE, the
//! task's `task_update` in the outbox, the commit, two round trips to the connection's
//! thread with the writer idle in between. Reports that wait for the writer at the same
//! time are therefore run together: one task (the runner) takes the writer, then every
//! report queued by then (up to [`GROUP_MAX`]), and runs them as one transaction of one
//! UPDATE … FROM over all of them and one outbox INSERT with the commit. Each report
//! gets exactly the answer it would have had alone (the task and whether its value
//! changed, or `None` when it is not this agent's running task).
//!
//! - Order: two reports for one task never share a group (the later waits for the
//!   next), so a task's reports, and so its `task_update`s, keep their order.
//! - Cancellation: the runner is a task of its own, so a caller that goes away (its
//!   HTTP request dropped) cannot abort the group the others are in; its report is
//!   still applied, as it would be had it been alone and already sent.
//! - Bounds: at most [`QUEUE_MAX`] reports wait; beyond, a report is refused at once.
//!   A caller waits at most [`ANSWER_DEADLINE`] for its answer.
//! - Failure: a group that fails is rolled back as a whole (the writer's transaction
//!   guard) and every report in it gets the error, as each would have alone.

use super::tasks::{task_from_row, TASK_COLUMNS};
use super::{outbox, SqliteStore, BEGIN};
use crate::domain::{AgentId, TaskId};
use crate::store::{to_millis, Announce, Announcement, StoreError, TaskRecord};
use chrono::{DateTime, Utc};
use std::collections::{HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Reports per group (5 parameters each, far below SQLite's parameter limit).
const GROUP_MAX: usize = 128;
/// Reports that may wait for a group; one more is refused.
const QUEUE_MAX: usize = 8192;
/// The longest a caller waits for its group's answer (the writer's acquire timeout,
/// plus the group's own work).
const ANSWER_DEADLINE: Duration = Duration::from_secs(30);

/// One progress report, as `TaskStore::report_progress` takes it.
pub(super) struct Report {
    pub(super) id: TaskId,
    pub(super) agent: AgentId,
    pub(super) progress: u8,
    pub(super) lease_until: DateTime<Utc>,
    pub(super) at: DateTime<Utc>,
    pub(super) announce: Announce<'static, TaskRecord>,
}

/// What `report_progress` answers.
type Answer = Result<Option<(TaskRecord, bool)>, StoreError>;

/// The reports waiting for a group, and whether a runner is on its way.
#[derive(Default)]
pub(super) struct Reports {
    state: Mutex<Queue>,
}

#[derive(Default)]
struct Queue {
    waiting: VecDeque<(Report, oneshot::Sender<Answer>)>,
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
        let start_runner = {
            let mut queue = self.progress.queue();
            if queue.waiting.len() >= QUEUE_MAX {
                return Err(failure(
                    "too many progress reports waiting for the database",
                ));
            }
            queue.waiting.push_back((report, reply));
            !std::mem::replace(&mut queue.running, true)
        };
        if start_runner {
            tokio::spawn(self.clone().run_groups());
        }
        match tokio::time::timeout(ANSWER_DEADLINE, answer).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(failure("the progress report was dropped")),
            Err(_) => Err(failure("the progress report was not answered in time")),
        }
    }

    /// The runner: takes the writer, then a group, until no report is left.
    async fn run_groups(self) {
        let _stopped = RunnerGuard(&self);
        loop {
            // The writer first: reports that come while it is busy join this group.
            let tx = self.write_tx().await;
            let group = self.next_group();
            if group.is_empty() {
                return;
            }
            let answers = match tx {
                Ok(tx) => run_group(tx, &group).await,
                Err(err) => Err(err),
            };
            match answers {
                Ok(answers) => {
                    for ((_, reply), answer) in group.into_iter().zip(answers) {
                        let _ = reply.send(Ok(answer));
                    }
                }
                Err(err) => {
                    let message = err.to_string();
                    for (_, reply) in group {
                        let _ = reply.send(Err(copy(&err, &message)));
                    }
                }
            }
        }
    }

    /// Takes the next group off the queue: the oldest reports, at most one per task.
    /// Empty (and the runner marked gone, under the same lock) when nothing waits.
    fn next_group(&self) -> Vec<(Report, oneshot::Sender<Answer>)> {
        let mut queue = self.progress.queue();
        if queue.waiting.is_empty() {
            queue.running = false;
            return Vec::new();
        }
        let mut tasks = HashSet::new();
        let mut group = Vec::new();
        let mut later = VecDeque::new();
        while let Some(item) = queue.waiting.pop_front() {
            if group.len() < GROUP_MAX && tasks.insert(item.0.id) {
                group.push(item);
            } else {
                later.push_back(item);
            }
        }
        queue.waiting = later;
        group
    }
}

/// Marks the runner gone if it ends early (a panic): the reports it leaves are
/// dropped, so their callers get an error rather than waiting for nobody.
struct RunnerGuard<'a>(&'a SqliteStore);

impl Drop for RunnerGuard<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let mut queue = self.0.progress.queue();
            queue.waiting.clear();
            queue.running = false;
        }
    }
}

/// Runs one group as one transaction; the answers are in the group's order.
async fn run_group(
    mut tx: super::WriteTx,
    group: &[(Report, oneshot::Sender<Answer>)],
) -> Result<Vec<Option<(TaskRecord, bool)>>, StoreError> {
    let reports: Vec<&Report> = group.iter().map(|(r, _)| r).collect();
    // First a real change, then a plain renewal for the rest: the rows the first
    // statement matches tell which values changed, without a read-then-write.
    let values = placeholders(reports.len(), 5);
    let sql = format!(
        "{BEGIN}WITH report(r_id, r_agent, r_progress, r_lease, r_at) AS (VALUES {values})
         UPDATE tasks SET progress = r_progress, lease_expires_at = r_lease, updated_at = r_at
           FROM report
          WHERE id = r_id AND agent_id = r_agent AND status = 'running' AND progress != r_progress
         RETURNING {TASK_COLUMNS}"
    );
    let mut query = sqlx::query(&sql);
    for r in &reports {
        query = query
            .bind(r.id.to_string())
            .bind(r.agent.to_string())
            .bind(i64::from(r.progress))
            .bind(to_millis(r.lease_until))
            .bind(to_millis(r.at));
    }
    let rows = query.fetch_all(tx.opening()).await?;
    let mut changed = std::collections::HashMap::with_capacity(rows.len());
    for row in &rows {
        let task = task_from_row(row)?;
        changed.insert(task.id, task);
    }
    let unchanged: Vec<&Report> = reports
        .iter()
        .copied()
        .filter(|r| !changed.contains_key(&r.id))
        .collect();
    let mut renewed = std::collections::HashMap::new();
    if !unchanged.is_empty() {
        let values = placeholders(unchanged.len(), 3);
        let sql = format!(
            "WITH report(r_id, r_agent, r_lease) AS (VALUES {values})
             UPDATE tasks SET lease_expires_at = r_lease
               FROM report
              WHERE id = r_id AND agent_id = r_agent AND status = 'running'
             RETURNING {TASK_COLUMNS}"
        );
        let mut query = sqlx::query(&sql);
        for r in &unchanged {
            query = query
                .bind(r.id.to_string())
                .bind(r.agent.to_string())
                .bind(to_millis(r.lease_until));
        }
        for row in query.fetch_all(tx.conn()).await? {
            let task = task_from_row(&row)?;
            renewed.insert(task.id, task);
        }
    }
    // The announcements in the group's order (one report per task: each task's in order).
    let announcements: Vec<Announcement> = reports
        .iter()
        .filter_map(|r| changed.get(&r.id).map(|task| (r.announce)(task)))
        .flatten()
        .collect();
    outbox::write_and_commit(tx, &announcements).await?;
    Ok(reports
        .iter()
        .map(|r| match changed.remove(&r.id) {
            Some(task) => Some((task, true)),
            None => renewed.remove(&r.id).map(|task| (task, false)),
        })
        .collect())
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

/// The group's error, for each of its reports.
fn copy(err: &StoreError, message: &str) -> StoreError {
    match err {
        StoreError::NotFound => StoreError::NotFound,
        StoreError::Conflict { constraint } => StoreError::Conflict {
            constraint: constraint.clone(),
        },
        StoreError::Corrupt(what) => StoreError::Corrupt(what.clone()),
        StoreError::Database(_) => failure(message),
    }
}

#[cfg(test)]
mod tests {
    use super::placeholders;

    #[test]
    fn placeholders_number_every_parameter_once() {
        assert_eq!(placeholders(2, 3), "(?1, ?2, ?3), (?4, ?5, ?6)");
        assert_eq!(placeholders(1, 1), "(?1)");
    }
}

//! The durable task queue on SQLite.
//!
//! Every transition is a single conditional `UPDATE … RETURNING`. SQLite runs one
//! writer at a time and an `UPDATE` takes the write lock before it evaluates its
//! subquery, so a claim cannot hand one task to two agents. (PostgreSQL does the
//! same with `WHERE id = (SELECT id … FOR UPDATE SKIP LOCKED)`, which also lets
//! concurrent claimers skip each other's rows instead of waiting.) The attempt history
//! and each user's last hand-out time are written by triggers of the same statement
//! (migration 0005), so they commit with the transition they describe. So do the
//! transition's announcements: each is a transaction whose first statement is the
//! transition (taking the write lock at once) and whose last writes the outbox
//! (`store::outbox`).

use super::outbox::{self, announcements};
use super::reports::{Change, Claim, Report};
use super::{SqliteStore, WriteTx, BEGIN};
use crate::domain::{AgentId, AttemptOutcome, Capability, Priority, TaskId, TaskStatus, UserId};
use crate::store::tasks::{fair_position, Rival};
use crate::store::{
    from_millis, to_millis, Announce, AttemptRecord, Backoff, Inserted, NewTask, Outcome, Page,
    QueueGauges, QueueStanding, StoreError, TaskFilter, TaskRecord, TaskStat, TaskStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(super) const TASK_COLUMNS: &str =
    "seq, id, user_id, query, capability, priority, status, progress, \
    agent_id, requested_agent_id, result, error, attempts, max_attempts, idempotency_key, \
    run_at, available_at, timeout_s, lease_expires_at, output_bytes, created_at, started_at, \
    completed_at, updated_at";

/// The retry delay after the attempt that just ended (`attempts` of the row as it was):
/// uniform in `[0, min(max, base · 2^(attempts-1))]`, drawn per row, so tasks that fail
/// together do not come back together. `?B` is the base and `?M` the cap, in ms.
const JITTERED_BACKOFF: &str = "abs(random() % (MIN(?M, ?B << MIN(MAX(attempts - 1, 0), 30)) + 1))";

/// The backoff expression with its base and cap taken from `base` and `max` (bound
/// parameters or columns).
pub(super) fn backoff_sql(base: &str, max: &str) -> String {
    JITTERED_BACKOFF.replace("?B", base).replace("?M", max)
}

/// The tasks agent `a` may take now (`?3`): its capabilities, not reserved for another
/// agent, its owner's unless it is shared, and due.
const ELIGIBLE: &str = "t.status = 'queued'
       AND t.capability IN (SELECT value FROM json_each(a.capabilities))
       AND (t.requested_agent_id IS NULL OR t.requested_agent_id = a.id)
       AND (a.shared = 1 OR t.user_id = a.owner_id)
       AND t.available_at <= ?3";

/// One claim: the fair choice among the due tasks the agent may take, marked running.
/// `?1` agent, `?2` lease end, `?3` now. Each step reads the covering `tasks_queue`
/// index: the top priority, the users with tasks at it, then one seek for the chosen
/// user's oldest task.
pub(super) fn claim_sql() -> String {
    format!(
        "
WITH a AS (
    -- Agents the server runs itself are shared (migration 0004), however they were made.
    SELECT id, owner_id, (shared = 1 OR system_key IS NOT NULL) AS shared, capabilities
      FROM agents WHERE id = ?1
),
top AS (SELECT MAX(t.priority_rank) AS rank FROM tasks t, a WHERE {ELIGIBLE}),
users AS (
    SELECT t.user_id, MIN(t.created_at) AS oldest
      FROM tasks t, a, top
     WHERE {ELIGIBLE} AND t.priority_rank = top.rank
     GROUP BY t.user_id
),
chosen AS (
    SELECT u.user_id
      FROM users u LEFT JOIN task_dispatch d ON d.user_id = u.user_id
     ORDER BY (SELECT COUNT(*) FROM tasks r WHERE r.user_id = u.user_id AND r.status = 'running'),
              COALESCE(d.last_claimed_at, 0), u.oldest, u.user_id
     LIMIT 1
)
UPDATE tasks SET status = 'running', agent_id = ?1, attempts = attempts + 1, progress = 0,
                 error = NULL, attempt_outcome = NULL, started_at = ?3, completed_at = NULL,
                 lease_expires_at = ?2, updated_at = ?3
 WHERE seq = (SELECT t.seq FROM tasks t, a, top, chosen
               WHERE {ELIGIBLE} AND t.priority_rank = top.rank AND t.user_id = chosen.user_id
               ORDER BY t.created_at, t.seq
               LIMIT 1)
   AND status = 'queued'
RETURNING {TASK_COLUMNS}"
    )
}

/// Where a queued task stands, in one read: a first row (`own = 1`) with its owner's
/// turn keys and the online agents that may run it, then one row per priority and user
/// of the due tasks that compete with it at its priority or above (one pass over the
/// covering queue index; other users' tasks compete only through a shared agent). No
/// rows: the task is not queued. `?1` task, `?2` now.
const STANDING_SQL: &str = "
WITH me AS MATERIALIZED (
    SELECT user_id, capability, priority_rank, created_at, seq, requested_agent_id
      FROM tasks WHERE id = ?1 AND status = 'queued'
),
able AS MATERIALIZED (
    SELECT a.online, (a.shared = 1 OR a.system_key IS NOT NULL) AS shared
      FROM agents a, me
     WHERE EXISTS (SELECT 1 FROM json_each(a.capabilities) c WHERE c.value = me.capability)
       AND (a.shared = 1 OR a.system_key IS NOT NULL OR a.owner_id = me.user_id)
       AND (me.requested_agent_id IS NULL OR a.id = me.requested_agent_id)
)
SELECT 1 AS own, me.priority_rank AS rank, me.user_id AS user_id, 0 AS queued, 0 AS before,
       me.created_at AS oldest,
       (SELECT COUNT(*) FROM tasks x WHERE x.user_id = me.user_id AND x.status = 'running')
           AS running,
       COALESCE((SELECT last_claimed_at FROM task_dispatch d WHERE d.user_id = me.user_id), 0)
           AS last,
       (SELECT COUNT(*) FROM able WHERE able.online = 1) AS online
  FROM me
UNION ALL
SELECT 0, t.priority_rank, t.user_id, COUNT(*),
       SUM((t.created_at, t.seq) < (me.created_at, me.seq)),
       MIN(t.created_at),
       (SELECT COUNT(*) FROM tasks x WHERE x.user_id = t.user_id AND x.status = 'running'),
       COALESCE((SELECT last_claimed_at FROM task_dispatch d WHERE d.user_id = t.user_id), 0),
       0
  FROM me, tasks t
 WHERE t.status = 'queued' AND t.capability = me.capability
   AND t.priority_rank >= me.priority_rank AND t.available_at <= ?2
   AND (t.requested_agent_id IS NULL OR t.requested_agent_id IS me.requested_agent_id)
   AND (t.user_id = me.user_id OR EXISTS (SELECT 1 FROM able WHERE able.shared = 1))
 GROUP BY t.priority_rank, t.user_id";

fn opt_agent(raw: Option<String>) -> Result<Option<AgentId>, StoreError> {
    Ok(raw.as_deref().map(AgentId::parse).transpose()?)
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
}

pub(super) fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
    let result = match row.try_get::<Option<String>, _>("result")? {
        None => None,
        Some(text) => Some(
            serde_json::from_str(&text)
                .map_err(|e| StoreError::Corrupt(format!("task result: {e}")))?,
        ),
    };
    let progress: i64 = row.try_get("progress")?;
    Ok(TaskRecord {
        id: TaskId::parse(row.try_get("id")?)?,
        user_id: UserId::parse(row.try_get("user_id")?)?,
        query: row.try_get("query")?,
        capability: Capability::parse(row.try_get("capability")?)?,
        priority: Priority::parse(row.try_get("priority")?)?,
        status: TaskStatus::parse(row.try_get("status")?)?,
        progress: progress.clamp(0, 100) as u8,
        agent_id: opt_agent(row.try_get("agent_id")?)?,
        requested_agent_id: opt_agent(row.try_get("requested_agent_id")?)?,
        result,
        error: row.try_get("error")?,
        attempts: row.try_get::<i64, _>("attempts")?.max(0) as u32,
        max_attempts: row.try_get::<i64, _>("max_attempts")?.max(1) as u32,
        idempotency_key: row.try_get("idempotency_key")?,
        run_at: opt_time(row, "run_at")?,
        available_at: from_millis(row.try_get("available_at")?),
        timeout_s: row.try_get::<i64, _>("timeout_s")?.max(0) as u32,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
        output_bytes: row.try_get::<i64, _>("output_bytes")?.max(0) as u64,
        created_at: from_millis(row.try_get("created_at")?),
        started_at: opt_time(row, "started_at")?,
        completed_at: opt_time(row, "completed_at")?,
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

pub(super) fn tasks_from_rows(rows: &[SqliteRow]) -> Result<Vec<TaskRecord>, StoreError> {
    rows.iter().map(task_from_row).collect()
}

#[async_trait]
impl TaskStore for SqliteStore {
    #[tracing::instrument(skip_all, fields(task_id = %new.id))]
    async fn insert_task(
        &self,
        new: &NewTask,
        key_window: chrono::Duration,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Inserted, StoreError> {
        let created_at = to_millis(new.created_at);
        // The first statement writes, so the transaction holds the write lock from its
        // start: no read-then-upgrade, no BUSY between the key and the task.
        let mut tx = self.write_tx().await?;
        let Some(key) = &new.idempotency_key else {
            let task = insert_row(tx.opening(), BEGIN, new).await?;
            outbox::write_and_commit(tx, &announce(&task)).await?;
            return Ok(Inserted::New(task));
        };
        // Takes the key, or takes over one that has outlived the window; a live key of
        // another task leaves the row alone and returns nothing.
        let taken = sqlx::query(&format!(
            "{BEGIN}INSERT INTO idempotency_keys (user_id, key, task_id, created_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, key) DO UPDATE
                SET task_id = excluded.task_id, created_at = excluded.created_at
              WHERE idempotency_keys.created_at <= excluded.created_at - ?5
             RETURNING task_id"
        ))
        .bind(new.user_id.to_string())
        .bind(key.as_str())
        .bind(new.id.to_string())
        .bind(created_at)
        .bind(key_window.num_milliseconds())
        .fetch_optional(tx.opening())
        .await?;
        if taken.is_none() {
            let row = sqlx::query(&format!(
                "SELECT {TASK_COLUMNS} FROM tasks WHERE id =
                   (SELECT task_id FROM idempotency_keys WHERE user_id = ?1 AND key = ?2)"
            ))
            .bind(new.user_id.to_string())
            .bind(key.as_str())
            .fetch_one(tx.conn())
            .await?;
            tx.rollback().await?;
            return Ok(Inserted::Duplicate(task_from_row(&row)?));
        }
        let task = insert_row(tx.conn(), "", new).await?;
        outbox::write_and_commit(tx, &announce(&task)).await?;
        Ok(Inserted::New(task))
    }

    async fn task(&self, id: TaskId) -> Result<TaskRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_one(self.reader())
            .await?;
        task_from_row(&row)
    }

    #[tracing::instrument(skip_all)]
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<Page<TaskRecord>, StoreError> {
        let limit = i64::from(filter.limit.max(1));
        let rows = sqlx::query(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks
             WHERE (?1 IS NULL OR user_id = ?1)
               AND (?2 IS NULL OR status = ?2)
               AND (?3 IS NULL OR instr(lower(query), ?3) > 0)
               AND (?4 IS NULL OR capability = ?4)
               AND (?5 IS NULL OR agent_id = ?5)
               AND (?6 IS NULL OR seq < ?6)
             ORDER BY seq DESC
             LIMIT ?7"
        ))
        .bind(filter.user.map(|u| u.to_string()))
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.q.as_ref().map(|q| q.to_lowercase()))
        .bind(filter.capability.as_ref().map(Capability::as_str))
        .bind(filter.agent_id.map(|a| a.to_string()))
        .bind(filter.cursor)
        .bind(limit + 1)
        .fetch_all(self.reader())
        .await?;
        let limit = limit as usize;
        let more = rows.len() > limit;
        let items = tasks_from_rows(&rows[..rows.len().min(limit)])?;
        let next_cursor = if more {
            Some(rows[limit - 1].try_get::<i64, _>("seq")?)
        } else {
            None
        };
        Ok(Page { items, next_cursor })
    }

    #[tracing::instrument(skip_all, fields(task_id = %id))]
    async fn cancel_task(
        &self,
        id: TaskId,
        owner: Option<UserId>,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(&format!(
            "{BEGIN}UPDATE tasks SET status = 'canceled', lease_expires_at = NULL, error = NULL,
                              attempt_outcome = 'canceled', completed_at = ?3, updated_at = ?3
             WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)
               AND status IN ('queued', 'running')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(owner.map(|u| u.to_string()))
        .bind(to_millis(at))
        .fetch_optional(tx.opening())
        .await?;
        finish_one(tx, row, announce).await
    }

    #[tracing::instrument(skip_all, fields(agent_id = %agent, max))]
    async fn claim_tasks(
        &self,
        agent: AgentId,
        max: u32,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // Committed together with the claims and reports that wait for the writer
        // meanwhile; a batch's picks are consecutive there, each seeing the previous
        // ones running (so the fair order spreads the batch over users).
        self.claim_in_group(Claim {
            agent,
            max,
            lease_until,
            at,
            announce,
        })
        .await
    }

    async fn report_progress(
        &self,
        id: TaskId,
        agent: AgentId,
        progress: u8,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError> {
        // Committed together with the reports that wait for the writer meanwhile.
        self.report_in_group(Report {
            id,
            agent,
            at,
            change: Change::Progress {
                progress,
                lease_until,
            },
            announce,
        })
        .await
    }

    #[tracing::instrument(skip_all, fields(task_id = %id, agent_id = %agent))]
    async fn finish_attempt(
        &self,
        id: TaskId,
        agent: AgentId,
        outcome: &Outcome,
        backoff: Backoff,
        at: DateTime<Utc>,
        announce: Announce<'static, TaskRecord>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        // Committed together with the reports that wait for the writer meanwhile.
        let answer = self
            .report_in_group(Report {
                id,
                agent,
                at,
                change: Change::Finish {
                    outcome: outcome.clone(),
                    backoff,
                },
                announce,
            })
            .await?;
        Ok(answer.map(|(task, _)| task))
    }

    #[tracing::instrument(skip_all, fields(task_id = %id, agent_id = %agent))]
    async fn release_task(
        &self,
        id: TaskId,
        agent: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, (TaskRecord, bool)>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError> {
        let at = to_millis(at);
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE tasks SET {set}
             WHERE id = ?1 AND agent_id = ?2 AND status = 'running'
             RETURNING {TASK_COLUMNS}",
            set = release_set(3),
        ))
        .bind(id.to_string())
        .bind(agent.to_string())
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(None);
        };
        // The agent stopped cleanly: offline at once; its next call brings it back.
        let went_offline = sqlx::query(
            "UPDATE agents SET online = 0, updated_at = ?2 WHERE id = ?1 AND online = 1",
        )
        .bind(agent.to_string())
        .bind(at)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            > 0;
        let released = (task_from_row(&row)?, went_offline);
        outbox::write(&mut tx, &announce(&released)).await?;
        tx.commit().await?;
        Ok(Some(released))
    }

    async fn release_server_agent_tasks(
        &self,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE tasks SET {set}
             WHERE status = 'running'
               AND agent_id IN (SELECT id FROM agents WHERE system_key IS NOT NULL)
             RETURNING {TASK_COLUMNS}",
            set = release_set(1),
        ))
        .bind(to_millis(at))
        .fetch_all(&mut *tx)
        .await?;
        finish_many(tx, &rows, announce).await
    }

    async fn requeue_expired(
        &self,
        backoff: Backoff,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let spent = "attempts >= max_attempts";
        let rows = sqlx::query(&format!(
            "UPDATE tasks SET
                status = CASE WHEN {spent} THEN 'failed' ELSE 'queued' END,
                error = CASE WHEN {spent}
                             THEN 'agent lost the task ' || attempts || ' times'
                             ELSE 'the agent stopped renewing its lease; retrying' END,
                agent_id = CASE WHEN {spent} THEN agent_id ELSE requested_agent_id END,
                progress = CASE WHEN {spent} THEN progress ELSE 0 END,
                started_at = CASE WHEN {spent} THEN started_at ELSE NULL END,
                completed_at = CASE WHEN {spent} THEN ?1 ELSE NULL END,
                available_at = CASE WHEN {spent} THEN available_at ELSE ?1 + {backoff} END,
                attempt_outcome = 'lease_expired',
                lease_expires_at = NULL, updated_at = ?1
             WHERE status = 'running' AND lease_expires_at < ?1
             RETURNING {TASK_COLUMNS}",
            backoff = backoff_sql("?2", "?3"),
        ))
        .bind(to_millis(at))
        .bind(backoff.base_ms)
        .bind(backoff.max_ms)
        .fetch_all(&mut *tx)
        .await?;
        finish_many(tx, &rows, announce).await
    }

    async fn fail_timed_out(
        &self,
        at: DateTime<Utc>,
        announce: Announce<'_, TaskRecord>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE tasks SET status = 'failed',
                              error = 'timed out after ' || timeout_s || ' s',
                              attempt_outcome = 'timed_out',
                              lease_expires_at = NULL, completed_at = ?1, updated_at = ?1
             WHERE status = 'running' AND started_at + timeout_s * 1000 <= ?1
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(to_millis(at))
        .fetch_all(&mut *tx)
        .await?;
        finish_many(tx, &rows, announce).await
    }

    async fn task_attempts(&self, id: TaskId) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT attempt, agent_id, started_at, ended_at, outcome, error
               FROM task_attempts WHERE task_id = ?1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(AttemptRecord {
                    attempt: row.try_get::<i64, _>("attempt")?.max(0) as u32,
                    agent_id: opt_agent(row.try_get("agent_id")?)?,
                    started_at: from_millis(row.try_get("started_at")?),
                    ended_at: opt_time(row, "ended_at")?,
                    outcome: AttemptOutcome::parse(row.try_get("outcome")?)?,
                    error: row.try_get("error")?,
                })
            })
            .collect()
    }

    async fn queue_standing(
        &self,
        task: &TaskRecord,
        at: DateTime<Utc>,
    ) -> Result<Option<QueueStanding>, StoreError> {
        let rows = sqlx::query(STANDING_SQL)
            .bind(task.id.to_string())
            .bind(to_millis(at))
            .fetch_all(self.reader())
            .await?;
        let Some(me) = rows
            .iter()
            .find(|row| row.try_get::<i64, _>("own").ok() == Some(1))
        else {
            return Ok(None);
        };
        let user: String = me.try_get("user_id")?;
        let rank: i64 = me.try_get("rank")?;
        let mut rivals = Vec::with_capacity(rows.len());
        for row in rows
            .iter()
            .filter(|row| row.try_get::<i64, _>("own").ok() == Some(0))
        {
            rivals.push(Rival {
                rank: row.try_get("rank")?,
                mine: row.try_get::<String, _>("user_id")? == user,
                queued: row.try_get("queued")?,
                before: row.try_get("before")?,
                turn: (
                    row.try_get("running")?,
                    row.try_get("last")?,
                    row.try_get("oldest")?,
                ),
            });
        }
        let own_turn = (
            me.try_get("running")?,
            me.try_get("last")?,
            me.try_get("oldest")?,
        );
        Ok(Some(QueueStanding {
            position: fair_position(rank, own_turn, &rivals),
            eligible_online_agents: me.try_get("online")?,
        }))
    }

    async fn queue_gauges(&self) -> Result<QueueGauges, StoreError> {
        let rows = sqlx::query(
            "SELECT capability, COUNT(*) AS n FROM tasks WHERE status = 'queued'
             GROUP BY capability",
        )
        .fetch_all(self.reader())
        .await?;
        let queued = rows
            .iter()
            .map(|row| {
                Ok((
                    Capability::parse(row.try_get("capability")?)?,
                    row.try_get::<i64, _>("n")?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM tasks WHERE status = 'running') AS running,
                    (SELECT COUNT(*) FROM agents WHERE online = 1) AS online",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(QueueGauges {
            queued,
            running: row.try_get("running")?,
            agents_online: row.try_get("online")?,
        })
    }

    #[tracing::instrument(skip_all)]
    async fn task_stats(
        &self,
        user: Option<UserId>,
        since: DateTime<Utc>,
    ) -> Result<Vec<TaskStat>, StoreError> {
        let rows = sqlx::query(
            "SELECT status, agent_id, created_at, started_at, completed_at FROM tasks
             WHERE (?1 IS NULL OR user_id = ?1) AND (created_at >= ?2 OR completed_at >= ?2)",
        )
        .bind(user.map(|u| u.to_string()))
        .bind(to_millis(since))
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(TaskStat {
                    status: TaskStatus::parse(row.try_get("status")?)?,
                    agent_id: opt_agent(row.try_get("agent_id")?)?,
                    created_at: from_millis(row.try_get("created_at")?),
                    started_at: opt_time(row, "started_at")?,
                    completed_at: opt_time(row, "completed_at")?,
                })
            })
            .collect()
    }
}

/// A hand-back: queued again, due at once (parameter `now` is the time), the attempt
/// given back.
fn release_set(now: usize) -> String {
    format!(
        "status = 'queued', agent_id = requested_agent_id,
         attempts = MAX(attempts - 1, 0), progress = 0, started_at = NULL, error = NULL,
         attempt_outcome = 'handed_back', available_at = ?{now}, lease_expires_at = NULL,
         updated_at = ?{now}"
    )
}

/// Ends a one-row transition's transaction: writes the changed task's announcements
/// and commits, or rolls back when the condition did not hold (`None`).
async fn finish_one(
    tx: WriteTx,
    row: Option<SqliteRow>,
    announce: Announce<'_, TaskRecord>,
) -> Result<Option<TaskRecord>, StoreError> {
    let Some(row) = row else {
        tx.rollback().await?;
        return Ok(None);
    };
    let task = task_from_row(&row)?;
    outbox::write_and_commit(tx, &announce(&task)).await?;
    Ok(Some(task))
}

/// [`finish_one`] for a statement that changed any number of tasks.
async fn finish_many(
    mut tx: sqlx::Transaction<'_, sqlx::Sqlite>,
    rows: &[SqliteRow],
    announce: Announce<'_, TaskRecord>,
) -> Result<Vec<TaskRecord>, StoreError> {
    let tasks = tasks_from_rows(rows)?;
    if !tasks.is_empty() {
        outbox::write(&mut tx, &announcements(announce, &tasks)).await?;
    }
    tx.commit().await?;
    Ok(tasks)
}

/// Inserts the task row.
async fn insert_row(
    conn: &mut sqlx::SqliteConnection,
    before: &str,
    new: &NewTask,
) -> Result<TaskRecord, StoreError> {
    let row = sqlx::query(&format!(
        "{before}INSERT INTO tasks (id, user_id, query, capability, priority, priority_rank, status,
                            progress, requested_agent_id, agent_id, attempts, max_attempts,
                            idempotency_key, run_at, available_at, timeout_s, created_at,
                            updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?7, 0, ?8, ?9, ?10,
                 MAX(?11, COALESCE(?10, 0)), ?12, ?11, ?11)
         RETURNING {TASK_COLUMNS}"
    ))
    .bind(new.id.to_string())
    .bind(new.user_id.to_string())
    .bind(new.query.as_str())
    .bind(new.capability.as_str())
    .bind(new.priority.as_str())
    .bind(new.priority.rank())
    .bind(new.agent_id.map(|a| a.to_string()))
    .bind(i64::from(new.max_attempts.get()))
    .bind(new.idempotency_key.as_ref().map(|k| k.as_str()))
    .bind(new.run_at.map(to_millis))
    .bind(to_millis(new.created_at))
    .bind(i64::from(new.timeout.get()))
    .fetch_one(conn)
    .await?;
    task_from_row(&row)
}

/// Runs one claim statement on `conn`.
pub(super) async fn claim_one(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    agent: AgentId,
    lease_until: DateTime<Utc>,
    at: DateTime<Utc>,
) -> Result<Option<TaskRecord>, StoreError> {
    let row = sqlx::query(sql)
        .bind(agent.to_string())
        .bind(to_millis(lease_until))
        .bind(to_millis(at))
        .fetch_optional(conn)
        .await?;
    row.as_ref().map(task_from_row).transpose()
}

//! The durable task queue on SQLite.
//!
//! Every transition is a single conditional `UPDATE … RETURNING`. SQLite runs one
//! writer at a time and an `UPDATE` takes the write lock before it evaluates its
//! subquery, so `claim_task` cannot hand one task to two agents. (PostgreSQL will do the
//! same with `WHERE id = (SELECT id … FOR UPDATE SKIP LOCKED)`, which also lets
//! concurrent claimers skip each other's rows instead of waiting.)

use super::SqliteStore;
use crate::domain::{AgentId, Capability, Priority, TaskId, TaskStatus, UserId};
use crate::store::{
    from_millis, to_millis, NewTask, Outcome, Page, StoreError, TaskFilter, TaskRecord, TaskStat,
    TaskStore,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

pub(super) const TASK_COLUMNS: &str =
    "seq, id, user_id, query, capability, priority, status, progress, \
    agent_id, requested_agent_id, result, error, attempts, timeout_s, lease_expires_at, \
    created_at, started_at, completed_at, updated_at";

fn opt_agent(raw: Option<String>) -> Result<Option<AgentId>, StoreError> {
    Ok(raw.as_deref().map(AgentId::parse).transpose()?)
}

fn opt_time(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    Ok(row.try_get::<Option<i64>, _>(column)?.map(from_millis))
}

fn task_from_row(row: &SqliteRow) -> Result<TaskRecord, StoreError> {
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
        timeout_s: row.try_get::<i64, _>("timeout_s")?.max(0) as u32,
        lease_expires_at: opt_time(row, "lease_expires_at")?,
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
    async fn insert_task(&self, new: &NewTask) -> Result<TaskRecord, StoreError> {
        let row = sqlx::query(&format!(
            "INSERT INTO tasks (id, user_id, query, capability, priority, priority_rank, status,
                                progress, requested_agent_id, agent_id, attempts, timeout_s,
                                created_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', 0, ?7, ?7, 0, ?8, ?9, ?9)
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(new.id.to_string())
        .bind(new.user_id.to_string())
        .bind(new.query.as_str())
        .bind(new.capability.as_str())
        .bind(new.priority.as_str())
        .bind(new.priority.rank())
        .bind(new.agent_id.map(|a| a.to_string()))
        .bind(i64::from(new.timeout.get()))
        .bind(to_millis(new.created_at))
        .fetch_one(self.pool())
        .await?;
        task_from_row(&row)
    }

    async fn task(&self, id: TaskId) -> Result<TaskRecord, StoreError> {
        let row = sqlx::query(&format!("SELECT {TASK_COLUMNS} FROM tasks WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_one(self.pool())
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
               AND (?3 IS NULL OR seq < ?3)
             ORDER BY seq DESC
             LIMIT ?4"
        ))
        .bind(filter.user.map(|u| u.to_string()))
        .bind(filter.status.map(TaskStatus::as_str))
        .bind(filter.cursor)
        .bind(limit + 1)
        .fetch_all(self.pool())
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
    ) -> Result<Option<TaskRecord>, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE tasks SET status = 'canceled', lease_expires_at = NULL,
                              completed_at = ?3, updated_at = ?3
             WHERE id = ?1 AND (?2 IS NULL OR user_id = ?2)
               AND status IN ('queued', 'running')
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(owner.map(|u| u.to_string()))
        .bind(to_millis(at))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    #[tracing::instrument(skip_all, fields(agent_id = %agent))]
    async fn claim_task(
        &self,
        agent: AgentId,
        capabilities: &[Capability],
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let caps: Vec<&str> = capabilities.iter().map(Capability::as_str).collect();
        // The outer `status = 'queued'` is redundant under SQLite's single writer; it
        // keeps the statement correct under any isolation a future backend offers.
        let row = sqlx::query(&format!(
            "UPDATE tasks SET status = 'running', agent_id = ?1, attempts = attempts + 1,
                              progress = 0, started_at = ?4, completed_at = NULL,
                              lease_expires_at = ?3, updated_at = ?4
             WHERE id = (SELECT id FROM tasks
                         WHERE status = 'queued'
                           AND capability IN (SELECT value FROM json_each(?2))
                           AND (requested_agent_id IS NULL OR requested_agent_id = ?1)
                           -- Tenancy: only a task the agent may run, its owner's or any
                           -- user's when it is shared (AgentRecord::runs_tasks_of). Kept
                           -- in the statement, so no code path can hand a task to an
                           -- agent its owner could not see; a deleted agent claims nothing.
                           AND EXISTS (SELECT 1 FROM agents a WHERE a.id = ?1
                                       AND (a.shared = 1 OR a.owner_id = tasks.user_id))
                         ORDER BY priority_rank DESC, created_at ASC, seq ASC
                         LIMIT 1)
               AND status = 'queued'
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(agent.to_string())
        .bind(serde_json::Value::from(caps).to_string())
        .bind(to_millis(lease_until))
        .bind(to_millis(at))
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(task_from_row).transpose()
    }

    async fn report_progress(
        &self,
        id: TaskId,
        agent: AgentId,
        progress: u8,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Option<(TaskRecord, bool)>, StoreError> {
        // First try a real change, then a plain renewal: the row the first statement
        // matches tells us whether the value changed, without a read-then-write.
        let changed = sqlx::query(&format!(
            "UPDATE tasks SET progress = ?3, lease_expires_at = ?4, updated_at = ?5
             WHERE id = ?1 AND agent_id = ?2 AND status = 'running' AND progress != ?3
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(agent.to_string())
        .bind(i64::from(progress))
        .bind(to_millis(lease_until))
        .bind(to_millis(at))
        .fetch_optional(self.pool())
        .await?;
        if let Some(row) = changed {
            return Ok(Some((task_from_row(&row)?, true)));
        }
        let renewed = sqlx::query(&format!(
            "UPDATE tasks SET lease_expires_at = ?3
             WHERE id = ?1 AND agent_id = ?2 AND status = 'running'
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(agent.to_string())
        .bind(to_millis(lease_until))
        .fetch_optional(self.pool())
        .await?;
        Ok(renewed
            .as_ref()
            .map(task_from_row)
            .transpose()?
            .map(|t| (t, false)))
    }

    #[tracing::instrument(skip_all, fields(task_id = %id, agent_id = %agent))]
    async fn finish_attempt(
        &self,
        id: TaskId,
        agent: AgentId,
        outcome: &Outcome,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<Option<TaskRecord>, StoreError> {
        let row = match outcome {
            Outcome::Completed { result } => {
                sqlx::query(&format!(
                    "UPDATE tasks SET status = 'completed', progress = 100, result = ?3,
                                      error = NULL, lease_expires_at = NULL,
                                      completed_at = ?4, updated_at = ?4
                     WHERE id = ?1 AND agent_id = ?2 AND status = 'running'
                     RETURNING {TASK_COLUMNS}"
                ))
                .bind(id.to_string())
                .bind(agent.to_string())
                .bind(result.to_string())
                .bind(to_millis(at))
                .fetch_optional(self.pool())
                .await?
            }
            Outcome::Failed { error, retryable } => {
                // Every SET expression sees the row as it was, so `attempts < ?5`
                // decides consistently for all columns.
                sqlx::query(&format!(
                    "UPDATE tasks SET
                        status = CASE WHEN ?3 AND attempts < ?5 THEN 'queued' ELSE 'failed' END,
                        agent_id = CASE WHEN ?3 AND attempts < ?5 THEN requested_agent_id ELSE agent_id END,
                        progress = CASE WHEN ?3 AND attempts < ?5 THEN 0 ELSE progress END,
                        started_at = CASE WHEN ?3 AND attempts < ?5 THEN NULL ELSE started_at END,
                        completed_at = CASE WHEN ?3 AND attempts < ?5 THEN NULL ELSE ?6 END,
                        error = ?4, lease_expires_at = NULL, updated_at = ?6
                     WHERE id = ?1 AND agent_id = ?2 AND status = 'running'
                     RETURNING {TASK_COLUMNS}"
                ))
                .bind(id.to_string())
                .bind(agent.to_string())
                .bind(*retryable)
                .bind(error)
                .bind(i64::from(max_attempts))
                .bind(to_millis(at))
                .fetch_optional(self.pool())
                .await?
            }
        };
        row.as_ref().map(task_from_row).transpose()
    }

    async fn requeue_expired(
        &self,
        max_attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE tasks SET
                status = CASE WHEN attempts >= ?1 THEN 'failed' ELSE 'queued' END,
                error = CASE WHEN attempts >= ?1
                             THEN 'agent lost the task ' || attempts || ' times'
                             ELSE 'the agent stopped renewing its lease; retrying' END,
                agent_id = CASE WHEN attempts >= ?1 THEN agent_id ELSE requested_agent_id END,
                progress = CASE WHEN attempts >= ?1 THEN progress ELSE 0 END,
                started_at = CASE WHEN attempts >= ?1 THEN started_at ELSE NULL END,
                completed_at = CASE WHEN attempts >= ?1 THEN ?2 ELSE NULL END,
                lease_expires_at = NULL, updated_at = ?2
             WHERE status = 'running' AND lease_expires_at < ?2
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(i64::from(max_attempts))
        .bind(to_millis(at))
        .fetch_all(self.pool())
        .await?;
        tasks_from_rows(&rows)
    }

    async fn fail_timed_out(&self, at: DateTime<Utc>) -> Result<Vec<TaskRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "UPDATE tasks SET status = 'failed',
                              error = 'timed out after ' || timeout_s || ' s',
                              lease_expires_at = NULL, completed_at = ?1, updated_at = ?1
             WHERE status = 'running' AND started_at + timeout_s * 1000 <= ?1
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(to_millis(at))
        .fetch_all(self.pool())
        .await?;
        tasks_from_rows(&rows)
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
        .fetch_all(self.pool())
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

#[cfg(test)]
mod tests {
    use super::super::agents::test_agent;
    use super::*;
    use crate::domain::{Email, FullName, TaskQuery, TimeoutSecs};
    use crate::store::{AgentStore, NewAgent, NewUser, UserStore};
    use std::collections::HashSet;
    use std::sync::Arc;

    async fn store() -> (Arc<SqliteStore>, tempfile::TempDir, UserId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).await.unwrap());
        let user = store
            .create_user(NewUser {
                email: Email::parse("a@b.io").unwrap(),
                full_name: FullName::parse("A").unwrap(),
                password_hash: "x".into(),
                role: None,
            })
            .await
            .unwrap();
        (store, dir, user.id)
    }

    fn new_task(user: UserId, priority: Priority, query: &str) -> NewTask {
        NewTask {
            id: TaskId::new(),
            user_id: user,
            query: TaskQuery::parse(query.into()).unwrap(),
            capability: Capability::general(),
            priority,
            agent_id: None,
            timeout: TimeoutSecs::DEFAULT,
            created_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn concurrent_claims_never_share_a_task() {
        let (store, _dir, user) = store().await;
        let mut ids = HashSet::new();
        for i in 0..100 {
            ids.insert(
                store
                    .insert_task(&new_task(user, Priority::Normal, &format!("t{i}")))
                    .await
                    .unwrap()
                    .id,
            );
        }
        let caps = vec![Capability::general()];
        let mut claimers = Vec::new();
        for _ in 0..16 {
            let (store, caps) = (store.clone(), caps.clone());
            // The claim only hands a task to a registered agent that may run it.
            let agent = test_agent(&store, user, false).await;
            claimers.push(tokio::spawn(async move {
                let mut got = Vec::new();
                let lease = Utc::now() + chrono::Duration::seconds(30);
                while let Some(task) = store
                    .claim_task(agent, &caps, lease, Utc::now())
                    .await
                    .unwrap()
                {
                    assert_eq!((task.status, task.attempts), (TaskStatus::Running, 1));
                    got.push(task.id);
                }
                got
            }));
        }
        let mut claimed = Vec::new();
        for c in claimers {
            claimed.extend(c.await.unwrap());
        }
        assert_eq!(claimed.len(), 100, "every task claimed exactly once");
        assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), ids);
    }

    #[tokio::test]
    async fn expired_leases_requeue_then_fail_on_the_last_attempt() {
        let (store, _dir, user) = store().await;
        let task = store
            .insert_task(&new_task(user, Priority::High, "q"))
            .await
            .unwrap();
        let caps = [Capability::general()];
        let agent = test_agent(&store, user, false).await;
        for attempt in 1..=3u32 {
            let now = Utc::now();
            let claimed = store
                .claim_task(agent, &caps, now, now)
                .await
                .unwrap()
                .unwrap();
            assert_eq!((claimed.id, claimed.attempts), (task.id, attempt));
            let later = now + chrono::Duration::milliseconds(1);
            let reaped = store.requeue_expired(3, later).await.unwrap();
            assert_eq!(reaped.len(), 1);
            let expected = if attempt < 3 {
                TaskStatus::Queued
            } else {
                TaskStatus::Failed
            };
            assert_eq!(reaped[0].status, expected);
        }
        let failed = store.task(task.id).await.unwrap();
        assert_eq!(failed.error.as_deref(), Some("agent lost the task 3 times"));
        assert!(store
            .claim_task(agent, &caps, Utc::now(), Utc::now())
            .await
            .unwrap()
            .is_none());
    }

    #[tokio::test]
    async fn agents_go_online_once_and_offline_when_silent() {
        let (store, _dir, owner) = store().await;
        let new = NewAgent {
            id: AgentId::new(),
            owner_id: owner,
            name: "a".into(),
            description: String::new(),
            capabilities: vec![Capability::general()],
            shared: false,
            token_hash: "h".into(),
            token_prefix: "p".into(),
            created_at: Utc::now(),
        };
        let agent = store.create_agent(&new).await.unwrap();
        assert!(!agent.online);
        let t0 = Utc::now();
        assert!(store
            .mark_agent_seen(agent.id, t0)
            .await
            .unwrap()
            .is_some_and(|a| a.online));
        assert!(
            store.mark_agent_seen(agent.id, t0).await.unwrap().is_none(),
            "already online"
        );
        let cutoff = t0 - chrono::Duration::seconds(60);
        assert!(store
            .mark_stale_agents_offline(cutoff, t0)
            .await
            .unwrap()
            .is_empty());
        let later = t0 + chrono::Duration::seconds(61);
        let gone = store
            .mark_stale_agents_offline(later - chrono::Duration::seconds(60), later)
            .await
            .unwrap();
        assert_eq!(gone.len(), 1);
        assert!(!gone[0].online);
        assert!(
            store
                .mark_stale_agents_offline(later, later)
                .await
                .unwrap()
                .is_empty(),
            "reported once"
        );
    }
}

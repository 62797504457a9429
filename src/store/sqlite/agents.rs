//! The agent registry on SQLite. Capabilities are a JSON array in one column, searched
//! with `json_each`; the running/completed/failed counters are counted from `tasks` on
//! read.

use super::outbox::{self, announcements};
use super::tasks::{tasks_from_rows, TASK_COLUMNS};
use super::SqliteStore;
use crate::domain::{AgentId, Capability, UserId};
use crate::store::{
    from_millis, to_millis, AgentChanges, AgentFilter, AgentRecord, AgentStore, Announce, NewAgent,
    Page, StoreError, TaskRecord,
};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

/// Columns of an agent, with its counters. Written against the bare table name so the
/// same list serves `SELECT … FROM agents` and `RETURNING`.
const AGENT_COLUMNS: &str = "agents.seq, agents.id, agents.owner_id, agents.name, \
    agents.description, agents.capabilities, agents.shared, agents.online, \
    agents.last_seen_at, agents.created_at, agents.updated_at, \
    (SELECT COUNT(*) FROM tasks WHERE tasks.agent_id = agents.id AND tasks.status = 'running') AS current_tasks, \
    (SELECT COUNT(*) FROM tasks WHERE tasks.agent_id = agents.id AND tasks.status = 'completed') AS tasks_completed, \
    (SELECT COUNT(*) FROM tasks WHERE tasks.agent_id = agents.id AND tasks.status = 'failed') AS tasks_failed";

/// How often a busy agent's `last_seen_at` is written: presence only needs seconds, and
/// every claim and progress call would otherwise be an extra write.
const SEEN_RESOLUTION_MS: i64 = 1_000;

fn agent_from_row(row: &SqliteRow) -> Result<AgentRecord, StoreError> {
    let raw_caps: String = row.try_get("capabilities")?;
    let caps: Vec<String> = serde_json::from_str(&raw_caps)
        .map_err(|e| StoreError::Corrupt(format!("agent capabilities: {e}")))?;
    Ok(AgentRecord {
        id: AgentId::parse(row.try_get("id")?)?,
        owner_id: UserId::parse(row.try_get("owner_id")?)?,
        name: row.try_get("name")?,
        description: row.try_get("description")?,
        capabilities: caps
            .iter()
            .map(|c| Capability::parse(c))
            .collect::<Result<_, _>>()?,
        shared: row.try_get::<i64, _>("shared")? != 0,
        online: row.try_get::<i64, _>("online")? != 0,
        last_seen_at: row
            .try_get::<Option<i64>, _>("last_seen_at")?
            .map(from_millis),
        current_tasks: row.try_get("current_tasks")?,
        tasks_completed: row.try_get("tasks_completed")?,
        tasks_failed: row.try_get("tasks_failed")?,
        created_at: from_millis(row.try_get("created_at")?),
        updated_at: from_millis(row.try_get("updated_at")?),
    })
}

fn caps_json(caps: &[Capability]) -> String {
    let strings: Vec<&str> = caps.iter().map(Capability::as_str).collect();
    serde_json::Value::from(strings).to_string()
}

impl SqliteStore {
    /// Inserts an agent; for a system agent (`system_key` set) that already exists, only
    /// its token rotates (and it stays shared, as the contract makes the built-in agent),
    /// so an operator's edits to name or capabilities survive restarts. A new agent is
    /// announced in the same transaction.
    async fn insert_agent(
        &self,
        new: &NewAgent,
        system_key: Option<&str>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<AgentRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO agents (id, owner_id, name, description, capabilities, token_hash,
                                 token_prefix, system_key, created_at, updated_at, shared)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?9, ?10)
             ON CONFLICT (system_key) DO UPDATE
                SET token_hash = excluded.token_hash, token_prefix = excluded.token_prefix,
                    shared = excluded.shared
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(new.id.to_string())
        .bind(new.owner_id.to_string())
        .bind(&new.name)
        .bind(&new.description)
        .bind(caps_json(&new.capabilities))
        .bind(&new.token_hash)
        .bind(&new.token_prefix)
        .bind(system_key)
        .bind(to_millis(new.created_at))
        .bind(new.shared)
        .fetch_one(&mut *tx)
        .await?;
        let agent = agent_from_row(&row)?;
        if agent.id == new.id {
            outbox::write(&mut tx, &announce(&agent)).await?;
        }
        tx.commit().await?;
        Ok(agent)
    }
}

#[async_trait]
impl AgentStore for SqliteStore {
    #[tracing::instrument(skip_all, fields(agent_id = %new.id))]
    async fn create_agent(
        &self,
        new: &NewAgent,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<AgentRecord, StoreError> {
        // A NULL system key never conflicts, so this is always a plain insert.
        self.insert_agent(new, None, announce).await
    }

    #[tracing::instrument(skip_all, fields(system_key))]
    async fn upsert_system_agent(
        &self,
        system_key: &str,
        new: &NewAgent,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<(AgentRecord, bool), StoreError> {
        let agent = self.insert_agent(new, Some(system_key), announce).await?;
        let created = agent.id == new.id;
        Ok((agent, created))
    }

    async fn agent(&self, id: AgentId) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE agents.id = ?1"
        ))
        .bind(id.to_string())
        .fetch_one(self.reader())
        .await?;
        agent_from_row(&row)
    }

    async fn agent_by_token_hash(&self, hash: &str) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents WHERE agents.token_hash = ?1"
        ))
        .bind(hash)
        .fetch_one(self.reader())
        .await?;
        agent_from_row(&row)
    }

    #[tracing::instrument(skip_all)]
    async fn list_agents(&self, filter: &AgentFilter) -> Result<Page<AgentRecord>, StoreError> {
        let limit = i64::from(filter.limit.max(1));
        let rows = sqlx::query(&format!(
            "SELECT {AGENT_COLUMNS} FROM agents
             WHERE (?1 IS NULL OR instr(lower(agents.name), ?1) > 0
                               OR instr(lower(agents.description), ?1) > 0)
               AND (?2 IS NULL OR EXISTS (SELECT 1 FROM json_each(agents.capabilities)
                                          WHERE json_each.value = ?2))
               AND (?3 IS NULL OR agents.seq < ?3)
               AND (?5 IS NULL OR agents.owner_id = ?5 OR agents.shared = 1)
             ORDER BY agents.seq DESC
             LIMIT ?4"
        ))
        .bind(filter.q.as_ref().map(|q| q.to_lowercase()))
        .bind(filter.capability.as_ref().map(Capability::as_str))
        .bind(filter.cursor)
        .bind(limit + 1)
        .bind(filter.visible_to.map(|u| u.to_string()))
        .fetch_all(self.reader())
        .await?;
        page(rows, limit as usize)
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn update_agent(
        &self,
        id: AgentId,
        changes: &AgentChanges,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<AgentRecord, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE agents SET name = COALESCE(?2, name),
                               description = COALESCE(?3, description),
                               capabilities = COALESCE(?4, capabilities),
                               shared = COALESCE(?6, shared),
                               updated_at = ?5
             WHERE id = ?1
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(changes.name.as_deref())
        .bind(changes.description.as_deref())
        .bind(changes.capabilities.as_deref().map(caps_json))
        .bind(to_millis(at))
        .bind(changes.shared)
        .fetch_one(&mut *tx)
        .await?;
        let agent = agent_from_row(&row)?;
        outbox::write(&mut tx, &announce(&agent)).await?;
        tx.commit().await?;
        Ok(agent)
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn delete_agent(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, [TaskRecord]>,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        // The DELETE comes first, so the transaction holds the write lock from its first
        // statement (it never upgrades from a read lock, see the module doc). Once the
        // row is gone the agent can claim nothing more (the claim joins on it) and its
        // token answers 401, so nothing can race the requeue below.
        let mut tx = self.pool().begin().await?;
        let done = sqlx::query("DELETE FROM agents WHERE id = ?1")
            .bind(id.to_string())
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        // Its running tasks go back to the queue at once, the attempt handed back like a
        // clean `release` (not the task's failure, so `attempts` goes back down).
        let mut requeued = sqlx::query(&format!(
            "UPDATE tasks SET status = 'queued', agent_id = NULL,
                              requested_agent_id = NULLIF(requested_agent_id, ?1),
                              attempts = MAX(attempts - 1, 0), progress = 0,
                              started_at = NULL, lease_expires_at = NULL, updated_at = ?2
             WHERE status = 'running' AND agent_id = ?1
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(to_millis(at))
        .fetch_all(&mut *tx)
        .await?;
        // Queued tasks pinned to it could never run: unpin them, so any agent their owner
        // may use takes them.
        let unpinned = sqlx::query(&format!(
            "UPDATE tasks SET requested_agent_id = NULL, agent_id = NULL, updated_at = ?2
             WHERE status = 'queued' AND requested_agent_id = ?1
             RETURNING {TASK_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(to_millis(at))
        .fetch_all(&mut *tx)
        .await?;
        requeued.extend(unpinned);
        let tasks = tasks_from_rows(&requeued)?;
        outbox::write(&mut tx, &announce(&tasks)).await?;
        tx.commit().await?;
        Ok(tasks)
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn set_agent_token(
        &self,
        id: AgentId,
        token_hash: &str,
        token_prefix: &str,
        at: DateTime<Utc>,
    ) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE agents SET token_hash = ?2, token_prefix = ?3, updated_at = ?4
             WHERE id = ?1
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(token_hash)
        .bind(token_prefix)
        .bind(to_millis(at))
        .fetch_one(self.pool())
        .await?;
        agent_from_row(&row)
    }

    async fn admin_ids(&self) -> Result<Vec<UserId>, StoreError> {
        let rows = sqlx::query("SELECT id FROM users WHERE role = 'admin'")
            .fetch_all(self.reader())
            .await?;
        rows.iter()
            .map(|row| Ok(UserId::parse(row.try_get("id")?)?))
            .collect()
    }

    async fn mark_agent_seen(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let at = to_millis(at);
        // The `online = 0` condition makes the transition a compare-and-set: of two
        // concurrent calls only one sees the row change and announces it.
        let mut tx = self.pool().begin().await?;
        let came_online = sqlx::query(&format!(
            "UPDATE agents SET online = 1, last_seen_at = ?2, updated_at = ?2
             WHERE id = ?1 AND online = 0
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(at)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = came_online {
            let agent = agent_from_row(&row)?;
            outbox::write(&mut tx, &announce(&agent)).await?;
            tx.commit().await?;
            return Ok(Some(agent));
        }
        tx.rollback().await?;
        sqlx::query(
            "UPDATE agents SET last_seen_at = ?2
             WHERE id = ?1 AND (last_seen_at IS NULL OR last_seen_at < ?2 - ?3)",
        )
        .bind(id.to_string())
        .bind(at)
        .bind(SEEN_RESOLUTION_MS)
        .execute(self.pool())
        .await?;
        Ok(None)
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    async fn mark_agent_offline(
        &self,
        id: AgentId,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Option<AgentRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE agents SET online = 0, updated_at = ?2
             WHERE id = ?1 AND online = 1
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(to_millis(at))
        .fetch_optional(&mut *tx)
        .await?;
        let agent = row.as_ref().map(agent_from_row).transpose()?;
        if let Some(agent) = &agent {
            outbox::write(&mut tx, &announce(agent)).await?;
        }
        tx.commit().await?;
        Ok(agent)
    }

    async fn mark_stale_agents_offline(
        &self,
        seen_before: DateTime<Utc>,
        at: DateTime<Utc>,
        announce: Announce<'_, AgentRecord>,
    ) -> Result<Vec<AgentRecord>, StoreError> {
        let mut tx = self.pool().begin().await?;
        let rows = sqlx::query(&format!(
            "UPDATE agents SET online = 0, updated_at = ?2
             WHERE online = 1 AND (last_seen_at IS NULL OR last_seen_at < ?1)
             RETURNING {AGENT_COLUMNS}"
        ))
        .bind(to_millis(seen_before))
        .bind(to_millis(at))
        .fetch_all(&mut *tx)
        .await?;
        let agents = rows
            .iter()
            .map(agent_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        outbox::write(&mut tx, &announcements(announce, &agents)).await?;
        tx.commit().await?;
        Ok(agents)
    }

    async fn count_agents(&self, viewer: Option<UserId>) -> Result<(i64, i64), StoreError> {
        // The same visibility rule as the lists: a user counts only what they could list.
        let row = sqlx::query(
            "SELECT COUNT(*) AS total, COALESCE(SUM(online), 0) AS online FROM agents
              WHERE ?1 IS NULL OR owner_id = ?1 OR shared = 1 OR system_key IS NOT NULL",
        )
        .bind(viewer.map(|u| u.to_string()))
        .fetch_one(self.reader())
        .await?;
        Ok((row.try_get("total")?, row.try_get("online")?))
    }
}

/// Cuts a `limit + 1` result into a page: the extra row only says there is more.
fn page(rows: Vec<SqliteRow>, limit: usize) -> Result<Page<AgentRecord>, StoreError> {
    let more = rows.len() > limit;
    let mut items = Vec::with_capacity(limit.min(rows.len()));
    let mut last_seq = None;
    for row in rows.iter().take(limit) {
        items.push(agent_from_row(row)?);
        last_seq = Some(row.try_get::<i64, _>("seq")?);
    }
    Ok(Page {
        items,
        next_cursor: if more { last_seq } else { None },
    })
}

//! Task output on SQLite: one transaction per append whose first statement is the
//! write on the task row (so it takes the write lock at once and never has to upgrade
//! a read lock), then one `INSERT … SELECT … FROM json_each(?)` for every chunk of the
//! batch, however many: no statement per chunk and no limit on bound variables.

use super::SqliteStore;
use crate::domain::{AgentId, ChunkBatch, OutputChunk, OutputStream, TaskId, UserId};
use crate::store::{from_millis, to_millis, Appended, OutputStore, StoreError};
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

#[async_trait]
impl OutputStore for SqliteStore {
    #[tracing::instrument(skip_all, fields(task_id = %task, chunks = batch.len()))]
    async fn append_output(
        &self,
        task: TaskId,
        agent: AgentId,
        batch: &ChunkBatch,
        max_bytes: u64,
        lease_until: DateTime<Utc>,
        at: DateTime<Utc>,
    ) -> Result<Appended, StoreError> {
        let n = batch.len() as i64;
        let bytes = batch.bytes() as i64;
        let at_ms = to_millis(at);
        let mut tx = self.pool().begin().await?;
        // The byte check is in the RETURNING values rather than the WHERE clause, so a
        // refused append can tell "over the limit" from "not your task" without a
        // second query; the transaction is then rolled back.
        let row = sqlx::query(
            "UPDATE tasks SET output_seq = output_seq + ?3, output_bytes = output_bytes + ?4,
                              lease_expires_at = ?5
             WHERE id = ?1 AND agent_id = ?2 AND status = 'running'
             RETURNING user_id, output_seq, output_bytes",
        )
        .bind(task.to_string())
        .bind(agent.to_string())
        .bind(n)
        .bind(bytes)
        .bind(to_millis(lease_until))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Appended::NotRunning);
        };
        let last_seq: i64 = row.try_get("output_seq")?;
        let output_bytes: i64 = row.try_get("output_bytes")?;
        if output_bytes as u64 > max_bytes {
            tx.rollback().await?;
            return Ok(Appended::OverLimit {
                output_bytes: (output_bytes - bytes).max(0) as u64,
            });
        }
        let first_seq = last_seq - n + 1;
        let rows: Vec<(&str, &str)> = batch
            .chunks()
            .iter()
            .map(|c| (c.stream.as_str(), c.text.as_str()))
            .collect();
        let json = serde_json::to_string(&rows)
            .map_err(|e| StoreError::Corrupt(format!("encoding output chunks: {e}")))?;
        // `json_each` yields the array in order with `key` = 0, 1, …
        sqlx::query(
            "INSERT INTO task_output (task_id, seq, stream, text, at)
             SELECT ?1, ?2 + key, value ->> 0, value ->> 1, ?3 FROM json_each(?4)",
        )
        .bind(task.to_string())
        .bind(first_seq)
        .bind(at_ms)
        .bind(json)
        .execute(&mut *tx)
        .await?;
        // An agent that streams is alive: keep its presence fresh (at most every few
        // seconds, so the row is not rewritten per append).
        sqlx::query(
            "UPDATE agents SET last_seen_at = ?2
             WHERE id = ?1 AND online = 1 AND last_seen_at < ?2 - 5000",
        )
        .bind(agent.to_string())
        .bind(at_ms)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Appended::Stored {
            user_id: UserId::parse(row.try_get("user_id")?)?,
            first_seq: first_seq as u64,
            last_seq: last_seq as u64,
            output_bytes: output_bytes as u64,
        })
    }

    async fn read_output(
        &self,
        task: TaskId,
        after: u64,
        limit: u32,
    ) -> Result<Vec<OutputChunk>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, stream, text, at FROM task_output
             WHERE task_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )
        .bind(task.to_string())
        .bind(i64::try_from(after).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(OutputChunk {
                    seq: row.try_get::<i64, _>("seq")?.max(0) as u64,
                    stream: OutputStream::parse(row.try_get("stream")?)?,
                    text: row.try_get("text")?,
                    at: from_millis(row.try_get("at")?),
                })
            })
            .collect()
    }
}

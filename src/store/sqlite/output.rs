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
        .fetch_all(self.pool())
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{test_agent, test_task, test_user};
    use super::*;
    use crate::domain::{NewChunk, Priority};
    use crate::store::silent;
    use crate::store::TaskStore;
    use std::sync::Arc;

    async fn running_task() -> (Arc<SqliteStore>, tempfile::TempDir, TaskId, AgentId) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("t.db")).await.unwrap());
        let user: UserId = test_user(&store, "a@b.io").await;
        let agent = test_agent(&store, user, false).await;
        let new = test_task(user, Priority::Normal, "q");
        store
            .insert_task(&new, chrono::Duration::hours(24), &silent)
            .await
            .unwrap();
        let lease = Utc::now() + chrono::Duration::seconds(30);
        let claimed = store
            .claim_tasks(agent, 1, lease, Utc::now(), &silent)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let task = &claimed[0];
        (store, dir, task.id, agent)
    }

    fn batch(texts: &[&str]) -> ChunkBatch {
        ChunkBatch::parse(
            texts
                .iter()
                .map(|t| NewChunk {
                    stream: OutputStream::Output,
                    text: (*t).into(),
                })
                .collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn concurrent_appends_number_chunks_without_gaps_or_overlap() {
        let (store, _dir, task, agent) = running_task().await;
        let lease = Utc::now() + chrono::Duration::seconds(30);
        let mut writers = Vec::new();
        for w in 0..8 {
            let store = store.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..20 {
                    let texts = [format!("{w}-{i}-a"), format!("{w}-{i}-b")];
                    let b = batch(&[&texts[0], &texts[1]]);
                    let done = store
                        .append_output(task, agent, &b, u64::MAX, lease, Utc::now())
                        .await
                        .unwrap();
                    assert!(matches!(done, Appended::Stored { first_seq, last_seq, .. } if last_seq == first_seq + 1));
                }
            }));
        }
        for w in writers {
            w.await.unwrap();
        }
        let all = store.read_output(task, 0, 1000).await.unwrap();
        assert_eq!(all.len(), 320);
        for (i, c) in all.iter().enumerate() {
            assert_eq!(c.seq, i as u64 + 1);
        }
        // Each batch's two chunks are adjacent: a batch is never split.
        for pair in all.chunks(2) {
            assert_eq!(
                pair[0].text.trim_end_matches("-a"),
                pair[1].text.trim_end_matches("-b")
            );
        }
        assert_eq!(store.read_output(task, 318, 10).await.unwrap().len(), 2);
        assert_eq!(store.task(task).await.unwrap().status.as_str(), "running");
    }

    #[tokio::test]
    async fn limits_and_ownership_refuse_without_storing() {
        let (store, _dir, task, agent) = running_task().await;
        let lease = Utc::now() + chrono::Duration::seconds(30);
        let now = Utc::now();
        assert!(matches!(
            store
                .append_output(task, agent, &batch(&["12345"]), 8, lease, now)
                .await
                .unwrap(),
            Appended::Stored {
                last_seq: 1,
                output_bytes: 5,
                ..
            }
        ));
        assert_eq!(
            store
                .append_output(task, agent, &batch(&["1234"]), 8, lease, now)
                .await
                .unwrap(),
            Appended::OverLimit { output_bytes: 5 }
        );
        assert_eq!(
            store
                .append_output(task, AgentId::new(), &batch(&["x"]), 8, lease, now)
                .await
                .unwrap(),
            Appended::NotRunning
        );
        // Nothing of the refused appends was kept, and numbering goes on from 1.
        assert!(matches!(
            store
                .append_output(task, agent, &batch(&["abc"]), 8, lease, now)
                .await
                .unwrap(),
            Appended::Stored {
                first_seq: 2,
                last_seq: 2,
                output_bytes: 8,
                ..
            }
        ));
        let all = store.read_output(task, 0, 10).await.unwrap();
        assert_eq!(
            all.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
            ["12345", "abc"]
        );
    }
}

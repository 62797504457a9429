//! The real-time message log on SQLite (`MessageStore`; `app.rs` adapts it to the hub's
//! `MessageLog` port).
//!
//! Retention is two single statements, in this order: raise each stream's watermark,
//! then delete what lies at or below it. Between the two (or after a crash between
//! them) a resume can only be answered `reset` too eagerly, never replayed with a hole.

use super::{SqliteStore, WriteTx, BEGIN, COMMIT};
use crate::domain::UserId;
use crate::store::{MessagePosition, MessageRow, MessageStore, NewMessage, StoreError};
use async_trait::async_trait;
use rand::RngCore;
use sqlx::Row;

/// The `meta` key holding the log's epoch.
const EPOCH_KEY: &str = "message_epoch";
/// The stream name of broadcasts in `message_streams`.
const BROADCAST_STREAM: &str = "*";

/// Rows per multi-row INSERT (5 parameters each).
const ROWS_PER_INSERT: usize = 100;

/// Appends a batch in which every message has an idempotency key, with one multi-row
/// INSERT per `ROWS_PER_INSERT` (rows get their `seq` in VALUES order) and one read of
/// the earlier positions of keys already present. The first INSERT opens the
/// transaction and the last commits it; the read comes after, on the same (writer)
/// connection, so nothing can remove those rows in between.
async fn append_keyed(
    mut tx: WriteTx,
    batch: &[NewMessage<'_>],
) -> Result<Vec<(i64, bool)>, StoreError> {
    let mut fresh = std::collections::HashMap::with_capacity(batch.len());
    let chunks = batch.chunks(ROWS_PER_INSERT).count();
    for (n, chunk) in batch.chunks(ROWS_PER_INSERT).enumerate() {
        let values = (0..chunk.len())
            .map(|i| {
                let p = i * 5;
                format!(
                    "(?{}, ?{}, ?{}, ?{}, ?{})",
                    p + 1,
                    p + 2,
                    p + 3,
                    p + 4,
                    p + 5
                )
            })
            .collect::<Vec<_>>()
            .join(", ");
        let begin = if n == 0 { BEGIN } else { "" };
        let commit = if n + 1 == chunks { COMMIT } else { "" };
        let sql = format!(
            "{begin}INSERT INTO messages (user_id, type, data, created_at, dedupe) VALUES {values}
             ON CONFLICT DO NOTHING RETURNING seq, dedupe{commit}"
        );
        let mut query = sqlx::query(&sql);
        for m in chunk {
            query = query
                .bind(m.user.map(|u| u.to_string()))
                .bind(m.kind)
                .bind(m.data_json)
                .bind(m.created_at_ms)
                .bind(m.dedupe);
        }
        let conn = if n == 0 { tx.opening() } else { tx.conn() };
        // All rows: the COMMIT after the last INSERT must run too.
        for row in query.fetch_all(conn).await? {
            fresh.insert(
                row.try_get::<i64, _>("dedupe")?,
                row.try_get::<i64, _>("seq")?,
            );
        }
    }
    tx.committed();
    let mut earlier = std::collections::HashMap::new();
    if fresh.len() < batch.len() {
        // Only the dedupe key can conflict (`seq` is generated).
        let keys = batch
            .iter()
            .filter_map(|m| m.dedupe)
            .filter(|k| !fresh.contains_key(k))
            .map(|k| k.to_string())
            .collect::<Vec<_>>()
            .join(",");
        let rows = sqlx::query(
            "SELECT seq, dedupe FROM messages WHERE dedupe IN (SELECT value FROM json_each(?1))",
        )
        .bind(format!("[{keys}]"))
        .fetch_all(tx.conn())
        .await?;
        for row in rows {
            earlier.insert(
                row.try_get::<i64, _>("dedupe")?,
                row.try_get::<i64, _>("seq")?,
            );
        }
    }
    batch
        .iter()
        .map(|m| {
            let key = m.dedupe.unwrap_or_default();
            match (fresh.get(&key), earlier.get(&key)) {
                (Some(seq), _) => Ok((*seq, true)),
                (None, Some(seq)) => Ok((*seq, false)),
                (None, None) => Err(StoreError::Corrupt(format!(
                    "message with key {key} neither appended nor found"
                ))),
            }
        })
        .collect()
}

#[async_trait]
impl MessageStore for SqliteStore {
    #[tracing::instrument(skip_all)]
    async fn message_epoch(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // Generated once: a concurrent first start keeps whichever insert came first.
        sqlx::query("INSERT INTO meta (key, value) VALUES (?1, ?2) ON CONFLICT(key) DO NOTHING")
            .bind(EPOCH_KEY)
            .bind(hex::encode(bytes))
            .execute(self.pool())
            .await?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?1")
            .bind(EPOCH_KEY)
            .fetch_one(self.reader())
            .await?;
        Ok(epoch)
    }

    async fn last_message_seq(&self) -> Result<i64, StoreError> {
        // `sqlite_sequence` remembers the highest number ever handed out, even when
        // those rows were pruned.
        let seq: i64 = sqlx::query_scalar(
            "SELECT COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)",
        )
        .fetch_one(self.reader())
        .await?;
        Ok(seq)
    }

    #[tracing::instrument(skip_all, fields(count = batch.len()))]
    async fn append_messages(
        &self,
        batch: &[NewMessage<'_>],
    ) -> Result<Vec<(i64, bool)>, StoreError> {
        // Every statement's first step is the INSERT, so the transaction holds the
        // write lock from its start (no read-then-upgrade).
        if batch.len() > 1 && batch.iter().all(|m| m.dedupe.is_some()) {
            // The relay's batches: few statements, so the write lock is held briefly.
            return append_keyed(self.write_tx().await?, batch).await;
        }
        let mut tx = self.pool().begin().await?;
        let mut out = Vec::with_capacity(batch.len());
        for m in batch {
            let seq: Option<i64> = sqlx::query_scalar(
                "INSERT INTO messages (user_id, type, data, created_at, dedupe)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT DO NOTHING
                 RETURNING seq",
            )
            .bind(m.user.map(|u| u.to_string()))
            .bind(m.kind)
            .bind(m.data_json)
            .bind(m.created_at_ms)
            .bind(m.dedupe)
            .fetch_optional(&mut *tx)
            .await?;
            match seq {
                Some(seq) => out.push((seq, true)),
                None => {
                    // Only the dedupe key can conflict (`seq` is generated).
                    let seq: i64 = sqlx::query_scalar("SELECT seq FROM messages WHERE dedupe = ?1")
                        .bind(m.dedupe)
                        .fetch_one(&mut *tx)
                        .await?;
                    out.push((seq, false));
                }
            }
        }
        tx.commit().await?;
        Ok(out)
    }

    async fn message_position(
        &self,
        user: UserId,
        upto: i64,
    ) -> Result<MessagePosition, StoreError> {
        let row = sqlx::query(
            "SELECT
               MAX(COALESCE((SELECT MAX(seq) FROM messages WHERE user_id = ?1 AND seq <= ?2), 0),
                   COALESCE((SELECT MAX(seq) FROM messages WHERE user_id IS NULL AND seq <= ?2), 0))
                 AS latest,
               COALESCE((SELECT MAX(pruned_through) FROM message_streams
                         WHERE stream IN (?1, ?3)), 0) AS pruned_through",
        )
        .bind(user.to_string())
        .bind(upto)
        .bind(BROADCAST_STREAM)
        .fetch_one(self.reader())
        .await?;
        Ok(MessagePosition {
            latest: row.try_get("latest")?,
            pruned_through: row.try_get("pruned_through")?,
        })
    }

    #[tracing::instrument(skip_all, fields(after, upto))]
    async fn messages_between(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<MessageRow>, StoreError> {
        // Two index range scans (the user's stream and the broadcasts), merged by seq.
        let rows = sqlx::query(
            "SELECT seq, type, data, created_at FROM (
               SELECT seq, type, data, created_at FROM messages
                WHERE user_id = ?1 AND seq > ?2 AND seq <= ?3
               UNION ALL
               SELECT seq, type, data, created_at FROM messages
                WHERE user_id IS NULL AND seq > ?2 AND seq <= ?3)
             ORDER BY seq LIMIT ?4",
        )
        .bind(user.to_string())
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                Ok(MessageRow {
                    seq: row.try_get("seq")?,
                    kind: row.try_get("type")?,
                    data_json: row.try_get("data")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    #[tracing::instrument(skip_all)]
    async fn prune_messages(&self, keep_per_stream: u32, cutoff: i64) -> Result<u64, StoreError> {
        // Per stream, the newest message that is both beyond the newest `max_per_stream`
        // and older than the cutoff: everything at or below it may go.
        sqlx::query(
            "INSERT INTO message_streams (stream, pruned_through)
             SELECT stream, MAX(seq) FROM (
               SELECT seq, created_at, COALESCE(user_id, ?3) AS stream,
                      ROW_NUMBER() OVER (PARTITION BY COALESCE(user_id, ?3) ORDER BY seq DESC) AS rn
                 FROM messages)
              WHERE rn > ?1 AND created_at < ?2
              GROUP BY stream
             ON CONFLICT(stream) DO UPDATE
               SET pruned_through = MAX(pruned_through, excluded.pruned_through)",
        )
        .bind(i64::from(keep_per_stream))
        .bind(cutoff)
        .bind(BROADCAST_STREAM)
        .execute(self.pool())
        .await?;
        let deleted = sqlx::query(
            "DELETE FROM messages
              WHERE seq <= COALESCE((SELECT pruned_through FROM message_streams
                                      WHERE stream = COALESCE(messages.user_id, ?1)), 0)",
        )
        .bind(BROADCAST_STREAM)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(deleted)
    }

    async fn message_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(self.reader())
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

//! The real-time message log on PostgreSQL (`MessageStore`; `app.rs` adapts it to the
//! hub's `MessageLog` port).
//!
//! The log-wide sequence is a PostgreSQL sequence (`message_seq`). A sequence number is
//! handed out when the insert starts, not when it commits, so two concurrent appends
//! could commit out of order and a reader could see 8 before 7. That cannot happen
//! here: on one node the `LocalBroker`'s single publisher task appends one message at a
//! time, each committed before the next starts, so commit order is sequence order. A
//! cluster's brokers must assign the order themselves (the Redis broker does) rather
//! than rely on this sequence across nodes.
//!
//! Retention is two single statements, in this order: raise each stream's watermark,
//! then delete what lies at or below it. Between the two (or after a crash between
//! them) a resume can only be answered `reset` too eagerly, never replayed with a hole.

use super::PgStore;
use crate::domain::UserId;
use crate::store::{MessagePosition, MessageRow, MessageStore, StoreError};
use async_trait::async_trait;
use rand::RngCore;
use sqlx::Row;

/// The `meta` key holding the log's epoch.
const EPOCH_KEY: &str = "message_epoch";
/// The stream name of broadcasts in `message_streams`.
const BROADCAST_STREAM: &str = "*";

#[async_trait]
impl MessageStore for PgStore {
    #[tracing::instrument(skip_all)]
    async fn message_epoch(&self) -> Result<String, StoreError> {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // Generated once: a concurrent first start keeps whichever insert came first.
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(EPOCH_KEY)
            .bind(hex::encode(bytes))
            .execute(self.pool())
            .await?;
        let epoch: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(EPOCH_KEY)
            .fetch_one(self.pool())
            .await?;
        Ok(epoch)
    }

    async fn last_message_seq(&self) -> Result<i64, StoreError> {
        // The sequence remembers the highest number ever handed out, even when those
        // rows were pruned; before its first `nextval` it has handed out none.
        let seq: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM message_seq",
        )
        .fetch_one(self.pool())
        .await?;
        Ok(seq)
    }

    #[tracing::instrument(skip_all, fields(kind))]
    async fn append_message(
        &self,
        user: Option<UserId>,
        kind: &str,
        data_json: &str,
        created_at_ms: i64,
    ) -> Result<i64, StoreError> {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO messages (user_id, type, data, created_at) VALUES ($1, $2, $3, $4)
             RETURNING seq",
        )
        .bind(user.map(|u| u.to_string()))
        .bind(kind)
        .bind(data_json)
        .bind(created_at_ms)
        .fetch_one(self.pool())
        .await?;
        Ok(seq)
    }

    async fn message_position(
        &self,
        user: UserId,
        upto: i64,
    ) -> Result<MessagePosition, StoreError> {
        let row = sqlx::query(
            "SELECT
               GREATEST(COALESCE((SELECT MAX(seq) FROM messages WHERE user_id = $1 AND seq <= $2), 0),
                        COALESCE((SELECT MAX(seq) FROM messages WHERE user_id IS NULL AND seq <= $2), 0))
                 AS latest,
               COALESCE((SELECT MAX(pruned_through) FROM message_streams
                         WHERE stream IN ($1, $3)), 0) AS pruned_through",
        )
        .bind(user.to_string())
        .bind(upto)
        .bind(BROADCAST_STREAM)
        .fetch_one(self.pool())
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
                WHERE user_id = $1 AND seq > $2 AND seq <= $3
               UNION ALL
               SELECT seq, type, data, created_at FROM messages
                WHERE user_id IS NULL AND seq > $2 AND seq <= $3) AS m
             ORDER BY seq LIMIT $4",
        )
        .bind(user.to_string())
        .bind(after)
        .bind(upto)
        .bind(i64::from(limit))
        .fetch_all(self.pool())
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
        // Per stream, the newest message that is both beyond the newest `keep_per_stream`
        // and older than the cutoff: everything at or below it may go.
        sqlx::query(
            "INSERT INTO message_streams (stream, pruned_through)
             SELECT stream, MAX(seq) FROM (
               SELECT seq, created_at, COALESCE(user_id, $3) AS stream,
                      ROW_NUMBER() OVER (PARTITION BY COALESCE(user_id, $3) ORDER BY seq DESC) AS rn
                 FROM messages) AS ranked
              WHERE rn > $1 AND created_at < $2
              GROUP BY stream
             ON CONFLICT (stream) DO UPDATE
               SET pruned_through = GREATEST(message_streams.pruned_through,
                                             excluded.pruned_through)",
        )
        .bind(i64::from(keep_per_stream))
        .bind(cutoff)
        .bind(BROADCAST_STREAM)
        .execute(self.pool())
        .await?;
        let deleted = sqlx::query(
            "DELETE FROM messages
              WHERE seq <= COALESCE((SELECT pruned_through FROM message_streams
                                      WHERE stream = COALESCE(messages.user_id, $1)), 0)",
        )
        .bind(BROADCAST_STREAM)
        .execute(self.pool())
        .await?
        .rows_affected();
        Ok(deleted)
    }

    async fn message_count(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
            .fetch_one(self.pool())
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

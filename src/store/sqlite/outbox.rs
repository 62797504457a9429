//! The transactional outbox on SQLite: the rows a change writes in its own transaction
//! (see `store::outbox`), and the relay's reads and removes.

use super::{SqliteStore, WriteTx, COMMIT};
use crate::domain::UserId;
use crate::store::{Announce, Announcement, OutboxRow, OutboxStore, StoreError};
use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};

/// Rows per INSERT statement (4 parameters each, far below SQLite's parameter limit).
const ROWS_PER_INSERT: usize = 200;

/// What `announce` says about each of `records`, in order.
pub(super) fn announcements<T>(announce: Announce<'_, T>, records: &[T]) -> Vec<Announcement> {
    records.iter().flat_map(announce).collect()
}

/// Writes the announcements into the outbox on `conn`, which must be inside the
/// transaction of the change they announce.
pub(super) async fn write(
    conn: &mut SqliteConnection,
    items: &[Announcement],
) -> Result<(), StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    for chunk in items.chunks(ROWS_PER_INSERT) {
        insert(&mut *conn, chunk, now, "").await?;
    }
    Ok(())
}

/// Writes the announcements into the outbox and commits the change they announce, the
/// `COMMIT` riding on the last insert.
pub(super) async fn write_and_commit(
    mut tx: WriteTx,
    items: &[Announcement],
) -> Result<(), StoreError> {
    let now = chrono::Utc::now().timestamp_millis();
    let chunks: Vec<_> = items.chunks(ROWS_PER_INSERT).collect();
    let Some((last, rest)) = chunks.split_last() else {
        return tx.commit().await;
    };
    for chunk in rest {
        insert(tx.conn(), chunk, now, "").await?;
    }
    insert(tx.closing(), last, now, COMMIT).await?;
    tx.committed();
    Ok(())
}

/// Runs one multi-row INSERT of `chunk` on `conn`, followed by `then` (nothing, or
/// [`COMMIT`]).
async fn insert(
    conn: &mut SqliteConnection,
    chunk: &[Announcement],
    now: i64,
    then: &str,
) -> Result<(), StoreError> {
    let values = (0..chunk.len())
        .map(|i| {
            let p = i * 4;
            format!("(?{}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3, p + 4)
        })
        .collect::<Vec<_>>()
        .join(", ");
    // sqlx keeps prepared statements by text; the text is one of a few hundred shapes.
    let sql = format!("INSERT INTO outbox (user_id, type, data, created_at) VALUES {values}{then}");
    let mut query = sqlx::query(&sql);
    for item in chunk {
        query = query
            .bind(item.recipient.map(|u| u.to_string()))
            .bind(item.kind)
            .bind(&item.data_json)
            .bind(now);
    }
    query.execute(conn).await?;
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, type, data, created_at FROM outbox ORDER BY id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.reader())
        .await?;
        rows.iter()
            .map(|row| {
                let recipient: Option<String> = row.try_get("user_id")?;
                Ok(OutboxRow {
                    id: row.try_get("id")?,
                    recipient: recipient.as_deref().map(UserId::parse).transpose()?,
                    kind: row.try_get("type")?,
                    data_json: row.try_get("data")?,
                    created_at_ms: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    async fn outbox_remove(&self, ids: &[i64]) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        // Ids are few (one relay batch) and integers: a JSON array parameter keeps the
        // statement text fixed.
        let list = format!(
            "[{}]",
            ids.iter().map(i64::to_string).collect::<Vec<_>>().join(",")
        );
        sqlx::query("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?1))")
            .bind(list)
            .execute(self.pool())
            .await?;
        Ok(())
    }
}

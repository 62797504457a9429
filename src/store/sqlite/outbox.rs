//! The transactional outbox on SQLite: the rows a change writes in its own transaction
//! (see `store::outbox`), and the relay's reads and removes.
//!
//! Published rows are deleted lazily. The relay's remove only moves a mark in memory
//! ([`Marks`]), which `outbox_pending` reads past; the rows themselves go with the next
//! commit that writes outbox rows (one more statement in the text of its last one: no
//! round trip, no transaction of their own on the one writer connection) or, when the
//! relay finds nothing to publish, with [`OutboxStore::outbox_tidy`]. A crash before
//! that leaves them in the table, and the next start's relay publishes them again: the
//! broker knows their idempotency keys and delivers nothing twice, exactly as after a
//! crash between a publish and an immediate delete.

use super::{SqliteStore, WriteTx, COMMIT};
use crate::domain::UserId;
use crate::store::{Announce, Announcement, OutboxRow, OutboxStore, StoreError};
use async_trait::async_trait;
use sqlx::{Row, SqliteConnection};
use std::sync::atomic::{AtomicI64, Ordering};

/// How far this process's relay has got through the outbox (ids are assigned in commit
/// order: the one writer commits one transaction at a time).
#[derive(Debug, Default)]
pub(super) struct Marks {
    /// Every row with an id up to this one is published.
    published: AtomicI64,
    /// Every row with an id up to this one is deleted.
    deleted: AtomicI64,
}

impl Marks {
    /// The id through which published rows still wait to be deleted, if any do.
    fn undeleted(&self) -> Option<i64> {
        let published = self.published.load(Ordering::Acquire);
        (published > self.deleted.load(Ordering::Acquire)).then_some(published)
    }

    /// Rows up to `id` are deleted (committed).
    fn deleted_through(&self, id: i64) {
        self.deleted.fetch_max(id, Ordering::AcqRel);
    }
}

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
        insert(&mut *conn, chunk, now, After::Nothing).await?;
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
        insert(tx.conn(), chunk, now, After::Nothing).await?;
    }
    let marks = tx.outbox.clone();
    let published = marks.undeleted();
    insert(tx.closing(), last, now, After::Commit { published }).await?;
    tx.committed();
    if let Some(id) = published {
        marks.deleted_through(id);
    }
    Ok(())
}

/// What the text of an outbox INSERT goes on with.
#[derive(Clone, Copy)]
enum After {
    /// Nothing: more statements follow in the transaction.
    Nothing,
    /// Deleting the rows published through `published` (if any), then `COMMIT`.
    Commit { published: Option<i64> },
}

/// Runs one multi-row INSERT of `chunk` on `conn`, and what comes `after` it.
async fn insert(
    conn: &mut SqliteConnection,
    chunk: &[Announcement],
    now: i64,
    after: After,
) -> Result<(), StoreError> {
    let values = (0..chunk.len())
        .map(|i| {
            let p = i * 4;
            format!("(?{}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3, p + 4)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let then = match after {
        After::Nothing => String::new(),
        After::Commit { published: None } => COMMIT.to_owned(),
        After::Commit { published: Some(_) } => format!(
            ";\nDELETE FROM outbox WHERE id <= ?{}{COMMIT}",
            chunk.len() * 4 + 1
        ),
    };
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
    if let After::Commit {
        published: Some(published),
    } = after
    {
        query = query.bind(published);
    }
    query.execute(conn).await?;
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        // Past the rows published already (deleted lazily, see the module doc).
        let rows = sqlx::query(
            "SELECT id, user_id, type, data, created_at FROM outbox
              WHERE id > ?2 ORDER BY id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .bind(self.outbox.published.load(Ordering::Acquire))
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
        // The ids are the oldest pending ones: every row up to the highest is published.
        // Deleted later (see the module doc).
        if let Some(&highest) = ids.iter().max() {
            self.outbox.published.fetch_max(highest, Ordering::AcqRel);
        }
        Ok(())
    }

    async fn outbox_tidy(&self) -> Result<(), StoreError> {
        let Some(published) = self.outbox.undeleted() else {
            return Ok(());
        };
        sqlx::query("DELETE FROM outbox WHERE id <= ?1")
            .bind(published)
            .execute(self.pool())
            .await?;
        self.outbox.deleted_through(published);
        Ok(())
    }
}

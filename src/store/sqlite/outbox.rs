//! The transactional outbox on SQLite: the rows a change writes in its own transaction
//! (see `store::outbox`), and the relay's reads and removes.

use super::SqliteStore;
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
        let values = (0..chunk.len())
            .map(|i| {
                let p = i * 4;
                format!("(?{}, ?{}, ?{}, ?{})", p + 1, p + 2, p + 3, p + 4)
            })
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!("INSERT INTO outbox (user_id, type, data, created_at) VALUES {values}");
        let mut query = sqlx::query(&sql);
        for item in chunk {
            query = query
                .bind(item.recipient.map(|u| u.to_string()))
                .bind(item.kind)
                .bind(&item.data_json)
                .bind(now);
        }
        query.execute(&mut *conn).await?;
    }
    Ok(())
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, type, data, created_at FROM outbox ORDER BY id LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(self.pool())
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

#[cfg(test)]
mod tests {
    use super::super::fixtures::{test_task, test_user};
    use super::*;
    use crate::domain::Priority;
    use crate::store::{TaskRecord, TaskStore};
    use chrono::Utc;

    #[tokio::test]
    async fn rows_come_back_oldest_first_and_removed_ones_are_gone() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let user = test_user(&store, "o@example.com").await;
        let items: Vec<Announcement> = (0..450)
            .map(|n| Announcement::new((n % 2 == 0).then_some(user), "note", &n))
            .collect();
        let mut conn = store.pool().acquire().await.unwrap();
        write(&mut conn, &items).await.unwrap();
        drop(conn);
        let first = store.outbox_pending(300).await.unwrap();
        assert_eq!(first.len(), 300);
        assert!(first.windows(2).all(|w| w[0].id < w[1].id));
        assert_eq!(first[0].recipient, Some(user));
        assert_eq!(first[1].recipient, None);
        assert_eq!(first[7].data_json, "7");
        let ids: Vec<i64> = first.iter().map(|r| r.id).collect();
        store.outbox_remove(&ids).await.unwrap();
        let rest = store.outbox_pending(300).await.unwrap();
        assert_eq!(rest.len(), 150);
        assert_eq!(rest[0].data_json, "300");
    }

    #[tokio::test]
    async fn an_announced_change_writes_its_messages_in_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        let user = test_user(&store, "o@example.com").await;
        let announce = |t: &TaskRecord| {
            vec![Announcement::new(
                Some(t.user_id),
                "task_update",
                &t.status.as_str(),
            )]
        };
        let new = test_task(user, Priority::Normal, "q");
        let inserted = store
            .insert_task(&new, chrono::Duration::hours(24), &announce)
            .await
            .unwrap();
        let crate::store::Inserted::New(task) = inserted else {
            panic!("a new task")
        };
        store
            .cancel_task(task.id, Some(user), Utc::now(), &announce)
            .await
            .unwrap()
            .expect("canceled");
        // The condition no longer holds: nothing changes, nothing is announced.
        assert!(store
            .cancel_task(task.id, Some(user), Utc::now(), &announce)
            .await
            .unwrap()
            .is_none());
        let rows = store.outbox_pending(10).await.unwrap();
        let said: Vec<(&str, &str)> = rows
            .iter()
            .map(|r| (r.kind.as_str(), r.data_json.as_str()))
            .collect();
        assert_eq!(
            said,
            [
                ("task_update", "\"queued\""),
                ("task_update", "\"canceled\"")
            ]
        );
        assert!(rows.iter().all(|r| r.recipient == Some(user)));
    }
}

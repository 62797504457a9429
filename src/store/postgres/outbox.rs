//! The transactional outbox on PostgreSQL: the rows a change writes in its own
//! transaction (see `store::outbox`), and the relay's reads and removes.
//!
//! Several nodes share the database and each runs a relay, so the relays take turns:
//! rows must reach the broker in id order cluster-wide, and two relays publishing
//! overlapping batches at once would interleave them. `outbox_pending` takes a
//! session-level advisory lock (`pg_advisory_lock` on `RELAY_LOCK`) on a connection the
//! store keeps for the relay alone, and `outbox_remove` (or a read that found nothing)
//! releases it, so each read-publish-remove runs on one node at a time. A publish that
//! fails releases it too (`outbox_abandon`): a node cut off from the broker does not
//! keep the turn through its retries. Every relay
//! publishes every node's rows, so whichever node holds the lock serves the others.
//!
//! Deadlines, so that a dead or stuck node never blocks the others:
//! - a node that dies loses its connection, and PostgreSQL ends the session and with
//!   it the lock;
//! - a node that hangs with the lock stops talking on that connection: the session has
//!   `idle_session_timeout` = `HOLDER_IDLE_TIMEOUT`, after which the server closes it
//!   and frees the lock (a live relay holds it only for one publish);
//! - a relay waits for the lock at most `LOCK_WAIT`, then its pass fails and is retried
//!   (the rows stay pending; whoever holds the lock is publishing them anyway).
//!
//! Ids come from an identity column, handed out when the row is inserted, not when it
//! commits; a read may therefore see id 12 before id 11 commits, and 11 goes out after
//! 12. That is harmless: each change's row is inserted after the change took its row
//! lock, so two changes of one task (or agent) commit in id order and their messages
//! are published in order; only unrelated announcements may swap places.

use super::PgStore;
use crate::domain::UserId;
use crate::store::{Announce, Announcement, OutboxRow, OutboxStore, StoreError};
use async_trait::async_trait;
use sqlx::{Connection, PgConnection, Row};
use std::time::{Duration, Instant};

/// The advisory lock key the relays of all nodes take turns on ("ZSOUTBOX").
const RELAY_LOCK: i64 = 0x5A53_4F55_5442_4F58;
/// How long a relay waits for another node's relay to release the lock.
const LOCK_WAIT: Duration = Duration::from_secs(5);
/// How often a waiting relay tries the lock again.
const LOCK_RETRY: Duration = Duration::from_millis(20);
/// The server ends the relay's session after this long without a statement, freeing
/// the lock of a node that hangs while holding it.
const HOLDER_IDLE_TIMEOUT: &str = "30s";

/// What `announce` says about each of `records`, in order.
pub(super) fn announcements<T>(announce: Announce<'_, T>, records: &[T]) -> Vec<Announcement> {
    records.iter().flat_map(announce).collect()
}

/// Writes the announcements into the outbox on `conn`, which must be inside the
/// transaction of the change they announce. One statement for the whole list.
pub(super) async fn write(
    conn: &mut PgConnection,
    items: &[Announcement],
) -> Result<(), StoreError> {
    if items.is_empty() {
        return Ok(());
    }
    let now = chrono::Utc::now().timestamp_millis();
    let users: Vec<Option<String>> = items
        .iter()
        .map(|i| i.recipient.map(|u| u.to_string()))
        .collect();
    let kinds: Vec<&str> = items.iter().map(|i| i.kind).collect();
    let data: Vec<&str> = items.iter().map(|i| i.data_json.as_str()).collect();
    // `WITH ORDINALITY` keeps the list's order in the ids.
    sqlx::query(
        "INSERT INTO outbox (user_id, type, data, created_at)
         SELECT u, t, d, $4 FROM UNNEST($1::text[], $2::text[], $3::text[])
           WITH ORDINALITY AS x(u, t, d, n)
         ORDER BY n",
    )
    .bind(users)
    .bind(kinds)
    .bind(data)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// The relay's own connection, kept while it holds the lock (and between passes).
pub(super) type RelayConn = std::sync::Mutex<Option<PgConnection>>;

impl PgStore {
    /// Takes the relay's connection out of its slot (a new one if there is none), so no
    /// lock is held across the awaits that use it.
    async fn relay_conn(&self) -> Result<PgConnection, StoreError> {
        let kept = self
            .relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(conn) = kept {
            return Ok(conn);
        }
        let mut conn = PgConnection::connect_with(&self.options).await?;
        sqlx::query(&format!(
            "SET idle_session_timeout = '{HOLDER_IDLE_TIMEOUT}'"
        ))
        .execute(&mut conn)
        .await?;
        Ok(conn)
    }

    /// Puts the relay's connection back for the next call.
    fn keep_relay_conn(&self, conn: PgConnection) {
        *self
            .relay
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(conn);
    }

    /// Takes the relay lock on `conn` (held already: a no-op, advisory locks stack,
    /// so the holder releases with `pg_advisory_unlock_all`), waiting up to `LOCK_WAIT`.
    async fn take_relay_lock(conn: &mut PgConnection) -> Result<(), StoreError> {
        let deadline = Instant::now() + LOCK_WAIT;
        loop {
            let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                .bind(RELAY_LOCK)
                .fetch_one(&mut *conn)
                .await?;
            if got {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "another node's outbox relay holds the relay lock",
                ))));
            }
            tokio::time::sleep(LOCK_RETRY).await;
        }
    }

    /// Releases the relay lock and keeps the connection.
    async fn release_relay_lock(&self, mut conn: PgConnection) -> Result<(), StoreError> {
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut conn)
            .await?;
        self.keep_relay_conn(conn);
        Ok(())
    }
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        // On any error the connection is dropped: its session ends and frees the lock.
        let mut conn = self.relay_conn().await?;
        Self::take_relay_lock(&mut conn).await?;
        let rows = sqlx::query(
            "SELECT id, user_id, type, data, created_at FROM outbox ORDER BY id LIMIT $1",
        )
        .bind(i64::from(limit))
        .fetch_all(&mut conn)
        .await?;
        let rows = rows
            .iter()
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
            .collect::<Result<Vec<_>, StoreError>>()?;
        if rows.is_empty() {
            // Nothing to publish: no `remove` follows, so release now.
            self.release_relay_lock(conn).await?;
        } else {
            // Held until `outbox_remove`, across the publish.
            self.keep_relay_conn(conn);
        }
        Ok(rows)
    }

    async fn outbox_remove(&self, ids: &[i64]) -> Result<(), StoreError> {
        let mut conn = self.relay_conn().await?;
        sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
            .bind(ids)
            .execute(&mut conn)
            .await?;
        self.release_relay_lock(conn).await
    }

    async fn outbox_abandon(&self) -> Result<(), StoreError> {
        // The publish failed (the broker is out of reach): hand the turn over, or this
        // node would keep it across its retries while another might publish.
        let conn = self.relay_conn().await?;
        self.release_relay_lock(conn).await
    }
}

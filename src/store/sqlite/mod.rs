//! The SQLite side of the store: one database file in the data directory, in WAL mode,
//! with the migrations in `migrations/sqlite` embedded in the binary and applied at start.
//!
//! SQLite has a single writer. Every write that must be atomic (claiming a task, the
//! first-user-is-admin rule) is one statement, and a transaction (a change with its
//! outbox rows, see `outbox.rs`) starts with its write, so no transaction ever has to
//! upgrade from a read lock to a write lock, which SQLite answers with an immediate
//! `BUSY`.
//!
//! Writes go through a pool of one connection, reads through a pool of several. Two
//! connections that write at once make SQLite's busy handler put the loser to sleep
//! (1, 2, 5, 10… ms, whatever the other holds the lock for), which under a few dozen
//! concurrent requests cost seconds: a queue in front of the one writer (the pool's
//! fair acquire) wastes nothing, and readers never wait for it in WAL mode. So a
//! statement that writes uses [`SqliteStore::pool`]; one that only reads uses
//! [`SqliteStore::reader`] and sees every commit made before it started.

mod agents;
mod messages;
mod outbox;
mod output;
mod reports;
mod tasks;
mod users;

use super::{HealthCheck, StoreError};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Connection pools to one SQLite database: the writer and the readers.
#[derive(Clone)]
pub struct SqliteStore {
    /// One connection: every statement that writes.
    writer: SqlitePool,
    /// Several connections: statements that only read.
    readers: SqlitePool,
    /// How far the relay has published the outbox, and how far it is deleted.
    outbox: Arc<outbox::Marks>,
    /// Agents' reports (progress, ends of attempts) waiting to be committed as a group.
    reports: Arc<reports::Reports>,
    /// Held while any clone of the store is: the checkpoint task stops once it is gone.
    _alive: Arc<()>,
    /// How many checkpoints have copied the whole WAL back into the database (tests
    /// wait on it instead of sleeping).
    #[cfg(test)]
    checkpoints: Arc<AtomicU64>,
}

/// Connections that only read (WAL readers do not wait for the writer).
const READERS: u32 = 8;
/// How often the WAL is checkpointed beside the writer.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// The WAL size (pages) at which a commit checkpoints by itself, should the checkpoint
/// task fall behind (SQLite's default is 1,000).
const WAL_BACKSTOP_PAGES: u32 = 16_000;

/// Checkpoints the WAL every [`CHECKPOINT_EVERY`] on a reader connection, until the
/// store is dropped. SQLite's own automatic checkpoint runs inside the COMMIT that
/// crosses its threshold, on the one writer connection: under load one commit in a
/// hundred took 4-6 ms, with every writer waiting. A PASSIVE checkpoint takes no lock a
/// writer or reader waits for; it copies what it can and leaves the rest to the next.
async fn checkpoints(readers: SqlitePool, alive: std::sync::Weak<()>, whole: Arc<AtomicU64>) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if alive.strong_count() == 0 || readers.is_closed() {
            return;
        }
        // One row: busy, frames in the WAL, frames copied back.
        match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
            .fetch_one(&readers)
            .await
        {
            Ok((0, log, copied)) if log == copied => {
                whole.fetch_add(1, Ordering::Relaxed);
            }
            Ok(_) => {}
            Err(err) => {
                tracing::debug!(error = %err, "WAL checkpoint failed; the next one retries");
            }
        }
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::new().filename(path);
        Self::open_with(options).await
    }

    /// Opens a `sqlite:` URL, as given by `--database-url`.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?;
        Self::open_with(options).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable in WAL mode except for the last transactions on power loss.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Checkpoints run beside the writer (`checkpoints`); this is the backstop.
            .pragma("wal_autocheckpoint", WAL_BACKSTOP_PAGES.to_string());
        let in_memory = options.get_filename() == Path::new(":memory:");
        let writer = pool(options.clone(), 1).await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        // An in-memory database exists once per connection: one pool for everything.
        let readers = if in_memory {
            writer.clone()
        } else {
            pool(options, READERS).await?
        };
        let alive = Arc::new(());
        let whole = Arc::new(AtomicU64::new(0));
        if !in_memory {
            tokio::spawn(checkpoints(
                readers.clone(),
                Arc::downgrade(&alive),
                whole.clone(),
            ));
        }
        Ok(Self {
            writer,
            readers,
            outbox: Arc::default(),
            reports: Arc::default(),
            _alive: alive,
            #[cfg(test)]
            checkpoints: whole,
        })
    }

    /// The writer, for statements and transactions that write.
    fn pool(&self) -> &SqlitePool {
        &self.writer
    }

    /// The writer connection, for a [`WriteTx`].
    async fn write_tx(&self) -> Result<WriteTx, StoreError> {
        Ok(WriteTx {
            conn: self.writer.acquire().await?,
            open: false,
            outbox: self.outbox.clone(),
        })
    }

    /// The readers, for statements that only read.
    fn reader(&self) -> &SqlitePool {
        &self.readers
    }
}

/// Opens a [`WriteTx`]: put it in front of the transaction's first statement.
pub(super) const BEGIN: &str = "BEGIN IMMEDIATE;\n";
/// Closes a [`WriteTx`]: put it after the transaction's last statement.
pub(super) const COMMIT: &str = ";\nCOMMIT";

/// A write transaction on the writer connection whose `BEGIN` is sent with its first
/// statement and whose `COMMIT` with its last, in one query text each.
///
/// sqlx runs each SQLite connection on a thread of its own and every command is a
/// round trip to it (a channel send and a thread wake-up each way). Through `Pool::begin`
/// a change and its outbox row take four (`BEGIN`, the change, the outbox rows,
/// `COMMIT`), and the one writer connection is held for all of them: on the task
/// pipeline these round trips, not SQLite's work, bound the rate. Here they take two.
///
/// sqlx does not know about this transaction, so this guard does: dropped while it is
/// open (an error between the statements, or the request went away mid-transaction) it
/// closes the connection instead of returning it to the pool, and SQLite rolls the
/// transaction back; the pool opens a fresh connection for the next writer.
pub(super) struct WriteTx {
    conn: sqlx::pool::PoolConnection<sqlx::Sqlite>,
    /// `BEGIN` may have run and neither `COMMIT` nor `ROLLBACK` has.
    open: bool,
    /// The outbox rows published but not yet deleted: a commit that writes outbox rows
    /// deletes them in the same statement (see `outbox.rs`).
    outbox: Arc<outbox::Marks>,
}

impl WriteTx {
    /// The connection, for the statement that opens the transaction (its text starts
    /// with [`BEGIN`]).
    pub(super) fn opening(&mut self) -> &mut sqlx::SqliteConnection {
        self.open = true;
        &mut self.conn
    }

    /// The connection, for a statement inside the open transaction.
    pub(super) fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// The connection, for the statement that closes the transaction (its text ends
    /// with [`COMMIT`]); call [`WriteTx::committed`] once it has run.
    pub(super) fn closing(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.conn
    }

    /// The closing statement ran: the transaction is committed.
    pub(super) fn committed(&mut self) {
        self.open = false;
    }

    /// Commits with a statement of its own (when the last statement could not carry it).
    pub(super) async fn commit(mut self) -> Result<(), StoreError> {
        sqlx::query("COMMIT").execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }

    /// Rolls back: nothing changed, or the change is not wanted.
    pub(super) async fn rollback(mut self) -> Result<(), StoreError> {
        sqlx::query("ROLLBACK").execute(&mut *self.conn).await?;
        self.open = false;
        Ok(())
    }
}

impl Drop for WriteTx {
    fn drop(&mut self) {
        if self.open {
            // Nobody will finish it: a closed connection's transaction is rolled back.
            self.conn.close_on_drop();
        }
    }
}

/// A pool of `size` connections with `options`.
async fn pool(options: SqliteConnectOptions, size: u32) -> Result<SqlitePool, StoreError> {
    Ok(SqlitePoolOptions::new()
        .max_connections(size)
        // An embedded database cannot hang up: pinging each connection before every
        // use would double the worker-thread round trips of every query.
        .test_before_acquire(false)
        .acquire_timeout(Duration::from_secs(15))
        .connect_with(options)
        .await?)
}

#[async_trait]
impl HealthCheck for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.reader()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::SqliteStore;
    use crate::store::Store;
    use std::sync::Arc;

    /// A fresh database file in a temporary directory (the guard).
    async fn fresh() -> (Arc<dyn Store>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (Arc::new(store), dir)
    }

    crate::store::conformance::conformance_suite!(fresh);

    /// A fresh database, as the concrete store (the outbox cases need `OutboxStore`).
    async fn fresh_outbox() -> (Arc<SqliteStore>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("t.db")).await.unwrap();
        (Arc::new(store), dir)
    }

    crate::store::conformance::outbox_suite!(fresh_outbox);

    /// A write transaction abandoned between its statements (an error, or a request
    /// that went away) leaves nothing behind: its change is rolled back and the next
    /// writer starts a transaction of its own.
    #[tokio::test]
    async fn an_abandoned_write_transaction_is_rolled_back() {
        let (store, _dir) = fresh_outbox().await;
        let mut tx = store.write_tx().await.unwrap();
        sqlx::query(&format!(
            "{}INSERT INTO meta (key, value) VALUES ('abandoned', 'x')",
            super::BEGIN
        ))
        .execute(tx.opening())
        .await
        .unwrap();
        drop(tx);

        // The next transaction: BEGIN would fail inside the abandoned one.
        let mut tx = store.write_tx().await.unwrap();
        sqlx::query(&format!(
            "{}INSERT INTO meta (key, value) VALUES ('next', 'y'){}",
            super::BEGIN,
            super::COMMIT
        ))
        .execute(tx.opening())
        .await
        .unwrap();
        tx.committed();
        drop(tx);
        let keys: Vec<String> = sqlx::query_scalar(
            "SELECT key FROM meta WHERE key IN ('abandoned', 'next') ORDER BY key",
        )
        .fetch_all(store.reader())
        .await
        .unwrap();
        assert_eq!(keys, vec!["next".to_owned()]);
    }

    /// The WAL is checkpointed beside the writer: it stays small while commits go on,
    /// though no commit reaches SQLite's (raised) automatic threshold. The test waits for
    /// a whole checkpoint between bursts of commits rather than sleeping a fixed time, so
    /// a slow machine cannot fail it; without the checkpoint task it never sees one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_is_checkpointed_while_the_writer_works() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        // 3,000 commits of at least one 4 KiB page each: 12 MiB of WAL unless
        // checkpointed, far below the 64 MiB backstop.
        for n in 0..3000 {
            sqlx::query("INSERT INTO meta (key, value) VALUES (?1, 'x')")
                .bind(format!("k{n}"))
                .execute(store.pool())
                .await
                .unwrap();
            if n % 100 == 99 {
                // A checkpoint that began before the burst ended may be partial: wait
                // for one more whole one after it.
                let seen = store.checkpoints.load(std::sync::atomic::Ordering::Relaxed);
                let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
                while store.checkpoints.load(std::sync::atomic::Ordering::Relaxed) < seen + 2 {
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "no whole checkpoint in 20 s after commit {n}"
                    );
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        let wal = std::fs::metadata(dir.path().join("t.db-wal"))
            .unwrap()
            .len();
        assert!(wal < 6 << 20, "the WAL holds {wal} bytes");
    }

    /// Published outbox rows are deleted lazily: never read again, gone with the next
    /// commit that writes outbox rows or at tidy, and read again (for the broker to
    /// recognise by their keys) by a restart that came before either.
    #[tokio::test]
    async fn published_outbox_rows_go_with_the_next_commit_or_at_tidy() {
        use crate::domain::Priority;
        use crate::store::conformance::{add_user, test_task};
        use crate::store::{Announcement, OutboxStore, TaskRecord, TaskStore};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let store = SqliteStore::open(&path).await.unwrap();
        let user = add_user(&store).await;
        let note = |t: &TaskRecord| vec![Announcement::new(Some(t.user_id), "note", &t.query)];
        let in_table = |store: &SqliteStore| {
            let reader = store.reader().clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
                    .fetch_one(&reader)
                    .await
                    .unwrap()
            }
        };
        let day = chrono::Duration::hours(24);
        let submit = |query: &'static str| {
            let store = store.clone();
            async move {
                store
                    .insert_task(&test_task(user, Priority::Normal, query), day, &note)
                    .await
                    .unwrap();
            }
        };

        submit("first").await;
        let first = store.outbox_pending(10).await.unwrap();
        assert_eq!(first.len(), 1);
        store.outbox_remove(&[first[0].id]).await.unwrap();
        assert!(store.outbox_pending(10).await.unwrap().is_empty());
        assert_eq!(in_table(&store).await, 1, "deleted later, not now");

        // A restart before the delete: the published row is pending again.
        let restarted = SqliteStore::open(&path).await.unwrap();
        let again = restarted.outbox_pending(10).await.unwrap();
        assert_eq!(
            again.iter().map(|r| r.id).collect::<Vec<_>>(),
            [first[0].id]
        );
        drop(restarted);

        // The next change that writes outbox rows deletes it in its commit.
        submit("second").await;
        assert_eq!(in_table(&store).await, 1);
        let second = store.outbox_pending(10).await.unwrap();
        assert_eq!(second.len(), 1);
        assert_eq!(second[0].data_json, "\"second\"");
        store.outbox_remove(&[second[0].id]).await.unwrap();

        // Nothing more happens: the relay's tidy deletes it.
        store.outbox_tidy().await.unwrap();
        assert_eq!(in_table(&store).await, 0);
        store.outbox_tidy().await.unwrap();
        assert!(store.outbox_pending(10).await.unwrap().is_empty());
    }
}

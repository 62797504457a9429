//! The SQLite side of the store: one database file in the data directory, in WAL mode,
//! with the migrations in `migrations/sqlite` embedded in the binary and applied at start.
//!
//! SQLite has a single writer. Every write that must be atomic (claiming a task, the
//! first-user-is-admin rule) is one statement, so no transaction ever has to upgrade
//! from a read lock to a write lock, which SQLite answers with an immediate `BUSY`.

mod agents;
mod messages;
mod output;
mod tasks;
mod users;

use super::{HealthCheck, StoreError};
use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// A connection pool to one SQLite database.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            // An embedded database cannot hang up: pinging each connection before every
            // use would double the worker-thread round trips of every query.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        Ok(Self { pool })
    }

    /// The pool, for the area modules.
    fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[async_trait]
impl HealthCheck for SqliteStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
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
}

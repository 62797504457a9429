//! The PostgreSQL side of the store (`--database-url postgres://…`), for several nodes
//! sharing one database. The migrations in `migrations/postgres` (numbered like
//! SQLite's) are embedded in the binary and applied at start; sqlx takes an advisory
//! lock while it migrates, so nodes starting together apply each one once.
//!
//! The semantics are the SQLite backend's, statement for statement where the engines
//! allow. Where SQLite relies on its single writer, this side says what serializes:
//! - a state change is one conditional `UPDATE … WHERE status = … RETURNING`: of two
//!   racing transactions the second waits for the row lock, re-reads the row and no
//!   longer matches;
//! - a claim picks its task with `FOR UPDATE SKIP LOCKED`, so concurrent claimers skip
//!   each other's rows instead of waiting, and never share one;
//! - the first account becomes admin under a transaction-scoped advisory lock;
//! - output numbering is serialized by the task row's lock (see `output.rs`).
//!
//! Every method that changes a task, an agent or an account runs in an explicit
//! transaction (`begin` … `commit`), even when it is one statement, so that the
//! announcing message can be appended in the same transaction (the outbox).
//! Ids are UUID text and times Unix milliseconds (`BIGINT`), exactly as on SQLite.

mod agents;
mod messages;
mod output;
mod tasks;
#[cfg(test)]
pub(crate) mod testing;
mod users;

use super::{HealthCheck, SigningKeyStore, StoreError};
use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use std::str::FromStr;
use std::time::Duration;

/// The `meta` key holding the cluster's token signing key.
const SIGNING_KEY: &str = "signing_key";

/// A connection pool to one PostgreSQL database.
#[derive(Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    /// Connects to a `postgres://` or `postgresql://` URL and applies pending migrations.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(15))
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        Ok(Self { pool })
    }

    /// The pool, for the area modules.
    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

#[async_trait]
impl HealthCheck for PgStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(self.pool()).await?;
        Ok(())
    }
}

#[async_trait]
impl SigningKeyStore for PgStore {
    async fn signing_key(&self, candidate: &str) -> Result<String, StoreError> {
        // Race-free across nodes: whichever insert commits first wins, and every node
        // then reads that one.
        sqlx::query("INSERT INTO meta (key, value) VALUES ($1, $2) ON CONFLICT (key) DO NOTHING")
            .bind(SIGNING_KEY)
            .bind(candidate)
            .execute(self.pool())
            .await?;
        let key: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = $1")
            .bind(SIGNING_KEY)
            .fetch_one(self.pool())
            .await?;
        Ok(key)
    }
}

#[cfg(test)]
mod tests {
    use super::PgStore;
    use crate::store::{SigningKeyStore, Store};
    use std::sync::Arc;

    /// A fresh database on the test binary's throwaway server.
    async fn fresh() -> (Arc<dyn Store>, ()) {
        let url = super::testing::fresh_database().await;
        (Arc::new(PgStore::open_url(&url).await.unwrap()), ())
    }

    crate::store::conformance::conformance_suite!(fresh);

    #[tokio::test]
    async fn the_signing_key_is_stored_once_and_every_node_gets_it() {
        let url = super::testing::fresh_database().await;
        let (a, b) = (
            PgStore::open_url(&url).await.unwrap(),
            PgStore::open_url(&url).await.unwrap(),
        );
        let (ka, kb) = tokio::join!(a.signing_key("first"), b.signing_key("second"));
        let (ka, kb) = (ka.unwrap(), kb.unwrap());
        assert_eq!(ka, kb, "both nodes use one key");
        assert!(ka == "first" || ka == "second");
        assert_eq!(
            a.signing_key("third").await.unwrap(),
            ka,
            "kept, not replaced"
        );
    }
}

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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_claim_skips_a_task_another_transaction_holds_instead_of_waiting() {
        use crate::domain::{
            Capability, Email, FullName, MaxAttempts, Priority, TaskId, TaskQuery, TimeoutSecs,
        };
        use crate::store::{AgentStore, NewAgent, NewTask, NewUser, TaskStore, UserStore};
        use chrono::{Duration, Utc};
        let url = super::testing::fresh_database().await;
        let store = PgStore::open_url(&url).await.unwrap();
        let user = store
            .create_user(NewUser {
                email: Email::parse("a@b.io").unwrap(),
                full_name: FullName::parse("A").unwrap(),
                password_hash: "x".into(),
                role: None,
            })
            .await
            .unwrap()
            .id;
        let agent = crate::domain::AgentId::new();
        store
            .create_agent(&NewAgent {
                id: agent,
                owner_id: user,
                name: "a".into(),
                description: String::new(),
                capabilities: vec![Capability::general()],
                shared: false,
                token_hash: "h".into(),
                token_prefix: "p".into(),
                created_at: Utc::now(),
            })
            .await
            .unwrap();
        let t0 = Utc::now();
        let mut ids = Vec::new();
        for i in 0..2 {
            let new = NewTask {
                id: TaskId::new(),
                user_id: user,
                query: TaskQuery::parse(format!("t{i}")).unwrap(),
                capability: Capability::general(),
                priority: Priority::Normal,
                agent_id: None,
                timeout: TimeoutSecs::DEFAULT,
                max_attempts: MaxAttempts::DEFAULT,
                idempotency_key: None,
                run_at: None,
                created_at: t0 + Duration::milliseconds(i),
            };
            store.insert_task(&new, Duration::hours(24)).await.unwrap();
            ids.push(new.id);
        }
        // Another claimer (here a bare transaction) holds the oldest task's row.
        let mut holder = store.pool().begin().await.unwrap();
        sqlx::query("SELECT 1 FROM tasks WHERE id = $1 FOR UPDATE")
            .bind(ids[0].to_string())
            .execute(&mut *holder)
            .await
            .unwrap();
        let now = Utc::now();
        // A claim that waited for the lock would never end while `holder` is open.
        let claimed = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            store.claim_tasks(agent, 1, now + Duration::seconds(30), now),
        )
        .await
        .expect("the claim skipped the locked row instead of waiting")
        .unwrap();
        assert_eq!(claimed.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[1]]);
        holder.rollback().await.unwrap();
        let next = store
            .claim_tasks(agent, 1, now + Duration::seconds(30), now)
            .await
            .unwrap();
        assert_eq!(next.iter().map(|t| t.id).collect::<Vec<_>>(), [ids[0]]);
    }

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

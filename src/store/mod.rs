//! Persistence. The rest of the program sees one `Store` trait, assembled from one trait
//! per area (accounts, …), with a SQLite side (`sqlite/`, one node) and a PostgreSQL
//! side (`postgres/`, several nodes) behind it. Only `app.rs` chooses the concrete
//! backend, from the database URL. `conformance.rs` (tests) holds the cases both pass.
//!
//! Times are stored as Unix milliseconds and ids as UUID text: both sort and compare
//! the same way on every backend.

mod agents;
#[cfg(test)]
mod conformance;
mod error;
mod messages;
mod models;
mod output;
pub mod postgres;
pub mod sqlite;
mod tasks;

pub use agents::{AgentChanges, AgentFilter, AgentRecord, AgentStore, NewAgent, Page};
pub use error::StoreError;
pub use messages::{MessagePosition, MessageRow, MessageStore};
pub use models::*;
pub use output::{Appended, OutputStore};
pub use tasks::{
    AttemptRecord, Backoff, Inserted, NewTask, Outcome, QueueGauges, QueueStanding, TaskFilter,
    TaskRecord, TaskStat, TaskStore,
};

use crate::domain::{ApiKeyId, Email, FullName, Role, SessionId, UserId};
use async_trait::async_trait;
use chrono::{DateTime, Utc};

/// Everything the server persists for the request handlers and services. Blanket-
/// implemented for any type that implements every area trait. The real-time message
/// history (`MessageStore`) is deliberately not part of it: only the hub's broker reads
/// and writes it, through the adapter in `app.rs`.
pub trait Store:
    UserStore + AgentStore + TaskStore + OutputStore + HealthCheck + Send + Sync + 'static
{
}
impl<T: UserStore + AgentStore + TaskStore + OutputStore + HealthCheck + Send + Sync + 'static>
    Store for T
{
}

/// A store that several nodes share keeps the token signing key, so that every node
/// signs and checks sessions with the same one (contract, Running: without
/// `--signing-key` "the key is then generated once and kept in the database"). The
/// single-node SQLite store does not implement it: its key stays in the data directory.
#[async_trait]
pub trait SigningKeyStore: Send + Sync {
    /// The stored key; when there is none yet, stores `candidate` first. Race-free: of
    /// nodes starting together, the first insert wins and every node gets that one.
    async fn signing_key(&self, candidate: &str) -> Result<String, StoreError>;
}

/// Lets `/health` and `/ready` ask whether the database answers.
#[async_trait]
pub trait HealthCheck {
    /// A cheap round trip to the database.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Accounts, sessions and API keys.
#[async_trait]
pub trait UserStore {
    /// Creates an account. The first account of an empty database becomes admin,
    /// decided atomically with the insert. `Conflict` when the email is taken.
    async fn create_user(&self, new: NewUser) -> Result<User, StoreError>;
    async fn user_by_id(&self, id: UserId) -> Result<User, StoreError>;
    /// The account with its password hash, for login.
    async fn user_credentials(&self, email: &Email) -> Result<UserCredentials, StoreError>;
    async fn update_full_name(&self, id: UserId, name: &FullName) -> Result<User, StoreError>;
    async fn set_password_hash(&self, id: UserId, hash: &str) -> Result<(), StoreError>;
    async fn set_role(&self, email: &Email, role: Role) -> Result<User, StoreError>;
    /// Whether the account exists (for routing messages to it).
    async fn user_exists(&self, id: UserId) -> Result<bool, StoreError>;

    async fn create_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// The session if it exists, whether revoked or not; callers check `is_active`.
    async fn session(&self, id: SessionId) -> Result<SessionRecord, StoreError>;
    /// Revokes one session; `NotFound` if it was not active.
    async fn revoke_session(&self, id: SessionId, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// Revokes every active session of a user but `keep`, returning the ones revoked.
    async fn revoke_other_sessions(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: DateTime<Utc>,
    ) -> Result<Vec<SessionId>, StoreError>;

    async fn create_api_key(&self, key: &ApiKeyRecord) -> Result<(), StoreError>;
    /// Looks a key up by the hash of its secret.
    async fn api_key_by_hash(&self, hash: &str) -> Result<ApiKeyRecord, StoreError>;
    async fn touch_api_key(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<(), StoreError>;
    /// The user's keys that are not revoked, newest first.
    async fn list_api_keys(&self, user: UserId) -> Result<Vec<ApiKeyRecord>, StoreError>;
    /// Revokes a key of this user; `NotFound` if there is no such active key of theirs.
    async fn revoke_api_key(
        &self,
        user: UserId,
        id: ApiKeyId,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

//! The transactional outbox's side of the store: what a change announces, and the
//! `OutboxStore` trait the relay drains it through.
//!
//! A store method whose change is announced (a task's status or progress, an agent's
//! registration, presence or deletion, an API key's creation or revocation) takes an
//! [`Announce`] function from its caller. The method calls it with the record its own
//! statement produced and writes the returned [`Announcement`]s into the outbox IN THE
//! SAME TRANSACTION as the change: a crash can no longer leave the change stored and
//! its message lost (or the message sent for a change that was rolled back). The
//! caller keeps the message's content typed (its wire struct is serialized by
//! [`Announcement::new`]); the store never names a service or message type.
//!
//! The relay (`realtime::outbox`, adapted to this trait in `app.rs`) reads pending rows
//! oldest first, publishes each with its row id as the idempotency key, then removes
//! them; a crash between publishing and removing publishes nothing twice, a crash
//! before publishing loses nothing (the relay drains leftovers at start).

use super::StoreError;
use crate::domain::UserId;
use async_trait::async_trait;
use serde::Serialize;

/// A message a change announces, as written to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Its recipient; `None` for every user (a broadcast).
    pub recipient: Option<UserId>,
    /// The message type.
    pub kind: &'static str,
    /// The JSON text of the data object.
    pub data_json: String,
}

impl Announcement {
    /// A message of type `kind` whose data is `data` serialized. The data structs the
    /// services announce (`TaskUpdate`, `AgentUpdate`, …) are plain derived structs of
    /// strings, numbers and enums: serializing them cannot fail.
    pub fn new<T: Serialize + ?Sized>(
        recipient: Option<UserId>,
        kind: &'static str,
        data: &T,
    ) -> Self {
        Self {
            recipient,
            kind,
            data_json: serde_json::to_string(data).expect("a derived message struct serializes"),
        }
    }
}

/// How a caller says what a change announces: called by the store method, inside its
/// transaction, with the record the change produced (once per changed record; see
/// each method's doc), returning the messages to write with it.
pub type Announce<'a, T> = &'a (dyn Fn(&T) -> Vec<Announcement> + Send + Sync);

/// An [`Announce`] for changes nobody hears of (tests, tools).
pub fn silent<T: ?Sized>(_: &T) -> Vec<Announcement> {
    Vec::new()
}

/// A pending outbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Its position in the outbox: rows are published in this order, and it is the
    /// publication's idempotency key.
    pub id: i64,
    /// The recipient; `None` for everyone.
    pub recipient: Option<UserId>,
    /// The message type.
    pub kind: String,
    /// The JSON text of the data object.
    pub data_json: String,
    /// When the change committed, Unix milliseconds.
    pub created_at_ms: i64,
}

/// The outbox, as the relay sees it.
#[async_trait]
pub trait OutboxStore: Send + Sync + 'static {
    /// Up to `limit` pending rows, oldest (lowest id) first. On SQLite ids are assigned
    /// in commit order, so every row committed before this call is either returned or
    /// behind the last one returned; on PostgreSQL that holds for the rows of changes
    /// to one task or agent (their row lock orders them), while unrelated rows may
    /// commit out of id order (see `store::postgres::outbox`).
    async fn outbox_pending(&self, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Removes these rows (published; the oldest pending ones, as `outbox_pending`
    /// returned them); ids that are gone already are ignored. `outbox_pending` never
    /// returns them again, but a store may delete them later (SQLite: with the next
    /// commit that writes outbox rows, or at `outbox_tidy`).
    async fn outbox_remove(&self, ids: &[i64]) -> Result<(), StoreError>;

    /// The relay found nothing to publish: a store that deletes removed rows later
    /// deletes them now, so none stay behind while the service is idle.
    async fn outbox_tidy(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Ends a read whose rows were not published (and so not removed): they stay
    /// pending. A store whose relays take turns (PostgreSQL) lets the next one in.
    async fn outbox_abandon(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

//! Fixtures the SQLite store's unit tests share: a user, an agent and a task to insert,
//! each with only what a store-level test needs.

use super::SqliteStore;
use crate::domain::{
    AgentId, Capability, Email, FullName, MaxAttempts, Priority, TaskId, TaskQuery, TimeoutSecs,
    UserId,
};
use crate::store::{silent, AgentStore, NewAgent, NewTask, NewUser, UserStore};
use chrono::Utc;

/// Creates a user with this email; returns its id.
pub(super) async fn test_user(store: &SqliteStore, email: &str) -> UserId {
    store
        .create_user(NewUser {
            email: Email::parse(email).unwrap(),
            full_name: FullName::parse("A").unwrap(),
            password_hash: "x".into(),
            role: None,
        })
        .await
        .unwrap()
        .id
}

/// Registers an agent with the `general` capability for a store-level test.
pub(super) async fn test_agent(store: &SqliteStore, owner: UserId, shared: bool) -> AgentId {
    let id = AgentId::new();
    let new = NewAgent {
        id,
        owner_id: owner,
        name: "test".into(),
        description: String::new(),
        capabilities: vec![Capability::general()],
        shared,
        token_hash: format!("hash-{id}"),
        token_prefix: "zsa_test".into(),
        created_at: Utc::now(),
    };
    store
        .create_agent(&new, &silent)
        .await
        .expect("create agent");
    id
}

/// A `general` task of `user` for any agent, with default timeout and attempts.
pub(super) fn test_task(user: UserId, priority: Priority, query: &str) -> NewTask {
    NewTask {
        id: TaskId::new(),
        user_id: user,
        query: TaskQuery::parse(query.into()).unwrap(),
        capability: Capability::general(),
        priority,
        agent_id: None,
        timeout: TimeoutSecs::DEFAULT,
        max_attempts: MaxAttempts::DEFAULT,
        idempotency_key: None,
        run_at: None,
        created_at: Utc::now(),
    }
}

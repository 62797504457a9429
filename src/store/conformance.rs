//! The store's conformance suite: every case is a function taking a fresh, empty store,
//! and `conformance_suite!` turns the list into one `#[tokio::test]` per case for a
//! backend (SQLite in `sqlite/mod.rs`, PostgreSQL in `postgres/mod.rs`). A behaviour
//! the rest of the program relies on is pinned here once, for both.

use crate::domain::{
    AgentId, AttemptOutcome, Capability, ChunkBatch, Email, FullName, IdempotencyKey, MaxAttempts,
    NewChunk, OutputStream, Priority, TaskId, TaskQuery, TaskStatus, TimeoutSecs, UserId,
};
use crate::store::{silent, Announcement, OutboxStore};
use crate::store::{
    AgentFilter, AgentRecord, Appended, Backoff, Inserted, NewAgent, NewTask, NewUser, Outcome,
    Page, Store, StoreError, TaskRecord,
};
use chrono::{DateTime, Duration, Utc};
use std::collections::HashSet;
use std::sync::Arc;

/// Defines one test per conformance case, each on a fresh store made by `$make`, an
/// async function returning `(Arc<dyn Store>, guard)` (the guard keeps the database
/// alive for the case).
macro_rules! conformance_suite {
    ($make:path) => {
        $crate::store::conformance::conformance_suite!(@cases $make;
            concurrent_first_sign_ups_make_one_admin,
            a_private_agent_claims_only_its_owners_tasks_and_a_shared_one_any,
            deleting_an_agent_requeues_its_running_tasks_and_unpins_queued_ones,
            lists_hold_own_and_shared_agents_unless_all_and_count_running_tasks,
            concurrent_claims_never_share_a_task,
            expired_leases_requeue_after_a_backoff_then_fail_on_the_last_attempt,
            a_task_is_not_claimed_before_its_backoff_or_run_at,
            release_gives_the_attempt_back_and_turns_the_agent_offline,
            at_shutdown_the_server_agents_tasks_go_back_without_using_an_attempt,
            parallel_submits_with_one_key_create_one_task,
            a_shared_agent_takes_a_second_users_task_before_the_first_users_backlog,
            agents_go_online_once_and_offline_when_silent,
            concurrent_appends_number_chunks_without_gaps_or_overlap,
            limits_and_ownership_refuse_without_storing,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}
pub(crate) use conformance_suite;

/// The outbox cases (`store::outbox`), like [`conformance_suite`] but on a concrete
/// store type (`$make` returns `(Arc<S>, guard)` with `S: Store + OutboxStore`), since
/// the relay's trait is not part of `Store`.
macro_rules! outbox_suite {
    ($make:path) => {
        $crate::store::conformance::outbox_suite!(@cases $make;
            outbox_rows_come_back_oldest_first_and_removed_ones_are_gone,
            an_announced_change_writes_its_messages_in_its_own_transaction,
            a_change_that_does_not_happen_writes_nothing_to_the_outbox,
            concurrent_agent_reports_get_their_own_answers_and_announce_in_order,
            claims_alongside_reports_take_each_task_once_and_announce_in_order,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let (store, _guard) = $make().await;
                $crate::store::conformance::$case(store).await;
            }
        )*
    };
}
pub(crate) use outbox_suite;

const BACKOFF: Backoff = Backoff {
    base_ms: 1_000,
    max_ms: 60_000,
};

/// Creates a user with this email; returns its id.
async fn test_user(store: &dyn Store, email: &str) -> UserId {
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

/// A user with a fresh email.
pub(crate) async fn add_user(store: &dyn Store) -> UserId {
    test_user(store, &format!("{}@b.io", uuid::Uuid::new_v4().simple())).await
}

/// Registers an agent with the `general` capability; `shared` makes it run everyone's
/// tasks.
async fn test_agent(store: &dyn Store, owner: UserId, shared: bool) -> AgentId {
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
    let agent = store
        .create_agent(&new, &silent)
        .await
        .expect("create agent");
    assert_eq!(agent.shared, shared);
    id
}

pub(crate) async fn add_agent(store: &dyn Store, owner: UserId, shared: bool) -> AgentId {
    test_agent(store, owner, shared).await
}

/// A `general` task of `user` for any agent, with default timeout and attempts.
pub(crate) fn test_task(user: UserId, priority: Priority, query: &str) -> NewTask {
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

async fn insert(store: &dyn Store, new: &NewTask) -> TaskRecord {
    match store
        .insert_task(new, Duration::hours(24), &silent)
        .await
        .unwrap()
    {
        Inserted::New(task) => task,
        Inserted::Duplicate(task) => panic!("unexpected duplicate {}", task.id),
    }
}

/// Submits a normal task of `user`, pinned to `agent` when given.
async fn submit(store: &dyn Store, user: UserId, agent: Option<AgentId>) -> TaskId {
    let new = NewTask {
        agent_id: agent,
        ..test_task(user, Priority::Normal, "q")
    };
    match store
        .insert_task(&new, Duration::hours(24), &silent)
        .await
        .unwrap()
    {
        Inserted::New(t) | Inserted::Duplicate(t) => t.id,
    }
}

async fn claim(store: &dyn Store, agent: AgentId, at: DateTime<Utc>) -> Option<TaskRecord> {
    let lease = at + Duration::seconds(30);
    store
        .claim_tasks(agent, 1, lease, at, &silent)
        .await
        .unwrap()
        .pop()
}

async fn claim_now(store: &dyn Store, agent: AgentId) -> Option<TaskRecord> {
    claim(store, agent, Utc::now()).await
}

/// A running task (claimed by a fresh private agent of a fresh user) and its agent.
async fn running_task(store: &dyn Store) -> (TaskId, AgentId) {
    let user = add_user(store).await;
    let agent = test_agent(store, user, false).await;
    insert(store, &test_task(user, Priority::Normal, "q")).await;
    let claimed = claim_now(store, agent).await.expect("claimed");
    (claimed.id, agent)
}

fn batch(texts: &[&str]) -> ChunkBatch {
    ChunkBatch::parse(
        texts
            .iter()
            .map(|t| NewChunk {
                stream: OutputStream::Output,
                text: (*t).into(),
            })
            .collect(),
    )
    .unwrap()
}

pub async fn a_private_agent_claims_only_its_owners_tasks_and_a_shared_one_any(
    store: Arc<dyn Store>,
) {
    let (alice, mallory) = (
        test_user(&*store, "a@b.io").await,
        test_user(&*store, "m@b.io").await,
    );
    let alices_task = submit(&*store, alice, None).await;
    let mallorys_agent = test_agent(&*store, mallory, false).await;
    assert!(
        claim_now(&*store, mallorys_agent).await.is_none(),
        "another user's private agent never gets the task"
    );
    let shared = test_agent(&*store, mallory, true).await;
    let claimed = claim_now(&*store, shared)
        .await
        .expect("a shared agent runs it");
    assert_eq!(claimed.id, alices_task);
    let mallorys_task = submit(&*store, mallory, None).await;
    assert_eq!(
        claim_now(&*store, mallorys_agent).await.map(|t| t.id),
        Some(mallorys_task)
    );
    assert!(
        claim_now(&*store, AgentId::new()).await.is_none(),
        "an agent that is not registered claims nothing"
    );
}

pub async fn deleting_an_agent_requeues_its_running_tasks_and_unpins_queued_ones(
    store: Arc<dyn Store>,
) {
    let owner = test_user(&*store, "a@b.io").await;
    let agent = test_agent(&*store, owner, false).await;
    let running = submit(&*store, owner, None).await;
    assert_eq!(claim_now(&*store, agent).await.map(|t| t.id), Some(running));
    let pinned = submit(&*store, owner, Some(agent)).await;
    let finished = submit(&*store, owner, None).await;
    let other = test_agent(&*store, owner, false).await;
    assert_eq!(
        claim_now(&*store, other).await.map(|t| t.id),
        Some(finished)
    );

    let changed = store
        .delete_agent(agent, Utc::now(), &silent)
        .await
        .unwrap();
    let mut ids: Vec<TaskId> = changed.iter().map(|t| t.id).collect();
    ids.sort();
    let mut expected = vec![running, pinned];
    expected.sort();
    assert_eq!(ids, expected);
    for t in &changed {
        assert_eq!(t.status, TaskStatus::Queued);
        assert_eq!((t.agent_id, t.requested_agent_id), (None, None));
        assert_eq!(t.attempts, 0, "the handed-back attempt does not count");
        assert!(t.lease_expires_at.is_none());
    }
    assert_eq!(
        store.task(finished).await.unwrap().agent_id,
        Some(other),
        "other agents' tasks are untouched"
    );
    assert!(matches!(
        store.delete_agent(agent, Utc::now(), &silent).await,
        Err(StoreError::NotFound)
    ));
}

pub async fn lists_hold_own_and_shared_agents_unless_all_and_count_running_tasks(
    store: Arc<dyn Store>,
) {
    let (a, b) = (
        test_user(&*store, "a@b.io").await,
        test_user(&*store, "b@b.io").await,
    );
    let mine = test_agent(&*store, a, false).await;
    let theirs = test_agent(&*store, b, false).await;
    let shared = test_agent(&*store, b, true).await;
    let list = |visible_to| AgentFilter {
        visible_to,
        limit: 50,
        ..AgentFilter::default()
    };
    let ids = |page: Page<AgentRecord>| page.items.iter().map(|x| x.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_agents(&list(Some(a))).await.unwrap()),
        [shared, mine]
    );
    assert_eq!(
        ids(store.list_agents(&list(None)).await.unwrap()),
        [shared, theirs, mine]
    );
    submit(&*store, a, None).await;
    claim_now(&*store, mine).await.expect("claimed");
    assert_eq!(store.agent(mine).await.unwrap().current_tasks, 1);
    assert_eq!(store.agent(theirs).await.unwrap().current_tasks, 0);
}

pub async fn concurrent_claims_never_share_a_task(store: Arc<dyn Store>) {
    let user = add_user(&*store).await;
    let mut ids = HashSet::new();
    for i in 0..100 {
        let task = insert(
            &*store,
            &test_task(user, Priority::Normal, &format!("t{i}")),
        )
        .await;
        ids.insert(task.id);
    }
    let mut claimers = Vec::new();
    for n in 0..16 {
        let store = store.clone();
        let agent = add_agent(&*store, user, false).await;
        claimers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let batch = if n % 2 == 0 { 1 } else { 5 };
            loop {
                let now = Utc::now();
                let tasks = store
                    .claim_tasks(agent, batch, now + Duration::seconds(30), now, &silent)
                    .await
                    .unwrap();
                if tasks.is_empty() {
                    break;
                }
                for task in tasks {
                    assert_eq!((task.status, task.attempts), (TaskStatus::Running, 1));
                    got.push(task.id);
                }
            }
            got
        }));
    }
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    assert_eq!(claimed.len(), 100, "every task claimed exactly once");
    assert_eq!(claimed.into_iter().collect::<HashSet<_>>(), ids);
}

pub async fn expired_leases_requeue_after_a_backoff_then_fail_on_the_last_attempt(
    store: Arc<dyn Store>,
) {
    let user = add_user(&*store).await;
    let agent = add_agent(&*store, user, false).await;
    let task = insert(&*store, &test_task(user, Priority::High, "q")).await;
    let mut now = Utc::now();
    for attempt in 1..=3u32 {
        let claimed = claim(&*store, agent, now).await.unwrap();
        assert_eq!((claimed.id, claimed.attempts), (task.id, attempt));
        now += Duration::seconds(31);
        let reaped = store.requeue_expired(BACKOFF, now, &silent).await.unwrap();
        assert_eq!(reaped.len(), 1);
        if attempt < 3 {
            assert_eq!(reaped[0].status, TaskStatus::Queued);
            let cap = Duration::milliseconds(1_000 << (attempt - 1));
            let due = reaped[0].available_at;
            assert!(due >= now && due <= now + cap, "backoff {:?}", due - now);
            now += cap + Duration::milliseconds(1);
        } else {
            assert_eq!(reaped[0].status, TaskStatus::Failed);
        }
    }
    let failed = store.task(task.id).await.unwrap();
    assert_eq!(failed.error.as_deref(), Some("agent lost the task 3 times"));
    assert!(claim(&*store, agent, now).await.is_none());
    let attempts = store.task_attempts(task.id).await.unwrap();
    let outcomes: Vec<_> = attempts.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        outcomes,
        [1, 2, 3]
            .map(|n| (n, AttemptOutcome::LeaseExpired))
            .to_vec()
    );
    assert!(attempts
        .iter()
        .all(|a| a.ended_at.is_some() && a.error.is_some()));
}

pub async fn a_task_is_not_claimed_before_its_backoff_or_run_at(store: Arc<dyn Store>) {
    let user = add_user(&*store).await;
    let agent = add_agent(&*store, user, false).await;
    let mut later = test_task(user, Priority::Critical, "later");
    later.run_at = Some(Utc::now() + Duration::seconds(60));
    insert(&*store, &later).await;
    let soon = insert(&*store, &test_task(user, Priority::Low, "soon")).await;
    let now = Utc::now();
    let claimed = claim(&*store, agent, now).await.unwrap();
    assert_eq!(claimed.id, soon.id, "the delayed task is not due yet");
    let failed = store
        .finish_attempt(
            soon.id,
            agent,
            &Outcome::Failed {
                error: "flake".into(),
                retryable: true,
            },
            Backoff {
                base_ms: 10_000,
                max_ms: 60_000,
            },
            now,
            &silent,
        )
        .await
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, TaskStatus::Queued);
    assert_eq!(failed.error.as_deref(), Some("flake"));
    assert!(failed.available_at <= now + Duration::seconds(10));
    assert!(claim(&*store, agent, now - Duration::milliseconds(1))
        .await
        .is_none());
    let at_run = claim(&*store, agent, now + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!(at_run.query, "later", "critical first once both are due");
    let retried = claim(&*store, agent, now + Duration::seconds(60))
        .await
        .unwrap();
    assert_eq!((retried.id, retried.attempts), (soon.id, 2));
    assert_eq!(
        retried.error, None,
        "a new attempt starts without the old error"
    );
}

pub async fn release_gives_the_attempt_back_and_turns_the_agent_offline(store: Arc<dyn Store>) {
    let user = add_user(&*store).await;
    let agent = add_agent(&*store, user, false).await;
    assert!(store
        .mark_agent_seen(agent, Utc::now(), &silent)
        .await
        .unwrap()
        .is_some());
    let task = insert(&*store, &test_task(user, Priority::Normal, "q")).await;
    claim(&*store, agent, Utc::now()).await.unwrap();
    let (released, went_offline) = store
        .release_task(task.id, agent, Utc::now(), &silent)
        .await
        .unwrap()
        .unwrap();
    assert!(went_offline);
    assert_eq!(
        (released.status, released.attempts),
        (TaskStatus::Queued, 0)
    );
    assert!(!store.agent(agent).await.unwrap().online);
    assert!(store
        .release_task(task.id, agent, Utc::now(), &silent)
        .await
        .unwrap()
        .is_none());
    let again = claim(&*store, agent, Utc::now()).await.unwrap();
    assert_eq!(again.attempts, 1);
    let history = store.task_attempts(task.id).await.unwrap();
    let outcomes: Vec<_> = history.iter().map(|a| (a.attempt, a.outcome)).collect();
    assert_eq!(
        outcomes,
        [
            (1, AttemptOutcome::HandedBack),
            (1, AttemptOutcome::Running)
        ]
    );
}

pub async fn at_shutdown_the_server_agents_tasks_go_back_without_using_an_attempt(
    store: Arc<dyn Store>,
) {
    let user = add_user(&*store).await;
    let builtin = AgentId::new();
    let mut new = NewAgent {
        id: builtin,
        owner_id: UserId(uuid::Uuid::nil()),
        name: "builtin".into(),
        description: String::new(),
        capabilities: vec![Capability::general()],
        shared: true,
        token_hash: "builtin".into(),
        token_prefix: "p".into(),
        created_at: Utc::now(),
    };
    store
        .upsert_system_agent("builtin", &new, &silent)
        .await
        .unwrap();
    new.id = AgentId::new();
    let other = add_agent(&*store, user, false).await;
    let a = insert(&*store, &test_task(user, Priority::Normal, "builtin's")).await;
    let b = insert(&*store, &test_task(user, Priority::Normal, "other's")).await;
    let now = Utc::now();
    assert_eq!(
        claim(&*store, builtin, now).await.unwrap().id,
        a.id,
        "shared"
    );
    assert_eq!(claim(&*store, other, now).await.unwrap().id, b.id);
    let back = store
        .release_server_agent_tasks(Utc::now(), &silent)
        .await
        .unwrap();
    assert_eq!(back.len(), 1);
    assert_eq!(
        (back[0].id, back[0].status, back[0].attempts),
        (a.id, TaskStatus::Queued, 0)
    );
    assert_eq!(store.task(b.id).await.unwrap().status, TaskStatus::Running);
    let history = store.task_attempts(a.id).await.unwrap();
    assert_eq!(history[0].outcome, AttemptOutcome::HandedBack);
}

pub async fn parallel_submits_with_one_key_create_one_task(store: Arc<dyn Store>) {
    let user = add_user(&*store).await;
    let key = IdempotencyKey::parse("order-17".into()).unwrap();
    let mut handles = Vec::new();
    for _ in 0..20 {
        let (store, key) = (store.clone(), key.clone());
        handles.push(tokio::spawn(async move {
            let mut new = test_task(user, Priority::Normal, "once");
            new.idempotency_key = Some(key);
            store
                .insert_task(&new, Duration::hours(24), &silent)
                .await
                .unwrap()
        }));
    }
    let mut created = HashSet::new();
    let mut named = HashSet::new();
    for h in handles {
        match h.await.unwrap() {
            Inserted::New(t) => {
                created.insert(t.id);
                named.insert(t.id);
            }
            Inserted::Duplicate(t) => {
                named.insert(t.id);
            }
        }
    }
    assert_eq!((created.len(), named.len()), (1, 1));
    // Another user's key is theirs; an expired key may be taken again.
    let other = add_user(&*store).await;
    let mut theirs = test_task(other, Priority::Normal, "theirs");
    theirs.idempotency_key = Some(key.clone());
    insert(&*store, &theirs).await;
    let mut late = test_task(user, Priority::Normal, "a day later");
    late.idempotency_key = Some(key);
    late.created_at = Utc::now() + Duration::hours(25);
    let fresh = insert(&*store, &late).await;
    assert!(!created.contains(&fresh.id));
}

pub async fn a_shared_agent_takes_a_second_users_task_before_the_first_users_backlog(
    store: Arc<dyn Store>,
) {
    let a = add_user(&*store).await;
    let b = add_user(&*store).await;
    let agent = add_agent(&*store, a, true).await;
    let t0 = Utc::now();
    for i in 0..50 {
        let mut new = test_task(a, Priority::Normal, &format!("a{i}"));
        new.created_at = t0 + Duration::milliseconds(i);
        insert(&*store, &new).await;
    }
    // A's first claims happen before B submits.
    let first = claim(&*store, agent, t0 + Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(first.query, "a0");
    let mut new = test_task(b, Priority::Normal, "b");
    new.created_at = t0 + Duration::seconds(2);
    let b_task = insert(&*store, &new).await;
    let standing = store
        .queue_standing(&b_task, t0 + Duration::seconds(2))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(standing.position, 1, "B is next");
    // One task at a time: the agent completes each before it claims the next.
    store
        .finish_attempt(
            first.id,
            agent,
            &Outcome::Completed {
                result: serde_json::json!(1),
            },
            BACKOFF,
            t0 + Duration::seconds(2),
            &silent,
        )
        .await
        .unwrap();
    let next = claim(&*store, agent, t0 + Duration::seconds(3))
        .await
        .unwrap();
    assert_eq!(next.id, b_task.id, "B's task comes before A's backlog");
    let after = claim(&*store, agent, t0 + Duration::seconds(4))
        .await
        .unwrap();
    assert_eq!(after.query, "a1", "then A's oldest");
    // A private agent of B never takes A's tasks.
    let private = add_agent(&*store, b, false).await;
    assert!(claim(&*store, private, t0 + Duration::seconds(5))
        .await
        .is_none());
}

pub async fn agents_go_online_once_and_offline_when_silent(store: Arc<dyn Store>) {
    let owner = add_user(&*store).await;
    let new = NewAgent {
        id: AgentId::new(),
        owner_id: owner,
        name: "a".into(),
        description: String::new(),
        capabilities: vec![Capability::general()],
        shared: false,
        token_hash: "h".into(),
        token_prefix: "p".into(),
        created_at: Utc::now(),
    };
    let agent = store.create_agent(&new, &silent).await.unwrap();
    assert!(!agent.online);
    let t0 = Utc::now();
    assert!(store
        .mark_agent_seen(agent.id, t0, &silent)
        .await
        .unwrap()
        .is_some_and(|a| a.online));
    assert!(
        store
            .mark_agent_seen(agent.id, t0, &silent)
            .await
            .unwrap()
            .is_none(),
        "already online"
    );
    let cutoff = t0 - chrono::Duration::seconds(60);
    assert!(store
        .mark_stale_agents_offline(cutoff, t0, &silent)
        .await
        .unwrap()
        .is_empty());
    let later = t0 + chrono::Duration::seconds(61);
    let gone = store
        .mark_stale_agents_offline(later - chrono::Duration::seconds(60), later, &silent)
        .await
        .unwrap();
    assert_eq!(gone.len(), 1);
    assert!(!gone[0].online);
    assert!(
        store
            .mark_stale_agents_offline(later, later, &silent)
            .await
            .unwrap()
            .is_empty(),
        "reported once"
    );
}

pub async fn concurrent_appends_number_chunks_without_gaps_or_overlap(store: Arc<dyn Store>) {
    let (task, agent) = running_task(&*store).await;
    let lease = Utc::now() + chrono::Duration::seconds(30);
    let mut writers = Vec::new();
    for w in 0..8 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            for i in 0..20 {
                let texts = [format!("{w}-{i}-a"), format!("{w}-{i}-b")];
                let b = batch(&[&texts[0], &texts[1]]);
                let done = store
                    .append_output(task, agent, &b, u64::MAX, lease, Utc::now())
                    .await
                    .unwrap();
                assert!(matches!(done, Appended::Stored { first_seq, last_seq, .. } if last_seq == first_seq + 1));
            }
        }));
    }
    for w in writers {
        w.await.unwrap();
    }
    let all = store.read_output(task, 0, 1000).await.unwrap();
    assert_eq!(all.len(), 320);
    for (i, c) in all.iter().enumerate() {
        assert_eq!(c.seq, i as u64 + 1);
    }
    // Each batch's two chunks are adjacent: a batch is never split.
    for pair in all.chunks(2) {
        assert_eq!(
            pair[0].text.trim_end_matches("-a"),
            pair[1].text.trim_end_matches("-b")
        );
    }
    assert_eq!(store.read_output(task, 318, 10).await.unwrap().len(), 2);
    assert_eq!(store.task(task).await.unwrap().status.as_str(), "running");
}

pub async fn limits_and_ownership_refuse_without_storing(store: Arc<dyn Store>) {
    let (task, agent) = running_task(&*store).await;
    let lease = Utc::now() + chrono::Duration::seconds(30);
    let now = Utc::now();
    assert!(matches!(
        store
            .append_output(task, agent, &batch(&["12345"]), 8, lease, now)
            .await
            .unwrap(),
        Appended::Stored {
            last_seq: 1,
            output_bytes: 5,
            ..
        }
    ));
    assert_eq!(
        store
            .append_output(task, agent, &batch(&["1234"]), 8, lease, now)
            .await
            .unwrap(),
        Appended::OverLimit { output_bytes: 5 }
    );
    assert_eq!(
        store
            .append_output(task, AgentId::new(), &batch(&["x"]), 8, lease, now)
            .await
            .unwrap(),
        Appended::NotRunning
    );
    // Nothing of the refused appends was kept, and numbering goes on from 1.
    assert!(matches!(
        store
            .append_output(task, agent, &batch(&["abc"]), 8, lease, now)
            .await
            .unwrap(),
        Appended::Stored {
            first_seq: 2,
            last_seq: 2,
            output_bytes: 8,
            ..
        }
    ));
    let all = store.read_output(task, 0, 10).await.unwrap();
    assert_eq!(
        all.iter().map(|c| c.text.as_str()).collect::<Vec<_>>(),
        ["12345", "abc"]
    );
}

pub async fn concurrent_first_sign_ups_make_one_admin(store: Arc<dyn Store>) {
    let mut signups = Vec::new();
    for i in 0..12 {
        let store = store.clone();
        signups.push(tokio::spawn(async move {
            store
                .create_user(NewUser {
                    email: Email::parse(&format!("first{i}@b.io")).unwrap(),
                    full_name: FullName::parse("A").unwrap(),
                    password_hash: "x".into(),
                    role: None,
                })
                .await
                .unwrap()
                .role
        }));
    }
    let mut admins = 0;
    for s in signups {
        if s.await.unwrap() == crate::domain::Role::Admin {
            admins += 1;
        }
    }
    assert_eq!(admins, 1, "exactly one first account");
    assert_eq!(store.admin_ids().await.unwrap().len(), 1);
    assert!(matches!(
        store
            .create_user(NewUser {
                email: Email::parse("first0@b.io").unwrap(),
                full_name: FullName::parse("A").unwrap(),
                password_hash: "x".into(),
                role: None,
            })
            .await,
        Err(StoreError::Conflict { .. })
    ));
}

/// An announcement of every task change: its status, to its owner.
fn status_update(t: &TaskRecord) -> Vec<Announcement> {
    vec![Announcement::new(
        Some(t.user_id),
        "task_update",
        &t.status.as_str(),
    )]
}

pub(crate) async fn outbox_rows_come_back_oldest_first_and_removed_ones_are_gone<
    S: Store + OutboxStore,
>(
    store: Arc<S>,
) {
    let user = add_user(&*store).await;
    // One change announcing 450 messages, alternately to the user and to everyone.
    let many = move |_: &TaskRecord| -> Vec<Announcement> {
        (0..450)
            .map(|n| Announcement::new((n % 2 == 0).then_some(user), "note", &n))
            .collect()
    };
    let new = test_task(user, Priority::Normal, "q");
    store
        .insert_task(&new, Duration::hours(24), &many)
        .await
        .unwrap();
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
    assert!(rest[0].id > ids[299]);
    let ids: Vec<i64> = rest.iter().map(|r| r.id).collect();
    store.outbox_remove(&ids).await.unwrap();
    assert!(store.outbox_pending(300).await.unwrap().is_empty());
    // Removing ids that are gone already is fine.
    store.outbox_remove(&ids).await.unwrap();
}

pub(crate) async fn an_announced_change_writes_its_messages_in_its_own_transaction<
    S: Store + OutboxStore,
>(
    store: Arc<S>,
) {
    let user = add_user(&*store).await;
    let new = test_task(user, Priority::Normal, "q");
    let inserted = store
        .insert_task(&new, Duration::hours(24), &status_update)
        .await
        .unwrap();
    let Inserted::New(task) = inserted else {
        panic!("a new task")
    };
    store
        .cancel_task(task.id, Some(user), Utc::now(), &status_update)
        .await
        .unwrap()
        .expect("canceled");
    // The condition no longer holds: nothing changes, nothing is announced.
    assert!(store
        .cancel_task(task.id, Some(user), Utc::now(), &status_update)
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
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store.outbox_remove(&ids).await.unwrap();
}

pub(crate) async fn a_change_that_does_not_happen_writes_nothing_to_the_outbox<
    S: Store + OutboxStore,
>(
    store: Arc<S>,
) {
    let user = add_user(&*store).await;
    let agent = add_agent(&*store, user, false).await;
    let loud = |a: &AgentRecord| vec![Announcement::new(Some(a.owner_id), "agent_update", "x")];
    // A second agent with the first one's token hash: the insert fails, and the
    // announcement written after it in the same transaction goes with it.
    let clash = NewAgent {
        id: AgentId::new(),
        owner_id: user,
        name: "clash".into(),
        description: String::new(),
        capabilities: vec![Capability::general()],
        shared: false,
        token_hash: format!("hash-{agent}"),
        token_prefix: "zsa_test".into(),
        created_at: Utc::now(),
    };
    assert!(matches!(
        store.create_agent(&clash, &loud).await,
        Err(StoreError::Conflict { .. })
    ));
    // Conditions that do not hold: no task of this agent's, no such agent.
    let lease = Utc::now() + Duration::seconds(30);
    assert!(store
        .report_progress(TaskId::new(), agent, 50, lease, Utc::now(), &status_update)
        .await
        .unwrap()
        .is_none());
    let every = |ts: &[TaskRecord]| ts.iter().flat_map(status_update).collect();
    assert!(matches!(
        store.delete_agent(AgentId::new(), Utc::now(), &every).await,
        Err(StoreError::NotFound)
    ));
    // Nothing to claim: the claim announces nothing.
    assert!(store
        .claim_tasks(agent, 4, lease, Utc::now(), &status_update)
        .await
        .unwrap()
        .is_empty());
    assert!(store.outbox_pending(10).await.unwrap().is_empty());
    // A change that happens does write (the case above is not vacuous).
    insert(&*store, &test_task(user, Priority::Normal, "q")).await;
    store
        .claim_tasks(agent, 4, lease, Utc::now(), &status_update)
        .await
        .unwrap();
    assert_eq!(store.outbox_pending(10).await.unwrap().len(), 1);
}

/// A progress announcement naming the task and the value.
fn progress_note(t: &TaskRecord) -> Vec<Announcement> {
    vec![Announcement::new(
        Some(t.user_id),
        "note",
        &format!("{}:{}", t.id, t.progress),
    )]
}

pub(crate) async fn concurrent_agent_reports_get_their_own_answers_and_announce_in_order<
    S: Store + OutboxStore,
>(
    store: Arc<S>,
) {
    let user = add_user(&*store).await;
    let agents = [
        add_agent(&*store, user, false).await,
        add_agent(&*store, user, false).await,
    ];
    let lease = Utc::now() + Duration::seconds(30);
    let mut tasks = Vec::new();
    for agent in agents {
        for _ in 0..12 {
            insert(&*store, &test_task(user, Priority::Normal, "q")).await;
        }
        let claimed = store
            .claim_tasks(agent, 12, lease, Utc::now(), &silent)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 12);
        tasks.extend(claimed.into_iter().map(|t| (t.id, agent)));
    }
    // Every task's agent reports 10, 20, 20 again (a renewal) and 30, then ends the
    // attempt (completed, failed for good, or failed with a retry), each report after the
    // last one's answer, all tasks at once; the other agent's report changes nothing, nor
    // does a second end.
    let outcomes = [
        Outcome::Completed {
            result: serde_json::json!({"ok": true}),
        },
        Outcome::Failed {
            error: "no".into(),
            retryable: false,
        },
        Outcome::Failed {
            error: "again".into(),
            retryable: true,
        },
    ];
    let runs = tasks.iter().enumerate().map(|(n, &(id, agent))| {
        let store = store.clone();
        let other = if agent == agents[0] {
            agents[1]
        } else {
            agents[0]
        };
        let outcome = outcomes[n % 3].clone();
        async move {
            let mut answers = Vec::new();
            for progress in [10, 20, 20, 30] {
                let answer = store
                    .report_progress(id, agent, progress, lease, Utc::now(), &progress_note)
                    .await
                    .unwrap()
                    .map(|(task, changed)| (task.id, task.progress, changed));
                answers.push(answer);
            }
            let foreign = store
                .report_progress(id, other, 90, lease, Utc::now(), &progress_note)
                .await
                .unwrap();
            let foreign_end = store
                .finish_attempt(id, other, &outcome, BACKOFF, Utc::now(), &progress_note)
                .await
                .unwrap();
            let ended = store
                .finish_attempt(id, agent, &outcome, BACKOFF, Utc::now(), &progress_note)
                .await
                .unwrap()
                .map(|t| (t.status, t.progress, t.error));
            let again = store
                .finish_attempt(id, agent, &outcome, BACKOFF, Utc::now(), &progress_note)
                .await
                .unwrap();
            let refused = foreign.is_none() && foreign_end.is_none() && again.is_none();
            (n, id, answers, refused, ended)
        }
    });
    let mut ends = Vec::new();
    for (n, id, answers, refused, ended) in futures_util::future::join_all(runs).await {
        assert_eq!(
            answers,
            [
                Some((id, 10, true)),
                Some((id, 20, true)),
                Some((id, 20, false)),
                Some((id, 30, true))
            ]
        );
        assert!(
            refused,
            "another agent's report, or a second end, changes nothing"
        );
        let expected = match n % 3 {
            0 => (TaskStatus::Completed, 100, None),
            1 => (TaskStatus::Failed, 30, Some("no".to_owned())),
            _ => (TaskStatus::Queued, 0, Some("again".to_owned())),
        };
        assert_eq!(ended, Some(expected.clone()));
        ends.push((id, expected));
    }
    // The announcements: one per change, each task's in the order of its reports.
    let rows = store.outbox_pending(1000).await.unwrap();
    assert_eq!(rows.len(), tasks.len() * 4);
    for (id, (_, last, _)) in &ends {
        let said: Vec<String> = rows
            .iter()
            .filter_map(|r| serde_json::from_str::<String>(&r.data_json).ok())
            .filter(|d| d.starts_with(&id.to_string()))
            .collect();
        assert_eq!(said, [10, 20, 30, *last].map(|p| format!("{id}:{p}")));
    }
    for (id, (status, progress, error)) in ends {
        let task = store.task(id).await.unwrap();
        assert_eq!(
            (task.status, task.progress, task.error),
            (status, progress, error)
        );
        if status == TaskStatus::Completed {
            assert_eq!(task.result, Some(serde_json::json!({"ok": true})));
        }
        if status == TaskStatus::Queued {
            assert!(
                task.available_at >= task.updated_at,
                "re-queued after a backoff"
            );
        }
    }
}

fn status_note(t: &TaskRecord) -> Vec<Announcement> {
    vec![Announcement::new(
        Some(t.user_id),
        "note",
        &format!("{}:{}:{}", t.id, t.status, t.attempts),
    )]
}

/// Claims made while reports wait for the writer (on SQLite they share groups): one
/// agent fails its 20 tasks (retryable, no backoff) while another claims all the time;
/// the claimer gets each task exactly once, and each task's announcements say running
/// (first attempt), queued, running (second attempt), in that order.
pub(crate) async fn claims_alongside_reports_take_each_task_once_and_announce_in_order<
    S: Store + OutboxStore,
>(
    store: Arc<S>,
) {
    let user = add_user(&*store).await;
    let (failing, claiming) = (
        add_agent(&*store, user, false).await,
        add_agent(&*store, user, false).await,
    );
    for _ in 0..20 {
        insert(&*store, &test_task(user, Priority::Normal, "q")).await;
    }
    let lease = Utc::now() + Duration::seconds(30);
    let first = store
        .claim_tasks(failing, 20, lease, Utc::now(), &status_note)
        .await
        .unwrap();
    assert_eq!(first.len(), 20);
    let now_due = Backoff {
        base_ms: 0,
        max_ms: 0,
    };
    let fails = first.iter().map(|task| {
        let store = store.clone();
        let id = task.id;
        async move {
            let outcome = Outcome::Failed {
                error: "again".into(),
                retryable: true,
            };
            let ended = store
                .finish_attempt(id, failing, &outcome, now_due, Utc::now(), &status_note)
                .await
                .unwrap()
                .expect("its running task");
            assert_eq!(ended.status, TaskStatus::Queued);
        }
    });
    // Four claimers, until all 20 are taken again (or 20 s have passed).
    let total = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let claimers = (0..4u32).map(|n| {
        let (store, total) = (store.clone(), total.clone());
        async move {
            let mut got = Vec::new();
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
            while total.load(std::sync::atomic::Ordering::SeqCst) < 20
                && tokio::time::Instant::now() < deadline
            {
                let now = Utc::now();
                let lease = now + Duration::seconds(30);
                let tasks = store
                    .claim_tasks(claiming, 1 + n % 2, lease, now, &status_note)
                    .await
                    .unwrap();
                for task in &tasks {
                    assert_eq!((task.status, task.attempts), (TaskStatus::Running, 2));
                }
                total.fetch_add(tasks.len(), std::sync::atomic::Ordering::SeqCst);
                got.extend(tasks.into_iter().map(|t| t.id));
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            got
        }
    });
    let (_, got) = tokio::join!(
        futures_util::future::join_all(fails),
        futures_util::future::join_all(claimers)
    );
    let got: Vec<TaskId> = got.into_iter().flatten().collect();
    let ids: HashSet<TaskId> = first.iter().map(|t| t.id).collect();
    assert_eq!(got.len(), 20, "every re-queued task claimed exactly once");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), ids);
    let rows = store.outbox_pending(1000).await.unwrap();
    for id in ids {
        let said: Vec<String> = rows
            .iter()
            .filter_map(|r| serde_json::from_str::<String>(&r.data_json).ok())
            .filter(|d| d.starts_with(&id.to_string()))
            .collect();
        assert_eq!(
            said,
            ["running:1", "queued:1", "running:2"].map(|s| format!("{id}:{s}"))
        );
    }
}

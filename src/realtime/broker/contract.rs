//! The broker contract as tests (centrifuge's `broker_memory_test.go` in spirit): what
//! every [`Broker`] must do, written once and run against each implementation. The
//! local broker runs it on the in-memory log (here) and on SQLite through the store
//! adapter (`app.rs`); a cluster broker (Redis) must pass it too.
//!
//! Each check takes a fresh broker from the given factory.

use super::{Broker, NewPublication, Publication, Subscription};
use crate::domain::UserId;
use crate::realtime::history::HistoryPolicy;
use crate::realtime::Target;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// How long any one expected delivery may take (generous: the machine is shared).
const WAIT: Duration = Duration::from_secs(30);

/// Runs every check of the contract, each on a fresh broker.
pub async fn run_all<F, Fut>(new_broker: F)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Broker>>,
{
    epoch_is_stable(new_broker().await).await;
    concurrent_publishers_are_delivered_in_one_order_without_gaps(new_broker().await).await;
    every_delivered_publication_is_already_in_history(new_broker().await).await;
    a_subscription_opened_mid_stream_starts_exactly_where_it_is_handed_over(new_broker().await)
        .await;
    history_is_each_users_own_stream_plus_broadcasts_in_order(new_broker().await).await;
    pruning_keeps_the_newest_and_raises_the_watermark_first(new_broker().await).await;
}

fn new_publication(target: Target, publisher: usize, n: usize, at_ms: i64) -> NewPublication {
    NewPublication {
        target,
        kind: "note".into(),
        data_json: format!(r#"{{"p":{publisher},"n":{n}}}"#),
        created_at_ms: at_ms,
        origin: Some((publisher * 1_000_000 + n) as u64),
        dedupe: None,
    }
}

async fn next(sub: &mut Subscription) -> Arc<Publication> {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a publication in time")
        .expect("the subscription is open")
}

/// Reads `count` publications and checks the chain: the first names the start, each
/// names its predecessor, positions strictly increase.
async fn read_chain(sub: &mut Subscription, count: usize) -> Vec<Arc<Publication>> {
    let start = sub.start;
    read_chain_after(sub, start, count).await
}

/// [`read_chain`] for a subscription already read up to `prev`.
async fn read_chain_after(
    sub: &mut Subscription,
    mut prev: i64,
    count: usize,
) -> Vec<Arc<Publication>> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let p = next(sub).await;
        assert_eq!(p.prev_seq, prev, "the chain is broken at {}", p.seq);
        assert!(
            p.seq > prev,
            "positions must increase: {} after {prev}",
            p.seq
        );
        prev = p.seq;
        out.push(p);
    }
    out
}

/// Parses the `{"p","n"}` data of the test publications.
fn publisher_and_n(p: &Publication) -> (u64, u64) {
    let v: serde_json::Value = serde_json::from_str(&p.data_json).unwrap();
    (v["p"].as_u64().unwrap(), v["n"].as_u64().unwrap())
}

async fn epoch_is_stable(broker: Arc<dyn Broker>) {
    let a = broker.epoch().await.unwrap();
    assert!(!a.is_empty());
    assert_eq!(broker.epoch().await.unwrap(), a);
}

/// Several publishers at once to one stream (and to the broadcast stream): every
/// subscription (two nodes) sees all of them, in the same single order, each
/// publisher's in its own order, and the origin tokens come back unchanged.
async fn concurrent_publishers_are_delivered_in_one_order_without_gaps(broker: Arc<dyn Broker>) {
    const PUBLISHERS: usize = 6;
    const EACH: usize = 150;
    let user = UserId::new();
    let mut node_a = broker.subscribe().await.unwrap();
    let mut node_b = broker.subscribe().await.unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = broker.clone();
            tokio::spawn(async move {
                let mut seqs = Vec::new();
                for n in 0..EACH {
                    // Every third publisher broadcasts: two streams interleaved.
                    let target = if p % 3 == 0 {
                        Target::Everyone
                    } else {
                        Target::User(user)
                    };
                    let seq = broker
                        .publish(new_publication(target, p, n, 1_700_000_000_000))
                        .await
                        .unwrap();
                    seqs.push(seq);
                }
                seqs
            })
        })
        .collect();
    // Read while publishing: a subscription is bounded, the publishers wait for it.
    let (a, b) = tokio::join!(
        read_chain(&mut node_a, PUBLISHERS * EACH),
        read_chain(&mut node_b, PUBLISHERS * EACH)
    );
    let mut returned = Vec::new();
    for publisher in publishers {
        let seqs = publisher.await.unwrap();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "a publisher's own order"
        );
        returned.extend(seqs);
    }
    let order = |ps: &[Arc<Publication>]| ps.iter().map(|p| p.seq).collect::<Vec<_>>();
    assert_eq!(order(&a), order(&b), "two nodes see one order");
    returned.sort_unstable();
    assert_eq!(
        order(&a),
        returned,
        "exactly the published positions, once each"
    );
    let mut next_n: HashMap<u64, u64> = HashMap::new();
    for p in &a {
        let (publisher, n) = publisher_and_n(p);
        let expected = next_n.entry(publisher).or_default();
        assert_eq!(n, *expected, "publisher {publisher} out of its own order");
        *expected += 1;
        assert_eq!(p.origin, Some(publisher * 1_000_000 + n));
    }
    // Nothing more was delivered.
    assert!(
        tokio::time::timeout(Duration::from_millis(50), node_a.recv())
            .await
            .is_err()
    );
}

/// Publish-plus-history is one step: by the time any node is handed a publication, a
/// history read sees it, with the same bytes; and once `publish` returns, so does a
/// position read.
async fn every_delivered_publication_is_already_in_history(broker: Arc<dyn Broker>) {
    const PUBLISHERS: usize = 4;
    const EACH: usize = 60;
    let user = UserId::new();
    let mut sub = broker.subscribe().await.unwrap();
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let broker = broker.clone();
            tokio::spawn(async move {
                for n in 0..EACH {
                    let at = 1_700_000_000_000 + n as i64;
                    let seq = broker
                        .publish(new_publication(Target::User(user), p, n, at))
                        .await
                        .unwrap();
                    let pos = broker.position(user, i64::MAX).await.unwrap();
                    assert!(pos.latest >= seq, "published {seq}, position {pos:?}");
                }
            })
        })
        .collect();
    for _ in 0..PUBLISHERS * EACH {
        let p = next(&mut sub).await;
        let kept = broker.history(user, p.seq - 1, p.seq, 1).await.unwrap();
        assert_eq!(
            kept.len(),
            1,
            "{} delivered before it was in history",
            p.seq
        );
        assert_eq!(kept[0].seq, p.seq);
        assert_eq!(kept[0].kind, p.kind);
        assert_eq!(kept[0].data_json, p.data_json);
        assert_eq!(kept[0].created_at_ms, p.created_at_ms);
    }
    for publisher in publishers {
        publisher.await.unwrap();
    }
}

/// A node that subscribes while others publish gets a start such that everything at or
/// below it is in history and everything above it is delivered: nothing falls between.
async fn a_subscription_opened_mid_stream_starts_exactly_where_it_is_handed_over(
    broker: Arc<dyn Broker>,
) {
    const TOTAL: usize = 400;
    let user = UserId::new();
    let mut first = broker.subscribe().await.unwrap();
    let publisher = {
        let broker = broker.clone();
        tokio::spawn(async move {
            for n in 0..TOTAL {
                broker
                    .publish(new_publication(Target::User(user), 1, n, 1_700_000_000_000))
                    .await
                    .unwrap();
            }
        })
    };
    // Let some through, then a second node joins mid-stream.
    let early = read_chain(&mut first, TOTAL / 4).await;
    let mut late = broker.subscribe().await.unwrap();
    let read = early.last().map_or(first.start, |p| p.seq);
    let rest = read_chain_after(&mut first, read, TOTAL - TOTAL / 4).await;
    publisher.await.unwrap();
    let all: Vec<i64> = early.iter().chain(&rest).map(|p| p.seq).collect();
    let handed_over = all.iter().filter(|s| **s > late.start).count();
    let in_history = broker
        .history(user, 0, late.start, TOTAL as u32 + 1)
        .await
        .unwrap();
    assert_eq!(
        in_history.len() + handed_over,
        TOTAL,
        "start {}: history and the subscription must cover everything once",
        late.start
    );
    let delivered = read_chain(&mut late, handed_over).await;
    let expected: Vec<i64> = all.into_iter().filter(|s| *s > late.start).collect();
    assert_eq!(
        delivered.iter().map(|p| p.seq).collect::<Vec<_>>(),
        expected
    );
}

/// A user's history is their own publications plus the broadcasts, in order, paged by
/// `limit`, and never another user's.
async fn history_is_each_users_own_stream_plus_broadcasts_in_order(broker: Arc<dyn Broker>) {
    let (alice, bob) = (UserId::new(), UserId::new());
    let mut published = Vec::new();
    for n in 0..9 {
        let target = match n % 3 {
            0 => Target::User(alice),
            1 => Target::User(bob),
            _ => Target::Everyone,
        };
        let seq = broker
            .publish(new_publication(target, 0, n, 1_700_000_000_000 + n as i64))
            .await
            .unwrap();
        published.push((target, seq, n));
    }
    let last = published.last().unwrap().1;
    let for_alice: Vec<(i64, usize)> = published
        .iter()
        .filter(|(t, _, _)| *t != Target::User(bob))
        .map(|(_, seq, n)| (*seq, *n))
        .collect();
    // Two pages of two, then the rest.
    let mut got = Vec::new();
    let mut after = 0;
    loop {
        let page = broker.history(alice, after, last, 2).await.unwrap();
        got.extend(page.iter().map(|m| {
            let v: serde_json::Value = serde_json::from_str(&m.data_json).unwrap();
            (m.seq, v["n"].as_u64().unwrap() as usize)
        }));
        match page.last() {
            Some(m) if page.len() == 2 => after = m.seq,
            _ => break,
        }
    }
    assert_eq!(got, for_alice);
    let pos = broker.position(alice, last).await.unwrap();
    assert_eq!(pos.latest, for_alice.last().unwrap().0);
    assert_eq!(pos.pruned_through, 0);
    // `upto` bounds the answer.
    let first_two = broker.history(alice, 0, for_alice[1].0, 100).await.unwrap();
    assert_eq!(first_two.len(), 2);
}

/// Retention: beyond the newest `max_per_stream` and older than `max_age` goes; the
/// stream's watermark tells a resume that it went.
async fn pruning_keeps_the_newest_and_raises_the_watermark_first(broker: Arc<dyn Broker>) {
    let user = UserId::new();
    let mut seqs = Vec::new();
    for n in 0..5 {
        seqs.push(
            broker
                .publish(new_publication(Target::User(user), 0, n, 1_000 + n as i64))
                .await
                .unwrap(),
        );
    }
    let policy = HistoryPolicy {
        max_per_stream: 2,
        max_age: Duration::from_millis(10),
    };
    // Everything is young as of 1_005 + 10: nothing goes.
    assert_eq!(broker.prune(policy, 1_010).await.unwrap(), 0);
    let before = broker.history_size().await.unwrap();
    assert_eq!(broker.prune(policy, 1_000_000).await.unwrap(), 3);
    assert_eq!(broker.history_size().await.unwrap(), before - 3);
    let pos = broker.position(user, i64::MAX).await.unwrap();
    assert_eq!(pos.pruned_through, seqs[2]);
    assert_eq!(pos.latest, seqs[4]);
    let kept = broker.history(user, 0, i64::MAX, 10).await.unwrap();
    assert_eq!(
        kept.iter().map(|m| m.seq).collect::<Vec<_>>(),
        vec![seqs[3], seqs[4]]
    );
}

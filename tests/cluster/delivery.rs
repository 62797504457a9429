//! Delivery across nodes (CONTRACT.md "Delivery guarantees", "Publish and stats",
//! "Running"): a message published on any node reaches the recipient's connections on
//! every node once; a client resumes on any node with nothing lost or repeated, also
//! while two nodes publish to it at full speed, after the node it was on is SIGKILLed,
//! and after Redis is restarted in the middle of publishing.

use crate::cluster::Cluster;
use crate::node::{eventually, Next, WsClient};
use crate::stream::{publish_loads, Seen};
use serde_json::json;
use std::collections::HashMap;
use std::time::Duration;

/// How long a test waits for a whole catch-up (generous: the machine is shared).
const CATCH_UP: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_posted_to_b_reaches_clients_on_a_b_and_c_exactly_once() {
    let cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let u1 = a.new_user().await;
    let u2 = b.new_user().await;
    let u3 = c.new_user().await;
    // u1 has a tab on A and one on C; u2 is on B, u3 on C.
    let mut clients: Vec<(&str, String, WsClient)> = Vec::new();
    for (node, user) in [(a, &u1), (c, &u1), (b, &u2), (c, &u3)] {
        let (ws, _) = node.ws(&user.token).await;
        clients.push((node.name.as_str(), user.id.clone(), ws));
    }
    // `delivered` counts every node's connections: wait until the cluster sees all four.
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(200),
        async || {
            let stats = b.ws_stats().await;
            match stats["current_connections"].as_u64() {
                Some(4) => Ok(()),
                _ => Err(format!("stats never showed the 4 connections: {stats}")),
            }
        },
    )
    .await;

    let (status, body) = b
        .post(
            "/api/v1/ws/broadcast",
            Some(&admin.token),
            json!({ "type": "announcement", "data": { "text": "to everyone" } }),
        )
        .await;
    assert_eq!(status, 202, "broadcast: {body}\n{}", cluster.logs());
    assert_eq!(
        body["delivered"], 4,
        "delivered counts the connections of every node"
    );
    // A marker after the broadcast to each user, published on C: whatever arrives
    // before it is everything the broadcast produced (delivery keeps publish order).
    for user in [&u1, &u2, &u3] {
        c.publish_ok(&admin, &user.id, "marker", json!({})).await;
    }
    let mut u1_cursors = Vec::new();
    for (node, user_id, ws) in &mut clients {
        let mut copies = Vec::new();
        loop {
            let message = ws.next().await;
            match message["type"].as_str() {
                Some("announcement") => copies.push(message),
                Some("marker") => break,
                _ => {}
            }
        }
        assert_eq!(
            copies.len(),
            1,
            "the connection on node {node} got the broadcast {} times: {copies:?}\n{}",
            copies.len(),
            cluster.logs()
        );
        assert_eq!(copies[0]["data"]["text"], "to everyone");
        if *user_id == u1.id {
            u1_cursors.push(copies[0]["cursor"].clone());
        }
    }
    assert_eq!(
        u1_cursors[0], u1_cursors[1],
        "one user's tabs on two nodes see the same message at the same cursor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_other_nodes_with_nothing_lost_or_repeated_while_two_nodes_publish() {
    let cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let user = cluster.node(0).new_user().await;
    const EACH: u64 = 300; // 600 in all: within the 1000 the history keeps per user

    let (mut ws, welcome) = cluster.node(0).ws(&user.token).await;
    let mut seen = Seen::from_welcome(&welcome);
    let publishers: Vec<_> = [1, 2]
        .into_iter()
        .map(|i| {
            let node = cluster.node(i);
            tokio::spawn(publish_loads(
                node.api.clone(),
                admin.clone(),
                user.id.clone(),
                node.name.clone(),
                EACH,
                true,
            ))
        })
        .collect();

    // Reads a while on one node, drops the connection in the middle of the flow and
    // resumes from its last cursor on the next node: A → B → C → A → …
    let total = |s: &Seen| s.loads.values().map(|v| v.len()).sum::<usize>();
    let mut hops = 0;
    let mut on = 0;
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    while total(&seen) < (2 * EACH) as usize {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all {} messages arrived after {hops} resumes ({} `resumed` seen): missing {:?}\n{}",
            2 * EACH,
            seen.resumes,
            seen.missing(&all_of(EACH)),
            cluster.logs()
        );
        let target = total(&seen) + 60;
        let resumes_before = seen.resumes;
        let ended = seen
            .read(&mut ws, Duration::from_secs(20), |s| {
                total(s) >= target && (hops == 0 || s.resumes > resumes_before)
            })
            .await;
        match ended {
            // Too slow for the flow: the contract's answer is to resume at once.
            Next::Closed(Some(4008)) => {}
            Next::Closed(code) => panic!(
                "node {} closed the client ({code:?})\n{}",
                cluster.node(on).name,
                cluster.logs()
            ),
            _ => {}
        }
        drop(ws);
        on = (on + 1) % 3;
        hops += 1;
        ws = cluster.node(on).ws_since(&user.token, &seen.cursor).await.0;
    }
    let mut acked = HashMap::new();
    for (i, publisher) in publishers.into_iter().enumerate() {
        let ns = publisher.await.expect("publisher");
        assert_eq!(ns.len() as u64, EACH, "every publish is acknowledged");
        acked.insert(cluster.node(i + 1).name.clone(), ns);
    }
    assert!(seen.missing(&acked).is_empty());
    assert!(
        hops >= 2,
        "the client should have resumed on B and on C ({hops} hops)"
    );
}

/// Every `n` of both publishers B and C (for failure messages).
fn all_of(each: u64) -> HashMap<String, Vec<u64>> {
    ["B", "C"]
        .iter()
        .map(|s| (s.to_string(), (0..each).collect()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_node_loses_no_acknowledged_task_or_message_for_clients_resuming_elsewhere() {
    let mut cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let user = cluster.node(1).new_user().await;
    let (mut ws, welcome) = cluster.node(0).ws(&user.token).await;
    let mut seen = Seen::from_welcome(&welcome);

    // Node A publishes messages and takes task submissions as fast as it answers; B
    // publishes too, so the user's stream interleaves both nodes.
    let a = cluster.node(0).api.clone();
    let on_a = tokio::spawn(publish_loads(
        a.clone(),
        admin.clone(),
        user.id.clone(),
        "A".into(),
        100_000,
        true,
    ));
    let on_b = tokio::spawn(publish_loads(
        cluster.node(1).api.clone(),
        admin.clone(),
        user.id.clone(),
        "B".into(),
        150,
        true,
    ));
    let submitter = {
        let (a, user) = (a.clone(), user.clone());
        tokio::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..100_000 {
                match a
                    .try_call(
                        reqwest::Method::POST,
                        "/api/v1/tasks/submit",
                        Some(&user.token),
                        Some(json!({ "query": format!("task {i}") })),
                    )
                    .await
                {
                    Ok((status, body)) if status == 202 => {
                        acked.push(body["task"]["id"].as_str().expect("id").to_owned());
                    }
                    Ok((status, body)) if status.is_client_error() => {
                        panic!("submit refused with {status}: {body}")
                    }
                    _ => break,
                }
            }
            acked
        })
    };

    // Let some of both be acknowledged (and read live on A), then crash A.
    seen.read(&mut ws, Duration::from_secs(30), |s| {
        s.loads.get("A").map_or(0, |v| v.len()) >= 40 && s.task_updates.len() >= 10
    })
    .await;
    cluster.nodes[0].kill().await;
    let acked_a = on_a.await.expect("publisher on A");
    let acked_tasks = submitter.await.expect("submitter on A");
    let acked_b = on_b.await.expect("publisher on B");
    assert!(
        // The client saw 40 and 10: all but the one in flight when A died were acknowledged.
        acked_a.len() >= 39 && acked_tasks.len() >= 9,
        "before the crash A acknowledged only {} messages and {} tasks\n{}",
        acked_a.len(),
        acked_tasks.len(),
        cluster.logs()
    );
    // The old connection ends with A; whatever it still delivered counts as seen.
    seen.read(&mut ws, Duration::from_secs(5), |_| false).await;
    drop(ws);

    let acked = HashMap::from([("A".to_owned(), acked_a), ("B".to_owned(), acked_b)]);
    let complete = |s: &Seen| {
        s.missing(&acked).is_empty()
            && acked_tasks.iter().all(|id| {
                s.task_updates
                    .get(id)
                    .is_some_and(|st| st.iter().any(|x| x == "queued"))
            })
    };
    // Resume on C, then on B if anything is still missing (a replay is bounded, live
    // messages keep coming until B's publisher is done).
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let mut hop = 0;
    while !complete(&seen) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost after the crash: messages {:?}, task_updates of {} acknowledged tasks\n{}",
            seen.missing(&acked),
            acked_tasks
                .iter()
                .filter(|id| !seen.task_updates.contains_key(*id))
                .count(),
            cluster.logs()
        );
        let node = cluster.node([2, 1][hop % 2]);
        hop += 1;
        let (mut ws, _) = node.ws_since(&user.token, &seen.cursor).await;
        seen.read(&mut ws, Duration::from_secs(10), complete).await;
    }
    // Every acknowledged task is in the shared store, visible from the survivors.
    for id in &acked_tasks {
        let (status, body) = cluster
            .node(2)
            .get(&format!("/api/v1/tasks/{id}"), Some(&user.token))
            .await;
        assert_eq!(status, 200, "acknowledged task {id} lost: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_mid_publish_loses_nothing_after_resume() {
    let mut cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let user = cluster.node(0).new_user().await;
    let (mut ws, welcome) = cluster.node(2).ws(&user.token).await;
    let mut seen = Seen::from_welcome(&welcome);
    const EACH: u64 = 250;
    let publishers: Vec<_> = [0, 1]
        .into_iter()
        .map(|i| {
            let node = cluster.node(i);
            tokio::spawn(publish_loads(
                node.api.clone(),
                admin.clone(),
                user.id.clone(),
                node.name.clone(),
                EACH,
                false,
            ))
        })
        .collect();

    // Some messages flow, then Redis goes down in the middle of it and comes back.
    seen.read(&mut ws, Duration::from_secs(30), |s| {
        s.loads.values().map(|v| v.len()).sum::<usize>() >= 60
    })
    .await;
    cluster.redis.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.redis.start_again().await;

    let mut acked = HashMap::new();
    for (i, publisher) in publishers.into_iter().enumerate() {
        let ns = publisher.await.expect("publisher");
        acked.insert(cluster.node(i).name.clone(), ns);
    }
    assert!(
        acked.values().map(Vec::len).sum::<usize>() > 60,
        "publishing works again after Redis is back: {acked:?}"
    );
    // Whatever the old connection still delivers counts; then resume (on C again, or
    // elsewhere) until every acknowledged message has arrived.
    seen.read(&mut ws, Duration::from_secs(3), |s| {
        s.missing(&acked).is_empty()
    })
    .await;
    drop(ws);
    let deadline = tokio::time::Instant::now() + CATCH_UP;
    let mut hop = 0;
    while !seen.missing(&acked).is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "lost across the Redis restart: {:?}\n{}",
            seen.missing(&acked),
            cluster.logs()
        );
        let node = cluster.node(hop % 3);
        hop += 1;
        match node.ws_try(&user.token, Some(&seen.cursor)).await {
            Ok(mut ws) => {
                seen.read(&mut ws, Duration::from_secs(10), |s| {
                    s.missing(&acked).is_empty()
                })
                .await;
            }
            // A node may refuse while it reconnects to Redis; try again shortly.
            Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_system_message_published_on_a_is_listed_in_the_notifications_of_every_node() {
    // `GET /api/v1/notifications` (README: the user's recent `system` messages) is what
    // the dashboard and the API keys page list in a new tab: it must read the cluster's
    // history, not one node's.
    let cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let user = cluster.node(1).new_user().await;
    let (status, body) = cluster
        .node(0)
        .post(
            "/api/v1/ws/broadcast",
            Some(&admin.token),
            json!({ "type": "system", "data": { "message": "maintenance tonight", "level": "warning" } }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    for node in &cluster.nodes {
        eventually(
            Duration::from_secs(30),
            Duration::from_millis(250),
            async || {
                let (status, body) = node.get("/api/v1/notifications", Some(&user.token)).await;
                let listed = body["notifications"].as_array().is_some_and(|all| {
                    all.iter()
                        .any(|n| n.to_string().contains("maintenance tonight"))
                });
                if status == 200 && listed {
                    Ok(())
                } else {
                    Err(format!(
                        "node {} does not list the broadcast: {status} {body}",
                        node.name
                    ))
                }
            },
        )
        .await;
    }
}

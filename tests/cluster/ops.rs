//! Operations across nodes: `/api/v1/ws/stats` answers the cluster's sums with one
//! `nodes` entry per live node, on every node; `/health` reports the backplane and turns
//! 503 `degraded` while Redis is down, healthy again once it is back, by itself.

use crate::cluster::Cluster;
use crate::node::eventually;
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::Duration;

fn count(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("`{key}` is not a count: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ws_stats_sum_the_three_nodes_with_one_entry_each() {
    let cluster = Cluster::start().await;
    let admin = cluster.admin().await;
    let user = cluster.node(0).new_user().await;
    // 1 connection on A, 2 on B, 3 on C.
    let mut clients = Vec::new();
    for (i, n) in [(0, 1), (1, 2), (2, 3)] {
        for _ in 0..n {
            clients.push(cluster.node(i).ws(&user.token).await.0);
        }
    }
    // One message to the user, written to all six sockets.
    cluster
        .node(1)
        .publish_ok(&admin, &user.id, "counted", json!({}))
        .await;
    for ws in &mut clients {
        ws.next_of("counted", |_| true).await;
    }

    for asked in 0..3 {
        let node = cluster.node(asked);
        let stats = eventually(
            Duration::from_secs(30),
            Duration::from_millis(250),
            async || {
                let stats = node.ws_stats().await;
                let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
                let mut per_node: Vec<u64> = nodes
                    .iter()
                    .map(|n| n["current_connections"].as_u64().unwrap_or(0))
                    .collect();
                per_node.sort();
                if stats["current_connections"] == 6 && per_node == [1, 2, 3] {
                    Ok(stats)
                } else {
                    Err(format!(
                        "node {} never showed 1+2+3 connections: {stats}",
                        node.name
                    ))
                }
            },
        )
        .await;
        let nodes = stats["nodes"].as_array().expect("nodes");
        assert_eq!(nodes.len(), 3, "one entry per live node: {stats}");
        let ids: BTreeSet<&str> = nodes
            .iter()
            .map(|n| n["node_id"].as_str().expect("node_id"))
            .collect();
        assert_eq!(ids.len(), 3, "distinct node ids: {stats}");
        // The top-level figures are the sums of the nodes' ones (the two the contract
        // names for each node).
        for key in ["current_connections", "messages_sent"] {
            let sum: u64 = nodes.iter().map(|n| count(n, key)).sum();
            assert_eq!(
                count(&stats, key),
                sum,
                "`{key}` is the cluster's sum: {stats}"
            );
        }
        assert!(count(&stats, "total_connections") >= 6, "{stats}");
        assert!(
            count(&stats, "messages_sent") >= 6,
            "the counted message, six times: {stats}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_turns_degraded_while_redis_is_down_and_healthy_when_it_is_back() {
    let mut cluster = Cluster::start().await;
    for node in &cluster.nodes {
        let (status, body) = node.health().await.expect("health answers");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["status"], "healthy", "{body}");
        assert_eq!(body["checks"]["backplane"], "ok", "{body}");
        assert_eq!(body["checks"]["database"], "ok", "{body}");
    }

    cluster.redis.stop().await;
    for i in 0..3 {
        let node = cluster.node(i);
        eventually(
            Duration::from_secs(60),
            Duration::from_millis(500),
            async || match node.health().await {
                Some((status, body)) if status == 503 && body["status"] == "degraded" => Ok(()),
                other => Err(format!(
                    "node {} still reports {other:?} with Redis down",
                    node.name
                )),
            },
        )
        .await;
        // Degraded, not dead: it still serves what needs only the database.
        let (status, _) = node.get("/ready", None).await;
        assert_eq!(status, 200, "node {} stays ready for traffic", node.name);
    }

    cluster.redis.start_again().await;
    for i in 0..3 {
        let node = cluster.node(i);
        eventually(
            Duration::from_secs(90),
            Duration::from_millis(500),
            async || match node.health().await {
                Some((status, body))
                    if status == 200
                        && body["status"] == "healthy"
                        && body["checks"]["backplane"] == "ok" =>
                {
                    Ok(())
                }
                other => Err(format!(
                    "node {} did not recover after Redis came back: {other:?}\n{}",
                    node.name,
                    node.log()
                )),
            },
        )
        .await;
    }
    // And the cluster works again: a message published on A reaches a client on C
    // (this first account of the cluster is its admin).
    let admin = cluster.node(0).new_user().await;
    let (mut ws, _) = cluster.node(2).ws(&admin.token).await;
    let (status, body) = cluster
        .node(0)
        .post(
            &format!("/api/v1/ws/user/{}", admin.id),
            Some(&admin.token),
            json!({ "type": "hello", "data": {} }),
        )
        .await;
    assert_eq!(
        status,
        202,
        "publish after recovery: {body}\n{}",
        cluster.logs()
    );
    ws.next_of("hello", |_| true).await;
}

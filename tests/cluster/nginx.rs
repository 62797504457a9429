//! The cluster behind nginx (round-robin, no sticky sessions), as README's Cluster
//! section and `scripts/cluster.sh` set it up: WebSocket upgrades and SSE pass through,
//! connections land on different nodes, and a message published through the balancer
//! reaches every one of them once; a client keeps its stream when its node is stopped.

use crate::cluster::{Cluster, ClusterOptions};
use crate::node::{eventually, WsClient};
use crate::stream::Seen;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_nginx_connections_spread_over_the_nodes_and_all_get_each_message_once() {
    let cluster = Cluster::start_with(ClusterOptions {
        nodes: 2,
        nginx: true,
        ..ClusterOptions::default()
    })
    .await;
    let lb = cluster.lb();
    let admin = lb.new_user().await;
    let user = lb.new_user().await;
    let mut clients: Vec<WsClient> = Vec::new();
    for _ in 0..4 {
        clients.push(lb.ws(&user.token).await.0);
    }
    let mut sse = lb.sse(&user.token).await;
    // Round-robin without stickiness: both nodes hold some of the five connections.
    eventually(
        Duration::from_secs(30),
        Duration::from_millis(250),
        async || {
            let stats = lb.ws_stats().await;
            let nodes = stats["nodes"].as_array().cloned().unwrap_or_default();
            let busy = nodes
                .iter()
                .filter(|n| n["current_connections"].as_u64().unwrap_or(0) > 0)
                .count();
            if stats["current_connections"] == 5 && busy == 2 {
                Ok(())
            } else {
                Err(format!(
                    "connections did not spread over both nodes: {stats}"
                ))
            }
        },
    )
    .await;

    for i in 0..3 {
        lb.publish_ok(&admin, &user.id, "via_lb", json!({ "i": i }))
            .await;
    }
    for ws in &mut clients {
        for i in 0..3 {
            let message = ws.next_of("via_lb", |_| true).await;
            assert_eq!(message["data"]["i"], i, "each message once, in order");
        }
    }
    // SSE passes through unbuffered: the events arrive while the stream stays open.
    let mut got = Vec::new();
    while got.len() < 3 {
        let (_, id, data) = sse.next_event().await.expect("sse event");
        if data["type"] == "via_lb" {
            assert!(id.is_some(), "durable events carry their cursor as id");
            got.push(data["data"]["i"].clone());
        }
    }
    assert_eq!(got, [json!(0), json!(1), json!(2)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_behind_nginx_resumes_on_the_other_node_when_its_node_stops() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        nodes: 2,
        nginx: true,
        ..ClusterOptions::default()
    })
    .await;
    let lb = cluster.lb();
    let admin = lb.new_user().await;
    let user = lb.new_user().await;
    let (mut ws, welcome) = lb.ws(&user.token).await;
    let mut seen = Seen::from_welcome(&welcome);
    for n in 0..5 {
        lb.publish_ok(&admin, &user.id, "load", json!({ "src": "lb", "n": n }))
            .await;
    }
    seen.read(&mut ws, Duration::from_secs(30), |s| {
        s.loads.get("lb").map_or(0, |v| v.len()) == 5
    })
    .await;
    // Which node holds the socket is not visible from outside: stop one (SIGTERM); if
    // the socket stays open it was the other, so start this one again and stop that.
    let mut stopped = None;
    for i in 0..2 {
        cluster.nodes[i].stop().await;
        match ws.next_within(Duration::from_secs(5)).await {
            crate::node::Next::Closed(code) => {
                assert_eq!(code, Some(1012), "shutdown closes clients with 1012");
                stopped = Some(i);
                break;
            }
            other => {
                assert!(
                    matches!(other, crate::node::Next::Silent),
                    "unexpected: {other:?}"
                );
                cluster.nodes[i].start_again().await;
            }
        }
    }
    assert!(stopped.is_some(), "one of the nodes held the connection");
    for n in 5..10 {
        // nginx may try the stopped node first: it retries the other on a refused
        // connection, so every publish lands.
        lb.publish_ok(&admin, &user.id, "load", json!({ "src": "lb", "n": n }))
            .await;
    }
    let (mut ws, _) = lb.ws_since(&user.token, &seen.cursor).await;
    seen.read(&mut ws, Duration::from_secs(30), |s| {
        s.loads.get("lb").map_or(0, |v| v.len()) == 10 && s.resumes == 1
    })
    .await;
    assert_eq!(seen.loads["lb"].len(), 10, "nothing lost: {:?}", seen.loads);
    assert_eq!(seen.resumes, 1);
}

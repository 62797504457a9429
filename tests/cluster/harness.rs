//! The harness's own services, checked on their own so that a cluster test failing
//! says something about the nodes, not about the test rig: PostgreSQL takes queries in
//! its fresh database, Redis keeps an acknowledged write across a SIGKILL and a restart
//! in the same directory (the append-only file fsynced on every write, which the
//! Redis-restart test relies on), and nginx with the cluster's settings carries HTTP,
//! WebSocket upgrades and Server-Sent Events to a node.

use crate::node::{Api, Node};
use crate::services::{Nginx, Postgres, Redis};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_starts_with_a_fresh_database() {
    let pg = Postgres::start().await;
    assert_eq!(pg.psql("select current_database()").await, "zerostate");
    assert_eq!(
        pg.psql("select count(*) from pg_tables where schemaname = 'public'")
            .await,
        "0",
        "nothing in the fresh database yet"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keeps_an_acknowledged_write_across_a_kill_and_restart() {
    let mut redis = Redis::start().await;
    let client = redis::Client::open(redis.url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis");
    let _: () = redis::cmd("SET")
        .arg("kept")
        .arg("yes")
        .query_async(&mut conn)
        .await
        .expect("SET");
    redis.kill().await;
    redis.start_again().await;
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect to redis again");
    let kept: Option<String> = redis::cmd("GET")
        .arg("kept")
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(kept.as_deref(), Some("yes"), "{}", redis.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_carries_http_websockets_and_sse_to_a_node() {
    // One single-node server (SQLite) behind the cluster's nginx settings.
    let node = Node::start("A", Vec::new()).await;
    let nginx = Nginx::start(&[node.api.port]).await;
    let lb = Api::new(nginx.port);
    let (status, health) = lb.get("/health", None).await;
    assert_eq!(status, 200, "{health}\n{}", nginx.log());
    let admin = lb.new_user().await;
    let (mut ws, _) = lb.ws(&admin.token).await;
    let mut sse = lb.sse(&admin.token).await;
    lb.publish_ok(&admin, &admin.id, "through", json!({ "ok": true }))
        .await;
    let message = ws.next_of("through", |_| true).await;
    assert_eq!(message["data"]["ok"], true);
    loop {
        let (_, _, data) = sse.next_event().await.expect("sse event");
        if data["type"] == "through" {
            break;
        }
    }
    drop(node);
}

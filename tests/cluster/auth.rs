//! Sessions across nodes: a token issued by one node is accepted by every other (the
//! signing key is generated once and kept in the shared database), and logout on one
//! node closes the session's connections on all of them with 4001.

use crate::cluster::Cluster;
use reqwest::Method;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_issued_by_a_is_accepted_by_b_and_c() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let user = a.new_user().await;
    for node in [b, c] {
        let (status, me) = node.get("/api/v1/users/me", Some(&user.token)).await;
        assert_eq!(
            status,
            200,
            "node {} refused A's token: {me}\n{}",
            node.name,
            cluster.logs()
        );
        assert_eq!(me["user"]["id"], user.id.as_str());
        let (_, welcome) = node.ws(&user.token).await;
        assert_eq!(welcome["type"], "welcome");
    }
    // An API key made on B works on C; a login on C works on A.
    let (status, key) = b
        .post(
            "/api/v1/api-keys",
            Some(&user.token),
            json!({ "name": "cluster" }),
        )
        .await;
    assert_eq!(status, 201, "{key}");
    let key = key["key"].as_str().expect("key");
    let (status, me) = c.get("/api/v1/users/me", Some(key)).await;
    assert_eq!(status, 200, "{me}");
    let again = c.login(&user).await;
    let (status, _) = a.get("/api/v1/users/me", Some(&again.token)).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_on_a_closes_the_sessions_connections_on_b_and_c_with_4001() {
    let cluster = Cluster::start().await;
    let (a, b, c) = (cluster.node(0), cluster.node(1), cluster.node(2));
    let user = a.new_user().await;
    let session = b.login(&user).await;
    // Another session of the same user stays open everywhere.
    let (mut other, _) = c.ws(&user.token).await;
    let mut closing = Vec::new();
    for node in [a, b, c] {
        let (ws, _) = node.ws(&session.token).await;
        closing.push((node.name.clone(), ws));
    }

    let (status, body) = a
        .call(
            Method::POST,
            "/api/v1/users/logout",
            Some(&session.token),
            None,
        )
        .await;
    assert_eq!(status, 204, "logout: {body}");
    for (name, ws) in &mut closing {
        let code = ws.close_code(Duration::from_secs(30)).await;
        assert_eq!(
            code,
            Some(4001),
            "the session's connection on {name}\n{}",
            cluster.logs()
        );
    }
    for node in [a, b, c] {
        let (status, _) = node.get("/api/v1/users/me", Some(&session.token)).await;
        assert_eq!(
            status, 401,
            "node {} still accepts the revoked token",
            node.name
        );
        assert!(
            matches!(node.ws_try(&session.token, None).await, Err(401)),
            "node {} still upgrades the revoked token",
            node.name
        );
    }
    // The user's other session was not touched.
    let (status, _) = c.get("/api/v1/users/me", Some(&user.token)).await;
    assert_eq!(status, 200);
    assert!(
        !matches!(
            other.next_within(Duration::from_secs(1)).await,
            crate::node::Next::Closed(_)
        ),
        "the other session's connection stays open"
    );
}

//! `Cluster`: one test's PostgreSQL, Redis, N nodes (started together, as an operator's
//! `docker compose up` would, so they race on migrations and on the signing key) and
//! optionally an nginx in front. Everything stops when it is dropped: the nodes first.
#![allow(dead_code)] // A shared harness: not every test uses every method.

use crate::node::{Api, Node, User};
use crate::services::{Nginx, Postgres, Redis};

/// How a test wants its cluster.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// How many nodes (named A, B, C, …).
    pub nodes: usize,
    /// Whether an nginx load balancer runs in front of them.
    pub nginx: bool,
    /// More `serve` flags for every node.
    pub extra_args: Vec<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            nodes: 3,
            nginx: false,
            extra_args: Vec::new(),
        }
    }
}

/// A running cluster. Field order is drop order: nodes, nginx, Redis, PostgreSQL.
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub nginx: Option<Nginx>,
    pub redis: Redis,
    pub postgres: Postgres,
}

impl Cluster {
    /// Three nodes, no load balancer.
    pub async fn start() -> Cluster {
        Self::start_with(ClusterOptions::default()).await
    }

    /// PostgreSQL and Redis, then the nodes together, then nginx if asked for.
    pub async fn start_with(options: ClusterOptions) -> Cluster {
        let (postgres, redis) = tokio::join!(Postgres::start(), Redis::start());
        let mut args = vec![
            "--database-url".to_owned(),
            postgres.url.clone(),
            "--redis-url".to_owned(),
            redis.url.clone(),
        ];
        args.extend(options.extra_args.iter().cloned());
        let names = ["A", "B", "C", "D", "E", "F"];
        let nodes = futures_util::future::join_all(
            names[..options.nodes]
                .iter()
                .map(|name| Node::start(name, args.clone())),
        )
        .await;
        let nginx = if options.nginx {
            let ports: Vec<u16> = nodes.iter().map(|n| n.api.port).collect();
            Some(Nginx::start(&ports).await)
        } else {
            None
        };
        Cluster {
            nodes,
            nginx,
            redis,
            postgres,
        }
    }

    /// Node `i` (0 is A).
    pub fn node(&self, i: usize) -> &Node {
        &self.nodes[i]
    }

    /// The load balancer's entry point.
    pub fn lb(&self) -> Api {
        Api::new(self.nginx.as_ref().expect("cluster without nginx").port)
    }

    /// Registers the first account (the admin) on node A.
    pub async fn admin(&self) -> User {
        let admin = self.node(0).new_user().await;
        assert_eq!(admin.role, "admin", "the first account must be the admin");
        admin
    }

    /// Every node's log and Redis's, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for node in &self.nodes {
            out.push_str(&format!("---- node {} log (tail):\n", node.name));
            out.push_str(&tail(&node.log()));
        }
        out.push_str("---- redis log (tail):\n");
        out.push_str(&tail(&self.redis.log()));
        out
    }
}

/// The last 40 lines of a log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let mut out = lines[lines.len().saturating_sub(40)..].join("\n");
    out.push('\n');
    out
}

//! Cluster tests (issue 9): several nodes of the built binary sharing one PostgreSQL and
//! one Redis, each test with its own servers on 127.0.0.1, free ports and temporary
//! directories, optionally behind nginx, must behave exactly like one node
//! (CONTRACT.md "Running", "Delivery guarantees", "Publish and stats").
//!
//! Needs PostgreSQL (`initdb`, `postgres`; Debian's `/usr/lib/postgresql/<v>/bin` or
//! `ZEROSTATE_PG_BIN`), `redis-server` and `nginx` installed; run as root, PostgreSQL runs
//! as the `postgres` user. `scripts/test-cluster.sh` runs these and the browser suite
//! against a two-node cluster.

mod auth;
mod cluster;
mod delivery;
mod harness;
mod nginx;
mod node;
mod ops;
mod services;
mod stream;
mod tasks;

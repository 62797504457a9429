//! Black-box integration tests: each test starts the real `zerostate` binary on a free
//! port with its own data directory and talks to it over HTTP and WebSocket.

mod helpers;

mod agents;
mod analytics;
mod api_keys;
mod authz;
mod cli;
mod cluster;
mod execution;
mod hardening;
mod health;
mod output;
mod realtime;
mod runtime;
mod sse;
mod tasks;
mod tenancy;
mod users;

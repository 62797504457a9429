//! ZeroState: a self-hosted real-time platform for AI agents and their tasks.
//!
//! `main.rs` only parses the command line; everything else lives here so tests can
//! drive it. See `app` for how the pieces are put together.

pub mod agents;
pub mod app;
pub mod auth;
pub mod cli;
pub mod client;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod domain;
pub mod http;
pub mod realtime;
#[cfg(test)]
pub(crate) mod redis_server;
pub mod shutdown;
pub mod store;
pub mod tasks;
pub mod telemetry;
pub mod transport;

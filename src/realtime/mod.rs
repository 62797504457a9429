//! The real-time hub: who is connected, routing a message to one user (all their
//! connections) or to everyone, history and resume, backpressure, stats.
//!
//! It knows nothing of HTTP, sockets or the database: transports (`crate::transport`)
//! drive a [`Connection`] and write its frames, and publications come from a
//! [`Broker`] (publish-plus-history), which for one process keeps its history in a
//! [`history::MessageLog`] trait object. Other modules only call [`Hub::publish`] (and
//! [`Hub::send_transient`] for output that is not kept).

pub mod broker;
pub mod client;
mod connection;
pub mod disconnect;
pub mod history;
mod hub;
#[cfg(test)]
mod memory;
pub mod outbox;
pub mod protocol;
#[cfg(test)]
mod protocol_props;
mod registry;
mod stats;

pub use broker::Broker;
pub use client::TransportKind;
pub use connection::{Connection, Outgoing};
pub use disconnect::Disconnect;
pub use history::{HistoryPolicy, MessageLog};
pub use hub::{ConnectError, ConnectRequest, HistoryPage, Hub};
pub use outbox::{OutboxEntry, OutboxPort, Relay};
pub use stats::{Stats, TransportCounts};

use crate::domain::UserId;

/// Who a message is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every connection of one user.
    User(UserId),
    /// Every connected user.
    Everyone,
}

/// What a publish did.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    /// Connections on this node the message was queued to.
    pub delivered: usize,
}

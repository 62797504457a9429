//! The real-time hub: who is connected, routing a message to one user (all their
//! connections) or to everyone, history and resume, backpressure, stats.
//!
//! It knows nothing of HTTP, sockets or the database: transports (`crate::transport`)
//! drive a [`Connection`] and write its frames, and the message log arrives as a
//! [`history::MessageLog`] trait object. Other modules only call [`Hub::publish`].

pub mod client;
pub mod disconnect;
pub mod history;
mod hub;
#[cfg(test)]
mod memory;
pub mod protocol;
#[cfg(test)]
mod protocol_props;

pub use client::TransportKind;
pub use disconnect::Disconnect;
pub use history::{HistoryPolicy, MessageLog};
pub use hub::{ConnectError, ConnectRequest, Connection, Hub, Stats};

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

//! The real-time hub. (Skeleton: the real-time hub issue fills this in. The public
//! signature of `Hub::publish` is the contract other modules code against.)

use crate::domain::{MessageType, UserId};

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

/// The hub handle; cheap to clone.
#[derive(Clone, Default)]
pub struct Hub {}

impl Hub {
    /// Persists the message in history (giving it a cursor) and routes it to the live
    /// connections of its target, in publish order.
    pub async fn publish(
        &self,
        target: Target,
        kind: MessageType,
        data: serde_json::Value,
    ) -> anyhow::Result<Published> {
        let _ = (target, kind, data);
        Ok(Published { delivered: 0 })
    }
}

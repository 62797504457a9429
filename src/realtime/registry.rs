//! Who is connected: the hub's maps from connection, user and credential to the
//! connection's slot, plus the delivery position the resume invariant is read from.
//!
//! Everything here runs under the hub's registry lock (a std mutex held only for map
//! updates and `try_send`s, never across an `.await`), so nothing here may wait.

use super::client::{ConnId, Offer, Slot};
use super::protocol::Frame;
use super::Target;
use crate::domain::{Credential, UserId};
use std::collections::{HashMap, HashSet};
use std::time::Instant;

/// The live connections of this node.
#[derive(Default)]
pub(crate) struct Registry {
    /// Every registered connection.
    pub conns: HashMap<ConnId, Slot>,
    /// Connections by user (routing).
    pub by_user: HashMap<UserId, HashSet<ConnId>>,
    /// Connections by credential (revocation).
    pub by_credential: HashMap<Credential, HashSet<ConnId>>,
    /// The newest sequence number delivered (fanned out) on this node; a connection
    /// registering now replays up to here and gets everything newer live. See `hub.rs`.
    pub last_delivered: i64,
    /// Set at shutdown: no new connections.
    pub closed: bool,
    /// Credentials revoked lately, to refuse a connection that authenticated just
    /// before the revocation but registers just after it.
    pub recently_revoked: HashMap<Credential, Instant>,
    /// In a cluster: users who lost a connection since the backplane was last told
    /// (`Hub::take_released_users`); `None` on one node, where nobody drains it.
    pub released: Option<HashSet<UserId>>,
}

/// What a fan-out did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FanOut {
    /// Connections the frame was queued to.
    pub delivered: usize,
    /// Connections that overflowed (told to close with 4008, removed).
    pub overflowed: usize,
}

impl Registry {
    /// Adds a connection.
    pub fn insert(&mut self, slot: Slot) {
        self.by_user.entry(slot.user).or_default().insert(slot.id);
        if let Some(c) = slot.credential {
            self.by_credential.entry(c).or_default().insert(slot.id);
        }
        self.conns.insert(slot.id, slot);
    }

    /// Removes a connection, returning its slot if it was still registered.
    pub fn remove(&mut self, id: ConnId) -> Option<Slot> {
        let slot = self.conns.remove(&id)?;
        if let Some(released) = self.released.as_mut() {
            released.insert(slot.user);
        }
        if let Some(set) = self.by_user.get_mut(&slot.user) {
            set.remove(&id);
            if set.is_empty() {
                self.by_user.remove(&slot.user);
            }
        }
        if let Some(c) = slot.credential {
            if let Some(set) = self.by_credential.get_mut(&c) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_credential.remove(&c);
                }
            }
        }
        Some(slot)
    }

    /// Calls `f` on every connection `target` addresses.
    pub fn for_each_target(&self, target: Target, mut f: impl FnMut(&Slot)) {
        match target {
            Target::User(user) => {
                for id in self.by_user.get(&user).into_iter().flatten() {
                    if let Some(slot) = self.conns.get(id) {
                        f(slot);
                    }
                }
            }
            Target::Everyone => self.conns.values().for_each(f),
        }
    }

    /// Queues `frame` to every connection `target` addresses, without waiting. A
    /// connection that overflows leaves the registry at once: nothing more is queued
    /// for it while its task sends the 4008 close.
    pub fn fan_out(&mut self, target: Target, frame: &Frame) -> FanOut {
        let mut delivered = 0;
        let mut overflowed = Vec::new();
        self.for_each_target(target, |slot| match slot.offer(frame) {
            Offer::Queued => delivered += 1,
            Offer::Overflowed => overflowed.push(slot.id),
            Offer::Gone => {}
        });
        for id in &overflowed {
            self.remove(*id);
        }
        FanOut {
            delivered,
            overflowed: overflowed.len(),
        }
    }
}

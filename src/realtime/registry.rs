//! Who is connected: the hub's maps from connection, user and credential to the
//! connection's slot, plus the delivery position the resume invariant is read from,
//! each user's stream position (so a connect needs no history query), and the shared
//! keepalive sweep.
//!
//! Everything here runs under the hub's registry lock (a std mutex held only for map
//! updates and `try_send`s, never across an `.await`), so nothing here may wait.

use super::client::{ConnId, Offer, Slot, TransportKind};
use super::disconnect::Disconnect;
use super::protocol::Frame;
use super::Target;
use crate::domain::{Credential, UserId};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::time::Instant;

/// Server-side keepalive: a WebSocket ping this often (seconds).
pub(crate) const PING_EVERY_SECS: u32 = 25;
/// A WebSocket client silent this long is closed with 1001 (seconds).
pub(crate) const IDLE_AFTER_SECS: u32 = 75;
/// Users whose stream position is remembered at most; beyond it the map starts over
/// (a connect of a forgotten user asks the broker once).
const MAX_POSITIONS: usize = 100_000;

/// A user's stream position as the hub knows it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Position {
    /// The newest sequence number addressed to the user that the hub saw: the broker's
    /// answer, raised by every later delivery to the user alone (later broadcasts are
    /// `Registry::last_broadcast`).
    pub latest: i64,
    /// Whether the broker's answer is in (until then only deliveries are counted, and
    /// the position is not known).
    pub known: bool,
}

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
    /// Stream positions by user (see [`Registry::cached_position`]).
    pub positions: HashMap<UserId, Position>,
    /// The newest broadcast delivered on this node (addressed to every user).
    pub last_broadcast: i64,
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

    /// Keeps the stream positions up to date with a delivered publication. Called by
    /// the hub, under the lock, for every publication it delivers in order.
    pub fn record_delivery(&mut self, seq: i64, target: Target) {
        match target {
            Target::Everyone => self.last_broadcast = self.last_broadcast.max(seq),
            Target::User(user) => {
                if let Some(p) = self.positions.get_mut(&user) {
                    p.latest = p.latest.max(seq);
                }
            }
        }
    }

    /// Forgets every stream position (after the broker broke its order: what was
    /// counted may be wrong); the next connect of each user asks the broker again.
    pub fn forget_positions(&mut self) {
        self.positions.clear();
    }

    /// The user's stream position as of `last_delivered`: the newest message addressed
    /// to them (own or broadcast), or `None` when it is not known yet. Then it starts
    /// counting deliveries to the user from now on, so that the broker's answer as of
    /// now ([`Registry::learn_position`]) plus those deliveries is exact.
    pub fn cached_position(&mut self, user: UserId) -> Option<i64> {
        if let Some(p) = self.positions.get(&user) {
            return p.known.then_some(p.latest.max(self.last_broadcast));
        }
        if self.positions.len() >= MAX_POSITIONS {
            self.positions.clear();
        }
        self.positions.insert(user, Position::default());
        None
    }

    /// Records the broker's answer for the user's position, read as of a delivery
    /// position at which [`Registry::cached_position`] had started counting (so every
    /// later delivery to the user is counted already). If the count was forgotten
    /// meanwhile, the answer is not kept.
    pub fn learn_position(&mut self, user: UserId, latest: i64) {
        if let Some(p) = self.positions.get_mut(&user) {
            p.latest = p.latest.max(latest);
            p.known = true;
        }
    }

    /// The shared keepalive, run about once a second instead of three timers per
    /// connection: asks each WebSocket for a ping every [`PING_EVERY_SECS`], closes one
    /// whose client has been silent [`IDLE_AFTER_SECS`] (1001), and closes any
    /// connection whose credential expired (4001). Only atomics and the slots' signals:
    /// no waiting under the lock. `now` is `client::now_secs()`, `now_unix` the wall clock (for
    /// expiries).
    pub fn sweep(&self, now: u32, now_unix: i64) {
        for slot in self.conns.values() {
            if slot.signal.reason().is_some() {
                continue;
            }
            if slot.expires_at.is_some_and(|at| at <= now_unix) {
                slot.signal.fire(Disconnect::Expired);
                continue;
            }
            if slot.transport != TransportKind::WebSocket {
                continue;
            }
            let state = &slot.state;
            let silent = now.saturating_sub(state.last_inbound.load(Ordering::Relaxed));
            if silent >= IDLE_AFTER_SECS {
                slot.signal.fire(Disconnect::Idle);
                continue;
            }
            let since_ping = now.saturating_sub(state.last_ping.load(Ordering::Relaxed));
            if since_ping >= PING_EVERY_SECS {
                state.last_ping.store(now, Ordering::Relaxed);
                state.request_ping();
            }
        }
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

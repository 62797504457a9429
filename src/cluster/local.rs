//! The one-node backplane: today's single-process behaviour. Signals go nowhere (there
//! is no other node), stats are this node's, the connection cap counts this node's
//! connections, and the rate windows live in memory (a restart forgives everyone,
//! which is acceptable for a throttle).
//!
//! The windows are bounded three ways: a key is a fixed-size digest ([`RateKey`]), the
//! number of keys is capped, and keys whose newest event has left their window are
//! swept every minute. When the map is full of live keys, new keys are refused as if
//! throttled. The Redis backplane also keeps one of these as its fallback while Redis
//! is unreachable.

use super::{
    Backplane, BackplaneError, BackplaneHealth, HitId, NodeStats, RateDecision, RateKey, Signal,
    Window,
};
use crate::domain::UserId;
use crate::realtime::{Stats, Target};
use async_trait::async_trait;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

/// How often expired keys are swept out.
const SWEEP_EVERY: Duration = Duration::from_secs(60);
/// Keys kept by default.
pub const DEFAULT_MAX_KEYS: usize = 200_000;

/// The in-process backplane.
pub struct LocalBackplane {
    node_id: String,
    windows: RateWindows,
    /// Never sent on: there is no other node. Kept so `subscribe` has something to give.
    signals: broadcast::Sender<Signal>,
}

impl Default for LocalBackplane {
    fn default() -> Self {
        Self::with_max_keys(DEFAULT_MAX_KEYS)
    }
}

impl LocalBackplane {
    /// A backplane whose rate windows hold at most `max_keys` keys.
    pub fn with_max_keys(max_keys: usize) -> Self {
        let (signals, _) = broadcast::channel(1);
        Self {
            node_id: new_node_id(),
            windows: RateWindows::new(max_keys),
            signals,
        }
    }

    /// Keys held by the rate windows (for tests of the bound).
    pub fn rate_keys(&self) -> usize {
        self.windows.lock().events.len()
    }
}

/// A random node id: 12 hex digits.
pub fn new_node_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

#[async_trait]
impl Backplane for LocalBackplane {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn is_shared(&self) -> bool {
        false
    }

    async fn health(&self) -> BackplaneHealth {
        BackplaneHealth::Disabled
    }

    fn signal(&self, _signal: Signal) {}

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn report(&self, _stats: &Stats) -> Result<(), BackplaneError> {
        Ok(())
    }

    async fn leave(&self) {}

    async fn other_nodes(&self) -> Result<Vec<NodeStats>, BackplaneError> {
        Ok(Vec::new())
    }

    async fn rate_begin(&self, keys: &[(RateKey, Window)]) -> RateDecision {
        self.windows.begin(keys)
    }

    async fn rate_forget(&self, key: &RateKey, hit: HitId) {
        self.windows.forget(key, hit);
    }

    async fn rate_clear(&self, key: &RateKey) {
        self.windows.clear(key);
    }

    async fn admit_connection(&self, _user: UserId, here: usize, cap: usize) -> bool {
        here < cap
    }

    async fn connections_changed(&self, _counts: &[(UserId, usize)]) {}

    async fn remote_connections(&self, _target: Target) -> u64 {
        0
    }
}

/// Sliding windows of event times per key, bounded in keys and swept regularly.
pub(crate) struct RateWindows {
    // A std mutex: only held for map operations, never across an await.
    inner: Mutex<Inner>,
}

struct Inner {
    max_keys: usize,
    /// Per key: its window and its counted events, oldest first.
    events: HashMap<RateKey, (Duration, VecDeque<(Instant, HitId)>)>,
    last_sweep: Instant,
}

impl RateWindows {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                max_keys,
                events: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// See [`Backplane::rate_begin`].
    pub(crate) fn begin(&self, keys: &[(RateKey, Window)]) -> RateDecision {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.sweep(now, false);
        let blocked = keys
            .iter()
            .filter_map(|(key, limit)| inner.blocked(key, *limit, now))
            .max();
        if let Some(wait) = blocked {
            return RateDecision::Blocked(wait);
        }
        if !keys.iter().all(|(key, _)| inner.has_room_for(key, now)) {
            // Full of live keys: someone is spraying; refuse new keys for a while.
            let shortest = keys.iter().map(|(_, l)| l.window).min().unwrap_or_default();
            return RateDecision::Blocked(shortest.min(Duration::from_secs(60)));
        }
        let hit = HitId(rand::random());
        for (key, limit) in keys {
            let (window, times) = inner
                .events
                .entry(*key)
                .or_insert_with(|| (limit.window, VecDeque::new()));
            *window = limit.window;
            times.push_back((now, hit));
            while times.len() > limit.max {
                times.pop_front();
            }
        }
        RateDecision::Counted(hit)
    }

    /// Takes `hit` back from `key`.
    pub(crate) fn forget(&self, key: &RateKey, hit: HitId) {
        let mut inner = self.lock();
        if let Some((_, times)) = inner.events.get_mut(key) {
            times.retain(|(_, h)| *h != hit);
            if times.is_empty() {
                inner.events.remove(key);
            }
        }
    }

    /// Forgets `key`.
    pub(crate) fn clear(&self, key: &RateKey) {
        self.lock().events.remove(key);
    }
}

impl Inner {
    fn sweep(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        self.events.retain(|_, (window, times)| {
            times
                .back()
                .is_some_and(|(t, _)| now.duration_since(*t) < *window)
        });
    }

    /// `Some(wait)` when `key` already has `limit.max` events in its window.
    fn blocked(&self, key: &RateKey, limit: Window, now: Instant) -> Option<Duration> {
        let (_, times) = self.events.get(key)?;
        let mut recent = times
            .iter()
            .filter(|(t, _)| now.duration_since(*t) < limit.window);
        let count = recent.clone().count();
        if count < limit.max {
            return None;
        }
        // Allowed again once the oldest event still counted leaves the window.
        let (oldest, _) = recent.next()?;
        Some(
            limit
                .window
                .saturating_sub(now.duration_since(*oldest))
                .max(Duration::from_secs(1)),
        )
    }

    /// Whether a new key would fit (after a sweep if needed).
    fn has_room_for(&mut self, key: &RateKey, now: Instant) -> bool {
        if self.events.contains_key(key) || self.events.len() < self.max_keys {
            return true;
        }
        self.sweep(now, true);
        self.events.len() < self.max_keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> RateKey {
        RateKey {
            scope: "test",
            digest: [n; 32],
        }
    }

    const THREE_PER_MINUTE: Window = Window {
        max: 3,
        window: Duration::from_secs(60),
    };

    #[test]
    fn a_full_window_blocks_every_key_of_the_call_and_counts_nothing() {
        let w = RateWindows::new(100);
        for _ in 0..3 {
            assert!(matches!(
                w.begin(&[(key(1), THREE_PER_MINUTE)]),
                RateDecision::Counted(_)
            ));
        }
        let RateDecision::Blocked(wait) =
            w.begin(&[(key(2), THREE_PER_MINUTE), (key(1), THREE_PER_MINUTE)])
        else {
            panic!("key 1 is full")
        };
        assert!(wait > Duration::from_secs(50));
        // Key 2 was not counted by the refused call: three more fit.
        for _ in 0..3 {
            assert!(matches!(
                w.begin(&[(key(2), THREE_PER_MINUTE)]),
                RateDecision::Counted(_)
            ));
        }
    }

    #[test]
    fn a_hit_taken_back_frees_its_place() {
        let w = RateWindows::new(100);
        let hits: Vec<_> = (0..3)
            .map(|_| match w.begin(&[(key(1), THREE_PER_MINUTE)]) {
                RateDecision::Counted(hit) => hit,
                RateDecision::Blocked(_) => panic!("room left"),
            })
            .collect();
        w.forget(&key(1), hits[1]);
        assert!(matches!(
            w.begin(&[(key(1), THREE_PER_MINUTE)]),
            RateDecision::Counted(_)
        ));
        w.clear(&key(1));
        assert_eq!(w.lock().events.len(), 0);
    }

    #[test]
    fn the_map_stays_bounded() {
        let w = RateWindows::new(10);
        for n in 0..100 {
            let _ = w.begin(&[(key(n), THREE_PER_MINUTE)]);
        }
        assert!(w.lock().events.len() <= 10);
    }
}

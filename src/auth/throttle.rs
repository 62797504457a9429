//! Login throttling and the registration limit.
//!
//! Login attempts are counted per (email, address) pair and per address: guessing one
//! account's password from one place is slowed quickly, an address that sprays many
//! accounts is slowed too, and yet the owner signing in from elsewhere is never locked
//! out by someone else's guesses. An attempt is counted *before* its password is checked
//! ([`LoginThrottle::begin`]), so fifty guesses sent at once get the same five checks as
//! fifty sent one after another; a successful login takes its own attempt back.
//!
//! Counters live in memory (a restart forgives everyone, which is acceptable for a
//! throttle) in maps bounded three ways: a key is a fixed-size digest of the email (an
//! attacker's 1 MiB "email" costs 32 bytes), the number of keys is capped, and entries
//! whose newest event has left the window are swept every minute. When the map is full
//! of live entries, new keys are refused as if throttled. IPv6 addresses count per /64,
//! the block one subscriber usually holds.

use crate::config::{canonical, RateLimit};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits for one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Events allowed in one window.
    pub max_failures: usize,
    /// The sliding window.
    pub window: Duration,
}

/// How often expired entries are swept out of a map.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Pair([u8; 32], IpAddr),
    Address(IpAddr),
}

/// Sliding windows of event times per key, bounded in keys and swept regularly.
struct Windows<K> {
    max_keys: usize,
    /// The longest window any key uses: older events never matter.
    longest: Duration,
    events: HashMap<K, VecDeque<Instant>>,
    last_sweep: Instant,
}

impl<K: Eq + Hash + Copy> Windows<K> {
    fn new(max_keys: usize, longest: Duration) -> Self {
        Self {
            max_keys,
            longest,
            events: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    fn sweep(&mut self, now: Instant, force: bool) {
        if !force && now.duration_since(self.last_sweep) < SWEEP_EVERY {
            return;
        }
        self.last_sweep = now;
        let longest = self.longest;
        self.events.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < longest)
        });
    }

    /// `Some(wait)` when `key` already has `limit.max_failures` events in its window.
    fn blocked(&self, key: &K, limit: Limit, now: Instant) -> Option<Duration> {
        let times = self.events.get(key)?;
        let mut recent = times
            .iter()
            .filter(|t| now.duration_since(**t) < limit.window);
        let count = recent.clone().count();
        if count < limit.max_failures {
            return None;
        }
        // Allowed again once the oldest event still counted leaves the window.
        let oldest = recent.next()?;
        Some(
            limit
                .window
                .saturating_sub(now.duration_since(*oldest))
                .max(Duration::from_secs(1)),
        )
    }

    /// Whether a new key would fit (after a sweep if needed).
    fn has_room_for(&mut self, key: &K, now: Instant) -> bool {
        if self.events.contains_key(key) || self.events.len() < self.max_keys {
            return true;
        }
        self.sweep(now, true);
        self.events.len() < self.max_keys
    }

    fn record(&mut self, key: K, keep: usize, now: Instant) {
        let times = self.events.entry(key).or_default();
        times.push_back(now);
        while times.len() > keep {
            times.pop_front();
        }
    }

    /// Takes back the newest event of `key`.
    fn forget_one(&mut self, key: &K) {
        if let Some(times) = self.events.get_mut(key) {
            times.pop_back();
            if times.is_empty() {
                self.events.remove(key);
            }
        }
    }
}

/// Failed-login counters with sliding windows.
pub struct LoginThrottle {
    per_pair: Limit,
    per_address: Limit,
    // A std mutex: it is only held for map operations, never across an await.
    windows: Mutex<Windows<Key>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self::new(
            Limit {
                max_failures: 5,
                window: Duration::from_secs(15 * 60),
            },
            Limit {
                max_failures: 30,
                window: Duration::from_secs(15 * 60),
            },
            100_000,
        )
    }
}

/// A login attempt that has been counted; tell the throttle how it went.
#[must_use = "a login attempt must end in `succeeded` or be dropped as a failure"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    pair: Key,
    address: Key,
}

impl Attempt<'_> {
    /// The password was right: the pair's failures are forgotten and this attempt no
    /// longer counts against the address.
    pub fn succeeded(self) {
        let mut windows = self.throttle.lock();
        windows.events.remove(&self.pair);
        windows.forget_one(&self.address);
    }
}

impl LoginThrottle {
    /// Limits per (email, address) pair and per address; at most `max_keys` counters.
    pub fn new(per_pair: Limit, per_address: Limit, max_keys: usize) -> Self {
        let longest = per_pair.window.max(per_address.window);
        Self {
            per_pair,
            per_address,
            windows: Mutex::new(Windows::new(max_keys, longest)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows<Key>> {
        self.windows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a login attempt before its password is checked, or refuses it with the
    /// time after which the caller may try again. The attempt counts as a failure unless
    /// [`Attempt::succeeded`] is called.
    pub fn begin(&self, email: &str, addr: IpAddr) -> Result<Attempt<'_>, Duration> {
        let now = Instant::now();
        let pair = Key::Pair(email_digest(email), address_key(addr));
        let address = Key::Address(address_key(addr));
        let mut windows = self.lock();
        windows.sweep(now, false);
        let blocked = [(pair, self.per_pair), (address, self.per_address)]
            .into_iter()
            .filter_map(|(key, limit)| windows.blocked(&key, limit, now))
            .max();
        if let Some(wait) = blocked {
            return Err(wait);
        }
        if !windows.has_room_for(&pair, now) || !windows.has_room_for(&address, now) {
            // Full of live entries: someone is spraying; refuse new keys for a while.
            return Err(self.per_pair.window.min(Duration::from_secs(60)));
        }
        windows.record(pair, self.per_pair.max_failures, now);
        windows.record(address, self.per_address.max_failures, now);
        Ok(Attempt {
            throttle: self,
            pair,
            address,
        })
    }

    #[cfg(test)]
    fn keys(&self) -> usize {
        self.lock().events.len()
    }
}

/// Sign-ups per client address (`--registration-limit`), counted before the password is
/// hashed so parallel sign-ups are limited too.
pub struct RegistrationLimiter {
    limit: Option<RateLimit>,
    windows: Mutex<Windows<IpAddr>>,
}

impl RegistrationLimiter {
    /// `None`: no limit.
    pub fn new(limit: Option<RateLimit>) -> Self {
        let longest = limit.map_or(Duration::ZERO, |l| l.per);
        Self {
            limit,
            windows: Mutex::new(Windows::new(100_000, longest)),
        }
    }

    /// Counts one sign-up from `addr`, or refuses it with the time to wait.
    pub fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let limit = Limit {
            max_failures: limit.count,
            window: limit.per,
        };
        let now = Instant::now();
        let key = address_key(addr);
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        windows.sweep(now, false);
        if let Some(wait) = windows.blocked(&key, limit, now) {
            return Err(wait);
        }
        if !windows.has_room_for(&key, now) {
            return Err(Duration::from_secs(60));
        }
        windows.record(key, limit.max_failures, now);
        Ok(())
    }
}

/// A fixed-size key for an email, however long the string an attacker sent.
fn email_digest(email: &str) -> [u8; 32] {
    Sha256::digest(email.trim().to_lowercase().as_bytes()).into()
}

/// IPv4 as is; IPv6 by its /64.
fn address_key(addr: IpAddr) -> IpAddr {
    match canonical(addr) {
        IpAddr::V6(v6) => {
            let mut segments = v6.segments();
            segments[4..].fill(0);
            IpAddr::V6(segments.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn pair_is_throttled_but_other_address_is_not() {
        let t = LoginThrottle::default();
        for _ in 0..5 {
            drop(t.begin("a@b.c", ip(1)).unwrap());
        }
        let wait = t.begin("a@b.c", ip(1)).err().unwrap();
        assert!(wait > Duration::from_secs(60));
        assert!(
            t.begin("A@B.C ", ip(1)).is_err(),
            "the same email, spelled otherwise"
        );
        assert!(t.begin("a@b.c", ip(2)).is_ok());
    }

    #[test]
    fn attempts_in_flight_count_before_any_result() {
        let t = LoginThrottle::default();
        let in_flight: Vec<_> = (0..50)
            .filter_map(|_| t.begin("a@b.c", ip(1)).ok())
            .collect();
        assert_eq!(in_flight.len(), 5);
    }

    #[test]
    fn success_forgets_the_pair() {
        let t = LoginThrottle::default();
        for _ in 0..4 {
            drop(t.begin("a@b.c", ip(1)).unwrap());
        }
        t.begin("a@b.c", ip(1)).unwrap().succeeded();
        for _ in 0..5 {
            drop(t.begin("a@b.c", ip(1)).unwrap());
        }
    }

    #[test]
    fn address_spraying_many_accounts_is_throttled() {
        let t = LoginThrottle::default();
        for n in 0..30 {
            drop(t.begin(&format!("u{n}@b.c"), ip(3)).unwrap());
        }
        assert!(t.begin("fresh@b.c", ip(3)).is_err());
        assert!(t.begin("fresh@b.c", ip(4)).is_ok());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let t = LoginThrottle::default();
        for n in 0..30u16 {
            let addr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
            drop(t.begin(&format!("u{n}@b.c"), addr).unwrap());
        }
        let other_in_block = IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]);
        assert!(t.begin("fresh@b.c", other_in_block).is_err());
    }

    #[test]
    fn map_stays_bounded_and_keys_are_small() {
        let limit = Limit {
            max_failures: 2,
            window: Duration::from_secs(60),
        };
        let t = LoginThrottle::new(limit, limit, 10);
        let huge = "x".repeat(1 << 20);
        for n in 0..100u8 {
            let _ = t.begin(&format!("{huge}{n}"), ip(n));
        }
        assert!(t.keys() <= 10);
        assert_eq!(
            std::mem::size_of::<Key>(),
            std::mem::size_of::<([u8; 32], IpAddr)>()
        );
    }

    #[test]
    fn registrations_are_limited_per_address() {
        let r = RegistrationLimiter::new(Some(RateLimit {
            count: 3,
            per: Duration::from_secs(600),
        }));
        for _ in 0..3 {
            r.check(ip(1)).unwrap();
        }
        assert!(r.check(ip(1)).unwrap_err() > Duration::from_secs(500));
        assert!(r.check(ip(2)).is_ok());
        let off = RegistrationLimiter::new(None);
        for _ in 0..100 {
            off.check(ip(1)).unwrap();
        }
    }
}

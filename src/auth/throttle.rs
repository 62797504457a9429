//! Login throttling. Failures are counted per (email, address) pair and per address:
//! guessing one account's password from one place is slowed quickly, an address that
//! sprays many accounts is slowed too, and yet the owner signing in from elsewhere is never
//! locked out by someone else's guesses.
//!
//! Counters live in memory (a restart forgives everyone, which is acceptable for a
//! throttle) in a map whose size is bounded: past the bound, expired entries are swept
//! and, if still full, new keys are throttled as if they were an abusive address.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Limits for one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    pub max_failures: usize,
    pub window: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Pair(String, IpAddr),
    Address(IpAddr),
}

/// Failure counters with sliding windows.
pub struct LoginThrottle {
    per_pair: Limit,
    per_address: Limit,
    max_keys: usize,
    // A std mutex: it is only held for map operations, never across an await.
    failures: Mutex<HashMap<Key, VecDeque<Instant>>>,
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

impl LoginThrottle {
    pub fn new(per_pair: Limit, per_address: Limit, max_keys: usize) -> Self {
        Self {
            per_pair,
            per_address,
            max_keys,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` when this login attempt must be refused without checking the
    /// password.
    pub fn check(&self, email: &str, addr: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let pair = Key::Pair(email.to_owned(), addr);
        let blocked = [
            (pair, self.per_pair),
            (Key::Address(addr), self.per_address),
        ]
        .into_iter()
        .filter_map(|(key, limit)| {
            let times = map.get(&key)?;
            let recent = times
                .iter()
                .filter(|t| now.duration_since(**t) < limit.window);
            if recent.clone().count() < limit.max_failures {
                return None;
            }
            // Allowed again once the oldest failure still counted leaves the window.
            let oldest = recent.min()?;
            Some(limit.window.saturating_sub(now.duration_since(*oldest)))
        })
        .max();
        match blocked {
            Some(wait) => Err(wait.max(Duration::from_secs(1))),
            None => Ok(()),
        }
    }

    /// Records a failed attempt.
    pub fn record_failure(&self, email: &str, addr: IpAddr) {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.max_keys {
            let longest = self.per_pair.window.max(self.per_address.window);
            map.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < longest)
            });
        }
        for (key, limit) in [
            (Key::Pair(email.to_owned(), addr), self.per_pair),
            (Key::Address(addr), self.per_address),
        ] {
            if map.len() >= self.max_keys && !map.contains_key(&key) {
                continue;
            }
            let times = map.entry(key).or_default();
            times.push_back(now);
            while times.len() > limit.max_failures {
                times.pop_front();
            }
        }
    }

    /// Forgets the failures of this pair after a successful login.
    pub fn record_success(&self, email: &str, addr: IpAddr) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&Key::Pair(email.to_owned(), addr));
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
            assert!(t.check("a@b.c", ip(1)).is_ok());
            t.record_failure("a@b.c", ip(1));
        }
        let wait = t.check("a@b.c", ip(1)).unwrap_err();
        assert!(wait > Duration::from_secs(60));
        assert!(t.check("a@b.c", ip(2)).is_ok());
    }

    #[test]
    fn address_spraying_many_accounts_is_throttled() {
        let t = LoginThrottle::default();
        for n in 0..30 {
            t.record_failure(&format!("u{n}@b.c"), ip(3));
        }
        assert!(t.check("fresh@b.c", ip(3)).is_err());
        assert!(t.check("fresh@b.c", ip(4)).is_ok());
    }

    #[test]
    fn map_stays_bounded() {
        let limit = Limit {
            max_failures: 2,
            window: Duration::from_secs(60),
        };
        let t = LoginThrottle::new(limit, limit, 10);
        for n in 0..100u8 {
            t.record_failure(&format!("u{n}"), ip(n));
        }
        assert!(t.failures.lock().unwrap().len() <= 10);
    }
}

//! Login throttling and the registration limit.
//!
//! Login attempts are counted per (email, address) pair and per address: guessing one
//! account's password from one place is slowed quickly, an address that sprays many
//! accounts is slowed too, and yet the owner signing in from elsewhere is never locked
//! out by someone else's guesses. An attempt is counted *before* its password is checked
//! ([`LoginThrottle::begin`]), so fifty guesses sent at once get the same five checks as
//! fifty sent one after another; a successful login takes its own attempt back. The
//! password change counts its "current password" the same way.
//!
//! The counters are sliding windows kept by the cluster backplane
//! (`cluster::Backplane::rate_begin`): in memory on one node (a restart forgives
//! everyone, which is acceptable for a throttle), in Redis for several, so a guesser
//! gets the same five tries whichever nodes the load balancer sends them to. A key is a
//! fixed-size digest of what it counts (an attacker's 1 MiB "email" costs 32 bytes, and
//! no email or address is written to Redis in the clear). IPv6 addresses count per
//! /64, the block one subscriber usually holds.

use crate::cluster::{Backplane, HitId, RateDecision, RateKey, Window};
use crate::config::{canonical, RateLimit};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

/// Limits for one kind of key.
#[derive(Debug, Clone, Copy)]
pub struct Limit {
    /// Events allowed in one window.
    pub max_failures: usize,
    /// The sliding window.
    pub window: Duration,
}

impl From<Limit> for Window {
    fn from(l: Limit) -> Self {
        Window {
            max: l.max_failures,
            window: l.window,
        }
    }
}

/// Failed-login counters with sliding windows.
pub struct LoginThrottle {
    per_pair: Limit,
    per_address: Limit,
    counters: Arc<dyn Backplane>,
}

/// The default limits: five tries per (email, address) and thirty per address, in
/// fifteen minutes.
pub const LOGIN_PER_PAIR: Limit = Limit {
    max_failures: 5,
    window: Duration::from_secs(15 * 60),
};
/// See [`LOGIN_PER_PAIR`].
pub const LOGIN_PER_ADDRESS: Limit = Limit {
    max_failures: 30,
    window: Duration::from_secs(15 * 60),
};

/// A login attempt that has been counted; tell the throttle how it went.
#[must_use = "a login attempt must end in `succeeded` or be dropped as a failure"]
pub struct Attempt<'a> {
    throttle: &'a LoginThrottle,
    pair: RateKey,
    address: RateKey,
    hit: HitId,
}

impl Attempt<'_> {
    /// The password was right: the pair's failures are forgotten and this attempt no
    /// longer counts against the address.
    pub async fn succeeded(self) {
        let counters = &self.throttle.counters;
        counters.rate_clear(&self.pair).await;
        counters.rate_forget(&self.address, self.hit).await;
    }
}

impl LoginThrottle {
    /// The default limits, counted by `counters`.
    pub fn new(counters: Arc<dyn Backplane>) -> Self {
        Self::with_limits(LOGIN_PER_PAIR, LOGIN_PER_ADDRESS, counters)
    }

    /// Limits per (email, address) pair and per address.
    pub fn with_limits(per_pair: Limit, per_address: Limit, counters: Arc<dyn Backplane>) -> Self {
        Self {
            per_pair,
            per_address,
            counters,
        }
    }

    /// Counts a login attempt before its password is checked, or refuses it with the
    /// time after which the caller may try again. The attempt counts as a failure unless
    /// [`Attempt::succeeded`] is called.
    pub async fn begin(&self, email: &str, addr: IpAddr) -> Result<Attempt<'_>, Duration> {
        let address = address_key(addr);
        let pair = RateKey {
            scope: "login_pair",
            digest: digest(&[&email_digest(email), address.to_string().as_bytes()]),
        };
        let address = RateKey {
            scope: "login_address",
            digest: digest(&[address.to_string().as_bytes()]),
        };
        let keys = [
            (pair, self.per_pair.into()),
            (address, self.per_address.into()),
        ];
        match self.counters.rate_begin(&keys).await {
            RateDecision::Counted(hit) => Ok(Attempt {
                throttle: self,
                pair,
                address,
                hit,
            }),
            RateDecision::Blocked(wait) => Err(wait),
        }
    }
}

/// Sign-ups per client address (`--registration-limit`), counted before the password is
/// hashed so parallel sign-ups are limited too.
pub struct RegistrationLimiter {
    limit: Option<RateLimit>,
    counters: Arc<dyn Backplane>,
}

impl RegistrationLimiter {
    /// `None`: no limit.
    pub fn new(limit: Option<RateLimit>, counters: Arc<dyn Backplane>) -> Self {
        Self { limit, counters }
    }

    /// Counts one sign-up from `addr`, or refuses it with the time to wait.
    pub async fn check(&self, addr: IpAddr) -> Result<(), Duration> {
        let Some(limit) = self.limit else {
            return Ok(());
        };
        let key = RateKey {
            scope: "registration",
            digest: digest(&[address_key(addr).to_string().as_bytes()]),
        };
        let window = Window {
            max: limit.count,
            window: limit.per,
        };
        match self.counters.rate_begin(&[(key, window)]).await {
            RateDecision::Counted(_) => Ok(()),
            RateDecision::Blocked(wait) => Err(wait),
        }
    }
}

/// SHA-256 of the parts, each length-prefixed so no two part lists collide.
fn digest(parts: &[&[u8]]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_le_bytes());
        hasher.update(part);
    }
    hasher.finalize().into()
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
    use crate::cluster::local::LocalBackplane;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    fn throttle() -> LoginThrottle {
        LoginThrottle::new(Arc::new(LocalBackplane::default()))
    }

    #[tokio::test]
    async fn pair_is_throttled_but_other_address_is_not() {
        let t = throttle();
        for _ in 0..5 {
            drop(t.begin("a@b.c", ip(1)).await.unwrap());
        }
        let wait = t.begin("a@b.c", ip(1)).await.err().unwrap();
        assert!(wait > Duration::from_secs(60));
        assert!(
            t.begin("A@B.C ", ip(1)).await.is_err(),
            "the same email, spelled otherwise"
        );
        assert!(t.begin("a@b.c", ip(2)).await.is_ok());
    }

    #[tokio::test]
    async fn attempts_in_flight_count_before_any_result() {
        let t = throttle();
        let mut in_flight = Vec::new();
        for _ in 0..50 {
            if let Ok(attempt) = t.begin("a@b.c", ip(1)).await {
                in_flight.push(attempt);
            }
        }
        assert_eq!(in_flight.len(), 5);
    }

    #[tokio::test]
    async fn success_forgets_the_pair() {
        let t = throttle();
        for _ in 0..4 {
            drop(t.begin("a@b.c", ip(1)).await.unwrap());
        }
        t.begin("a@b.c", ip(1)).await.unwrap().succeeded().await;
        for _ in 0..5 {
            drop(t.begin("a@b.c", ip(1)).await.unwrap());
        }
    }

    #[tokio::test]
    async fn address_spraying_many_accounts_is_throttled() {
        let t = throttle();
        for n in 0..30 {
            drop(t.begin(&format!("u{n}@b.c"), ip(3)).await.unwrap());
        }
        assert!(t.begin("fresh@b.c", ip(3)).await.is_err());
        assert!(t.begin("fresh@b.c", ip(4)).await.is_ok());
    }

    #[tokio::test]
    async fn ipv6_counts_per_64() {
        let t = throttle();
        for n in 0..30u16 {
            let addr = IpAddr::from([0x2001, 0xdb8, 0, 1, 0, 0, 0, n]);
            drop(t.begin(&format!("u{n}@b.c"), addr).await.unwrap());
        }
        let other_in_block = IpAddr::from([0x2001, 0xdb8, 0, 1, 9, 9, 9, 9]);
        assert!(t.begin("fresh@b.c", other_in_block).await.is_err());
    }

    #[tokio::test]
    async fn map_stays_bounded_and_keys_are_small() {
        let limit = Limit {
            max_failures: 2,
            window: Duration::from_secs(60),
        };
        let counters = Arc::new(LocalBackplane::with_max_keys(10));
        let t = LoginThrottle::with_limits(limit, limit, counters.clone());
        let huge = "x".repeat(1 << 20);
        for n in 0..100u8 {
            let _ = t.begin(&format!("{huge}{n}"), ip(n)).await;
        }
        assert!(counters.rate_keys() <= 10);
        assert_eq!(
            std::mem::size_of::<RateKey>(),
            std::mem::size_of::<(&str, [u8; 32])>()
        );
    }

    #[tokio::test]
    async fn registrations_are_limited_per_address() {
        let counters: Arc<dyn Backplane> = Arc::new(LocalBackplane::default());
        let r = RegistrationLimiter::new(
            Some(RateLimit {
                count: 3,
                per: Duration::from_secs(600),
            }),
            counters.clone(),
        );
        for _ in 0..3 {
            r.check(ip(1)).await.unwrap();
        }
        assert!(r.check(ip(1)).await.unwrap_err() > Duration::from_secs(500));
        assert!(r.check(ip(2)).await.is_ok());
        let off = RegistrationLimiter::new(None, counters);
        for _ in 0..100 {
            off.check(ip(1)).await.unwrap();
        }
    }
}

//! The server's settings as one typed value (zero-to-production's `configuration.rs`):
//! `Application::build` takes a `Settings`, the CLI's `ServeArgs` converts into one, and
//! tests can build one in-process. Every value here is already parsed: durations are
//! `Duration`s, limits are `Option`s where `0` means "off", proxies are networks.

use crate::cli::{ServeArgs, StorageArgs};
use ipnet::IpNet;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// Everything `zerostate serve` needs to know.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `HOST:PORT` to listen on (port 0: any free port).
    pub addr: String,
    /// Where the data lives.
    pub storage: StorageSettings,
    /// Redis URL linking several nodes; `None`: one node.
    pub redis_url: Option<String>,
    /// Origins allowed besides the server's own (`scheme://host[:port]`, no trailing slash).
    pub allowed_origins: Vec<String>,
    /// Whether the built-in agent runs in this process.
    pub builtin_agent: bool,
    /// Token signing key; `None`: generated into (or read from) the data directory.
    pub signing_key: Option<SigningKey>,
    /// How long a claimed task stays with its agent without a progress report.
    pub task_lease: Duration,
    /// Base of the retry backoff (full jitter, doubling per attempt, at most 60 s).
    pub retry_backoff_base: Duration,
    /// Most bytes of output one task may keep.
    pub task_output_max_bytes: u64,
    /// Silence after which an agent counts as offline.
    pub agent_offline_after: Duration,
    /// Real-time history kept per user stream: newest messages always kept.
    pub history_max_per_user: u32,
    /// Real-time history: messages younger than this are always kept.
    pub history_max_age: Duration,
    /// The limits that protect the service.
    pub limits: Limits,
}

/// Where the data lives.
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Directory for the SQLite database and the signing key (created `0700`).
    pub data_dir: PathBuf,
    /// A database URL; `None`: SQLite in the data directory.
    pub database_url: Option<String>,
}

impl From<StorageArgs> for StorageSettings {
    fn from(args: StorageArgs) -> Self {
        Self {
            data_dir: args.data_dir,
            database_url: args.database_url,
        }
    }
}

/// A signing key; `Debug` never shows it.
#[derive(Clone)]
pub struct SigningKey(pub String);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(***)")
    }
}

/// Timeouts and caps against slow or greedy clients (the contract's Running section).
#[derive(Debug, Clone)]
pub struct Limits {
    /// A new connection must have sent its first request's headers within this.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this.
    pub keep_alive_idle: Duration,
    /// A request body that has not arrived in full within this is cut (408); the
    /// same bound applies to a response write the client does not read.
    pub body_timeout: Duration,
    /// Open TCP connections per client address; `None`: unlimited.
    pub max_connections_per_address: Option<usize>,
    /// Sign-ups per client address; `None`: unlimited.
    pub registration_limit: Option<RateLimit>,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: TrustedProxies,
    /// Live real-time connections (WebSocket and SSE together) per user.
    pub realtime_connections_per_user: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            keep_alive_idle: Duration::from_secs(60),
            body_timeout: Duration::from_secs(30),
            max_connections_per_address: Some(1000),
            registration_limit: Some(RateLimit {
                count: 10,
                per: Duration::from_secs(600),
            }),
            trusted_proxies: TrustedProxies::default(),
            realtime_connections_per_user: 100,
        }
    }
}

/// `N/<duration>`: at most `count` events per sliding `per` window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Events allowed in one window.
    pub count: usize,
    /// The sliding window.
    pub per: Duration,
}

impl RateLimit {
    /// Parses `10/10m`, `5/30s`, `100/1h` or `3/1d`; `0` (or `0/…`) is `None` (off).
    pub fn parse_setting(raw: &str) -> Result<Option<Self>, String> {
        let raw = raw.trim();
        if raw == "0" {
            return Ok(None);
        }
        let usage = || format!("{raw:?} is not a rate like 10/10m (or 0 for no limit)");
        let (count, window) = raw.split_once('/').ok_or_else(usage)?;
        let count: usize = count.trim().parse().map_err(|_| usage())?;
        let window = window.trim();
        let split = window
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(window.len());
        let (amount, unit) = window.split_at(split);
        let amount: u64 = if amount.is_empty() {
            1
        } else {
            amount.parse().map_err(|_| usage())?
        };
        let unit_s = match unit {
            "s" | "" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            _ => return Err(usage()),
        };
        let seconds = amount.checked_mul(unit_s).ok_or_else(usage)?;
        if count == 0 {
            return Ok(None);
        }
        if seconds == 0 {
            return Err(usage());
        }
        Ok(Some(Self {
            count,
            per: Duration::from_secs(seconds),
        }))
    }
}

/// A rate limit setting as the command line gives it: `None` is "off".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSetting(pub Option<RateLimit>);

impl RateSetting {
    /// `clap`'s value parser for `--registration-limit`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        RateLimit::parse_setting(raw).map(Self)
    }
}

/// Networks whose peers may tell us the client's address in `X-Forwarded-For`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses `CIDR,…` entries; a bare address is a network of one.
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        entries
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
            .map(|e| {
                IpNet::from_str(e)
                    .or_else(|_| IpAddr::from_str(e).map(IpNet::from))
                    .map_err(|_| format!("{e:?} is not an address or CIDR network"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    /// Whether `addr` is one of the trusted proxies.
    pub fn contains(&self, addr: IpAddr) -> bool {
        let addr = canonical(addr);
        self.0.iter().any(|net| net.contains(&addr))
    }

    /// Whether no proxy is trusted (the default).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`, from dual-stack sockets) as IPv4.
pub fn canonical(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

impl TryFrom<ServeArgs> for Settings {
    type Error = anyhow::Error;

    fn try_from(args: ServeArgs) -> anyhow::Result<Self> {
        let builtin_agent = args.builtin_agent_enabled();
        let trusted_proxies =
            TrustedProxies::parse(&args.trusted_proxies).map_err(anyhow::Error::msg)?;
        let limits = Limits {
            max_connections_per_address: match args.max_connections_per_address {
                0 => None,
                n => Some(n as usize),
            },
            registration_limit: args.registration_limit.0,
            trusted_proxies,
            ..Limits::default()
        };
        Ok(Self {
            addr: args.addr,
            storage: args.storage.into(),
            redis_url: args.redis_url,
            allowed_origins: normalise_origins(&args.allowed_origins),
            builtin_agent,
            signing_key: args.signing_key.map(SigningKey),
            task_lease: Duration::from_secs(args.task_lease_s),
            retry_backoff_base: Duration::from_millis(args.retry_backoff_base_ms),
            task_output_max_bytes: args.task_output_max_bytes,
            agent_offline_after: Duration::from_secs(args.agent_offline_after_s),
            history_max_per_user: args.history_max_per_user,
            history_max_age: Duration::from_secs(args.history_max_age_s),
            limits,
        })
    }
}

/// Origins compare without a trailing slash.
fn normalise_origins(raw: &[String]) -> Vec<String> {
    raw.iter()
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_parse() {
        let ten_per_10m = RateLimit::parse_setting("10/10m").unwrap().unwrap();
        assert_eq!(ten_per_10m.count, 10);
        assert_eq!(ten_per_10m.per, Duration::from_secs(600));
        assert_eq!(
            RateLimit::parse_setting("5/30s").unwrap().unwrap().per,
            Duration::from_secs(30)
        );
        assert_eq!(
            RateLimit::parse_setting("3/h").unwrap().unwrap().per,
            Duration::from_secs(3600)
        );
        assert_eq!(RateLimit::parse_setting("0").unwrap(), None);
        assert_eq!(RateLimit::parse_setting("0/1m").unwrap(), None);
        for bad in ["", "10", "ten/1m", "10/1y", "10/0s", "10/-1m"] {
            assert!(RateLimit::parse_setting(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn trusted_proxies_parse_networks_and_addresses() {
        let proxies =
            TrustedProxies::parse(&["10.0.0.0/8".into(), " 127.0.0.1".into(), "::1".into()])
                .unwrap();
        assert!(proxies.contains("10.1.2.3".parse().unwrap()));
        assert!(proxies.contains("127.0.0.1".parse().unwrap()));
        assert!(proxies.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!proxies.contains("127.0.0.2".parse().unwrap()));
        assert!(TrustedProxies::parse(&["nonsense".into()]).is_err());
        assert!(TrustedProxies::default().is_empty());
    }
}

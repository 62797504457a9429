//! The Redis backplane (the official `redis` crate): what several nodes share besides
//! the message broker.
//!
//! Keys (all under one prefix, each with an expiry so nothing outlives its use):
//! - `{p}:node:{id}`: the node's latest stats as JSON, for [`NODE_TTL`]; its existence
//!   is the node's liveness. `{p}:nodes` is a sorted set of node ids by last report,
//!   so readers find the live ones without `KEYS`/`SCAN`.
//! - `{p}:conns:{user}`: a hash, one field per node, the user's live real-time
//!   connections on that node. A field whose node has no liveness key any more (a
//!   crashed node) is ignored and deleted by the next admission, so a dead node's
//!   connections stop counting within [`NODE_TTL`].
//! - `{p}:rate:{scope}:{digest}`: a sorted set of counted events (score: time in ms),
//!   trimmed to the window, expiring with it.
//! - stream `{p}:signal-stream`: the signals whose loss matters (revocations, agent
//!   changes: [`is_durable`]), `XADD … MAXLEN ~` [`STREAM_MAXLEN`], fields `node` (the
//!   sender, which skips its own) and `signal` (JSON). Each node tails it with
//!   `XREAD BLOCK` on a connection of its own from the id it last read, and after a
//!   drop or a Redis restart (with AOF) reads on from that id, so nothing is lost
//!   (the same pattern as `realtime::broker::redis`'s subscription). If entries after
//!   that id are gone (`XINFO STREAM`: more entries trimmed from the head,
//!   `entries-added` minus `length`, than the node had passed: it was away too long;
//!   or the stream is behind its id: Redis lost its data), the node cannot know what
//!   it missed and hands on [`Signal::Missed`].
//! - channel `{p}:signals`: pub/sub for the cheap rest (claim wake-ups, transient
//!   frames), at most once: see the module docs of `cluster` for their fallbacks.
//!
//! The two check-and-count steps (a rate window, a connection place) are Lua scripts,
//! so parallel callers on different nodes cannot both pass the last place.
//!
//! Failure: every call has a deadline ([`CALL_DEADLINE`]); the connection manager
//! reconnects by itself with capped exponential backoff, and so does the signal
//! subscriber and the stream reader. While Redis is unreachable: health is
//! `Unreachable`; pub/sub signals are dropped (counted in
//! `zerostate_cluster_signals_dropped_total`), stream signals are retried for
//! [`DURABLE_RETRY_FOR`] (a retry after a lost reply may append one twice: every
//! durable signal is idempotent) and only then dropped and counted; the login, password-change
//! and registration throttles fall back to this node's own windows (neither open, which
//! would let a password guesser through, nor closed, which would lock every user out of
//! logging in; the node's share of the limit still applies); the connection cap falls
//! back to this node's count (a user can then hold up to the cap on each node, for as
//! long as Redis is away, rather than be refused real time everywhere).

use super::local::{new_node_id, RateWindows, DEFAULT_MAX_KEYS};
use super::{
    Backplane, BackplaneError, BackplaneHealth, HitId, NodeStats, RateDecision, RateKey, Signal,
    Window, NODE_TTL, SIGNAL_BUFFER,
};
use crate::domain::UserId;
use crate::realtime::{Stats, Target};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

/// The most any Redis call may take before the caller goes on without it.
pub const CALL_DEADLINE: Duration = Duration::from_secs(1);
/// Signals waiting to be sent; beyond, new ones are dropped (and counted).
const OUTBOX: usize = 4096;
/// The backoff of the signal subscriber's reconnects: from the first to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);
/// The signal stream's length bound (`MAXLEN ~`): a node away for longer than this
/// many durable signals takes the [`Signal::Missed`] path when it is back.
pub const STREAM_MAXLEN: u64 = 10_000;
/// How long one `XREAD` of the signal stream blocks (then it is simply repeated).
const STREAM_BLOCK: Duration = Duration::from_secs(2);
/// Stream entries one `XREAD` returns at most.
const STREAM_COUNT: usize = 256;
/// How long a durable signal is retried while Redis is unreachable before it is
/// dropped (and counted): a revocation then rests on the session cache's bound.
pub const DURABLE_RETRY_FOR: Duration = Duration::from_secs(60);
/// How long a user's connection-count hash lives after its last admission.
const CONNS_TTL_MS: u64 = 24 * 3600 * 1000;

/// Checks every window, then counts the event in all of them (or in none).
/// KEYS: the windows. ARGV: now_ms, member, then max and window_ms per key.
/// Returns 0 when counted, else the wait in ms (at least 1).
const RATE_SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local wait = 0
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[1 + 2 * i])
  local win = tonumber(ARGV[2 + 2 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - win)
  local n = redis.call('ZCARD', key)
  if n >= max then
    local oldest = redis.call('ZRANGE', key, n - max, n - max, 'WITHSCORES')
    local w = tonumber(oldest[2]) + win - now
    if w < 1 then w = 1 end
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i, key in ipairs(KEYS) do
  local max = tonumber(ARGV[1 + 2 * i])
  local win = tonumber(ARGV[2 + 2 * i])
  redis.call('ZADD', key, now, ARGV[2])
  local n = redis.call('ZCARD', key)
  if n > max then redis.call('ZREMRANGEBYRANK', key, 0, n - max - 1) end
  redis.call('PEXPIRE', key, win)
end
return 0
";

/// Sums the user's connections on the other live nodes (deleting dead nodes' fields);
/// with ARGV[3] (the cap) set, admits when that sum plus ARGV[4] (this node's count
/// with the new connection) stays within it, and records ARGV[4] for this node.
/// KEYS[1]: the user's hash. ARGV: node-key prefix, this node's id, cap, count, ttl.
/// Returns the other nodes' sum when counting; 1 (admitted) or 0 when admitting.
const CONNS_SCRIPT: &str = r"
local fields = redis.call('HGETALL', KEYS[1])
local others = 0
for i = 1, #fields, 2 do
  local node = fields[i]
  if node ~= ARGV[2] then
    if redis.call('EXISTS', ARGV[1] .. node) == 1 then
      others = others + tonumber(fields[i + 1])
    else
      redis.call('HDEL', KEYS[1], node)
    end
  end
end
if ARGV[3] == '' then return others end
local mine = tonumber(ARGV[4])
if others + mine > tonumber(ARGV[3]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[2], mine)
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
";

/// What travels on the signal channel.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sending node, which ignores its own signals.
    from: String,
    signal: Signal,
}

/// The Redis backplane. Dropping it stops its background tasks.
pub struct RedisBackplane {
    node_id: String,
    prefix: String,
    conn: ConnectionManager,
    outbox: mpsc::Sender<Signal>,
    signals: broadcast::Sender<Signal>,
    /// The throttles' windows while Redis is unreachable.
    fallback: RateWindows,
    rate_script: redis::Script,
    conns_script: redis::Script,
    tasks: Vec<JoinHandle<()>>,
    /// The signal stream's reader (apart from `tasks` so that tests can pause it).
    reader: Mutex<Option<JoinHandle<()>>>,
    /// What a restarted reader needs (only tests restart it).
    #[cfg_attr(not(test), allow(dead_code))]
    stream: StreamReader,
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl RedisBackplane {
    /// Connects (lazily: a node starts even while Redis is down, and reports
    /// `Unreachable` until it is back), starts the signal publisher and subscriber,
    /// and takes a random node id. Keys live under `prefix`.
    pub async fn start(client: redis::Client, prefix: String) -> anyhow::Result<Self> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_DEADLINE))
            .set_response_timeout(Some(CALL_DEADLINE))
            .set_min_delay(BACKOFF_FIRST)
            .set_max_delay(BACKOFF_CAP)
            .set_number_of_retries(3);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), config)?;
        let node_id = new_node_id();
        let (outbox, queued) = mpsc::channel(OUTBOX);
        let (signals, _) = broadcast::channel(SIGNAL_BUFFER);
        let channel = format!("{prefix}:signals");
        let stream_key = format!("{prefix}:signal-stream");
        // Read from the stream's end as of now; if Redis cannot say, the reader takes
        // the Missed path once it can (this node may miss what comes meanwhile).
        let start = StreamState::read(&mut conn.clone(), &stream_key)
            .await
            .ok()
            .map(|state| state.end());
        let stream = StreamReader {
            client: client.clone(),
            key: stream_key.clone(),
            me: node_id.clone(),
            signals: signals.clone(),
            position: Arc::new(Mutex::new(start)),
        };
        let reader = tokio::spawn(stream.clone().run());
        let (subscribed, mut is_subscribed) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(publish_signals(
                conn.clone(),
                channel.clone(),
                stream_key,
                node_id.clone(),
                queued,
            )),
            tokio::spawn(receive_signals(
                client,
                channel,
                node_id.clone(),
                signals.clone(),
                subscribed,
            )),
        ];
        // Signals sent before the subscription is up would be missed: give it a moment
        // (but start anyway when Redis is down; it catches up by itself).
        let up = tokio::time::timeout(2 * CALL_DEADLINE, is_subscribed.wait_for(|up| *up)).await;
        if !matches!(up, Ok(Ok(_))) {
            tracing::warn!("Redis unreachable at start: the backplane will reconnect by itself");
        }
        tracing::info!(node_id, "cluster backplane on Redis");
        Ok(Self {
            node_id,
            prefix,
            conn,
            outbox,
            signals,
            fallback: RateWindows::new(DEFAULT_MAX_KEYS),
            rate_script: redis::Script::new(RATE_SCRIPT),
            conns_script: redis::Script::new(CONNS_SCRIPT),
            tasks,
            reader: Mutex::new(Some(reader)),
            stream,
        })
    }

    /// Stops the signal stream's reader (as a dropped connection would), keeping its
    /// position.
    #[cfg(test)]
    fn pause_reader(&self) {
        if let Some(reader) = lock(&self.reader).take() {
            reader.abort();
        }
    }

    /// Starts the reader again from where it stopped.
    #[cfg(test)]
    fn resume_reader(&self) {
        *lock(&self.reader) = Some(tokio::spawn(self.stream.clone().run()));
    }

    fn node_key(&self, node: &str) -> String {
        format!("{}:node:{node}", self.prefix)
    }

    fn nodes_key(&self) -> String {
        format!("{}:nodes", self.prefix)
    }

    fn conns_key(&self, user: UserId) -> String {
        format!("{}:conns:{user}", self.prefix)
    }

    fn rate_key(&self, key: &RateKey) -> String {
        format!(
            "{}:rate:{}:{}",
            self.prefix,
            key.scope,
            hex::encode(key.digest)
        )
    }

    /// Runs one command within the deadline.
    async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T, BackplaneError> {
        let mut conn = self.conn.clone();
        within(cmd.query_async(&mut conn)).await
    }

    /// Runs a pipeline within the deadline.
    async fn query_pipe<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, BackplaneError> {
        let mut conn = self.conn.clone();
        within(pipe.query_async(&mut conn)).await
    }

    /// Runs a script within the deadline.
    async fn invoke<T: redis::FromRedisValue>(
        &self,
        invocation: &redis::ScriptInvocation<'_>,
    ) -> Result<T, BackplaneError> {
        let mut conn = self.conn.clone();
        within(invocation.invoke_async(&mut conn)).await
    }

    /// The other nodes' connections of `user`, or with `admit = Some((cap, here))` the
    /// admission (see `CONNS_SCRIPT`).
    async fn conns(
        &self,
        user: UserId,
        admit: Option<(usize, usize)>,
    ) -> Result<i64, BackplaneError> {
        let mut invocation = self.conns_script.prepare_invoke();
        invocation
            .key(self.conns_key(user))
            .arg(self.node_key(""))
            .arg(&self.node_id);
        match admit {
            Some((cap, here)) => invocation.arg(cap).arg(here),
            None => invocation.arg("").arg(0),
        };
        invocation.arg(CONNS_TTL_MS);
        self.invoke(&invocation).await
    }
}

/// Awaits a Redis future within [`CALL_DEADLINE`].
async fn within<T>(
    future: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, BackplaneError> {
    match tokio::time::timeout(CALL_DEADLINE, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(BackplaneError::Failed(err.to_string())),
        Err(_) => Err(BackplaneError::Timeout(CALL_DEADLINE)),
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[async_trait]
impl Backplane for RedisBackplane {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn is_shared(&self) -> bool {
        true
    }

    async fn health(&self) -> BackplaneHealth {
        match self.query::<String>(&redis::cmd("PING")).await {
            Ok(_) => BackplaneHealth::Ok,
            Err(_) => BackplaneHealth::Unreachable,
        }
    }

    fn signal(&self, signal: Signal) {
        if self.outbox.try_send(signal).is_err() {
            metrics::counter!("zerostate_cluster_signals_dropped_total").increment(1);
        }
    }

    fn subscribe(&self) -> broadcast::Receiver<Signal> {
        self.signals.subscribe()
    }

    async fn report(&self, stats: &Stats) -> Result<(), BackplaneError> {
        let report = NodeStats {
            node_id: self.node_id.clone(),
            stats: stats.clone(),
        };
        let json = serde_json::to_string(&report)
            .map_err(|err| BackplaneError::Failed(err.to_string()))?;
        let now = now_ms();
        let ttl = millis(NODE_TTL);
        let mut pipe = redis::pipe();
        pipe.cmd("SET")
            .arg(self.node_key(&self.node_id))
            .arg(json)
            .arg("PX")
            .arg(ttl)
            .ignore()
            .cmd("ZADD")
            .arg(self.nodes_key())
            .arg(now)
            .arg(&self.node_id)
            .ignore()
            // Nodes gone for ten TTLs leave the index.
            .cmd("ZREMRANGEBYSCORE")
            .arg(self.nodes_key())
            .arg("-inf")
            .arg(now - 10 * ttl as i64)
            .ignore()
            .cmd("PEXPIRE")
            .arg(self.nodes_key())
            .arg(10 * ttl)
            .ignore();
        self.query_pipe::<()>(&pipe).await
    }

    async fn leave(&self) {
        let mut pipe = redis::pipe();
        pipe.cmd("DEL")
            .arg(self.node_key(&self.node_id))
            .ignore()
            .cmd("ZREM")
            .arg(self.nodes_key())
            .arg(&self.node_id)
            .ignore();
        if let Err(err) = self.query_pipe::<()>(&pipe).await {
            tracing::warn!(error = %err, "leaving the cluster failed: this node expires instead");
        }
    }

    async fn other_nodes(&self) -> Result<Vec<NodeStats>, BackplaneError> {
        let since = now_ms() - millis(NODE_TTL) as i64;
        let ids: Vec<String> = self
            .query(
                redis::cmd("ZRANGEBYSCORE")
                    .arg(self.nodes_key())
                    .arg(since)
                    .arg("+inf"),
            )
            .await?;
        let ids: Vec<String> = ids.into_iter().filter(|id| *id != self.node_id).collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut mget = redis::cmd("MGET");
        for id in &ids {
            mget.arg(self.node_key(id));
        }
        let reports: Vec<Option<String>> = self.query(&mget).await?;
        // A node whose key expired (stopped reporting) is gone even if the index
        // still names it.
        Ok(reports
            .into_iter()
            .flatten()
            .filter_map(|json| serde_json::from_str::<NodeStats>(&json).ok())
            .collect())
    }

    async fn rate_begin(&self, keys: &[(RateKey, Window)]) -> RateDecision {
        let hit = HitId(rand::random());
        let mut invocation = self.rate_script.prepare_invoke();
        invocation.arg(now_ms()).arg(format!("{:016x}", hit.0));
        for (key, limit) in keys {
            invocation
                .key(self.rate_key(key))
                .arg(limit.max)
                .arg(millis(limit.window).max(1));
        }
        match self.invoke::<u64>(&invocation).await {
            Ok(0) => RateDecision::Counted(hit),
            Ok(wait_ms) => RateDecision::Blocked(Duration::from_millis(wait_ms)),
            Err(err) => {
                tracing::warn!(error = %err, "shared rate limit unreachable: counting on this node");
                self.fallback.begin(keys)
            }
        }
    }

    async fn rate_forget(&self, key: &RateKey, hit: HitId) {
        self.fallback.forget(key, hit);
        let cmd = redis::cmd("ZREM")
            .arg(self.rate_key(key))
            .arg(format!("{:016x}", hit.0))
            .to_owned();
        if let Err(err) = self.query::<()>(&cmd).await {
            tracing::warn!(error = %err, "taking back a shared rate-limit event failed");
        }
    }

    async fn rate_clear(&self, key: &RateKey) {
        self.fallback.clear(key);
        if let Err(err) = self
            .query::<()>(redis::cmd("DEL").arg(self.rate_key(key)))
            .await
        {
            tracing::warn!(error = %err, "clearing a shared rate limit failed");
        }
    }

    async fn admit_connection(&self, user: UserId, here: usize, cap: usize) -> bool {
        match self.conns(user, Some((cap, here + 1))).await {
            Ok(admitted) => admitted == 1,
            Err(err) => {
                tracing::warn!(error = %err, "shared connection cap unreachable: counting this node only");
                here < cap
            }
        }
    }

    async fn connections_changed(&self, counts: &[(UserId, usize)]) {
        let mut pipe = redis::pipe();
        for (user, count) in counts {
            if *count == 0 {
                pipe.cmd("HDEL")
                    .arg(self.conns_key(*user))
                    .arg(&self.node_id)
                    .ignore();
            } else {
                pipe.cmd("HSET")
                    .arg(self.conns_key(*user))
                    .arg(&self.node_id)
                    .arg(*count)
                    .ignore()
                    .cmd("PEXPIRE")
                    .arg(self.conns_key(*user))
                    .arg(CONNS_TTL_MS)
                    .ignore();
            }
        }
        if let Err(err) = self.query_pipe::<()>(&pipe).await {
            tracing::warn!(error = %err, "updating the shared connection counts failed");
        }
    }

    async fn remote_connections(&self, target: Target) -> u64 {
        let counted = match target {
            Target::User(user) => self.conns(user, None).await.map(|n| n.max(0) as u64),
            Target::Everyone => self
                .other_nodes()
                .await
                .map(|nodes| nodes.iter().map(|n| n.stats.current_connections).sum()),
        };
        counted.unwrap_or_else(|err| {
            tracing::debug!(error = %err, "other nodes' connections unknown");
            0
        })
    }
}

/// Signals taken from the outbox at once; claim wake-ups among them go out as one.
const PUBLISH_BATCH: usize = 64;

/// Sends queued signals: durable ones ([`is_durable`]) onto the stream, retried for
/// [`DURABLE_RETRY_FOR`]; the rest over pub/sub within the deadline, dropped (at most
/// once) and counted when they cannot be sent. Wake-ups queued together are sent once: a burst of
/// submits costs one message, and one wake-up wakes every waiting claim anyway.
async fn publish_signals(
    conn: ConnectionManager,
    channel: String,
    stream: String,
    from: String,
    mut queued: mpsc::Receiver<Signal>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while queued.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut woken = false;
        for signal in batch.drain(..) {
            if signal == Signal::ClaimWake {
                if woken {
                    continue;
                }
                woken = true;
            }
            if is_durable(&signal) {
                append_durable(&conn, &stream, &from, &signal).await;
            } else {
                publish_one(&conn, &channel, &from, signal).await;
            }
        }
    }
}

/// Whether a signal's loss matters (it travels on the stream): revocations and agent
/// changes, whose fallback is too slow (a revoked session's live connection would
/// otherwise stay open until it expires).
pub fn is_durable(signal: &Signal) -> bool {
    matches!(
        signal,
        Signal::Revoked { .. } | Signal::AgentRevoked { .. } | Signal::AgentChanged { .. }
    )
}

/// Appends a durable signal to the stream, retrying with capped backoff for
/// [`DURABLE_RETRY_FOR`] while Redis is unreachable.
async fn append_durable(conn: &ConnectionManager, stream: &str, from: &str, signal: &Signal) {
    let Ok(json) = serde_json::to_string(signal) else {
        return;
    };
    let started = Instant::now();
    let mut backoff = BACKOFF_FIRST;
    loop {
        let mut conn = conn.clone();
        let added = within(
            redis::cmd("XADD")
                .arg(stream)
                .arg("MAXLEN")
                .arg("~")
                .arg(STREAM_MAXLEN)
                .arg("*")
                .arg("node")
                .arg(from)
                .arg("signal")
                .arg(&json)
                .query_async::<String>(&mut conn),
        )
        .await;
        match added {
            Ok(_) => return,
            Err(err) if started.elapsed() + backoff < DURABLE_RETRY_FOR => {
                tracing::debug!(error = %err, "a durable cluster signal waits for Redis");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_CAP);
            }
            Err(err) => {
                metrics::counter!("zerostate_cluster_signals_dropped_total").increment(1);
                tracing::warn!(error = %err, "a durable cluster signal was dropped");
                return;
            }
        }
    }
}

/// A stream entry id (`ms-seq`), in the stream's order.
type EntryId = (u64, u64);

fn parse_id(id: &str) -> Option<EntryId> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

fn format_id((ms, seq): EntryId) -> String {
    format!("{ms}-{seq}")
}

/// Where a reader is: the id it last read, and how many entries the stream had
/// ever been given up to it (`XINFO STREAM`'s `entries-added`), so that entries
/// trimmed before the reader got to them can be told from ones it had read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    id: EntryId,
    count: u64,
}

/// What `XINFO STREAM` says of the signal stream (all zero when it is absent).
#[derive(Debug, Default)]
struct StreamState {
    last: EntryId,
    added: u64,
    length: u64,
}

impl StreamState {
    async fn read(
        conn: &mut impl redis::aio::ConnectionLike,
        key: &str,
    ) -> Result<Self, BackplaneError> {
        let exists: bool = within(redis::cmd("EXISTS").arg(key).query_async(conn)).await?;
        if !exists {
            return Ok(Self::default());
        }
        let info: HashMap<String, redis::Value> =
            within(redis::cmd("XINFO").arg("STREAM").arg(key).query_async(conn)).await?;
        let number = |field: &str| {
            info.get(field)
                .and_then(|v| redis::from_redis_value_ref::<u64>(v).ok())
                .unwrap_or(0)
        };
        Ok(Self {
            last: info
                .get("last-generated-id")
                .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                .and_then(|s| parse_id(&s))
                .unwrap_or((0, 0)),
            added: number("entries-added"),
            length: number("length"),
        })
    }

    /// Its end, as a reader's position.
    fn end(&self) -> Position {
        Position {
            id: self.last,
            count: self.added,
        }
    }
}

/// Tails the signal stream for one node (module docs).
#[derive(Clone)]
struct StreamReader {
    client: redis::Client,
    key: String,
    me: String,
    signals: broadcast::Sender<Signal>,
    /// Where it is; `None` until Redis first answered.
    position: Arc<Mutex<Option<Position>>>,
}

impl StreamReader {
    /// Reads until aborted; reconnects by itself with capped exponential backoff and
    /// reads on from the last id.
    async fn run(self) {
        let mut backoff = BACKOFF_FIRST;
        loop {
            match self.connect().await {
                Ok(mut con) => {
                    backoff = BACKOFF_FIRST;
                    if let Err(err) = self.read(&mut con).await {
                        tracing::warn!(error = %err, "the cluster's signal stream dropped: reconnecting");
                    }
                }
                Err(err) => {
                    tracing::debug!(error = %err, "cannot read the cluster's signal stream yet");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_CAP);
        }
    }

    /// A dedicated connection (a blocked `XREAD` would hold up every command behind
    /// it on a shared one), positioned: a gap since the last id hands on
    /// [`Signal::Missed`].
    async fn connect(&self) -> Result<redis::aio::MultiplexedConnection, BackplaneError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CALL_DEADLINE))
            .set_response_timeout(Some(STREAM_BLOCK + CALL_DEADLINE));
        let mut con = within(
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await?;
        let state = StreamState::read(&mut con, &self.key).await?;
        let position = *lock(&self.position);
        let (at, missed) = match position {
            // Redis did not answer at start: what came meanwhile is unknown.
            None => (state.end(), true),
            // Behind what this node read: Redis lost entries; read on from its end.
            Some(at) if state.last < at.id || state.added < at.count => (state.end(), true),
            // Trimming removes the oldest entries: more removed than this node had
            // passed means some it had not read are gone.
            Some(at) => (at, state.added - state.length > at.count),
        };
        *lock(&self.position) = Some(at);
        if missed {
            metrics::counter!("zerostate_cluster_signal_gaps_total").increment(1);
            tracing::warn!(
                "cluster signals may have been missed (away too long, or Redis lost them): dropping cached credentials"
            );
            let _ = self.signals.send(Signal::Missed);
        }
        Ok(con)
    }

    /// Reads and hands on other nodes' entries until the connection fails.
    async fn read(
        &self,
        con: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), BackplaneError> {
        loop {
            let Some(mut at) = *lock(&self.position) else {
                return Ok(());
            };
            let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(STREAM_COUNT)
                .arg("BLOCK")
                .arg(STREAM_BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.key)
                .arg(format_id(at.id))
                .query_async(con)
                .await
                .map_err(|e| BackplaneError::Failed(e.to_string()))?;
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                let Some(id) = parse_id(&entry.id) else {
                    return Err(BackplaneError::Failed(format!("a stream id: {}", entry.id)));
                };
                at = Position {
                    id,
                    count: at.count + 1,
                };
                *lock(&self.position) = Some(at);
                let from: Option<String> = entry.get("node");
                if from.as_deref() == Some(self.me.as_str()) {
                    continue;
                }
                let signal = entry
                    .get::<String>("signal")
                    .and_then(|json| serde_json::from_str::<Signal>(&json).ok());
                match signal {
                    // No receiver (nothing subscribed yet) is not an error.
                    Some(signal) => drop(self.signals.send(signal)),
                    None => tracing::warn!("an unreadable cluster signal was ignored"),
                }
            }
        }
    }
}

async fn publish_one(conn: &ConnectionManager, channel: &str, from: &str, signal: Signal) {
    let envelope = Envelope {
        from: from.to_owned(),
        signal,
    };
    let Ok(json) = serde_json::to_string(&envelope) else {
        return;
    };
    let mut conn = conn.clone();
    let sent = within(
        redis::cmd("PUBLISH")
            .arg(channel)
            .arg(json)
            .query_async::<i64>(&mut conn),
    )
    .await;
    if let Err(err) = sent {
        metrics::counter!("zerostate_cluster_signals_dropped_total").increment(1);
        tracing::warn!(error = %err, "a cluster signal was dropped");
    }
}

/// Subscribes to the signal channel and hands other nodes' signals on; reconnects by
/// itself with capped exponential backoff. Signals sent while this node was
/// disconnected are lost (each has its fallback).
async fn receive_signals(
    client: redis::Client,
    channel: String,
    me: String,
    signals: broadcast::Sender<Signal>,
    subscribed: watch::Sender<bool>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let connected = async {
            let mut pubsub = within(client.get_async_pubsub()).await?;
            within(pubsub.subscribe(&channel)).await?;
            Ok::<_, BackplaneError>(pubsub)
        }
        .await;
        match connected {
            Ok(pubsub) => {
                tracing::info!("subscribed to the cluster's signals");
                subscribed.send_replace(true);
                backoff = BACKOFF_FIRST;
                let mut messages = pubsub.into_on_message();
                while let Some(message) = messages.next().await {
                    let Ok(envelope) =
                        serde_json::from_slice::<Envelope>(message.get_payload_bytes())
                    else {
                        tracing::warn!("an unreadable cluster signal was ignored");
                        continue;
                    };
                    if envelope.from != me {
                        // No receiver (nothing subscribed yet) is not an error.
                        let _ = signals.send(envelope.signal);
                    }
                }
                subscribed.send_replace(false);
                tracing::warn!("the cluster's signal subscription ended: reconnecting");
            }
            Err(err) => {
                tracing::debug!(error = %err, "cannot subscribe to the cluster's signals yet");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_CAP);
    }
}

#[cfg(test)]
mod tests {
    //! Two backplanes on one real `redis-server` act as two nodes.
    use super::*;
    use crate::auth::throttle::LoginThrottle;
    use crate::cluster::{cluster_stats, WireCredential};
    use crate::domain::SessionId;
    use crate::realtime::TransportCounts;
    use std::net::IpAddr;
    use std::sync::Arc;
    use std::time::Instant;

    use crate::redis_server::RedisServer;

    /// A node of the test's cluster on `server`.
    async fn node_on(server: &RedisServer) -> Arc<RedisBackplane> {
        Arc::new(
            RedisBackplane::start(server.client(), "test".into())
                .await
                .unwrap(),
        )
    }

    /// Polls `check` until it holds, for at most `limit`.
    async fn eventually<F: std::future::Future<Output = bool>>(
        limit: Duration,
        mut check: impl FnMut() -> F,
    ) -> bool {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check().await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    fn stats(current: u64, sent: u64) -> Stats {
        Stats {
            total_connections: current,
            current_connections: current,
            messages_sent: sent,
            connections_by_transport: TransportCounts {
                websocket: current,
                sse: 0,
            },
            ..Stats::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signal_from_one_node_reaches_the_other_and_not_itself() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        assert_ne!(a.node_id(), b.node_id());
        let (mut at_a, mut at_b) = (a.subscribe(), b.subscribe());
        let revoked = Signal::Revoked {
            credentials: vec![WireCredential::Session(SessionId::new())],
        };
        // The subscriptions connect in the background: send until one arrives.
        let arrived = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                a.signal(revoked.clone());
                if let Ok(Ok(signal)) =
                    tokio::time::timeout(Duration::from_millis(300), at_b.recv()).await
                {
                    return signal;
                }
            }
        })
        .await
        .expect("the signal reached the other node");
        assert_eq!(arrived, revoked);
        b.signal(Signal::ClaimWake);
        let at_a_next = tokio::time::timeout(Duration::from_secs(10), at_a.recv())
            .await
            .expect("B's signal reached A")
            .expect("a signal");
        // Not A's own revocation first: a node never hears itself.
        assert_eq!(at_a_next, Signal::ClaimWake);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stats_sum_both_nodes_and_a_silent_node_drops_out_after_its_ttl() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        a.report(&stats(3, 10)).await.unwrap();
        b.report(&stats(4, 20)).await.unwrap();
        let view = cluster_stats(a.as_ref(), stats(3, 11)).await;
        assert_eq!(view["current_connections"], 7);
        assert_eq!(view["messages_sent"], 31, "this node's figure is as of now");
        let nodes = view["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0]["node_id"], a.node_id());
        assert_eq!(nodes[1]["node_id"], b.node_id());
        assert_eq!(nodes[1]["current_connections"], 4);
        assert_eq!(a.remote_connections(Target::Everyone).await, 4);

        // B stops reporting (a crash): within its TTL it is gone from A's view.
        drop(b);
        let gone = eventually(NODE_TTL + Duration::from_secs(10), || async {
            let view = cluster_stats(a.as_ref(), stats(3, 11)).await;
            view["nodes"].as_array().unwrap().len() == 1
        })
        .await;
        assert!(gone, "a node that stopped reporting left the stats");
        let view = cluster_stats(a.as_ref(), stats(3, 11)).await;
        assert_eq!(view["current_connections"], 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_that_leaves_drops_out_at_once() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        a.report(&stats(1, 1)).await.unwrap();
        b.report(&stats(2, 2)).await.unwrap();
        let user = UserId::new();
        assert!(b.admit_connection(user, 0, 1).await);
        assert!(
            !a.admit_connection(user, 0, 1).await,
            "B holds the only place"
        );
        b.leave().await;
        assert!(a.other_nodes().await.unwrap().is_empty());
        assert!(
            a.admit_connection(user, 0, 1).await,
            "B's place went with it"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_login_throttle_counts_across_nodes() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        let (at_a, at_b) = (LoginThrottle::new(a.clone()), LoginThrottle::new(b.clone()));
        let ip = IpAddr::from([127, 0, 0, 9]);
        for n in 0..5 {
            let throttle = if n % 2 == 0 { &at_a } else { &at_b };
            drop(throttle.begin("a@b.c", ip).await.expect("within the limit"));
        }
        let wait = at_a
            .begin("a@b.c", ip)
            .await
            .err()
            .expect("sixth refused on A");
        assert!(wait > Duration::from_secs(60));
        assert!(at_b.begin("A@B.C", ip).await.is_err(), "and on B");
        assert!(at_b
            .begin("a@b.c", IpAddr::from([127, 0, 0, 10]))
            .await
            .is_ok());
        // A success on one node forgets the pair on both.
        let other = IpAddr::from([127, 0, 0, 11]);
        for _ in 0..4 {
            drop(at_a.begin("x@y.z", other).await.unwrap());
        }
        at_b.begin("x@y.z", other).await.unwrap().succeeded().await;
        for _ in 0..5 {
            drop(at_a.begin("x@y.z", other).await.unwrap());
        }
        assert!(at_b.begin("x@y.z", other).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_connection_cap_counts_across_nodes_and_a_dead_nodes_share_expires() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        // Live nodes: their reports are their liveness.
        a.report(&stats(0, 0)).await.unwrap();
        b.report(&stats(0, 0)).await.unwrap();
        let user = UserId::new();
        for here in 0..3 {
            assert!(a.admit_connection(user, here, 5).await);
        }
        for here in 0..2 {
            assert!(b.admit_connection(user, here, 5).await);
        }
        assert!(!b.admit_connection(user, 2, 5).await, "3 + 3 > 5");
        assert!(!a.admit_connection(user, 3, 5).await, "4 + 2 > 5");
        assert_eq!(b.remote_connections(Target::User(user)).await, 3);
        // Two of A's connections end.
        a.connections_changed(&[(user, 1)]).await;
        assert!(b.admit_connection(user, 2, 5).await);
        assert!(b.admit_connection(user, 3, 5).await);
        assert!(!b.admit_connection(user, 4, 5).await, "1 + 5 > 5");

        // A crashes: once its liveness key has expired, its connection stops counting.
        drop(a);
        let freed = eventually(NODE_TTL + Duration::from_secs(10), || async {
            b.remote_connections(Target::User(user)).await == 0
        })
        .await;
        assert!(freed, "a dead node's share expired");
        assert!(b.admit_connection(user, 4, 5).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_down_fails_fast_and_everything_comes_back_by_itself() {
        let mut redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        assert_eq!(a.health().await, BackplaneHealth::Ok);

        redis.kill();
        let started = Instant::now();
        assert_eq!(a.health().await, BackplaneHealth::Unreachable);
        let user = UserId::new();
        // Limits fall back to this node: counted, within the deadline.
        assert!(a.admit_connection(user, 0, 5).await);
        assert!(!a.admit_connection(user, 5, 5).await);
        let throttle = LoginThrottle::new(a.clone());
        let ip = IpAddr::from([127, 0, 0, 1]);
        for _ in 0..5 {
            drop(throttle.begin("a@b.c", ip).await.unwrap());
        }
        assert!(throttle.begin("a@b.c", ip).await.is_err(), "still limited");
        assert!(a.report(&stats(1, 1)).await.is_err());
        assert!(a.other_nodes().await.is_err());
        a.signal(Signal::ClaimWake);
        // Ten calls with a one-second deadline each, plus slack for a loaded machine:
        // nothing waited for Redis beyond its deadline.
        assert!(
            started.elapsed() < 12 * CALL_DEADLINE + Duration::from_secs(10),
            "calls while Redis is down took {:?}",
            started.elapsed()
        );

        redis.spawn().await;
        let healthy = eventually(Duration::from_secs(60), || async {
            a.health().await == BackplaneHealth::Ok
        })
        .await;
        assert!(healthy, "health turned ok again by itself");
        // The signal subscription came back too.
        let mut at_b = b.subscribe();
        let arrived = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                a.signal(Signal::ClaimWake);
                if let Ok(Ok(signal)) =
                    tokio::time::timeout(Duration::from_millis(300), at_b.recv()).await
                {
                    return signal;
                }
            }
        })
        .await;
        assert_eq!(arrived, Ok(Signal::ClaimWake));
        a.report(&stats(1, 1)).await.unwrap();
        // B's connection (used at start) learns of the restart on its first call,
        // which fails once; it is back by itself right after.
        let seen = eventually(Duration::from_secs(30), || async {
            matches!(b.other_nodes().await, Ok(nodes) if nodes.len() == 1)
        })
        .await;
        assert!(seen, "B reads the cluster again");
    }

    /// Waits for the next signal, for at most `limit`.
    async fn next(at: &mut broadcast::Receiver<Signal>, limit: Duration) -> Option<Signal> {
        tokio::time::timeout(limit, at.recv()).await.ok()?.ok()
    }

    /// Entries in the signal stream (`test` prefix).
    async fn stream_len(redis: &RedisServer) -> u64 {
        let mut con = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        redis::cmd("XLEN")
            .arg("test:signal-stream")
            .query_async(&mut con)
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revocation_sent_while_a_reader_was_away_arrives_after_a_redis_restart() {
        let mut redis = RedisServer::start(true).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        let (mut at_a, mut at_b) = (a.subscribe(), b.subscribe());
        // B's reader is up: a first revocation arrives.
        let first = Signal::Revoked {
            credentials: vec![WireCredential::Session(SessionId::new())],
        };
        a.signal(first.clone());
        assert_eq!(next(&mut at_b, Duration::from_secs(30)).await, Some(first));

        // B's reader goes away; A revokes meanwhile; Redis restarts (AOF) under both.
        b.pause_reader();
        let revoked = Signal::Revoked {
            credentials: vec![WireCredential::Session(SessionId::new())],
        };
        let agent = Signal::AgentRevoked {
            agent: crate::domain::AgentId::new(),
        };
        a.signal(revoked.clone());
        a.signal(agent.clone());
        assert!(
            eventually(Duration::from_secs(30), || async {
                stream_len(&redis).await == 3
            })
            .await,
            "A appended both"
        );
        redis.kill();
        redis.spawn().await;
        b.resume_reader();
        assert_eq!(
            next(&mut at_b, Duration::from_secs(60)).await,
            Some(revoked)
        );
        assert_eq!(next(&mut at_b, Duration::from_secs(30)).await, Some(agent));

        // Entries from oneself are not delivered to oneself: A hears only B's.
        b.signal(Signal::AgentChanged {
            agent: crate::domain::AgentId::new(),
        });
        assert!(matches!(
            next(&mut at_a, Duration::from_secs(60)).await,
            Some(Signal::AgentChanged { .. })
        ));
        assert!(
            next(&mut at_a, Duration::from_secs(2)).await.is_none(),
            "nothing else, none of A's own"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reader_whose_entries_were_trimmed_away_is_told_it_missed_some() {
        let redis = RedisServer::start(false).await;
        let (a, b) = (node_on(&redis).await, node_on(&redis).await);
        let mut at_b = b.subscribe();
        b.pause_reader();
        a.signal(Signal::AgentRevoked {
            agent: crate::domain::AgentId::new(),
        });
        assert!(
            eventually(Duration::from_secs(30), || async {
                stream_len(&redis).await == 1
            })
            .await,
            "A appended it"
        );
        // Trimmed past B (as MAXLEN does to a node away for too long).
        let mut con = redis
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let _: i64 = redis::cmd("XTRIM")
            .arg("test:signal-stream")
            .arg("MAXLEN")
            .arg(0)
            .query_async(&mut con)
            .await
            .unwrap();
        b.resume_reader();
        assert_eq!(
            next(&mut at_b, Duration::from_secs(60)).await,
            Some(Signal::Missed)
        );
        // And it reads on: the next one arrives.
        let revoked = Signal::Revoked {
            credentials: vec![WireCredential::Session(SessionId::new())],
        };
        a.signal(revoked.clone());
        assert_eq!(
            next(&mut at_b, Duration::from_secs(30)).await,
            Some(revoked)
        );
    }
}

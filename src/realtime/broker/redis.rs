//! The cluster broker: every node on one Redis, one gapless sequence for all of them.
//!
//! # Layout (every key starts with the broker's prefix)
//!
//! - `<p>:seq`: the newest sequence number handed out (the cluster-wide sequence).
//! - `<p>:delivery`: one Redis Stream that every publication is appended to with the
//!   explicit id `<seq>-0`, approximately trimmed to [`DELIVERY_STREAM_LEN`] entries.
//! - `<p>:h:<stream>`: a history stream's messages, a sorted set scored by `seq` (the
//!   stream is the user's id, or `*` for broadcasts); `<p>:streams` names them all,
//!   `<p>:pruned` holds each one's prune watermark, `<p>:count` how many messages they
//!   hold together.
//! - `<p>:epoch`: the history's name, generated once (`SET NX`).
//! - `<p>:dedupe:<id>`: the `seq` an idempotency key was published at, for 24 h.
//!
//! # Ordering: why Streams and a Lua script, not PUBLISH
//!
//! One script (`redis_publish.lua`) does publish-plus-history: it takes the next
//! number, appends the publication to the delivery stream under that number, adds it to
//! its recipient's history, and records the idempotency key. Redis runs a script alone,
//! so numbers are handed out without gaps and in the same order as appends, and no node
//! can read a publication from the stream before it is in history: the broker's
//! guarantee (`broker/mod.rs`) holds across nodes without any lock of ours.
//!
//! Each subscription tails the delivery stream with `XREAD BLOCK` on a connection of its
//! own, from the number it started at, so it is handed publications in sequence order;
//! after a connection drop (or a Redis restart: with AOF the stream survives) it
//! reconnects with capped exponential backoff and reads on from the last id it saw, so
//! nothing is lost or repeated. PUBLISH could not give that: pub/sub is fire-and-forget,
//! so a message published while a node is reconnecting is simply gone for that node, and
//! the order in which a channel delivers is not tied to the order numbers were taken.
//! A stream is a log: a position in it can be resumed from.
//!
//! Because the sequence has no gaps, a publication's predecessor is always `seq - 1`:
//! that is the `prev_seq` handed to the hub. When nothing was skipped it is exactly the
//! entry read before (or [`Subscription::start`]); when the stream was trimmed past a
//! node too slow to keep up, the first entry after the hole names a predecessor the hub
//! never saw, so the hub detects the gap and resyncs its connections from history (which
//! is kept apart from the stream, by the retention policy).
//!
//! # Failure
//!
//! Every command runs under a deadline ([`COMMAND_DEADLINE`]): while Redis is
//! unreachable `publish` returns `Err` instead of hanging. A publish that timed out may
//! still have been applied (the reply, not the request, may be what was lost): that is
//! what [`NewPublication::dedupe`] is for, a retry with the same key publishes once.
//! [`RedisBroker::healthy`] is false while commands or any subscription cannot reach
//! Redis. A Redis that lost its data (restarted without AOF) is detected by a
//! subscription that finds the sequence below what it already read: that node stays
//! unhealthy (its hub's cursors belong to a history that is gone; it must restart).

use super::{Broker, BrokerError, NewPublication, Publication, Subscription, SUBSCRIPTION_QUEUE};
use crate::domain::UserId;
use crate::realtime::history::{HistoryPolicy, StoredMessage, StreamPosition};
use crate::realtime::Target;
use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use ::redis::streams::StreamReadReply;
use ::redis::{AsyncConnectionConfig, Client, RedisError, Script};
use anyhow::{anyhow, Context};
use async_trait::async_trait;
use rand::RngCore;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

/// The longest any command may take before the call fails (Redis down or overloaded).
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(5);
/// About how many publications the delivery stream keeps (`MAXLEN ~`): how far a node
/// may fall behind before it has to repair from history. History itself is separate.
pub const DELIVERY_STREAM_LEN: u64 = 100_000;
/// How long an idempotency key is remembered.
const DEDUPE_TTL_SECS: u64 = 24 * 60 * 60;
/// How long one `XREAD` blocks waiting for new entries (then it is simply repeated).
const READ_BLOCK: Duration = Duration::from_secs(2);
/// Entries one `XREAD` returns at most.
const READ_COUNT: usize = 512;
/// The subscription's reconnect backoff: from the first to the cap, doubling.
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_CAP: Duration = Duration::from_secs(2);
/// How often the command connection is checked for `healthy()`.
const PING_EVERY: Duration = Duration::from_secs(1);
/// Streams named per `SSCAN` while pruning.
const PRUNE_SCAN_BATCH: usize = 200;
/// Prunable messages a prune call examines per stream (newest first), and messages it
/// deletes per script call: each script call blocks Redis, so each is kept short.
const PRUNE_MAX_SCAN: u64 = 10_000;
const PRUNE_MAX_DELETE: u64 = 5_000;
/// The history stream name of broadcasts.
const BROADCAST_STREAM: &str = "*";

/// A [`Broker`] on Redis for a cluster of nodes. Cheap to share behind an `Arc`;
/// dropping it stops its subscriptions.
pub struct RedisBroker {
    inner: Arc<Inner>,
    /// Cancels the subscription tasks and the health check when the broker goes.
    _stop: DropGuard,
}

struct Inner {
    /// For the subscriptions' dedicated connections.
    client: Client,
    /// Commands (scripts, reads); reconnects by itself. Multiplexed: concurrent
    /// publishes are pipelined on one connection.
    commands: ConnectionManager,
    keys: Keys,
    /// About how many entries the delivery stream keeps (`MAXLEN ~`).
    delivery_len: u64,
    publish_script: Script,
    prune_script: Script,
    health: Health,
    stop: CancellationToken,
}

/// The key names, all under the prefix.
struct Keys {
    prefix: String,
    seq: String,
    delivery: String,
    streams: String,
    pruned: String,
    count: String,
    epoch: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        let key = |name: &str| format!("{prefix}:{name}");
        Self {
            prefix: prefix.to_owned(),
            seq: key("seq"),
            delivery: key("delivery"),
            streams: key("streams"),
            pruned: key("pruned"),
            count: key("count"),
            epoch: key("epoch"),
        }
    }

    fn history(&self, stream: &str) -> String {
        format!("{}:h:{stream}", self.prefix)
    }

    fn dedupe(&self, id: i64) -> String {
        format!("{}:dedupe:{id}", self.prefix)
    }
}

/// What `healthy()` reports, kept up to date by the commands and the subscriptions.
#[derive(Default)]
struct Health {
    /// The last command (or health ping) failed to reach Redis.
    commands_down: AtomicBool,
    /// Subscriptions currently unable to read.
    subscriptions_down: AtomicUsize,
    /// Redis lost its data under a subscription: this node cannot recover by itself.
    history_lost: AtomicBool,
}

impl RedisBroker {
    /// Connects to Redis (failing if it cannot be reached within the deadline), makes
    /// sure the epoch exists, and starts the health check. Every key is under
    /// `prefix`, so tests and clusters can share a server. Must be called inside a tokio
    /// runtime.
    pub async fn start(client: Client, prefix: String) -> Result<RedisBroker, BrokerError> {
        Self::start_with(client, prefix, DELIVERY_STREAM_LEN).await
    }

    /// [`RedisBroker::start`] with another delivery stream bound (tests trim it short
    /// to make a node fall behind it).
    async fn start_with(
        client: Client,
        prefix: String,
        delivery_len: u64,
    ) -> Result<RedisBroker, BrokerError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(COMMAND_DEADLINE))
            .set_number_of_retries(2)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_secs(1));
        let commands = within(ConnectionManager::new_with_config(client.clone(), config))
            .await
            .context("connecting to Redis")
            .map_err(BrokerError::History)?;
        let stop = CancellationToken::new();
        let inner = Arc::new(Inner {
            client,
            commands,
            keys: Keys::new(&prefix),
            delivery_len,
            publish_script: Script::new(include_str!("redis_publish.lua")),
            prune_script: Script::new(include_str!("redis_prune.lua")),
            health: Health::default(),
            stop: stop.clone(),
        });
        inner.epoch().await?;
        tokio::spawn(run_health_check(Arc::downgrade(&inner), stop.clone()));
        Ok(RedisBroker {
            inner,
            _stop: stop.drop_guard(),
        })
    }

    /// Whether Redis is reachable for commands and for every subscription (for
    /// `/health`). False from the first failure until the next success.
    pub fn healthy(&self) -> bool {
        let h = &self.inner.health;
        !h.commands_down.load(Ordering::Relaxed)
            && h.subscriptions_down.load(Ordering::Relaxed) == 0
            && !h.history_lost.load(Ordering::Relaxed)
    }
}

/// Runs a Redis call under [`COMMAND_DEADLINE`].
async fn within<T>(call: impl Future<Output = Result<T, RedisError>>) -> anyhow::Result<T> {
    match tokio::time::timeout(COMMAND_DEADLINE, call).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(anyhow!(
            "Redis did not answer within {} s",
            COMMAND_DEADLINE.as_secs()
        )),
    }
}

/// Whether an error says Redis could not be reached (rather than refusing a command).
fn is_unreachable(err: &anyhow::Error) -> bool {
    match err.downcast_ref::<RedisError>() {
        Some(e) => {
            e.is_io_error()
                || e.is_timeout()
                || e.is_connection_dropped()
                || e.is_connection_refusal()
        }
        // Our own deadline.
        None => true,
    }
}

impl Inner {
    /// Runs one command through the shared connection under the deadline, keeping the
    /// health flag current; `what` names the operation in the error.
    async fn run<T>(
        &self,
        what: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, BrokerError> {
        match within(call).await {
            Ok(value) => {
                self.health.commands_down.store(false, Ordering::Relaxed);
                Ok(value)
            }
            Err(err) => {
                if is_unreachable(&err) {
                    self.health.commands_down.store(true, Ordering::Relaxed);
                }
                Err(BrokerError::History(err.context(what)))
            }
        }
    }

    async fn epoch(&self) -> Result<String, BrokerError> {
        let mut con = self.commands.clone();
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // Generated once: of concurrent first starts, the first SET wins.
        let set = ::redis::cmd("SET")
            .arg(&self.keys.epoch)
            .arg(hex::encode(bytes))
            .arg("NX")
            .clone();
        self.run("creating the history epoch", async {
            set.exec_async(&mut con).await
        })
        .await?;
        let epoch: Option<String> = self
            .run("reading the history epoch", async {
                ::redis::cmd("GET")
                    .arg(&self.keys.epoch)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        epoch.ok_or_else(|| BrokerError::History(anyhow!("the history epoch vanished")))
    }

    async fn last_seq(&self) -> Result<i64, BrokerError> {
        let mut con = self.commands.clone();
        let seq: Option<i64> = self
            .run("reading the sequence", async {
                ::redis::cmd("GET")
                    .arg(&self.keys.seq)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        Ok(seq.unwrap_or(0))
    }
}

/// The history stream a target's messages are kept in.
fn stream_name(target: Target) -> String {
    match target {
        Target::User(user) => user.to_string(),
        Target::Everyone => BROADCAST_STREAM.to_owned(),
    }
}

/// A message's body as stored (history member after `<seq>:`, and the delivery entry's
/// `b` field): `<created_at_ms>:<kind length>:<kind><data json>`. Length-prefixed, so
/// neither the kind nor the data needs escaping and the data is kept byte for byte;
/// the creation time comes first so the prune script can read it.
fn encode_body(created_at_ms: i64, kind: &str, data_json: &str) -> String {
    format!("{created_at_ms}:{}:{kind}{data_json}", kind.len())
}

/// The inverse of [`encode_body`].
fn decode_body(body: &str) -> Option<(i64, String, String)> {
    let (at, rest) = body.split_once(':')?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let kind = rest.get(..len)?;
    let data = rest.get(len..)?;
    Some((at.parse().ok()?, kind.to_owned(), data.to_owned()))
}

/// A history member: `<seq>:<body>`.
fn decode_member(member: &str) -> Option<StoredMessage> {
    let (seq, body) = member.split_once(':')?;
    let (created_at_ms, kind, data_json) = decode_body(body)?;
    Some(StoredMessage {
        seq: seq.parse().ok()?,
        kind,
        data_json,
        created_at_ms,
    })
}

fn decode_members(members: &[String]) -> Result<Vec<StoredMessage>, BrokerError> {
    members
        .iter()
        .map(|m| {
            decode_member(m)
                .ok_or_else(|| BrokerError::History(anyhow!("a malformed history entry: {m:.80}")))
        })
        .collect()
}

#[async_trait]
impl Broker for RedisBroker {
    fn healthy(&self) -> bool {
        RedisBroker::healthy(self)
    }

    async fn epoch(&self) -> Result<String, BrokerError> {
        self.inner.epoch().await
    }

    async fn subscribe(&self) -> Result<Subscription, BrokerError> {
        // Every publication numbered at or below `start` is in history (the script
        // appends and numbers in one step), and the tail reads the stream after it.
        let start = self.inner.last_seq().await?;
        let (tx, rx) = mpsc::channel(SUBSCRIPTION_QUEUE);
        tokio::spawn(run_subscription(self.inner.clone(), tx, start));
        Ok(Subscription::new(start, rx))
    }

    /// Returns once the publication is numbered, in history and in the delivery
    /// stream: from there every subscription reads it (Redis does the delivery, so a
    /// caller that stops waiting cannot stop it).
    async fn publish(&self, p: NewPublication) -> Result<i64, BrokerError> {
        let inner = &self.inner;
        let stream = stream_name(p.target);
        let mut call = inner.publish_script.prepare_invoke();
        call.key(&inner.keys.seq)
            .key(&inner.keys.delivery)
            .key(inner.keys.history(&stream))
            .key(&inner.keys.streams)
            .key(&inner.keys.count);
        if let Some(id) = p.dedupe {
            call.key(inner.keys.dedupe(id));
        }
        call.arg(&stream)
            .arg(encode_body(p.created_at_ms, &p.kind, &p.data_json))
            .arg(p.origin.map(|o| o.to_string()).unwrap_or_default())
            .arg(inner.delivery_len)
            .arg(DEDUPE_TTL_SECS);
        let mut con = inner.commands.clone();
        let (seq, _earlier): (i64, i64) = inner
            .run("publishing", call.invoke_async(&mut con))
            .await
            .inspect_err(|err| tracing::error!(error = %err, kind = p.kind, "publishing failed"))?;
        Ok(seq)
    }

    async fn position(&self, user: UserId, upto: i64) -> Result<StreamPosition, BrokerError> {
        let keys = &self.inner.keys;
        let newest = |stream: &str| {
            ::redis::cmd("ZREVRANGEBYSCORE")
                .arg(keys.history(stream))
                .arg(upto)
                .arg("-inf")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .clone()
        };
        let own = stream_name(Target::User(user));
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .add_command(newest(&own))
            .add_command(newest(BROADCAST_STREAM))
            .cmd("HMGET")
            .arg(&keys.pruned)
            .arg(&own)
            .arg(BROADCAST_STREAM);
        let mut con = self.inner.commands.clone();
        let (own_newest, broadcast_newest, marks): (Vec<String>, Vec<String>, Vec<Option<i64>>) =
            self.inner
                .run("reading a history position", pipe.query_async(&mut con))
                .await?;
        let latest = decode_members(&own_newest)?
            .into_iter()
            .chain(decode_members(&broadcast_newest)?)
            .map(|m| m.seq)
            .max()
            .unwrap_or(0);
        let pruned_through = marks.into_iter().flatten().max().unwrap_or(0);
        Ok(StreamPosition {
            latest,
            pruned_through,
        })
    }

    async fn history(
        &self,
        user: UserId,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<Vec<StoredMessage>, BrokerError> {
        if limit == 0 || upto <= after {
            return Ok(Vec::new());
        }
        let keys = &self.inner.keys;
        // Up to `limit` from each stream: the merged first `limit` are among them.
        let range = |stream: &str| {
            ::redis::cmd("ZRANGEBYSCORE")
                .arg(keys.history(stream))
                .arg(format!("({after}"))
                .arg(upto)
                .arg("LIMIT")
                .arg(0)
                .arg(limit)
                .clone()
        };
        let mut pipe = ::redis::pipe();
        pipe.atomic()
            .add_command(range(&stream_name(Target::User(user))))
            .add_command(range(BROADCAST_STREAM));
        let mut con = self.inner.commands.clone();
        let (own, broadcast): (Vec<String>, Vec<String>) = self
            .inner
            .run("reading history", pipe.query_async(&mut con))
            .await?;
        let mut messages = decode_members(&own)?;
        messages.extend(decode_members(&broadcast)?);
        messages.sort_unstable_by_key(|m| m.seq);
        messages.truncate(limit as usize);
        Ok(messages)
    }

    async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        let max_age = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now_ms.saturating_sub(max_age);
        let mut con = inner.commands.clone();
        let mut deleted = 0u64;
        let mut cursor = 0u64;
        loop {
            let (next, streams): (u64, Vec<String>) = inner
                .run("listing history streams", async {
                    ::redis::cmd("SSCAN")
                        .arg(&inner.keys.streams)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(PRUNE_SCAN_BATCH)
                        .query_async(&mut con)
                        .await
                })
                .await?;
            for stream in streams {
                loop {
                    let mut call = inner.prune_script.prepare_invoke();
                    call.key(inner.keys.history(&stream))
                        .key(&inner.keys.pruned)
                        .key(&inner.keys.count)
                        .arg(&stream)
                        .arg(policy.max_per_stream)
                        .arg(cutoff)
                        .arg(PRUNE_MAX_SCAN)
                        .arg(PRUNE_MAX_DELETE);
                    let (gone, left): (u64, u64) = inner
                        .run("pruning history", call.invoke_async(&mut con))
                        .await?;
                    deleted += gone;
                    if left == 0 {
                        break;
                    }
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(deleted);
            }
        }
    }

    async fn history_size(&self) -> Result<u64, BrokerError> {
        let mut con = self.inner.commands.clone();
        let count: Option<i64> = self
            .inner
            .run("counting history", async {
                ::redis::cmd("GET")
                    .arg(&self.inner.keys.count)
                    .query_async(&mut con)
                    .await
            })
            .await?;
        Ok(count.unwrap_or(0).max(0) as u64)
    }
}

/// Pings Redis through the command connection every [`PING_EVERY`], so `healthy()`
/// notices an outage (and the recovery) even when nothing is being published.
async fn run_health_check(inner: std::sync::Weak<Inner>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        let mut con = inner.commands.clone();
        // The result is recorded in the health flag by `run`.
        let _ = inner
            .run("pinging Redis", async {
                ::redis::cmd("PING").query_async::<String>(&mut con).await
            })
            .await;
    }
}

/// One subscription: tails the delivery stream on a connection of its own and hands
/// each entry to the hub, in stream (= sequence) order, until the hub drops its end or
/// the broker is dropped. Reconnects by itself with capped exponential backoff.
async fn run_subscription(inner: Arc<Inner>, tx: mpsc::Sender<Arc<Publication>>, start: i64) {
    let stop = inner.stop.clone();
    let mut last = start;
    let mut connection: Option<MultiplexedConnection> = None;
    let mut backoff = BACKOFF_FIRST;
    let mut down = false;
    loop {
        let read = async {
            let con = match &mut connection {
                Some(con) => con,
                None => {
                    let con = connect_reader(&inner).await?;
                    check_not_lost(&inner, con.clone(), last).await?;
                    connection.insert(con)
                }
            };
            read_after(&inner, con, last).await
        };
        let result = tokio::select! {
            _ = stop.cancelled() => break,
            _ = tx.closed() => break,
            result = read => result,
        };
        let entries = match result {
            Ok(entries) => entries,
            Err(err) => {
                connection = None;
                if !down {
                    down = true;
                    inner
                        .health
                        .subscriptions_down
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        error = format!("{err:#}"),
                        last_seq = last,
                        "the Redis subscription lost its connection: reconnecting"
                    );
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF_CAP);
                continue;
            }
        };
        if down {
            down = false;
            backoff = BACKOFF_FIRST;
            inner
                .health
                .subscriptions_down
                .fetch_sub(1, Ordering::Relaxed);
            tracing::info!(last_seq = last, "the Redis subscription is reading again");
        }
        for (seq, entry) in entries {
            // Read on after it either way; a malformed entry is skipped, and the hub
            // sees the hole (the next one names it as predecessor) and repairs.
            last = seq;
            let Some(publication) = entry else {
                tracing::error!(seq, "skipping a malformed delivery stream entry");
                continue;
            };
            tokio::select! {
                _ = stop.cancelled() => return finish(&inner, down),
                sent = tx.send(publication) => if sent.is_err() { return finish(&inner, down) },
            }
        }
    }
    finish(&inner, down);
}

/// A subscription ends: it no longer counts against health.
fn finish(inner: &Inner, down: bool) {
    if down {
        inner
            .health
            .subscriptions_down
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// A dedicated connection for blocking reads (a blocked `XREAD` would hold up every
/// command pipelined behind it on a shared one).
async fn connect_reader(inner: &Inner) -> anyhow::Result<MultiplexedConnection> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(READ_BLOCK + COMMAND_DEADLINE));
    within(
        inner
            .client
            .get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .context("connecting to Redis")
}

/// After a reconnect: the sequence must not be below what was already read, or Redis
/// lost its data (restarted without AOF) and this node's position means nothing now.
async fn check_not_lost(
    inner: &Inner,
    mut con: MultiplexedConnection,
    last: i64,
) -> anyhow::Result<()> {
    let seq: Option<i64> = within(
        ::redis::cmd("GET")
            .arg(&inner.keys.seq)
            .query_async(&mut con),
    )
    .await
    .context("reading the sequence")?;
    if seq.unwrap_or(0) < last && !inner.health.history_lost.swap(true, Ordering::Relaxed) {
        tracing::error!(
            redis_seq = seq.unwrap_or(0),
            last_seq = last,
            "Redis lost the history (restarted without its data?): this node must restart"
        );
    }
    Ok(())
}

/// One blocking read of the entries after `last`: each entry's sequence number, and
/// the publication (`None` if the entry is malformed).
async fn read_after(
    inner: &Inner,
    con: &mut MultiplexedConnection,
    last: i64,
) -> anyhow::Result<Vec<(i64, Option<Arc<Publication>>)>> {
    let reply: Option<StreamReadReply> = ::redis::cmd("XREAD")
        .arg("COUNT")
        .arg(READ_COUNT)
        .arg("BLOCK")
        .arg(READ_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(&inner.keys.delivery)
        .arg(format!("{last}-0"))
        .query_async(con)
        .await
        .context("reading the delivery stream")?;
    let mut entries = Vec::new();
    for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
        // Our ids are `<seq>-0`; an id that is not cannot be read past safely.
        let seq = entry
            .id
            .split_once('-')
            .and_then(|(seq, _)| seq.parse::<i64>().ok())
            .with_context(|| format!("a delivery stream id that is not ours: {}", entry.id))?;
        entries.push((seq, decode_entry(seq, &entry)));
    }
    Ok(entries)
}

/// A delivery stream entry as the hub's publication.
fn decode_entry(seq: i64, entry: &::redis::streams::StreamId) -> Option<Arc<Publication>> {
    let target: String = entry.get("t")?;
    let target = match target.as_str() {
        BROADCAST_STREAM => Target::Everyone,
        user => Target::User(UserId::parse(user).ok()?),
    };
    let body: String = entry.get("b")?;
    let (created_at_ms, kind, data_json) = decode_body(&body)?;
    let origin = match entry.get::<String>("o") {
        Some(o) => Some(o.parse().ok()?),
        None => None,
    };
    Some(Arc::new(Publication {
        seq,
        // The sequence has no gaps: see the module doc.
        prev_seq: seq - 1,
        target,
        kind,
        data_json,
        created_at_ms,
        origin,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::realtime::broker::contract;
    use std::collections::HashMap;
    use std::sync::atomic::AtomicU32;
    use std::sync::Mutex;
    use std::time::Instant;

    /// Generous: the machine is shared.
    const WAIT: Duration = Duration::from_secs(30);

    use crate::redis_server::RedisServer;

    /// A broker (a node) on `server` with key prefix `prefix`.
    async fn broker_on(server: &RedisServer, prefix: &str) -> Arc<RedisBroker> {
        Arc::new(
            RedisBroker::start(server.client(), prefix.to_owned())
                .await
                .unwrap(),
        )
    }

    fn publication(target: Target, node: u64, n: u64) -> NewPublication {
        NewPublication {
            target,
            kind: "note".into(),
            data_json: format!(r#"{{"node":{node},"n":{n}}}"#),
            created_at_ms: 1_700_000_000_000 + n as i64,
            origin: Some(node * 1_000_000 + n),
            dedupe: None,
        }
    }

    async fn next(sub: &mut Subscription) -> Arc<Publication> {
        tokio::time::timeout(WAIT, sub.recv())
            .await
            .expect("a publication in time")
            .expect("the subscription is open")
    }

    /// Reads publications until `upto`, checking the sequence is gapless: each one is
    /// the one after the previous, and names it.
    async fn read_gapless(sub: &mut Subscription, upto: i64) -> Vec<Arc<Publication>> {
        let mut prev = sub.start;
        let mut out = Vec::new();
        while prev < upto {
            let p = next(sub).await;
            assert_eq!(p.prev_seq, prev, "the chain is broken at {}", p.seq);
            assert_eq!(p.seq, prev + 1, "a gap (or a repeat) before {}", p.seq);
            prev = p.seq;
            out.push(p);
        }
        out
    }

    #[test]
    fn bodies_and_members_round_trip_byte_for_byte() {
        for (kind, data) in [
            ("note", r#"{"a":1}"#),
            ("a:b:c", r#"{"x":"1:2:3","é":"ü\n"}"#),
            ("", ""),
        ] {
            let body = encode_body(-5, kind, data);
            assert_eq!(
                decode_body(&body),
                Some((-5, kind.to_owned(), data.to_owned()))
            );
            let m = decode_member(&format!("42:{body}")).unwrap();
            assert_eq!(
                (m.seq, m.kind.as_str(), m.data_json.as_str()),
                (42, kind, data)
            );
        }
        assert_eq!(decode_body("1:9:short"), None);
        assert!(decode_member("x:1:0:").is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_redis_broker_keeps_the_broker_contract() {
        let server = RedisServer::start(true).await;
        let n = AtomicU32::new(0);
        contract::run_all(|| {
            let prefix = format!("contract{}", n.fetch_add(1, Ordering::Relaxed));
            let client = server.client();
            async move {
                Arc::new(RedisBroker::start(client, prefix).await.unwrap()) as Arc<dyn Broker>
            }
        })
        .await;
    }

    /// Two nodes (two brokers, each with its own connections) on one Redis, publishing
    /// at once to the same user: both see one identical gapless sequence, and history
    /// replays exactly that.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_nodes_see_one_gapless_sequence_and_history_replays_it() {
        const PUBLISHERS: u64 = 3;
        const EACH: u64 = 100;
        let server = RedisServer::start(true).await;
        let nodes = [
            broker_on(&server, "two").await,
            broker_on(&server, "two").await,
        ];
        assert_eq!(
            nodes[0].epoch().await.unwrap(),
            nodes[1].epoch().await.unwrap()
        );
        let mut subs = [
            nodes[0].subscribe().await.unwrap(),
            nodes[1].subscribe().await.unwrap(),
        ];
        let user = UserId::new();
        let publishers: Vec<_> = (0..PUBLISHERS * 2)
            .map(|p| {
                let node = nodes[(p % 2) as usize].clone();
                tokio::spawn(async move {
                    let mut seqs = Vec::new();
                    for n in 0..EACH {
                        let new = publication(Target::User(user), p, n);
                        seqs.push(node.publish(new).await.unwrap());
                    }
                    seqs
                })
            })
            .collect();
        let mut returned = Vec::new();
        for publisher in publishers {
            let seqs = publisher.await.unwrap();
            assert!(seqs.windows(2).all(|w| w[0] < w[1]));
            returned.extend(seqs);
        }
        returned.sort_unstable();
        let last = *returned.last().unwrap();
        let [a, b] = &mut subs;
        let (seen_a, seen_b) = tokio::join!(read_gapless(a, last), read_gapless(b, last));
        let view = |ps: &[Arc<Publication>]| {
            ps.iter()
                .map(|p| (p.seq, p.data_json.clone(), p.origin))
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&seen_a), view(&seen_b), "two nodes, one sequence");
        assert_eq!(
            seen_a.iter().map(|p| p.seq).collect::<Vec<_>>(),
            returned,
            "exactly the published positions, once each"
        );
        let replayed = nodes[1]
            .history(user, 0, last, (PUBLISHERS * EACH * 2 + 10) as u32)
            .await
            .unwrap();
        assert_eq!(
            replayed
                .iter()
                .map(|m| (m.seq, m.kind.clone(), m.data_json.clone(), m.created_at_ms))
                .collect::<Vec<_>>(),
            seen_a
                .iter()
                .map(|p| (p.seq, p.kind.clone(), p.data_json.clone(), p.created_at_ms))
                .collect::<Vec<_>>(),
            "history replays exactly what was delivered"
        );
        assert_eq!(
            nodes[0].history_size().await.unwrap(),
            PUBLISHERS * EACH * 2
        );
    }

    /// redis-server crashes (SIGKILL) in the middle of a publish loop and comes back on
    /// the same directory: every publish that returned Ok is in history and was
    /// delivered, in order and once, to both subscriptions; while it was down, publish
    /// failed (without hanging) and the broker said it was unhealthy.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_redis_restart_loses_nothing_that_was_acknowledged() {
        let mut server = RedisServer::start(true).await;
        let nodes = [
            broker_on(&server, "restart").await,
            broker_on(&server, "restart").await,
        ];
        let mut subs = [
            nodes[0].subscribe().await.unwrap(),
            nodes[1].subscribe().await.unwrap(),
        ];
        assert!(nodes[0].healthy() && nodes[1].healthy());
        let user = UserId::new();
        let acknowledged = Arc::new(Mutex::new(Vec::<(i64, u64)>::new()));
        let failed = Arc::new(AtomicUsize::new(0));
        let done = CancellationToken::new();
        let publisher = {
            let (node, acknowledged, failed, done) = (
                nodes[0].clone(),
                acknowledged.clone(),
                failed.clone(),
                done.clone(),
            );
            tokio::spawn(async move {
                let mut n = 0;
                while !done.is_cancelled() {
                    let call = node.publish(publication(Target::User(user), 0, n));
                    // Never past the command deadline (plus slack for a loaded machine).
                    match tokio::time::timeout(WAIT, call)
                        .await
                        .expect("publish hung")
                    {
                        Ok(seq) => acknowledged.lock().unwrap().push((seq, n)),
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        };
        let acked = || acknowledged.lock().unwrap().len();
        eventually("100 publishes before the crash", || acked() >= 100).await;
        server.kill();
        eventually("the outage is noticed", || {
            !nodes[0].healthy() && !nodes[1].healthy()
        })
        .await;
        eventually("publishes fail while Redis is down", || {
            failed.load(Ordering::Relaxed) > 0
        })
        .await;
        server.spawn().await;
        let before = acked();
        eventually("publishing works again", || acked() >= before + 100).await;
        done.cancel();
        publisher.await.unwrap();
        eventually("both nodes are healthy again", || {
            nodes[0].healthy() && nodes[1].healthy()
        })
        .await;

        let acknowledged = acknowledged.lock().unwrap().clone();
        let last = acknowledged.last().unwrap().0;
        let [a, b] = &mut subs;
        let (seen_a, seen_b) = tokio::join!(read_gapless(a, last), read_gapless(b, last));
        let seqs = |ps: &[Arc<Publication>]| ps.iter().map(|p| p.seq).collect::<Vec<_>>();
        assert_eq!(seqs(&seen_a), seqs(&seen_b));
        let delivered: HashMap<i64, &Publication> =
            seen_a.iter().map(|p| (p.seq, p.as_ref())).collect();
        let kept: HashMap<i64, StoredMessage> = nodes[1]
            .history(user, 0, last, seen_a.len() as u32 + 10)
            .await
            .unwrap()
            .into_iter()
            .map(|m| (m.seq, m))
            .collect();
        for (seq, n) in &acknowledged {
            let expected = format!(r#"{{"node":0,"n":{n}}}"#);
            let p = delivered
                .get(seq)
                .expect("every acknowledged publish delivered");
            assert_eq!(p.data_json, expected);
            let m = kept
                .get(seq)
                .expect("every acknowledged publish in history");
            assert_eq!(m.data_json, expected);
        }
        // Nothing was delivered twice (read_gapless) or beyond the end.
        for sub in &mut subs {
            let extra = tokio::time::timeout(Duration::from_millis(300), sub.recv()).await;
            if let Ok(Some(p)) = extra {
                // Only a publish whose answer was lost with the crash may follow.
                assert_eq!(p.seq, last + 1, "an unexpected delivery after the end");
            }
        }
    }

    /// A node too slow to keep up with the delivery stream (its hub does not read) is
    /// trimmed past: the first publication after the hole names its true predecessor,
    /// which that node never saw, so the hub detects the gap; history still has what
    /// the node missed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_node_trimmed_past_sees_the_gap_and_history_fills_it() {
        const TOTAL: u64 = 3_000;
        let server = RedisServer::start(true).await;
        let broker = Arc::new(
            RedisBroker::start_with(server.client(), "trim".into(), 100)
                .await
                .unwrap(),
        );
        let mut slow = broker.subscribe().await.unwrap();
        let user = UserId::new();
        for n in 0..TOTAL {
            broker
                .publish(publication(Target::User(user), 0, n))
                .await
                .unwrap();
        }
        let mut prev = slow.start;
        let mut holes = Vec::new();
        while prev < TOTAL as i64 {
            let p = next(&mut slow).await;
            assert!(p.seq > prev, "{} after {prev}", p.seq);
            assert_eq!(p.prev_seq, p.seq - 1);
            if p.prev_seq != prev {
                holes.push((prev, p.seq));
            }
            prev = p.seq;
        }
        assert!(!holes.is_empty(), "the subscription was never trimmed past");
        for (after, upto) in holes {
            let missed = broker
                .history(user, after, upto - 1, TOTAL as u32)
                .await
                .unwrap();
            assert_eq!(
                missed.iter().map(|m| m.seq).collect::<Vec<_>>(),
                (after + 1..upto).collect::<Vec<_>>(),
                "history has everything the node missed"
            );
        }
    }

    /// Not a check, a measurement (run with `--ignored --nocapture`): publishes per
    /// second through one node, concurrent publishers, a subscription drained as it
    /// goes, on Redis and on the local broker over SQLite.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    #[ignore = "a measurement, not a check: prints publish throughput"]
    async fn publish_throughput_redis_and_local_sqlite() {
        const PUBLISHERS: u64 = 16;
        const EACH: u64 = 1_000;
        async fn measure(broker: Arc<dyn Broker>) -> f64 {
            let mut sub = broker.subscribe().await.unwrap();
            let user = UserId::new();
            let started = Instant::now();
            let drain = tokio::spawn(async move {
                for _ in 0..PUBLISHERS * EACH {
                    next(&mut sub).await;
                }
            });
            let publishers: Vec<_> = (0..PUBLISHERS)
                .map(|p| {
                    let broker = broker.clone();
                    tokio::spawn(async move {
                        for n in 0..EACH {
                            let new = publication(Target::User(user), p, n);
                            broker.publish(new).await.unwrap();
                        }
                    })
                })
                .collect();
            for publisher in publishers {
                publisher.await.unwrap();
            }
            drain.await.unwrap();
            (PUBLISHERS * EACH) as f64 / started.elapsed().as_secs_f64()
        }
        let server = RedisServer::start(true).await;
        let redis = measure(broker_on(&server, "bench").await).await;
        // The same with the usual production setting: fsync once a second.
        let mut con = server
            .client()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        ::redis::cmd("CONFIG")
            .arg("SET")
            .arg("appendfsync")
            .arg("everysec")
            .exec_async(&mut con)
            .await
            .unwrap();
        let redis_everysec = measure(broker_on(&server, "bench2").await).await;
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::sqlite::SqliteStore::open(&dir.path().join("bench.db"))
            .await
            .unwrap();
        let log = Arc::new(sqlite_log::SqliteLog(Arc::new(store)));
        let local = measure(Arc::new(
            super::super::local::LocalBroker::start(log).await.unwrap(),
        ))
        .await;
        println!(
            "publish throughput, {PUBLISHERS} concurrent publishers x {EACH}, delivered to one \
             subscription: redis (AOF, fsync always) {redis:.0}/s, redis (AOF, fsync \
             everysec) {redis_everysec:.0}/s, local broker on SQLite {local:.0}/s"
        );
    }

    /// The store's message history as the local broker's log, for the measurement
    /// (`app.rs` has the real adapter; it is private to the composition root).
    mod sqlite_log {
        use crate::domain::UserId;
        use crate::realtime::history::{HistoryPolicy, MessageLog, StoredMessage, StreamPosition};
        use crate::store::MessageStore;
        use std::sync::Arc;

        pub struct SqliteLog(pub Arc<crate::store::sqlite::SqliteStore>);

        #[async_trait::async_trait]
        impl MessageLog for SqliteLog {
            async fn epoch(&self) -> anyhow::Result<String> {
                Ok(self.0.message_epoch().await?)
            }
            async fn last_seq(&self) -> anyhow::Result<i64> {
                Ok(self.0.last_message_seq().await?)
            }
            async fn append(
                &self,
                batch: &[crate::realtime::history::LogEntry<'_>],
            ) -> anyhow::Result<Vec<(i64, bool)>> {
                let batch: Vec<crate::store::NewMessage<'_>> = batch
                    .iter()
                    .map(|e| crate::store::NewMessage {
                        user: e.user,
                        kind: e.kind,
                        data_json: e.data_json,
                        created_at_ms: e.created_at_ms,
                        dedupe: e.dedupe,
                    })
                    .collect();
                Ok(self.0.append_messages(&batch).await?)
            }
            async fn position(&self, user: UserId, upto: i64) -> anyhow::Result<StreamPosition> {
                let p = self.0.message_position(user, upto).await?;
                Ok(StreamPosition {
                    latest: p.latest,
                    pruned_through: p.pruned_through,
                })
            }
            async fn replay(
                &self,
                user: UserId,
                after: i64,
                upto: i64,
                limit: u32,
            ) -> anyhow::Result<Vec<StoredMessage>> {
                let rows = self.0.messages_between(user, after, upto, limit).await?;
                Ok(rows
                    .into_iter()
                    .map(|m| StoredMessage {
                        seq: m.seq,
                        kind: m.kind,
                        data_json: m.data_json,
                        created_at_ms: m.created_at_ms,
                    })
                    .collect())
            }
            async fn prune(&self, policy: HistoryPolicy, now_ms: i64) -> anyhow::Result<u64> {
                let max_age = i64::try_from(policy.max_age.as_millis()).unwrap_or(i64::MAX);
                Ok(self
                    .0
                    .prune_messages(policy.max_per_stream, now_ms.saturating_sub(max_age))
                    .await?)
            }
            async fn count(&self) -> anyhow::Result<u64> {
                Ok(self.0.message_count().await?)
            }
        }
    }

    /// The cluster as the hub sees it: two hubs, each on its own broker on one Redis. A
    /// publication on one node reaches a connection on the other (and the publisher's
    /// call returns), and a client that resumes on the other node with its cursor gets
    /// exactly what it missed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_hubs_deliver_each_others_publications_and_resume_across_nodes() {
        use crate::domain::MessageType;
        use crate::realtime::{ConnectRequest, Connection, HistoryPolicy, Hub, TransportKind};
        use serde_json::{json, Value};

        async fn frame(conn: &mut Connection) -> Value {
            let f = tokio::time::timeout(WAIT, conn.next_frame())
                .await
                .expect("a frame in time")
                .expect("the connection is open");
            serde_json::from_str(f.text()).unwrap()
        }
        let server = RedisServer::start(true).await;
        let mut hubs = Vec::new();
        for _ in 0..2 {
            let broker: Arc<dyn Broker> = broker_on(&server, "hubs").await;
            hubs.push(Hub::start(broker, HistoryPolicy::default()).await.unwrap());
        }
        let user = UserId::new();
        let request = |since: Option<String>| ConnectRequest {
            user,
            credential: None,
            transport: TransportKind::WebSocket,
            since,
            expires_at: None,
        };
        let note = |hub: &Hub, n: u64| {
            let hub = hub.clone();
            async move {
                hub.publish(
                    Target::User(user),
                    MessageType::known("note"),
                    json!({ "n": n }),
                )
                .await
                .unwrap()
            }
        };
        let mut on_b = hubs[1].connect(request(None)).await.unwrap();
        assert_eq!(frame(&mut on_b).await["type"], "welcome");
        assert_eq!(note(&hubs[0], 0).await.delivered, 0, "nobody on node A");
        let first = frame(&mut on_b).await;
        assert_eq!(first["data"]["n"], 0);
        let cursor = first["cursor"].as_str().unwrap().to_owned();
        drop(on_b);
        for n in 1..=3 {
            note(&hubs[1], n).await;
        }
        // `publish` returns once the publishing node has delivered; node A reads the
        // stream on its own time. A client resuming on A before A has caught up gets the
        // rest live right after `resumed` (nothing lost either way); to check the replay
        // itself, wait until A has delivered all four.
        let caught_up = tokio::time::timeout(Duration::from_secs(10), async {
            while hubs[0].stats().messages_published < 4 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(caught_up.is_ok(), "node A delivered what node B published");
        // The client comes back through the load balancer to the other node.
        let mut on_a = hubs[0].connect(request(Some(cursor))).await.unwrap();
        assert_eq!(frame(&mut on_a).await["type"], "welcome");
        for n in 1..=3 {
            assert_eq!(frame(&mut on_a).await["data"]["n"], n);
        }
        assert_eq!(frame(&mut on_a).await["type"], "resumed");
        assert_eq!(note(&hubs[1], 4).await.delivered, 0, "nobody on node B now");
        assert_eq!(frame(&mut on_a).await["data"]["n"], 4);
    }

    /// Retention per stream: a message goes only when it is beyond the newest
    /// `max_per_stream` of its stream AND older than `max_age`; the watermark is the
    /// newest such message, so only a prefix goes; a user's position reports the larger
    /// of their two streams' watermarks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn pruning_is_per_stream_and_keeps_young_messages() {
        let server = RedisServer::start(true).await;
        let broker = broker_on(&server, "prune").await;
        let (alice, bob) = (UserId::new(), UserId::new());
        let at = |target, n: u64, at_ms: i64| NewPublication {
            created_at_ms: at_ms,
            ..publication(target, 0, n)
        };
        // Alice: six old messages, then four young ones. Broadcasts: three old.
        // Bob: two old ones (within his newest three: kept).
        let mut alice_seqs = Vec::new();
        let mut broadcast_seqs = Vec::new();
        for n in 0..10 {
            let when = if n < 6 { 1_000 } else { 50_000 };
            alice_seqs.push(
                broker
                    .publish(at(Target::User(alice), n, when))
                    .await
                    .unwrap(),
            );
            if n < 3 {
                broadcast_seqs.push(
                    broker
                        .publish(at(Target::Everyone, n, 1_000))
                        .await
                        .unwrap(),
                );
            }
            if n < 2 {
                broker
                    .publish(at(Target::User(bob), n, 1_000))
                    .await
                    .unwrap();
            }
        }
        let policy = HistoryPolicy {
            max_per_stream: 3,
            max_age: Duration::from_millis(10_000),
        };
        // As of 40 000 the cutoff is 30 000: Alice's 4 young ones stay though only 3
        // must; of her old ones all six go; broadcasts keep their newest three (all).
        assert_eq!(broker.history_size().await.unwrap(), 15);
        assert_eq!(broker.prune(policy, 40_000).await.unwrap(), 6);
        assert_eq!(broker.history_size().await.unwrap(), 9);
        let kept: Vec<i64> = broker
            .history(alice, 0, i64::MAX, 100)
            .await
            .unwrap()
            .iter()
            .map(|m| m.seq)
            .collect();
        let mut expected: Vec<i64> = alice_seqs[6..].to_vec();
        expected.extend(&broadcast_seqs);
        expected.sort_unstable();
        assert_eq!(kept, expected);
        let pos = broker.position(alice, i64::MAX).await.unwrap();
        assert_eq!(pos.pruned_through, alice_seqs[5]);
        assert_eq!(pos.latest, alice_seqs[9]);
        let bobs = broker.position(bob, i64::MAX).await.unwrap();
        assert_eq!(bobs.pruned_through, 0, "Bob's streams were not pruned");
        // Much later, only the newest three of each stream stay.
        assert_eq!(broker.prune(policy, 10_000_000).await.unwrap(), 1);
        let pos = broker.position(alice, alice_seqs[8]).await.unwrap();
        assert_eq!(pos.pruned_through, alice_seqs[6]);
        assert_eq!(pos.latest, alice_seqs[8]);
        assert_eq!(broker.prune(policy, 10_000_000).await.unwrap(), 0);
    }

    /// A Redis that comes back without its data (no AOF) is a different history: the
    /// epoch changes (old cursors get `reset`), and a node whose subscription had read
    /// beyond the new sequence reports itself unhealthy for good (it must restart).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_redis_that_lost_its_data_is_a_new_epoch_and_an_unhealthy_node() {
        let mut server = RedisServer::start(true).await;
        let broker = broker_on(&server, "wiped").await;
        let mut sub = broker.subscribe().await.unwrap();
        let epoch = broker.epoch().await.unwrap();
        let user = UserId::new();
        for n in 0..3 {
            broker
                .publish(publication(Target::User(user), 0, n))
                .await
                .unwrap();
        }
        read_gapless(&mut sub, 3).await;
        server.kill();
        std::fs::remove_dir_all(server.dir()).unwrap();
        std::fs::create_dir(server.dir()).unwrap();
        server.spawn().await;
        eventually("the data loss is noticed", || {
            broker.inner.health.history_lost.load(Ordering::Relaxed)
        })
        .await;
        // The command connection may need a try to notice the restart.
        let deadline = Instant::now() + WAIT;
        let new_epoch = loop {
            match broker.epoch().await {
                Ok(e) => break e,
                Err(err) => assert!(Instant::now() < deadline, "{err}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_ne!(new_epoch, epoch);
        // It stays unhealthy though Redis answers again.
        eventually("commands work", || {
            !broker.inner.health.commands_down.load(Ordering::Relaxed)
        })
        .await;
        assert!(!broker.healthy());
    }

    /// Polls `cond` until it holds, at most [`WAIT`].
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting until {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A publication whose idempotency key was already published is not published
    /// again; publish answers with the earlier one's position.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_dedupe_key_publishes_once() {
        let server = RedisServer::start(true).await;
        let broker = broker_on(&server, "dedupe").await;
        let mut sub = broker.subscribe().await.unwrap();
        let user = UserId::new();
        let keyed = |n, key| NewPublication {
            dedupe: Some(key),
            ..publication(Target::User(user), 0, n)
        };
        let first = broker.publish(keyed(1, 42)).await.unwrap();
        assert_eq!(broker.publish(keyed(2, 42)).await.unwrap(), first);
        let other = broker.publish(keyed(3, 43)).await.unwrap();
        assert_eq!(
            other,
            first + 1,
            "the sequence has no gap for the duplicate"
        );
        let unkeyed = broker
            .publish(publication(Target::User(user), 0, 4))
            .await
            .unwrap();
        let seen = read_gapless(&mut sub, unkeyed).await;
        assert_eq!(
            seen.iter()
                .map(|p| p.data_json.as_str())
                .collect::<Vec<_>>(),
            [
                r#"{"node":0,"n":1}"#,
                r#"{"node":0,"n":3}"#,
                r#"{"node":0,"n":4}"#
            ]
        );
        assert_eq!(broker.history_size().await.unwrap(), 3);
        assert_eq!(
            broker.history(user, 0, i64::MAX, 10).await.unwrap().len(),
            3
        );
    }
}

//! The accept loop: HTTP/1.1 served by hyper's own connection builder with a timer, so
//! that slow or idle clients cannot hold the server's sockets (the contract's "limits
//! that protect the service"). Nothing here parses HTTP; it only decides how long hyper
//! may wait, how many sockets one address may hold, and when to let go at shutdown.
//!
//! - Headers: a new connection whose first request's headers have not arrived in full
//!   within `header_read_timeout` (10 s) is dropped, trickled or not. Later requests on
//!   a kept-alive connection fall under hyper's own header timer, set to the keep-alive
//!   idle time: hyper starts it the moment it waits for the next request, so an idle
//!   keep-alive connection is closed after `keep_alive_idle` (60 s).
//! - Bodies: `JsonBody` gives a request body `body_timeout` (30 s) to arrive in full,
//!   and tower-http's per-frame body timeout covers every other reader.
//! - Writes: a socket whose writes make no progress for `body_timeout` (a client that
//!   stopped reading: a stalled SSE stream, a WebSocket that never reads) fails, and the
//!   connection with it ([`StallGuard`]).
//! - Addresses: at most `max_connections_per_address` open sockets per peer address
//!   (trusted proxies exempt); beyond it new sockets are closed at once.
//! - Drain: [`Server::drain`] asks every connection to finish its request in flight and
//!   close (hyper's graceful shutdown; an idle or half-sent request closes at once), while
//!   the listener keeps accepting, so load-balancer probes keep getting `/ready`'s 503.

use crate::config::{canonical, Limits, TrustedProxies};
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// Put in every request's extensions: lets body readers give up once the drain starts,
/// so a half-sent request does not hold it.
#[derive(Clone)]
pub struct Draining(pub CancellationToken);

/// The running accept loop and the handles to drain and stop it.
pub struct Server {
    /// Set when the drain starts: connections finish their request and close.
    drain: CancellationToken,
    /// Set when the drain is over: the listener closes, remaining connections drop.
    stop: CancellationToken,
    open: Arc<OpenConnections>,
    accept_loop: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Starts accepting on `listener`.
    pub fn start(listener: TcpListener, app: Router, limits: &Limits) -> Self {
        let drain = CancellationToken::new();
        let stop = CancellationToken::new();
        let open = Arc::new(OpenConnections::default());
        let per_address = limits
            .max_connections_per_address
            .map(|max| Arc::new(PerAddress::new(max)));
        let settings = Arc::new(ConnSettings {
            header_read_timeout: limits.header_read_timeout,
            keep_alive_idle: limits.keep_alive_idle,
            write_stall: limits.body_timeout,
        });
        let accept_loop = tokio::spawn(accept_loop(
            listener,
            app,
            settings,
            per_address,
            limits.trusted_proxies.clone(),
            open.clone(),
            drain.clone(),
            stop.clone(),
        ));
        Self {
            drain,
            stop,
            open,
            accept_loop,
        }
    }

    /// Starts the drain: every connection finishes the request it is serving and closes;
    /// new connections are still accepted, served without keep-alive.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Waits up to `timeout` for the open connections to finish; `false` if some did not.
    pub async fn wait_drained(&self, timeout: Duration) -> bool {
        self.open.wait_zero(timeout).await
    }

    /// Closes the listener and drops whatever connections are left.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.accept_loop.await;
    }
}

struct ConnSettings {
    header_read_timeout: Duration,
    keep_alive_idle: Duration,
    write_stall: Duration,
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    app: Router,
    settings: Arc<ConnSettings>,
    per_address: Option<Arc<PerAddress>>,
    trusted_proxies: TrustedProxies,
    open: Arc<OpenConnections>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(err) => {
                    // Out of descriptors or a connection reset before accept: back off
                    // briefly instead of spinning, then go on serving the others.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = canonical(peer.ip());
        let slot = match &per_address {
            Some(limits) if !trusted_proxies.contains(ip) => match limits.try_open(ip) {
                Some(slot) => Some(slot),
                None => {
                    metrics::counter!("zerostate_connections_refused_total").increment(1);
                    drop(stream);
                    continue;
                }
            },
            _ => None,
        };
        let _ = stream.set_nodelay(true);
        // The drain waits for the connections it found; one opened during the drain (a
        // probe reading `/ready`'s 503) is served while the listener is open, but a
        // stranger who connects and sends nothing cannot hold the shutdown with it.
        let guard = (!drain.is_cancelled()).then(|| open.enter());
        let conn = serve_connection(
            stream,
            peer,
            app.clone(),
            settings.clone(),
            drain.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            conn.await;
            drop(slot);
            drop(guard);
        });
    }
}

/// Serves one connection until it ends, its first request head is late, or the server
/// stops.
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: Arc<ConnSettings>,
    drain: CancellationToken,
    stop: CancellationToken,
) {
    let io = TokioIo::new(StallGuard::new(stream, settings.write_stall));
    let first_request = Arc::new(AtomicBool::new(false));
    let seen = first_request.clone();
    let draining = Draining(drain.clone());
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        seen.store(true, Ordering::Relaxed);
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(draining.clone());
        app.clone().oneshot(req)
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        // hyper arms this timer whenever it waits for a request head, including the wait
        // for the next request on a kept-alive connection: the idle bound.
        .header_read_timeout(settings.keep_alive_idle)
        .keep_alive(!drain.is_cancelled());
    let conn = builder.serve_connection(io, service).with_upgrades();
    tokio::pin!(conn);
    let first_head = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(first_head);
    let mut head_checked = false;
    let mut graceful = drain.is_cancelled();
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            () = &mut first_head, if !head_checked => {
                head_checked = true;
                if !first_request.load(Ordering::Relaxed) {
                    tracing::debug!(%peer, "no request headers in time: dropped");
                    metrics::counter!("zerostate_connections_timed_out_total").increment(1);
                    return;
                }
            }
            () = drain.cancelled(), if !graceful => {
                graceful = true;
                if !first_request.load(Ordering::Relaxed) {
                    // Nothing asked yet (or half a head): nothing to finish. hyper would
                    // wait for the head to complete, so let go here.
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Counts open connections so the drain can wait for them.
#[derive(Default)]
struct OpenConnections {
    count: AtomicUsize,
    zero: Notify,
}

impl OpenConnections {
    fn enter(self: &Arc<Self>) -> OpenGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        OpenGuard(self.clone())
    }

    async fn wait_zero(&self, timeout: Duration) -> bool {
        tokio::time::timeout(timeout, async {
            loop {
                let notified = self.zero.notified();
                if self.count.load(Ordering::SeqCst) == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

struct OpenGuard(Arc<OpenConnections>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.zero.notify_waiters();
        }
    }
}

/// Open sockets per client address. The map holds only addresses with a socket open,
/// so its size is bounded by the open sockets themselves.
struct PerAddress {
    max: usize,
    // A std mutex: held for one map update, never across an await.
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerAddress {
    fn new(max: usize) -> Self {
        Self {
            max,
            open: Mutex::new(HashMap::new()),
        }
    }

    fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let count = open.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(AddressSlot(self.clone(), ip))
    }
}

/// One open socket counted against its address; released on drop.
struct AddressSlot(Arc<PerAddress>, IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.0.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = open.get_mut(&self.1) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// A socket whose writes must make progress: a write (or flush) that stays pending for
/// `limit` fails with `TimedOut`. Reads are not bounded here: an idle WebSocket or an
/// SSE client rightly sends nothing for long stretches.
pub struct StallGuard<T> {
    inner: T,
    limit: Duration,
    stalled_since: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> StallGuard<T> {
    /// Wraps `inner`; a write pending for `limit` fails.
    pub fn new(inner: T, limit: Duration) -> Self {
        Self {
            inner,
            limit,
            stalled_since: None,
        }
    }

    /// Turns a pending write into `TimedOut` once it has been pending for `limit`.
    fn check<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled_since = None;
            return poll;
        }
        let limit = self.limit;
        let timer = self
            .stalled_since
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.check(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.check(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.inner).poll_flush(cx);
        self.check(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_counted_and_released() {
        let limits = Arc::new(PerAddress::new(2));
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = limits.try_open(ip).unwrap();
        let _b = limits.try_open(ip).unwrap();
        assert!(limits.try_open(ip).is_none());
        assert!(limits.try_open("10.0.0.2".parse().unwrap()).is_some());
        drop(a);
        assert!(limits.try_open(ip).is_some());
    }

    #[tokio::test]
    async fn a_stalled_write_times_out() {
        // A duplex pipe whose reader never reads: writes fill it, then stall.
        let (client, _server_keeps_it_open) = tokio::io::duplex(64);
        let mut guarded = StallGuard::new(client, Duration::from_millis(100));
        use tokio::io::AsyncWriteExt;
        let err = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                if let Err(e) = guarded.write_all(&[0u8; 64]).await {
                    return e;
                }
            }
        })
        .await
        .expect("the stalled write must fail, not hang");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}

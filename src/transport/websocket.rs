//! The WebSocket transport: one task per connection, selecting on the client's frames,
//! the connection's outgoing frames, the hub's disconnect signal and three timers
//! (keepalive ping, idle timeout, credential expiry).
//!
//! Buffers are kept small on purpose: tungstenite's defaults reserve 128 KiB per
//! connection, and the product promises about 1 KB per idle one. Every write has a
//! deadline, so a peer that stops reading cannot hold a task forever.
//!
//! Frames already queued when one is sent go out with it: up to [`WRITE_BATCH`] bytes
//! are encoded into tungstenite's write buffer and reach the socket in one write. On a
//! broadcast burst that is one system call (and one TCP segment) for many messages
//! instead of one each, which is where a fan-out spends most of its CPU.

use crate::realtime::protocol::{self, Frame, Inbound};
use crate::realtime::{Connection, Disconnect};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chrono::{DateTime, Utc};
use futures_util::{FutureExt, SinkExt};
use std::time::Duration;
use tokio::time::Instant;
use tracing::Instrument;

/// Largest inbound message (and frame); larger ones close the connection with 1009.
pub const MAX_INBOUND_BYTES: usize = 64 * 1024;
/// Bytes read from the socket at a time. Clients send little (a ping every 25 s), and
/// this buffer is reserved for every connection: 4 KiB measured ~2.5 KB more per idle
/// connection than 1 KiB.
const READ_BUFFER: usize = 1024;
/// Bytes of queued frames encoded before they are written to the socket at once. An
/// idle connection holds no write buffer; a busy one keeps at most about twice this.
const WRITE_BATCH: usize = 2 * 1024;
/// Frames sent in one batch at most, so the other branches (close, pings, the
/// client's frames) are looked at between batches.
const MAX_BATCH_FRAMES: usize = 64;
/// Cap on bytes waiting in the WebSocket layer for the socket (one largest message and
/// a partial one fit); the real queue is the connection's, bounded by the hub.
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// Server-side keepalive: a WebSocket ping this often.
const PING_EVERY: Duration = Duration::from_secs(25);
/// A client silent this long is closed (1001).
const IDLE_AFTER: Duration = Duration::from_secs(75);
/// A single write that takes longer than this means the peer stopped reading: the
/// connection is dropped without a close handshake.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// After our close frame, how long the peer gets to answer with its own.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Completes the upgrade with small buffers and hands the socket to its task.
/// `expires_at` is when the connection's credential stops working (closed with 4001).
pub fn upgrade(
    ws: WebSocketUpgrade,
    conn: Connection,
    expires_at: Option<DateTime<Utc>>,
) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        // Frames accumulate up to this before a write; every batch ends with a flush.
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_INBOUND_BYTES)
        .max_frame_size(MAX_INBOUND_BYTES)
        .on_upgrade(move |socket| {
            // A debug span: at the default level it costs nothing per idle connection.
            let span = tracing::debug_span!("ws", conn = conn.id(), user_id = %conn.user());
            serve(socket, conn, expires_at).instrument(span)
        })
}

/// How the connection loop ended.
enum End {
    /// We close, with a reason.
    Close(Disconnect),
    /// The client sent a close frame: finish its handshake.
    PeerClosed,
    /// The socket is gone or broken: nothing more can be sent.
    Gone,
}

async fn serve(mut socket: WebSocket, mut conn: Connection, expires_at: Option<DateTime<Utc>>) {
    tracing::debug!("connected");
    let mut ping = tokio::time::interval_at(Instant::now() + PING_EVERY, PING_EVERY);
    let idle = tokio::time::sleep(IDLE_AFTER);
    let expiry = tokio::time::sleep_until(deadline(expires_at));
    tokio::pin!(idle, expiry);

    let end = loop {
        tokio::select! {
            // Decisions first: once the hub has said "close", nothing more is sent.
            biased;
            reason = conn.disconnected() => break End::Close(reason),
            () = &mut expiry => break End::Close(Disconnect::Expired),
            () = &mut idle => break End::Close(Disconnect::Idle),
            inbound = socket.recv() => {
                idle.as_mut().reset(Instant::now() + IDLE_AFTER);
                let reply = match inbound {
                    None => break End::Gone,
                    Some(Err(err)) => break classify(err),
                    Some(Ok(Message::Close(_))) => break End::PeerClosed,
                    // tungstenite answers pings itself; pongs only prove liveness.
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    Some(Ok(Message::Text(text))) => match protocol::parse_inbound(&text) {
                        Ok(Inbound::Ping) => protocol::pong(Utc::now()),
                        Err(err) => err.frame(),
                    },
                    Some(Ok(Message::Binary(_))) => protocol::error(
                        "unsupported_frame",
                        "binary frames are not supported; send JSON text",
                    ),
                };
                if !send_frame(&mut socket, &conn, &reply).await {
                    break End::Gone;
                }
            }
            frame = conn.next_frame() => match frame {
                Some(frame) => {
                    if !send_batch(&mut socket, &mut conn, frame).await {
                        break End::Gone;
                    }
                }
                // The hub let go of the connection; it always says why first.
                None => break End::Close(conn.reason().unwrap_or(Disconnect::Shutdown)),
            },
            _ = ping.tick() => {
                if !send(&mut socket, Message::Ping(Default::default())).await {
                    break End::Gone;
                }
            }
        }
    };

    match end {
        End::Close(reason) => {
            conn.disconnect(reason);
            tracing::debug!(code = reason.code(), reason = reason.reason(), "closing");
            let frame = CloseFrame {
                code: reason.code(),
                reason: Utf8Bytes::from_static(reason.reason()),
            };
            let sent = send(&mut socket, Message::Close(Some(frame))).await;
            // After an oversized message the rest of it is still unread: reading on
            // would buffer it, so do not wait for the peer's close then.
            if sent && reason != Disconnect::TooBig {
                drain(&mut socket).await;
            }
        }
        // Reading on flushes tungstenite's automatic close reply.
        End::PeerClosed => drain(&mut socket).await,
        End::Gone => {}
    }
    tracing::debug!("disconnected");
}

/// Sends `first` and whatever frames are already queued behind it, flushed once,
/// counting each as sent once the batch is on the socket.
async fn send_batch(socket: &mut WebSocket, conn: &mut Connection, first: Frame) -> bool {
    let batch = async {
        let mut fed = 0;
        if let Some(message) = text_message(&first) {
            socket.feed(message).await?;
            fed += 1;
        }
        for _ in 1..MAX_BATCH_FRAMES {
            // Once the hub has said "close", nothing more is sent (as in `serve`).
            if conn.reason().is_some() {
                break;
            }
            // `next_frame` is cancel-safe: a frame not ready now stays queued. A replay
            // page to read from history is not ready either: the batch ends there.
            let Some(Some(frame)) = conn.next_frame().now_or_never() else {
                break;
            };
            if let Some(message) = text_message(&frame) {
                socket.feed(message).await?;
                fed += 1;
            }
        }
        socket.flush().await?;
        Ok::<_, axum::Error>(fed)
    };
    match tokio::time::timeout(SEND_TIMEOUT, batch).await {
        Ok(Ok(frames)) => {
            for _ in 0..frames {
                conn.record_sent();
            }
            true
        }
        _ => false,
    }
}

/// A frame as a text message (`None`, skipped, if it were not UTF-8: frames are built
/// from JSON text). The bytes are shared with every other recipient.
fn text_message(frame: &Frame) -> Option<Message> {
    Utf8Bytes::try_from(frame.json().clone())
        .ok()
        .map(Message::Text)
}

/// Sends one frame as a text message, counting it once written.
async fn send_frame(socket: &mut WebSocket, conn: &Connection, frame: &Frame) -> bool {
    let Some(message) = text_message(frame) else {
        return true;
    };
    let sent = send(socket, message).await;
    if sent {
        conn.record_sent();
    }
    sent
}

async fn send(socket: &mut WebSocket, message: Message) -> bool {
    matches!(
        tokio::time::timeout(SEND_TIMEOUT, socket.send(message)).await,
        Ok(Ok(()))
    )
}

/// Reads until the peer's close (or end of stream), briefly.
async fn drain(socket: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(message)) = socket.recv().await {
            if matches!(message, Message::Close(_)) {
                // One more read flushes our reply, if one is due, and ends the stream.
                let _ = socket.recv().await;
                break;
            }
        }
    })
    .await;
}

/// A read error: an oversized message is answered with 1009; anything else (a
/// protocol violation, a reset) just ends the connection.
fn classify(err: axum::Error) -> End {
    let inner = err.into_inner();
    match inner.downcast_ref::<tungstenite::Error>() {
        Some(tungstenite::Error::Capacity(_)) => End::Close(Disconnect::TooBig),
        _ => {
            tracing::debug!(error = %inner, "websocket read failed");
            End::Gone
        }
    }
}

/// When a credential expiring at `at` stops working, as a timer deadline.
fn deadline(at: Option<DateTime<Utc>>) -> Instant {
    // Far enough to never fire, near enough not to overflow.
    const NEVER: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
    let left = at.map_or(NEVER, |at| {
        (at - Utc::now()).to_std().unwrap_or(Duration::ZERO)
    });
    Instant::now() + left.min(NEVER)
}

//! The WebSocket transport: one task per connection, selecting on the client's frames,
//! the connection's outgoing frames (and keepalive pings) and the hub's disconnect
//! signal.
//!
//! Memory per idle connection is the constraint (the product promises about 1 KB):
//! - no timers here: the hub's shared sweep (`realtime::registry`) asks for a ping every
//!   25 s, closes a client silent for 75 s (1001) and one whose credential expired
//!   (4001), through the same wake-up as the outgoing frames;
//! - no read buffer while idle: tungstenite's read buffer starts empty (size 0) and
//!   grows only while a frame is being read, so a connection waiting for its client
//!   holds none (tungstenite reads a frame header, then exactly the frame);
//! - no write buffer before the first write: tungstenite's grows to the largest batch
//!   written (the welcome frame for a connection that never gets another message).
//!
//! Every write has a deadline, so a peer that stops reading cannot hold a task forever.
//!
//! Frames already queued when one is sent go out with it: up to [`WRITE_BATCH`] bytes
//! are encoded into tungstenite's write buffer and reach the socket in one write. On a
//! broadcast burst that is one system call (and one TCP segment) for many messages
//! instead of one each, which is where a fan-out spends most of its CPU.

use crate::realtime::protocol::{self, Frame, Inbound};
use crate::realtime::{Connection, Disconnect, Outgoing};
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use chrono::Utc;
use futures_util::SinkExt;
use std::time::Duration;
use tracing::Instrument;

/// Largest inbound message (and frame); larger ones close the connection with 1009.
pub const MAX_INBOUND_BYTES: usize = 64 * 1024;
/// The read buffer reserved up front: none. tungstenite then reserves a frame header's
/// worth, then the frame, as it reads (clients send little: a ping every 25 s), so an
/// idle connection holds no read buffer; 1 KiB reserved for every connection was a
/// sixth of its memory.
const READ_BUFFER: usize = 0;
/// Bytes of queued frames encoded before they are written to the socket at once. An
/// idle connection holds no write buffer; a busy one keeps at most about twice this.
const WRITE_BATCH: usize = 2 * 1024;
/// Frames sent in one batch at most, so the other branches (close, pings, the
/// client's frames) are looked at between batches.
const MAX_BATCH_FRAMES: usize = 64;
/// Cap on bytes waiting in the WebSocket layer for the socket (one largest message and
/// a partial one fit); the real queue is the connection's, bounded by the hub.
const MAX_WRITE_BUFFER: usize = 256 * 1024;
/// A single write that takes longer than this means the peer stopped reading: the
/// connection is dropped without a close handshake.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// After our close frame, how long the peer gets to answer with its own.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Completes the upgrade with small buffers and hands the socket to its task.
pub fn upgrade(ws: WebSocketUpgrade, conn: Connection) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        // Frames accumulate up to this before a write; every batch ends with a flush.
        .write_buffer_size(WRITE_BATCH)
        .max_write_buffer_size(MAX_WRITE_BUFFER)
        .max_message_size(MAX_INBOUND_BYTES)
        .max_frame_size(MAX_INBOUND_BYTES)
        .on_upgrade(move |socket| {
            // A debug span: at the default level it costs nothing per idle connection.
            let span = tracing::debug_span!("ws", conn = conn.id(), user_id = %conn.user());
            serve(Box::new(Parts { socket, conn })).instrument(span)
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

/// What a connection task owns. Handed over boxed: an `async fn` keeps its arguments
/// and the locals they are moved into side by side, which for these two (about half a
/// kilobyte) doubled the task's size for its whole life.
struct Parts {
    socket: WebSocket,
    conn: Connection,
}

async fn serve(parts: Box<Parts>) {
    let Parts {
        mut socket,
        mut conn,
    } = *parts;
    tracing::debug!("connected");
    let end = loop {
        tokio::select! {
            // Decisions first: once the hub has said "close", nothing more is sent.
            biased;
            reason = conn.disconnected() => break End::Close(reason),
            inbound = socket.recv() => {
                conn.touch();
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
                // Boxed, like every write below: the loop's own future stays small for
                // the long idle stretches, and a write's state exists only while it runs.
                if !Box::pin(send_frame(&mut socket, &conn, &reply)).await {
                    break End::Gone;
                }
            }
            next = conn.next_outgoing(true) => match next {
                Some(Outgoing::Frame(frame)) => {
                    if !Box::pin(send_batch(&mut socket, &mut conn, frame)).await {
                        break End::Gone;
                    }
                }
                Some(Outgoing::Ping) => {
                    if !Box::pin(send(&mut socket, Message::Ping(Default::default()))).await {
                        break End::Gone;
                    }
                }
                // The hub let go of the connection; it always says why first.
                None => break End::Close(conn.reason().unwrap_or(Disconnect::Shutdown)),
            },
        }
    };

    Box::pin(close(socket, conn, end)).await;
    tracing::debug!("disconnected");
}

/// Ends the connection as the loop decided: our close frame (then the peer's answer,
/// briefly), or the rest of the peer's close handshake.
async fn close(mut socket: WebSocket, conn: Connection, end: End) {
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
            // Only what is ready now: a replay page to read from history is not ready
            // either, the batch ends there.
            let Some(frame) = conn.try_next_frame() else {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the future an `async fn` returns, without calling it.
    fn future_size<A, F: std::future::Future>(_: impl FnOnce(A) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    #[test]
    fn an_idle_connection_task_stays_small() {
        // Every idle connection holds one of these for its whole life: keep it to a
        // fraction of the ~1 KB budget per connection (rarely used, larger states are
        // boxed while they run).
        let size = future_size(serve);
        println!(
            "serve future: {size} bytes (socket {}, connection {})",
            std::mem::size_of::<WebSocket>(),
            std::mem::size_of::<Connection>()
        );
        assert!(size <= 1024, "the connection future grew to {size} bytes");
    }
}

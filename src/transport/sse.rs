//! The Server-Sent Events transport, for networks that block WebSockets: the same
//! messages as the WebSocket, each as `event: <type>` with `data: <the JSON message>`,
//! durable ones with `id: <cursor>` (so the browser's `Last-Event-ID` resumes), and a
//! comment heartbeat every 25 s. Whenever the hub ends the connection (slow, revoked,
//! shutdown) or the credential expires, the stream simply ends. A client that stops
//! reading altogether never lets the stream be polled again (hyper waits on the socket),
//! so such a client is released below this module: the accept loop's write-stall guard
//! (`http::server::StallGuard`) fails the socket after 30 s without progress, and
//! dropping the response drops the hub connection with it.

use crate::realtime::protocol::Frame;
use crate::realtime::Connection;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;

/// Heartbeat comment interval.
const HEARTBEAT: Duration = Duration::from_secs(25);

/// The event stream response for one connection.
pub fn response(conn: Connection, expires_at: Option<DateTime<Utc>>) -> Response {
    let mut response = Sse::new(events(conn, expires_at))
        .keep_alive(KeepAlive::new().interval(HEARTBEAT).text("heartbeat"))
        .into_response();
    // Reverse proxies (nginx) would otherwise buffer the stream.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

fn events(
    conn: Connection,
    expires_at: Option<DateTime<Utc>>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let expiry = expires_at.map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO));
    let expires =
        tokio::time::Instant::now() + expiry.unwrap_or(Duration::from_secs(10 * 365 * 24 * 3600));
    futures_util::stream::unfold(Some(conn), move |state| async move {
        let mut conn = state?;
        let next = tokio::select! {
            biased;
            _ = conn.disconnected() => None,
            () = tokio::time::sleep_until(expires) => None,
            frame = conn.next_frame() => frame,
        };
        // Dropping the connection (on `None`) unregisters it.
        let frame = next?;
        conn.record_sent();
        Some((Ok(event(&frame)), Some(conn)))
    })
}

fn event(frame: &Frame) -> Event {
    // Types match `^[a-z][a-z0-9_]*$` and cursors `<hex>-<digits>`: neither can hold the
    // newline `Event` refuses.
    let event = Event::default().event(frame.kind()).data(frame.text());
    match frame.cursor() {
        Some(cursor) => event.id(cursor),
        None => event,
    }
}

//! The wire format of real-time messages, shared by every transport.
//!
//! Server to client, always `{"type","data","cursor"?,"timestamp"}`. Durable messages
//! (everything published) carry a cursor; control messages (`welcome`, `pong`,
//! `resumed`, `reset`, `error`) do not. A durable frame is serialized once, when it is
//! published (or replayed), and the same bytes go to every recipient on every transport.
//!
//! Client to server, only `{"type":"ping"}` today; anything else gets an `error` message
//! and the connection stays open.

use crate::domain::Cursor;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use std::sync::Arc;

/// One serialized server-to-client message. Cloning shares the bytes.
#[derive(Clone)]
pub struct Frame(Arc<FrameInner>);

struct FrameInner {
    kind: String,
    /// Position in the message log; `None` for control messages.
    seq: Option<i64>,
    cursor: Option<String>,
    json: Bytes,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("type", &self.0.kind)
            .field("seq", &self.0.seq)
            .field("len", &self.0.json.len())
            .finish()
    }
}

impl Frame {
    /// The message type (`task_update`, `welcome`, …): the SSE `event:` name.
    pub fn kind(&self) -> &str {
        &self.0.kind
    }

    /// The log position, for durable messages.
    pub fn seq(&self) -> Option<i64> {
        self.0.seq
    }

    /// The cursor, for durable messages: the SSE `id:`.
    pub fn cursor(&self) -> Option<&str> {
        self.0.cursor.as_deref()
    }

    /// The whole JSON message.
    pub fn json(&self) -> &Bytes {
        &self.0.json
    }

    /// The whole JSON message as text (it is always valid UTF-8: it came from a `String`).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.0.json).unwrap_or_default()
    }

    /// Size in bytes, for queue accounting.
    pub fn len(&self) -> usize {
        self.0.json.len()
    }

    /// Whether the frame is empty (never, in practice; here for clippy's sake).
    pub fn is_empty(&self) -> bool {
        self.0.json.is_empty()
    }
}

/// RFC 3339 with milliseconds, UTC: the `timestamp` of every message.
pub fn timestamp(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Builds a durable message from its stored parts. `data_json` is the JSON text of
/// the data object exactly as stored, so live delivery and replay produce the same bytes.
pub fn durable(kind: &str, data_json: &str, cursor: &Cursor, at: DateTime<Utc>) -> Frame {
    let seq = cursor.seq;
    let cursor = cursor.to_string();
    // Written by hand so the stored data text is embedded as is, without a parse and
    // re-serialization per replay. Every other part is a JSON-escaped string.
    let json = format!(
        "{{\"type\":{},\"data\":{},\"cursor\":{},\"timestamp\":{}}}",
        Value::from(kind),
        data_json,
        Value::from(cursor.as_str()),
        Value::from(timestamp(at)),
    );
    Frame(Arc::new(FrameInner {
        kind: kind.to_owned(),
        seq: Some(seq),
        cursor: Some(cursor),
        json: Bytes::from(json),
    }))
}

/// Builds a transient message: delivered to live connections only, never kept, so it
/// carries no cursor (a client cannot resume to it).
pub fn transient(kind: &str, data: &Value) -> Frame {
    let json = json!({ "type": kind, "data": data, "timestamp": timestamp(Utc::now()) });
    Frame(Arc::new(FrameInner {
        kind: kind.to_owned(),
        seq: None,
        cursor: None,
        json: Bytes::from(json.to_string()),
    }))
}

/// Builds a control message (no cursor).
pub fn control(kind: &'static str, data: Value) -> Frame {
    let json = json!({ "type": kind, "data": data, "timestamp": timestamp(Utc::now()) });
    Frame(Arc::new(FrameInner {
        kind: kind.to_owned(),
        seq: None,
        cursor: None,
        json: Bytes::from(json.to_string()),
    }))
}

/// `welcome {cursor, server_time}`: the first message on every connection.
pub fn welcome(cursor: &Cursor) -> Frame {
    control(
        "welcome",
        json!({ "cursor": cursor.to_string(), "server_time": timestamp(Utc::now()) }),
    )
}

/// `pong {received, server_time}`: the answer to a client ping.
pub fn pong(received: DateTime<Utc>) -> Frame {
    control(
        "pong",
        json!({ "received": timestamp(received), "server_time": timestamp(Utc::now()) }),
    )
}

/// `resumed {from, to, replayed}`: the replay after `?since=` is complete.
pub fn resumed(from: &Cursor, to: &Cursor, replayed: u64) -> Frame {
    control(
        "resumed",
        json!({ "from": from.to_string(), "to": to.to_string(), "replayed": replayed }),
    )
}

/// Why a resume could not replay the gap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetReason {
    /// The cursor is not one this server issues.
    InvalidCursor,
    /// The cursor belongs to another message log (wiped data, another cluster).
    EpochChanged,
    /// Messages after the cursor are no longer kept.
    HistoryExpired,
    /// The cursor is ahead of every message ever published.
    CursorAhead,
    /// The history could not be read.
    HistoryUnavailable,
    /// The broker delivered a message after newer ones had been sent (a broken
    /// ordering promise, detected by the hub): the client already moved past it.
    OutOfOrder,
}

impl ResetReason {
    /// The `reason` sent to the client.
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::InvalidCursor => "invalid_cursor",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::HistoryExpired => "history_expired",
            ResetReason::CursorAhead => "cursor_ahead",
            ResetReason::HistoryUnavailable => "history_unavailable",
            ResetReason::OutOfOrder => "out_of_order",
        }
    }
}

/// `reset {reason}`: the gap cannot be replayed; the client reloads its data.
pub fn reset(reason: ResetReason) -> Frame {
    control("reset", json!({ "reason": reason.as_str() }))
}

/// `error {code, message}` for a client message the server cannot act on.
pub fn error(code: &str, message: &str) -> Frame {
    control("error", json!({ "code": code, "message": message }))
}

/// A message a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inbound {
    /// `{"type":"ping"}`
    Ping,
}

/// Why a client message was refused; becomes an `error` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboundError {
    /// The `code` of the `error` message (`invalid_json`, `unknown_type`, …).
    pub code: &'static str,
    /// A sentence for a person.
    pub message: String,
}

impl InboundError {
    /// The `error` message to answer with.
    pub fn frame(&self) -> Frame {
        error(self.code, &self.message)
    }
}

/// Parses a client text message. Never panics, whatever the input.
pub fn parse_inbound(text: &str) -> Result<Inbound, InboundError> {
    let value: Value = serde_json::from_str(text).map_err(|e| InboundError {
        code: "invalid_json",
        message: format!("message is not valid JSON: {e}"),
    })?;
    let kind = value
        .as_object()
        .and_then(|o| o.get("type"))
        .and_then(Value::as_str)
        .ok_or_else(|| InboundError {
            code: "invalid_message",
            message: "message must be a JSON object with a string \"type\"".into(),
        })?;
    match kind {
        "ping" => Ok(Inbound::Ping),
        other => {
            // Echo at most a short, printable prefix of the unknown type.
            let shown: String = other.chars().take(64).filter(|c| !c.is_control()).collect();
            Err(InboundError {
                code: "unknown_type",
                message: format!("unknown message type {shown:?}; clients may send \"ping\""),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_frames_embed_data_and_cursor() {
        let at = DateTime::from_timestamp_millis(1_700_000_000_123).unwrap();
        let f = durable("note", r#"{"a":"<b>"}"#, &Cursor::new("ab", 7), at);
        let v: Value = serde_json::from_str(f.text()).unwrap();
        assert_eq!(v["type"], "note");
        assert_eq!(v["data"]["a"], "<b>");
        assert_eq!(v["cursor"], "ab-7");
        assert_eq!(v["timestamp"], "2023-11-14T22:13:20.123Z");
        assert_eq!(f.seq(), Some(7));
        assert_eq!(f.cursor(), Some("ab-7"));
    }

    #[test]
    fn control_frames_have_no_cursor() {
        let v: Value = serde_json::from_str(reset(ResetReason::HistoryExpired).text()).unwrap();
        assert_eq!(v["type"], "reset");
        assert_eq!(v["data"]["reason"], "history_expired");
        assert!(v.get("cursor").is_none());
        assert!(v["timestamp"].is_string());
    }

    #[test]
    fn inbound_parsing_never_panics_and_names_the_problem() {
        assert_eq!(parse_inbound(r#"{"type":"ping"}"#), Ok(Inbound::Ping));
        assert_eq!(parse_inbound("{").unwrap_err().code, "invalid_json");
        assert_eq!(parse_inbound("[]").unwrap_err().code, "invalid_message");
        assert_eq!(
            parse_inbound(r#"{"type":1}"#).unwrap_err().code,
            "invalid_message"
        );
        assert_eq!(
            parse_inbound(r#"{"type":"nope"}"#).unwrap_err().code,
            "unknown_type"
        );
        for garbage in ["", "\u{0}", "null", "\"ping\"", "{\"type\":\"\u{7}\"}"] {
            let _ = parse_inbound(garbage);
        }
    }
}

//! Real-time message types and cursors.

use super::ParseError;
use serde::Serialize;
use std::fmt;

/// The `type` of a real-time message: `^[a-z][a-z0-9_]{0,63}$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct MessageType(String);

impl MessageType {
    /// Types the server uses for its own control messages; nobody may publish them.
    pub const RESERVED: [&'static str; 5] = ["welcome", "pong", "resumed", "reset", "error"];

    /// Parses a type a client wants to publish: the pattern, and not a reserved type.
    pub fn parse_publishable(raw: &str) -> Result<Self, ParseError> {
        let ty = Self::parse_any(raw)?;
        if Self::RESERVED.contains(&ty.as_str()) {
            return Err(ParseError::new(format!(
                "type {raw:?} is reserved for the server's control messages"
            )));
        }
        Ok(ty)
    }

    /// Parses any well-formed type, reserved ones included.
    pub fn parse_any(raw: &str) -> Result<Self, ParseError> {
        let mut chars = raw.chars();
        let valid = raw.len() <= 64
            && chars.next().is_some_and(|c| c.is_ascii_lowercase())
            && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ParseError::new("type must match ^[a-z][a-z0-9_]{0,63}$"))
        }
    }

    /// A type the server itself sends (`task_update`, `system`, …); not checked.
    pub fn known(raw: &'static str) -> Self {
        Self(raw.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A position in the stream of messages addressed to a user.
///
/// Every durable message gets the next value of one store-wide sequence, so a user's
/// position is simply the sequence number of the last message they handled. The epoch
/// names the message log the number belongs to: a cursor from another log (a wiped data
/// directory, another cluster) is recognised and answered with `reset` rather than being
/// misread as a position in this one. On the wire it is the opaque string `<epoch>-<seq>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub epoch: String,
    pub seq: i64,
}

impl Cursor {
    pub fn new(epoch: impl Into<String>, seq: i64) -> Self {
        Self {
            epoch: epoch.into(),
            seq,
        }
    }

    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        let invalid = || ParseError::new("cursor is not one this server issued");
        let (epoch, seq) = raw.trim().rsplit_once('-').ok_or_else(invalid)?;
        let seq: i64 = seq.parse().map_err(|_| invalid())?;
        let epoch_ok =
            !epoch.is_empty() && epoch.len() <= 64 && epoch.chars().all(|c| c.is_ascii_hexdigit());
        if !epoch_ok || seq < 0 {
            return Err(invalid());
        }
        Ok(Self::new(epoch, seq))
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl Serialize for Cursor {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_pattern_and_reserved() {
        assert!(MessageType::parse_publishable("notification").is_ok());
        assert!(MessageType::parse_publishable("a1_b").is_ok());
        for bad in [
            "", "1a", "A", "a-b", "welcome", "pong", "resumed", "reset", "error",
        ] {
            assert!(MessageType::parse_publishable(bad).is_err(), "{bad:?}");
        }
        assert!(MessageType::parse_publishable(&"a".repeat(65)).is_err());
        assert!(MessageType::parse_publishable(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn cursor_round_trips() {
        let c = Cursor::new("00ff", 42);
        assert_eq!(Cursor::parse(&c.to_string()).unwrap(), c);
        for bad in ["", "42", "zz-1", "00ff--1", "00ff-x"] {
            assert!(Cursor::parse(bad).is_err(), "{bad:?}");
        }
    }
}

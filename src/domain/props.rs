//! Property tests for the domain parsers every network input goes through: cursors (the
//! `?since=` of a resume and `Last-Event-ID`), message types, capabilities, statuses,
//! priorities, task text, emails, names and passwords. Whatever the input, parsing
//! never panics; it accepts exactly what the contract allows and says why otherwise.

use super::{Capability, Cursor, Email, FullName, MessageType, Password, Priority, TaskQuery};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Cursors the server issues read back as themselves.
    #[test]
    fn issued_cursors_round_trip(epoch in "[0-9a-f]{1,64}", seq in 0i64..=i64::MAX) {
        let cursor = Cursor::new(epoch, seq);
        prop_assert_eq!(Cursor::parse(&cursor.to_string()), Ok(cursor));
    }

    /// Anything a client sends as a cursor: a cursor of the issued form, or a refusal.
    #[test]
    fn any_cursor_text_parses_or_is_refused(raw in prop_oneof![
        ".{0,80}",
        "[0-9a-fA-F]{0,70}-[0-9-]{0,22}",
        "[0-9a-f]{1,8}--?[0-9]{1,3}",
    ]) {
        match Cursor::parse(&raw) {
            Ok(c) => {
                prop_assert!(c.seq >= 0);
                prop_assert!(!c.epoch.is_empty() && c.epoch.len() <= 64);
                prop_assert!(c.epoch.chars().all(|ch| ch.is_ascii_hexdigit()));
            }
            Err(e) => prop_assert_eq!(e.0, "cursor is not one this server issued"),
        }
    }

    /// A message type is accepted exactly when it matches `^[a-z][a-z0-9_]{0,63}$`.
    #[test]
    fn message_types_follow_the_pattern(raw in prop_oneof![".{0,70}", "[a-z][a-z0-9_]{0,70}"]) {
        let matches = raw.len() <= 64
            && raw.starts_with(|c: char| c.is_ascii_lowercase())
            && raw.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        prop_assert_eq!(MessageType::parse_any(&raw).is_ok(), matches);
        let reserved = MessageType::RESERVED.contains(&raw.as_str());
        prop_assert_eq!(MessageType::parse_publishable(&raw).is_ok(), matches && !reserved);
    }

    /// Capabilities: trimmed, lower-cased, then `^[a-z0-9][a-z0-9_.-]{0,63}$`.
    #[test]
    fn capabilities_are_normalised_or_refused(raw in prop_oneof![".{0,70}", "[A-Za-z0-9_.-]{0,70}"]) {
        match Capability::parse(&raw) {
            Ok(cap) => {
                let s = cap.as_str();
                prop_assert_eq!(s, raw.trim().to_lowercase());
                prop_assert!(!s.is_empty() && s.len() <= 64);
                prop_assert!(!s.starts_with(['_', '.', '-']));
            }
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    /// Priorities, task text, emails, names and passwords: no panic, a reason on refusal.
    #[test]
    fn account_and_task_fields_parse_or_explain(raw in prop_oneof![".{0,300}", "\\PC{0,20}@\\PC{0,20}"]) {
        if let Err(e) = Priority::parse(&raw) { prop_assert!(!e.0.is_empty()); }
        match TaskQuery::parse(raw.clone()) {
            Ok(q) => prop_assert!(!q.as_str().trim().is_empty()),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
        match Email::parse(&raw) {
            Ok(email) => {
                prop_assert!(email.as_str().contains('@'));
                prop_assert!(!email.as_str().chars().any(char::is_whitespace));
            }
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
        if let Err(e) = FullName::parse(&raw) { prop_assert!(!e.0.is_empty()); }
        if let Err(e) = Password::parse_new(raw.clone()) { prop_assert!(!e.0.is_empty()); }
    }
}

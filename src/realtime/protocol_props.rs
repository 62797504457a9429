//! Property tests for the real-time wire format: what a client sends over the WebSocket
//! (`parse_inbound`) and the frames the server builds from stored parts (`durable`).
//! Whatever a client sends, parsing never panics; a refusal names the problem with a
//! code the guide lists and becomes a well-formed `error` frame.

use super::protocol::{durable, parse_inbound, Inbound};
use crate::domain::Cursor;
use chrono::DateTime;
use proptest::prelude::*;
use serde_json::Value;

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
        Just(Value::from("ping")),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![Just("type".to_owned()), ".{0,8}"],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// What a client may put in a text frame: anything, JSON or not.
fn client_text() -> impl Strategy<Value = String> {
    prop_oneof![
        ".{0,200}",
        json_value().prop_map(|v| v.to_string()),
        (".{0,100}").prop_map(|t| format!(r#"{{"type":{}}}"#, Value::from(t))),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// The model: a JSON object whose `type` is the string `ping` is a ping; invalid
    /// JSON is `invalid_json`; JSON without a string `type` is `invalid_message`; any
    /// other type is `unknown_type`.
    #[test]
    fn client_messages_parse_as_the_model_says(text in client_text()) {
        let parsed: Option<Value> = serde_json::from_str(&text).ok();
        let kind = parsed
            .as_ref()
            .and_then(Value::as_object)
            .and_then(|o| o.get("type"))
            .and_then(Value::as_str);
        match (parse_inbound(&text), &parsed, kind) {
            (Ok(Inbound::Ping), Some(_), Some("ping")) => {}
            (Err(e), None, _) => prop_assert_eq!(e.code, "invalid_json"),
            (Err(e), Some(_), None) => prop_assert_eq!(e.code, "invalid_message"),
            (Err(e), Some(_), Some(k)) if k != "ping" => prop_assert_eq!(e.code, "unknown_type"),
            (result, _, _) => prop_assert!(false, "{text:?} gave {result:?}"),
        }
    }

    /// A refusal becomes an `error` frame that is valid JSON, echoes no control
    /// characters and stays small whatever the client sent.
    #[test]
    fn refusals_are_well_formed_error_frames(text in client_text()) {
        if let Err(err) = parse_inbound(&text) {
            prop_assert!(!err.message.is_empty());
            let frame = err.frame();
            let value: Value = serde_json::from_str(frame.text()).expect("valid JSON");
            prop_assert_eq!(&value["type"], "error");
            prop_assert_eq!(&value["data"]["code"], err.code);
            prop_assert!(value.get("cursor").is_none());
            if err.code == "unknown_type" {
                prop_assert!(!err.message.chars().any(char::is_control));
                // At most 64 characters of the type are echoed, each escaped to at most
                // `\u{10ffff}`.
                prop_assert!(err.message.chars().count() < 64 * 10 + 100, "{}", err.message);
            }
        }
    }

    /// Any bytes at all (the transport hands over text, but be sure): no panic.
    #[test]
    fn arbitrary_bytes_as_text_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let text = String::from_utf8_lossy(&bytes);
        let _ = parse_inbound(&text);
    }

    /// A durable frame built from any published type, stored data and cursor is valid
    /// JSON that carries them unchanged.
    #[test]
    fn durable_frames_are_valid_json(
        kind in "[a-z][a-z0-9_]{0,63}",
        data in prop::collection::btree_map(".{0,8}", json_value(), 0..4),
        epoch in "[0-9a-f]{1,32}",
        seq in 0i64..i64::MAX,
        millis in 0i64..4_102_444_800_000,
    ) {
        let data = Value::Object(data.into_iter().collect());
        let cursor = Cursor::new(epoch, seq);
        let at = DateTime::from_timestamp_millis(millis).expect("in range");
        let stored = data.to_string();
        let frame = durable(&kind, &stored, &cursor, at);
        let value: Value = serde_json::from_str(frame.text()).expect("valid JSON");
        prop_assert_eq!(&value["type"], kind.as_str());
        // Compared with the stored text read back the same way (floats need not
        // survive a text round trip bit for bit; the embedded text is what matters).
        let stored: Value = serde_json::from_str(&stored).expect("stored data is JSON");
        prop_assert_eq!(&value["data"], &stored);
        let text = cursor.to_string();
        prop_assert_eq!(&value["cursor"], text.as_str());
        prop_assert_eq!(Cursor::parse(value["cursor"].as_str().unwrap()).ok(), Some(cursor));
        prop_assert_eq!(frame.seq(), Some(seq));
    }
}

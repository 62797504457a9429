//! Property tests for the parsers of the HTTP boundary: request bodies (runtime, tasks,
//! publish, accounts, keys, agents), query strings (list paging and filters, the
//! analytics window). Whatever a client sends, parsing never panics, and a refusal is a
//! 400 with a code and a sentence in the contract's `{error, message}` shape.

use super::error::ApiError;
use super::extract::parse_json;
use super::tasks::{page_params, PageQuery};
use super::{agents, api_keys, realtime, runtime, tasks, users};
use crate::domain::{Capability, TaskStatus};
use crate::tasks::analytics::Window;
use axum::extract::Query;
use axum::http::{StatusCode, Uri};
use axum::response::IntoResponse;
use proptest::prelude::*;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Any JSON value, a few levels deep.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,24}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 32, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// An object with the field names the API's bodies use (and a few others), any values:
/// closer to a real body than random JSON, so the checks after parsing are reached too.
fn body_object() -> impl Strategy<Value = Value> {
    const FIELDS: [&str; 24] = [
        "wait_s",
        "max_tasks",
        "progress",
        "message",
        "result",
        "error",
        "retryable",
        "text",
        "stream",
        "chunks",
        "query",
        "capability",
        "agent_id",
        "priority",
        "timeout_s",
        "type",
        "data",
        "user_id",
        "name",
        "description",
        "capabilities",
        "email",
        "password",
        "full_name",
    ];
    prop::collection::btree_map(prop::sample::select(&FIELDS[..]), json_value(), 0..6)
        .prop_map(|m| Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
}

/// Raw body bytes: random bytes, random text, random JSON, body-like objects.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        ".{0,64}".prop_map(String::into_bytes),
        json_value().prop_map(|v| v.to_string().into_bytes()),
        body_object().prop_map(|v| v.to_string().into_bytes()),
    ]
}

/// A refusal is a 400 with one of the body codes and a message.
fn assert_clear_body_error(err: &ApiError) -> Result<(), TestCaseError> {
    match err {
        ApiError::BadRequest { code, message } => {
            prop_assert!(
                ["invalid_json", "validation_error"].contains(code),
                "unexpected code {code}"
            );
            prop_assert!(!message.is_empty());
            Ok(())
        }
        other => Err(TestCaseError::fail(format!("not a 400: {other:?}"))),
    }
}

/// Parses `bytes` as the body type `T`; it may succeed or fail, never panic, and a
/// failure is clear.
fn check_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<(), TestCaseError> {
    match parse_json::<T>(bytes) {
        Ok(_) => Ok(()),
        Err(err) => assert_clear_body_error(&err),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn runtime_bodies_parse_or_refuse_clearly(bytes in body_bytes()) {
        check_body::<runtime::ClaimBody>(&bytes)?;
        check_body::<runtime::ProgressBody>(&bytes)?;
        check_body::<runtime::CompleteBody>(&bytes)?;
        check_body::<runtime::FailBody>(&bytes)?;
    }

    #[test]
    fn task_account_key_and_agent_bodies_parse_or_refuse_clearly(bytes in body_bytes()) {
        check_body::<tasks::SubmitBody>(&bytes)?;
        check_body::<users::RegisterBody>(&bytes)?;
        check_body::<users::LoginBody>(&bytes)?;
        check_body::<users::ProfileBody>(&bytes)?;
        check_body::<users::PasswordBody>(&bytes)?;
        check_body::<api_keys::CreateBody>(&bytes)?;
        check_body::<agents::RegisterBody>(&bytes)?;
        check_body::<agents::UpdateBody>(&bytes)?;
    }

    #[test]
    fn publish_bodies_parse_or_refuse_clearly(bytes in body_bytes()) {
        check_body::<realtime::PublishBody>(&bytes)?;
        check_body::<realtime::SendBody>(&bytes)?;
    }

    /// A publish's `type` and `data` are accepted exactly when the contract allows them.
    #[test]
    fn publish_messages_are_accepted_exactly_as_the_contract_says(
        kind in prop_oneof![".{0,70}", "[a-z][a-z0-9_]{0,70}", Just("welcome".to_owned())],
        data in json_value(),
    ) {
        let valid_kind = kind.len() <= 64
            && kind.starts_with(|c: char| c.is_ascii_lowercase())
            && kind.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !["welcome", "pong", "resumed", "reset", "error"].contains(&kind.as_str());
        let expected = valid_kind && data.is_object();
        match realtime::Message::parse(&kind, data) {
            Ok(_) => prop_assert!(expected, "accepted {kind:?}"),
            Err(err) => {
                prop_assert!(!expected, "refused {kind:?}: {err}");
                assert_clear_body_error(&err)?;
            }
        }
    }

    /// `?limit=&cursor=` from any query string: 1–200 and a positive cursor, or a 400.
    #[test]
    fn paging_parameters_are_bounded_or_refused(
        limit in prop::option::of(prop_oneof![".{0,12}", "-?[0-9]{1,22}", Just(String::new())]),
        cursor in prop::option::of(prop_oneof![".{0,12}", "-?[0-9]{1,22}"]),
    ) {
        let mut query = String::new();
        for (name, value) in [("limit", &limit), ("cursor", &cursor)] {
            if let Some(value) = value {
                let encoded: String = value.bytes().map(|b| format!("%{b:02X}")).collect();
                query.push_str(&format!("{name}={encoded}&"));
            }
        }
        let uri: Uri = format!("/api/v1/tasks?{query}").parse().expect("a URI");
        let Query(page) = Query::<PageQuery>::try_from_uri(&uri).expect("strings always parse");
        match page_params(&page) {
            Ok((limit, cursor)) => {
                prop_assert!((1..=200).contains(&limit));
                prop_assert!(cursor.is_none_or(|c| c > 0));
            }
            Err(err) => assert_clear_body_error(&err)?,
        }
    }

    /// List filters and the analytics window: a value or a clear refusal, never a panic.
    #[test]
    fn filters_and_window_parse_or_refuse(raw in prop_oneof![
        ".{0,70}",
        "[a-z0-9_.-]{1,70}",
        prop::sample::select(vec!["queued", "running", "1h", "24h", "7d", "general"])
            .prop_map(str::to_owned),
    ]) {
        match Window::parse(&raw) {
            Ok(_) => prop_assert!(["1h", "24h", "7d"].contains(&raw.as_str())),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
        match TaskStatus::parse(&raw) {
            Ok(status) => prop_assert_eq!(status.as_str(), raw.as_str()),
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
        match Capability::parse(&raw) {
            Ok(cap) => {
                prop_assert!(!cap.as_str().is_empty() && cap.as_str().len() <= 64);
                prop_assert!(cap.as_str().chars().all(|c| c.is_ascii_lowercase()
                    || c.is_ascii_digit() || "_.-".contains(c)));
            }
            Err(e) => prop_assert!(!e.0.is_empty()),
        }
    }

    /// Every refusal renders as the contract's `{error, message}` with a 4xx status.
    #[test]
    fn refusals_render_in_the_contract_shape(bytes in body_bytes()) {
        if let Err(err) = parse_json::<tasks::SubmitBody>(&bytes) {
            let response = err.into_response();
            prop_assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let body = futures_util::FutureExt::now_or_never(
                axum::body::to_bytes(response.into_body(), 1 << 20),
            )
            .expect("a buffered body is ready at once")
            .expect("the body");
            let body: Value = serde_json::from_slice(&body).expect("JSON");
            prop_assert!(body["error"].is_string(), "{body}");
            prop_assert!(body["message"].is_string(), "{body}");
        }
    }
}

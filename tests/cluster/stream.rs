//! What one user's client saw of their stream across connections and nodes, checked as
//! it arrives against the contract's delivery guarantees: every durable message at most
//! once (no cursor twice, no `load` message twice), each publisher's messages in the
//! order they were acknowledged, never a `reset` (the history keeps far more than these
//! tests send); and the publishers whose acknowledged messages must all arrive.
#![allow(dead_code)] // A shared harness: not every test uses every method.

use crate::node::{Api, Next, User, WsClient};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// The message type the publishers send: `{"src": "<publisher>", "n": <0, 1, …>}`.
pub const LOAD: &str = "load";

/// A client's view of its stream, kept across reconnections.
#[derive(Debug, Default)]
pub struct Seen {
    /// The cursor of the last durable message handled (what the client resumes from).
    pub cursor: String,
    cursors: HashSet<String>,
    /// Every `load` message seen, by publisher.
    pub loads: HashMap<String, BTreeSet<u64>>,
    last_n: HashMap<String, u64>,
    /// Task ids by the statuses their `task_update`s announced.
    pub task_updates: HashMap<String, Vec<String>>,
    /// `resumed` messages seen.
    pub resumes: usize,
}

impl Seen {
    /// Starts from a `welcome`'s cursor (nothing seen yet).
    pub fn from_welcome(welcome: &Value) -> Seen {
        Seen {
            cursor: welcome["data"]["cursor"]
                .as_str()
                .expect("welcome cursor")
                .to_owned(),
            ..Seen::default()
        }
    }

    /// Takes one message; `Err` when it breaks a guarantee.
    pub fn take(&mut self, message: &Value) -> Result<(), String> {
        match message["type"].as_str() {
            Some("welcome" | "pong") => return Ok(()),
            Some("resumed") => {
                self.resumes += 1;
                return Ok(());
            }
            Some("reset") => return Err(format!("the server could not replay: {message}")),
            Some("error") => return Err(format!("the server reported an error: {message}")),
            _ => {}
        }
        let Some(cursor) = message["cursor"].as_str() else {
            return Ok(()); // not durable (e.g. task_output chunks are not under test here)
        };
        if !self.cursors.insert(cursor.to_owned()) {
            return Err(format!(
                "message delivered twice (cursor {cursor}): {message}"
            ));
        }
        self.cursor = cursor.to_owned();
        let data = &message["data"];
        match message["type"].as_str() {
            Some(LOAD) => {
                let src = data["src"].as_str().expect("src").to_owned();
                let n = data["n"].as_u64().expect("n");
                if !self.loads.entry(src.clone()).or_default().insert(n) {
                    return Err(format!("{src}#{n} delivered twice: {message}"));
                }
                if let Some(&last) = self.last_n.get(&src) {
                    if n < last {
                        return Err(format!(
                            "{src}#{n} arrived after {src}#{last}, out of publish order"
                        ));
                    }
                }
                self.last_n.insert(src, n);
            }
            Some("task_update") => {
                let id = data["task_id"].as_str().expect("task_id").to_owned();
                let status = data["status"].as_str().unwrap_or_default().to_owned();
                self.task_updates.entry(id).or_default().push(status);
            }
            _ => {}
        }
        Ok(())
    }

    /// The acknowledged `load` messages not seen yet, as `src#n` (at most 20 listed).
    pub fn missing(&self, acked: &HashMap<String, Vec<u64>>) -> Vec<String> {
        let mut out = Vec::new();
        for (src, ns) in acked {
            let seen = self.loads.get(src);
            for n in ns {
                if !seen.is_some_and(|s| s.contains(n)) {
                    out.push(format!("{src}#{n}"));
                }
            }
        }
        out.sort();
        out
    }

    /// Reads `client` until it closes or is silent for `quiet`, or until `enough` holds;
    /// panics on a broken guarantee. Returns what ended the read.
    pub async fn read(
        &mut self,
        client: &mut WsClient,
        quiet: Duration,
        enough: impl Fn(&Seen) -> bool,
    ) -> Next {
        loop {
            if enough(self) {
                return Next::Silent;
            }
            match client.next_within(quiet).await {
                Next::Message(message) => {
                    if let Err(broken) = self.take(&message) {
                        panic!("{broken}");
                    }
                }
                other => return other,
            }
        }
    }
}

/// Publishes `load` messages `{src, n}` for n in `0..count` to `user` through `api`, one
/// at a time, each waiting for its answer (so each is acknowledged before the next is
/// sent); returns the acknowledged `n`s. With `stop_on_error` the loop ends at the first
/// failure (its node died); otherwise it goes on (a broker outage), pausing briefly.
pub async fn publish_loads(
    api: Api,
    admin: User,
    user_id: String,
    src: String,
    count: u64,
    stop_on_error: bool,
) -> Vec<u64> {
    let mut acked = Vec::new();
    for n in 0..count {
        let answer = api
            .try_call(
                Method::POST,
                &format!("/api/v1/ws/user/{user_id}"),
                Some(&admin.token),
                Some(json!({ "type": LOAD, "data": { "src": src, "n": n } })),
            )
            .await;
        match answer {
            Ok((StatusCode::ACCEPTED, _)) => acked.push(n),
            Ok((status, body)) if status.is_client_error() => {
                panic!("publish {src}#{n} refused with {status}: {body}")
            }
            _ if stop_on_error => break,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    acked
}

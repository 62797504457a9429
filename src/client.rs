//! The terminal client: `zerostate tasks submit "query" [--follow]` and
//! `zerostate tasks watch ID`, for scripts and people at a shell. It speaks only the
//! public API with an API key (`ZEROSTATE_API_KEY`), like any other client.
//!
//! Following a task reads `GET /api/v1/tasks/{id}/output/stream` (Server-Sent Events)
//! and prints each chunk as it arrives: the `output` stream on stdout, the `log` stream
//! on stderr. A dropped connection is resumed with `Last-Event-ID`, and a gap in `seq`
//! is filled from `GET …/output?after=`, so every chunk is printed once, in order. When
//! the stream ends, the result is printed and the exit status says how the task ended
//! (see [`Exit`]).

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::Write;
use std::time::Duration;

/// A stream silent this long counts as dropped (the server sends heartbeats).
const STREAM_SILENCE: Duration = Duration::from_secs(75);
/// Backoff between reconnections: doubles from the first to the last.
const RETRY_FIRST: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(10);
/// How long the server may stay unreachable before following gives up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(300);

/// `zerostate tasks …`
#[derive(Debug, Subcommand)]
pub enum TasksCommand {
    /// Submit a task and print its id; with --follow, print its output as it streams,
    /// then its result, and exit 0 (completed), 1 (failed) or 3 (canceled).
    Submit(SubmitArgs),
    /// Print a task's output from the start as it streams, then its result; exit 0
    /// (completed), 1 (failed) or 3 (canceled).
    Watch(WatchArgs),
}

/// Where the server is and the credential to use.
#[derive(Debug, Clone, Args)]
pub struct ConnectArgs {
    /// Server base URL.
    #[arg(
        long,
        env = "ZEROSTATE_SERVER",
        default_value = "http://localhost:8080"
    )]
    pub server: String,
    /// API key (`zs_…`); prefer the environment variable, which stays out of the process
    /// list.
    #[arg(long, env = "ZEROSTATE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

#[derive(Debug, Clone, Args)]
pub struct SubmitArgs {
    /// The task's query.
    pub query: String,
    /// Capability the task needs (default on the server: `general`).
    #[arg(long)]
    pub capability: Option<String>,
    /// Run it on this agent (its id).
    #[arg(long = "agent")]
    pub agent_id: Option<String>,
    /// `low`, `normal`, `high` or `critical`.
    #[arg(long, value_parser = ["low", "normal", "high", "critical"])]
    pub priority: Option<String>,
    /// Seconds the task may run (server default 300, at most 3600).
    #[arg(long)]
    pub timeout_s: Option<u32>,
    /// Attempts before the task fails for good (1–10, server default 3).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// A second submit with the same key (within 24 h) returns the first task.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Do not start before this time (RFC 3339).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Print the output as it streams, then the result; exit with the task's outcome.
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WatchArgs {
    /// The task's id.
    pub id: String,
    #[command(flatten)]
    pub connect: ConnectArgs,
}

/// How a followed task ended, as the process's exit status. `main` turns this error
/// into the exit code without printing it again (the client already said why).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Exit {
    /// Exit 1: the task failed.
    #[error("the task failed")]
    Failed,
    /// Exit 3: the task was canceled (2 is clap's usage error).
    #[error("the task was canceled")]
    Canceled,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> u8 {
        match self {
            Exit::Failed => 1,
            Exit::Canceled => 3,
        }
    }
}

/// Runs one `tasks` command.
pub async fn run(command: TasksCommand) -> anyhow::Result<()> {
    match command {
        TasksCommand::Submit(args) => submit(args).await,
        TasksCommand::Watch(args) => {
            let api = Api::new(&args.connect)?;
            follow(&api, &args.id).await
        }
    }
}

async fn submit(args: SubmitArgs) -> anyhow::Result<()> {
    let api = Api::new(&args.connect)?;
    let mut body = json!({ "query": args.query });
    let options = [
        ("capability", args.capability.map(Value::from)),
        ("agent_id", args.agent_id.map(Value::from)),
        ("priority", args.priority.map(Value::from)),
        ("timeout_s", args.timeout_s.map(Value::from)),
        ("max_attempts", args.max_attempts.map(Value::from)),
        ("idempotency_key", args.idempotency_key.map(Value::from)),
        ("run_at", args.run_at.map(Value::from)),
    ];
    for (name, value) in options {
        if let Some(value) = value {
            body[name] = value;
        }
    }
    let answer = api
        .send(api.client.post(api.url("/api/v1/tasks/submit")).json(&body))
        .await
        .context("submitting the task")?;
    let id = answer["task_id"]
        .as_str()
        .context("the server's answer has no task_id")?
        .to_owned();
    if answer["duplicate"] == true {
        eprintln!("(an earlier task with this idempotency key)");
    }
    if !args.follow {
        println!("{id}");
        return Ok(());
    }
    eprintln!("task {id}");
    follow(&api, &id).await
}

/// Prints the task's output as it streams, then its result; the task's outcome
/// becomes the result of the command.
async fn follow(api: &Api, id: &str) -> anyhow::Result<()> {
    let mut printer = Printer::default();
    stream_output(api, id, &mut printer).await?;
    let outcome = api
        .send(
            api.client
                .get(api.url(&format!("/api/v1/tasks/{id}/result"))),
        )
        .await
        .context("reading the result")?;
    printer.end_line();
    match outcome["status"].as_str() {
        Some("completed") => {
            match &outcome["result"] {
                Value::Null => {}
                Value::String(text) => println!("{text}"),
                other => println!("{}", serde_json::to_string_pretty(other)?),
            }
            Ok(())
        }
        Some("failed") => {
            let error = outcome["error"].as_str().unwrap_or("no reason given");
            eprintln!("task failed: {error}");
            Err(Exit::Failed.into())
        }
        Some("canceled") => {
            eprintln!("task canceled");
            Err(Exit::Canceled.into())
        }
        other => bail!("the task ended in an unexpected status {other:?}"),
    }
}

/// One chunk of a task's output.
#[derive(Debug, Deserialize)]
struct Chunk {
    seq: u64,
    #[serde(default = "output_stream")]
    stream: String,
    text: String,
}

fn output_stream() -> String {
    "output".to_owned()
}

#[derive(Debug, Deserialize)]
struct OutputPage {
    chunks: Vec<Chunk>,
}

/// Follows the output stream to its `end`, reconnecting on drops.
async fn stream_output(api: &Api, id: &str, printer: &mut Printer) -> anyhow::Result<()> {
    let url = api.url(&format!("/api/v1/tasks/{id}/output/stream"));
    let mut failures = 0u32;
    let mut trouble_since: Option<tokio::time::Instant> = None;
    loop {
        let mut request = api
            .client
            .get(&url)
            .bearer_auth(&api.key)
            .header(reqwest::header::ACCEPT, "text/event-stream");
        if printer.last > 0 {
            request = request.header("last-event-id", printer.last.to_string());
        }
        match request.send().await {
            Ok(response) if response.status() == StatusCode::OK => {
                if read_stream(api, id, response, printer).await? {
                    // Anything the stream did not carry is in the store.
                    fill(api, id, None, printer).await?;
                    return Ok(());
                }
                failures = 0;
                trouble_since = None;
            }
            Ok(response)
                if response.status().is_client_error()
                    && response.status() != StatusCode::TOO_MANY_REQUESTS =>
            {
                return Err(server_error(response).await);
            }
            Ok(response) => {
                tracing::debug!(status = %response.status(), "output stream refused; retrying");
            }
            Err(err) => tracing::debug!(error = %err, "output stream failed; retrying"),
        }
        let since = *trouble_since.get_or_insert_with(tokio::time::Instant::now);
        if since.elapsed() > GIVE_UP_AFTER {
            bail!("lost the connection to {} for too long", api.base);
        }
        let pause = RETRY_FIRST
            .saturating_mul(1 << failures.min(8))
            .min(RETRY_MAX);
        failures = failures.saturating_add(1);
        tokio::time::sleep(pause).await;
    }
}

/// Reads one connection's events; true once the `end` event came, false when the
/// connection dropped first.
async fn read_stream(
    api: &Api,
    id: &str,
    mut response: reqwest::Response,
    printer: &mut Printer,
) -> anyhow::Result<bool> {
    let mut parser = SseParser::default();
    loop {
        let bytes = match tokio::time::timeout(STREAM_SILENCE, response.chunk()).await {
            Ok(Ok(Some(bytes))) => bytes,
            Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return Ok(false),
        };
        for (event, data) in parser.push(&bytes) {
            match event.as_str() {
                "output" => {
                    let Ok(chunk) = serde_json::from_str::<Chunk>(&data) else {
                        continue;
                    };
                    if chunk.seq > printer.last + 1 {
                        fill(api, id, Some(chunk.seq - 1), printer).await?;
                    }
                    printer.print(chunk)?;
                }
                "end" => return Ok(true),
                _ => {}
            }
        }
    }
}

/// Prints stored chunks after the last printed one, up to `until` (None: all).
async fn fill(
    api: &Api,
    id: &str,
    until: Option<u64>,
    printer: &mut Printer,
) -> anyhow::Result<()> {
    loop {
        if until.is_some_and(|u| printer.last >= u) {
            return Ok(());
        }
        let path = format!("/api/v1/tasks/{id}/output?after={}", printer.last);
        let page: OutputPage = serde_json::from_value(
            api.send(api.client.get(api.url(&path)))
                .await
                .context("reading the task's output")?,
        )
        .context("the server's output page is not what the contract says")?;
        let before = printer.last;
        for chunk in page.chunks {
            if until.is_some_and(|u| chunk.seq > u) {
                return Ok(());
            }
            printer.print(chunk)?;
        }
        if printer.last == before {
            return Ok(());
        }
    }
}

/// Writes chunks in order, each once.
#[derive(Default)]
struct Printer {
    /// The seq of the last chunk printed.
    last: u64,
    /// Whether stdout's last byte was not a newline (the result starts on a new line).
    mid_line: bool,
}

impl Printer {
    fn print(&mut self, chunk: Chunk) -> anyhow::Result<()> {
        if chunk.seq != self.last + 1 {
            return Ok(()); // already printed (a replay after a reconnect)
        }
        self.last = chunk.seq;
        if chunk.stream == "log" {
            let mut err = std::io::stderr().lock();
            err.write_all(chunk.text.as_bytes())?;
            err.flush()?;
        } else if !chunk.text.is_empty() {
            let mut out = std::io::stdout().lock();
            out.write_all(chunk.text.as_bytes())?;
            out.flush()?;
            self.mid_line = !chunk.text.ends_with('\n');
        }
        Ok(())
    }

    fn end_line(&mut self) {
        if self.mid_line {
            println!();
            self.mid_line = false;
        }
    }
}

/// Splits a Server-Sent Events byte stream into `(event, data)` pairs.
#[derive(Default)]
struct SseParser {
    buffer: Vec<u8>,
}

impl SseParser {
    fn push(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find_blank_line(&self.buffer) {
            let block: Vec<u8> = self.buffer.drain(..end.1).collect();
            let block = String::from_utf8_lossy(&block[..end.0]);
            let (mut event, mut data) = ("message".to_owned(), Vec::new());
            for line in block.lines() {
                if line.starts_with(':') {
                    continue; // a comment: the heartbeat
                }
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => event = value.to_owned(),
                    "data" => data.push(value.to_owned()),
                    _ => {}
                }
            }
            if !data.is_empty() {
                events.push((event, data.join("\n")));
            }
        }
        events
    }
}

/// The end of the first event block: (where its text ends, where the next begins).
fn find_blank_line(buffer: &[u8]) -> Option<(usize, usize)> {
    let lf = buffer
        .windows(2)
        .position(|w| w == b"\n\n")
        .map(|i| (i, i + 2));
    let crlf = buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, i + 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The server's API as this client uses it.
struct Api {
    client: reqwest::Client,
    base: String,
    key: String,
}

impl Api {
    fn new(connect: &ConnectArgs) -> anyhow::Result<Self> {
        let base = connect.server.trim_end_matches('/').to_owned();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            bail!("--server must be an http:// or https:// URL, got {base:?}");
        }
        let key = match connect.api_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => key.to_owned(),
            _ => bail!(
                "an API key is required: set ZEROSTATE_API_KEY (create one on the API keys page)"
            ),
        };
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()
            .context("building the HTTP client")?;
        Ok(Self { client, base, key })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with the API key; the JSON answer, or the server's error.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response = request
            .bearer_auth(&self.key)
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .with_context(|| format!("could not reach {}", self.base))?;
        if !response.status().is_success() {
            return Err(server_error(response).await);
        }
        Ok(response.json().await.unwrap_or(Value::Null))
    }
}

/// The server's error answer as a message for a person.
async fn server_error(response: reqwest::Response) -> anyhow::Error {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let message = body["message"].as_str().unwrap_or("no details");
    let code = body["error"].as_str().unwrap_or("error");
    anyhow::anyhow!("the server answered {status}: {code}: {message}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_across_reads() {
        let mut parser = SseParser::default();
        assert!(parser
            .push(b": heartbeat\n\nevent: output\nid: 1\nda")
            .is_empty());
        let events = parser.push(b"ta: {\"seq\":1}\n\nevent: end\r\ndata: {}\r\n\r\n");
        assert_eq!(
            events,
            vec![
                ("output".to_owned(), "{\"seq\":1}".to_owned()),
                ("end".to_owned(), "{}".to_owned()),
            ]
        );
    }

    #[test]
    fn a_chunk_is_printed_once_in_order() {
        let mut printer = Printer::default();
        let chunk = |seq| Chunk {
            seq,
            stream: "log".into(),
            text: String::new(),
        };
        printer.print(chunk(1)).unwrap();
        printer.print(chunk(1)).unwrap();
        printer.print(chunk(3)).unwrap();
        assert_eq!(printer.last, 1);
        printer.print(chunk(2)).unwrap();
        assert_eq!(printer.last, 2);
    }
}

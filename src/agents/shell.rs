//! The reference agent's executor: runs the operator's command once per task with
//! `sh -c`, the query on stdin. Stdout lines `PROGRESS <n>` are progress; the rest of
//! stdout is the result; a non-zero exit fails the task with the end of stderr.
//!
//! The command runs in its own process group, so that stopping it (task canceled,
//! agent shutting down) kills everything it started, not just the shell: otherwise a
//! `sleep` in the command would live on and hold the output pipe open.

use super::runner::{ClaimedTask, ExecOutcome, Executor};
use async_trait::async_trait;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most stdout kept as the result; the server accepts bodies up to 1 MiB.
const MAX_RESULT_BYTES: usize = 768 * 1024;
/// How much of stderr a failure reports.
const STDERR_TAIL_BYTES: usize = 2048;

/// Runs a shell command per task.
pub struct ShellExecutor {
    command: String,
}

impl ShellExecutor {
    /// Runs `command` with `sh -c` for each task.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
        }
    }
}

/// `PROGRESS <n>` with `n` a number from 0 to 100 (fractions round down).
fn parse_progress(line: &str) -> Option<u8> {
    let rest = line.trim().strip_prefix("PROGRESS")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let value: f64 = rest.trim().parse().ok()?;
    (0.0..=100.0).contains(&value).then_some(value as u8)
}

/// Kills the whole process group the command leads.
fn kill_group(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        // SAFETY: `kill` has no memory-safety preconditions; a negative pid names the
        // process group, which `process_group(0)` made equal to the child's pid.
        // Checked first: the child must still lead its own group (it cannot have been
        // reaped: we have not waited for it), so a mistake can never signal our own.
        unsafe {
            if pid > 1 && libc::getpgid(pid) == pid && libc::getpgid(0) != pid {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

#[async_trait]
impl Executor for ShellExecutor {
    async fn execute(
        &self,
        task: &ClaimedTask,
        progress: mpsc::Sender<u8>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let mut child = match self.spawn(task) {
            Ok(child) => child,
            Err(err) => return failed(format!("could not start the command: {err}")),
        };
        let pid = child.id();
        feed_stdin(&mut child, task.query.clone());
        let stderr = collect_stderr_tail(&mut child);
        let stdout = tokio::select! {
            stdout = read_stdout(child.stdout.take(), &progress) => stdout,
            _ = cancel.cancelled() => return stop(&mut child, pid).await,
        };
        let stdout = match stdout {
            Ok(stdout) => stdout,
            Err(err) => {
                // Not UTF-8 or a read error: the output cannot be a result.
                stop(&mut child, pid).await;
                return failed(format!("could not read the command's output: {err}"));
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            _ = cancel.cancelled() => return stop(&mut child, pid).await,
        };
        let stderr_tail = match stderr {
            Some(handle) => handle.await.unwrap_or_default(),
            None => Vec::new(),
        };
        match status {
            Ok(status) if status.success() => ExecOutcome::Completed(stdout.into_result()),
            Ok(status) => failed(exit_error(status, &stderr_tail)),
            Err(err) => failed(format!("could not wait for the command: {err}")),
        }
    }
}

impl ShellExecutor {
    /// Starts the command in its own process group, so a cancel can kill everything
    /// it started, with the task described in its environment.
    fn spawn(&self, task: &ClaimedTask) -> std::io::Result<Child> {
        Command::new("sh")
            .arg("-c")
            .arg(&self.command)
            .env("ZEROSTATE_TASK_ID", &task.id)
            .env("ZEROSTATE_TASK_CAPABILITY", &task.capability)
            .env("ZEROSTATE_TASK_ATTEMPT", task.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
    }
}

/// A failure the agent should not retry: the same command would fail again.
fn failed(error: String) -> ExecOutcome {
    ExecOutcome::Failed {
        error,
        retryable: false,
    }
}

/// Kills the command's group and reaps it, for a cancel or an unreadable output.
async fn stop(child: &mut Child, pid: Option<u32>) -> ExecOutcome {
    kill_group(pid);
    let _ = child.wait().await;
    ExecOutcome::Stopped
}

/// Feeds the query and closes stdin, in the background: a command that does not read
/// stdin must not block us on a full pipe.
fn feed_stdin(child: &mut Child, query: String) {
    if let Some(mut stdin) = child.stdin.take() {
        tokio::spawn(async move {
            let _ = stdin.write_all(query.as_bytes()).await;
            let _ = stdin.shutdown().await;
        });
    }
}

/// Reads stderr to its end, keeping only the last bytes (for the error message).
fn collect_stderr_tail(child: &mut Child) -> Option<tokio::task::JoinHandle<Vec<u8>>> {
    let mut err = child.stderr.take()?;
    Some(tokio::spawn(async move {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf).await {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.len() > 4 * STDERR_TAIL_BYTES {
                all.drain(..all.len() - STDERR_TAIL_BYTES);
            }
        }
        all
    }))
}

/// What the command printed that was not a progress line, capped at `MAX_RESULT_BYTES`.
#[derive(Default)]
struct Stdout {
    result: String,
    truncated: bool,
}

impl Stdout {
    fn into_result(self) -> serde_json::Value {
        let mut text = self.result.trim_end_matches('\n').to_owned();
        if self.truncated {
            text.push_str("\n[output truncated]");
        }
        serde_json::Value::String(text)
    }
}

/// Reads stdout to its end: `PROGRESS n` lines go to `progress`, the rest is the result.
async fn read_stdout(
    stdout: Option<ChildStdout>,
    progress: &mpsc::Sender<u8>,
) -> std::io::Result<Stdout> {
    let mut out = Stdout::default();
    let Some(stdout) = stdout else {
        return Ok(out);
    };
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        match parse_progress(&line) {
            // The runner stops reading only when the task is gone; then there is
            // nobody to tell.
            Some(p) => {
                let _ = progress.send(p).await;
            }
            None if out.result.len() + line.len() < MAX_RESULT_BYTES => {
                out.result.push_str(&line);
                out.result.push('\n');
            }
            None => out.truncated = true,
        }
    }
    Ok(out)
}

/// The error for a non-zero exit: how it ended, and the end of what it said on stderr.
fn exit_error(status: std::process::ExitStatus, stderr_tail: &[u8]) -> String {
    let tail = String::from_utf8_lossy(stderr_tail);
    let tail = tail.trim();
    let tail = match tail.char_indices().rev().nth(STDERR_TAIL_BYTES) {
        Some((cut, _)) => &tail[cut..],
        None => tail,
    };
    let how = match status.code() {
        Some(code) => format!("the command exited with status {code}"),
        None => "the command was killed by a signal".to_owned(),
    };
    if tail.is_empty() {
        how
    } else {
        format!("{how}: {tail}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines() {
        assert_eq!(parse_progress("PROGRESS 40"), Some(40));
        assert_eq!(parse_progress("  PROGRESS 12.7 "), Some(12));
        assert_eq!(parse_progress("PROGRESS 101"), None);
        assert_eq!(parse_progress("PROGRESS"), None);
        assert_eq!(parse_progress("PROGRESSIVE 4"), None);
        assert_eq!(parse_progress("progress 4"), None);
    }
}

//! The reference agent's executor: runs the operator's command once per task with
//! `sh -c`, the query on stdin. Every stdout line is streamed as output as it is
//! printed, except `PROGRESS <n> [message]` lines, which report progress; stdout without
//! those lines is the result; stderr lines are streamed as `log`; a non-zero exit fails
//! the task with the end of stderr.
//!
//! The command must die with the agent, however the agent dies; otherwise an orphan
//! finishes its work with nobody listening while the lease hands the task to another
//! agent, and the work runs twice. Three layers see to it:
//! - The command runs in its own process group, so stopping it (task canceled, agent
//!   shutting down) kills everything it started, not just the shell.
//! - The shell gets `PR_SET_PDEATHSIG` (SIGKILL) between fork and exec: the kernel
//!   kills it the moment the agent dies, even by SIGKILL.
//! - That reaches only the shell, not what it forked. So each command gets a watchdog:
//!   a tiny `sh` in a group of its own, ignoring terminal signals, that waits on a pipe
//!   only the agent writes to. When the agent says `done` it exits quietly; when the
//!   pipe closes without it (the agent died) it kills the command's whole group.
//! - And should even the watchdog be gone (the whole machine's processes killed in some
//!   order), each running group is recorded in the state directory; an agent starting
//!   later kills the groups its dead predecessors left behind (`reap_stale_groups`).

use super::runner::{ClaimedTask, ExecOutcome, Executor, TaskEvent};
use crate::domain::OutputStream;
use async_trait::async_trait;
use std::path::PathBuf;
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most stdout kept as the result; the server accepts bodies up to 1 MiB.
const MAX_RESULT_BYTES: usize = 768 * 1024;
/// How much of stderr a failure reports.
const STDERR_TAIL_BYTES: usize = 2048;
/// The environment variable that marks a command as started by this agent process
/// (`reap_stale_groups` checks it before killing anything).
const RUN_ENV: &str = "ZEROSTATE_AGENT_RUN";
/// The watchdog: waits for `done` on stdin; anything else (end of file: the agent
/// died) kills the command's group, given as `$1`.
const WATCHDOG: &str =
    "trap '' INT TERM HUP; read -r word; [ \"$word\" = done ] || kill -s KILL -- \"-$1\" 2>/dev/null";

/// Runs a shell command per task.
pub struct ShellExecutor {
    command: String,
    /// Marks this agent process's commands (random, per process).
    run_id: String,
    /// Where running groups are recorded; `None` when no state directory is usable.
    state_dir: Option<PathBuf>,
}

impl ShellExecutor {
    /// Runs `command` with `sh -c` for each task. Kills the groups that dead earlier
    /// agents on this machine left behind first.
    pub fn new(command: impl Into<String>) -> Self {
        let state_dir = state_dir().filter(|dir| std::fs::create_dir_all(dir).is_ok());
        if let Some(dir) = &state_dir {
            reap_stale_groups(dir);
        }
        Self {
            command: command.into(),
            run_id: format!("{:016x}", rand::random::<u64>()),
            state_dir,
        }
    }
}

/// `PROGRESS <n> [message]` with `n` a number from 0 to 100 (fractions round down).
fn parse_progress(line: &str) -> Option<(u8, Option<String>)> {
    let rest = line.trim().strip_prefix("PROGRESS")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let (number, message) = match rest.split_once(char::is_whitespace) {
        Some((number, message)) => (number, Some(message.trim())),
        None => (rest, None),
    };
    let value: f64 = number.parse().ok()?;
    let message = message.filter(|m| !m.is_empty()).map(str::to_owned);
    (0.0..=100.0)
        .contains(&value)
        .then_some((value as u8, message))
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
        events: mpsc::Sender<TaskEvent>,
        cancel: CancellationToken,
    ) -> ExecOutcome {
        let mut child = match self.spawn(task) {
            Ok(child) => child,
            Err(err) => return failed(format!("could not start the command: {err}")),
        };
        let pid = child.id();
        let guard = Guard::start(pid, self.state_dir.as_deref(), &self.run_id);
        feed_stdin(&mut child, task.query.clone());
        let stderr = stream_stderr(&mut child, events.clone());
        let stdout = tokio::select! {
            stdout = read_stdout(child.stdout.take(), &events) => stdout,
            _ = cancel.cancelled() => return stop(&mut child, pid, guard).await,
        };
        let stdout = match stdout {
            Ok(stdout) => stdout,
            Err(err) => {
                // Not UTF-8 or a read error: the output cannot be a result.
                stop(&mut child, pid, guard).await;
                return failed(format!("could not read the command's output: {err}"));
            }
        };
        let status = tokio::select! {
            status = child.wait() => status,
            _ = cancel.cancelled() => return stop(&mut child, pid, guard).await,
        };
        // The shell is gone; whatever it left running in its group goes with it.
        kill_group(pid);
        guard.release().await;
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
    /// it started, with the task described in its environment, set to die with us.
    fn spawn(&self, task: &ClaimedTask) -> std::io::Result<Child> {
        let parent = std::process::id();
        let mut command = Command::new("sh");
        command
            .arg("-c")
            .arg(&self.command)
            .env("ZEROSTATE_TASK_ID", &task.id)
            .env("ZEROSTATE_TASK_CAPABILITY", &task.capability)
            .env("ZEROSTATE_TASK_ATTEMPT", task.attempt.to_string())
            .env(RUN_ENV, &self.run_id)
            // The command never needs the agent's credential.
            .env_remove("ZEROSTATE_AGENT_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // The kernel sends the signal when the *thread* that forked exits: here a tokio
        // worker thread, which lives as long as the runtime, i.e. the agent process.
        // SAFETY: runs in the child between fork and exec, where only async-signal-safe
        // calls are allowed: `prctl` and `getppid` are plain syscalls, and nothing is
        // allocated.
        unsafe {
            command.pre_exec(move || {
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // The agent may have died between fork and prctl: then no signal
                // will come, so do not start at all.
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the agent exited"));
                }
                Ok(())
            });
        }
        command.spawn()
    }
}

/// What keeps a running command tied to this agent: its watchdog and its record in
/// the state directory.
struct Guard {
    watchdog: Option<(Child, ChildStdin)>,
    record: Option<PathBuf>,
}

impl Guard {
    fn start(pid: Option<u32>, state_dir: Option<&std::path::Path>, run_id: &str) -> Self {
        let Some(pid) = pid else {
            return Self {
                watchdog: None,
                record: None,
            };
        };
        let record = state_dir.and_then(|dir| {
            let path = dir.join(format!("{}.{pid}", std::process::id()));
            let line = format!("{} {run_id}\n", start_time(std::process::id())?);
            std::fs::write(&path, line).ok().map(|()| path)
        });
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(WATCHDOG)
            .arg("zerostate-watchdog")
            .arg(pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(|err| tracing::warn!(error = %err, "no watchdog for the command"))
            .ok()
            .and_then(|mut child| {
                let stdin = child.stdin.take()?;
                Some((child, stdin))
            });
        Self { watchdog, record }
    }

    /// The command is over: the watchdog leaves without killing, the record goes.
    async fn release(mut self) {
        if let Some((mut child, mut stdin)) = self.watchdog.take() {
            let _ = stdin.write_all(b"done\n").await;
            drop(stdin);
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), child.wait()).await;
        }
        if let Some(record) = self.record.take() {
            let _ = std::fs::remove_file(record);
        }
    }
}

/// Where running groups are recorded: `$ZEROSTATE_AGENT_STATE_DIR`, else
/// `$XDG_STATE_HOME/zerostate/agent-groups`, else `~/.local/state/zerostate/agent-groups`.
fn state_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("ZEROSTATE_AGENT_STATE_DIR") {
        return Some(dir.into());
    }
    let base = match std::env::var_os("XDG_STATE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    Some(base.join("zerostate/agent-groups"))
}

/// A process's start time (clock ticks since boot), which tells it from a later
/// process that got the same pid.
fn start_time(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start with the state
    // (field 3); the start time is field 22.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19).map(str::to_owned)
}

/// Kills the process groups that agents which died without cleaning up left behind:
/// for each record whose agent is gone, every process in the recorded group that
/// carries that agent's run id. A record of a live agent is left alone.
fn reap_stale_groups(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some((agent, group)) = name
            .split_once('.')
            .and_then(|(a, g)| Some((a.parse::<u32>().ok()?, g.parse::<i32>().ok()?)))
        else {
            continue;
        };
        let Ok(content) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut fields = content.split_whitespace();
        let (Some(started), Some(run_id)) = (fields.next(), fields.next()) else {
            let _ = std::fs::remove_file(&path);
            continue;
        };
        if start_time(agent).as_deref() == Some(started) {
            continue; // That agent still runs: its commands are its own business.
        }
        let marker = format!("{RUN_ENV}={run_id}");
        if group > 1
            && group_members(group)
                .iter()
                .any(|pid| has_env(*pid, &marker))
        {
            tracing::warn!(group, "killing a command left behind by an agent that died");
            // SAFETY: a plain syscall; `group` is a group whose members carry the dead
            // agent's run id, never ours (our run id is new).
            unsafe {
                libc::kill(-group, libc::SIGKILL);
            }
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// The pids of the processes in a process group.
fn group_members(group: i32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(2)?.parse::<i32>().ok()
                })
                == Some(group)
        })
        .collect()
}

/// Whether the process's environment holds `KEY=value` exactly.
fn has_env(pid: u32, entry: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .map(|env| env.split(|b| *b == 0).any(|e| e == entry.as_bytes()))
        .unwrap_or(false)
}

/// A failure the agent should not retry: the same command would fail again.
fn failed(error: String) -> ExecOutcome {
    ExecOutcome::Failed {
        error,
        retryable: false,
    }
}

/// Kills the command's group and reaps it, for a cancel or an unreadable output.
async fn stop(child: &mut Child, pid: Option<u32>, guard: Guard) -> ExecOutcome {
    kill_group(pid);
    let _ = child.wait().await;
    guard.release().await;
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

/// Streams stderr line by line as `log`, keeping the last bytes for the error message.
fn stream_stderr(
    child: &mut Child,
    events: mpsc::Sender<TaskEvent>,
) -> Option<tokio::task::JoinHandle<Vec<u8>>> {
    let err = child.stderr.take()?;
    Some(tokio::spawn(async move {
        let mut reader = BufReader::new(err);
        let mut tail = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            tail.extend_from_slice(&line);
            if tail.len() > 4 * STDERR_TAIL_BYTES {
                tail.drain(..tail.len() - STDERR_TAIL_BYTES);
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            // The runner stops reading only when the task is gone; then nobody listens.
            let _ = events
                .send(TaskEvent::Output {
                    stream: OutputStream::Log,
                    text,
                })
                .await;
        }
        tail
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

/// Reads stdout to its end: `PROGRESS` lines become progress events; every other line
/// is streamed as output the moment it is read and kept for the result.
async fn read_stdout(
    stdout: Option<ChildStdout>,
    events: &mpsc::Sender<TaskEvent>,
) -> std::io::Result<Stdout> {
    let mut out = Stdout::default();
    let Some(stdout) = stdout else {
        return Ok(out);
    };
    let mut lines = BufReader::new(stdout).lines();
    while let Some(line) = lines.next_line().await? {
        // The runner stops reading only when the task is gone; then there is nobody
        // to tell.
        if let Some((value, message)) = parse_progress(&line) {
            let _ = events.send(TaskEvent::Progress { value, message }).await;
            continue;
        }
        if out.result.len() + line.len() < MAX_RESULT_BYTES {
            out.result.push_str(&line);
            out.result.push('\n');
        } else {
            out.truncated = true;
        }
        let _ = events
            .send(TaskEvent::Output {
                stream: OutputStream::Output,
                text: line + "\n",
            })
            .await;
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
        assert_eq!(parse_progress("PROGRESS 40"), Some((40, None)));
        assert_eq!(parse_progress("  PROGRESS 12.7 "), Some((12, None)));
        assert_eq!(
            parse_progress("PROGRESS 50 half way  there"),
            Some((50, Some("half way  there".into())))
        );
        assert_eq!(parse_progress("PROGRESS 101"), None);
        assert_eq!(parse_progress("PROGRESS"), None);
        assert_eq!(parse_progress("PROGRESS soon"), None);
        assert_eq!(parse_progress("PROGRESSIVE 4"), None);
        assert_eq!(parse_progress("progress 4"), None);
    }

    #[test]
    fn start_times_tell_processes_apart() {
        let mine = start_time(std::process::id()).expect("own start time");
        assert!(mine.parse::<u64>().is_ok(), "{mine}");
        assert!(group_members(unsafe { libc::getpgid(0) }).contains(&std::process::id()));
        assert!(!has_env(std::process::id(), "ZEROSTATE_NO_SUCH=1"));
    }
}

//! A `redis-server` of a test's own, for the unit tests of the Redis broker and the Redis
//! backplane: 127.0.0.1, a free port, a temporary directory; killed on drop, and
//! restartable on the same port and directory (with AOF, like a crashed and restarted
//! Redis that keeps what it acknowledged).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long redis-server gets to answer PING after it was started (the machine is shared).
const START_WAIT: Duration = Duration::from_secs(30);

/// A running redis-server; see the module doc.
pub struct RedisServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Persist with AOF, every write synced before Redis answers, so a restart keeps it.
    aof: bool,
}

impl RedisServer {
    /// Starts one, with AOF (`appendfsync always`) or without persistence.
    pub async fn start(aof: bool) -> Self {
        let mut server = Self {
            port: free_port(),
            dir: tempfile::tempdir().expect("a temporary directory"),
            child: None,
            aof,
        };
        // A port found free can be taken (by another test's outgoing connection) before
        // redis-server binds it: then it exits at once, and another port is tried.
        for _ in 0..5 {
            if server.try_spawn().await {
                return server;
            }
            server.port = free_port();
        }
        panic!("redis-server did not start on any of five ports");
    }

    /// Starts redis-server again on the same port and directory (after `kill`) and
    /// waits until it answers PING (after loading its AOF).
    pub async fn spawn(&mut self) {
        let deadline = Instant::now() + START_WAIT;
        while !self.try_spawn().await {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start again"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts redis-server on this port and directory; whether it answers PING (false:
    /// it exited, e.g. the port was taken).
    async fn try_spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", ""])
            .args(if self.aof {
                ["--appendonly", "yes", "--appendfsync", "always"]
            } else {
                ["--appendonly", "no", "--appendfsync", "everysec"]
            })
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--logfile", "redis.log"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (apt-get install redis-server)");
        self.child = Some(child);
        let deadline = Instant::now() + START_WAIT;
        loop {
            if self.answers_ping().await {
                return true;
            }
            let child = self.child.as_mut().expect("just started");
            if matches!(child.try_wait(), Ok(Some(_))) {
                self.child = None;
                return false;
            }
            assert!(Instant::now() < deadline, "redis-server did not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn answers_ping(&self) -> bool {
        let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        let mut reply = [0u8; 5];
        stream.write_all(b"PING\r\n").await.is_ok()
            && tokio::time::timeout(Duration::from_secs(1), stream.read_exact(&mut reply))
                .await
                .is_ok_and(|r| r.is_ok())
            && &reply == b"+PONG"
    }

    /// Kills it like a crash (SIGKILL): only what AOF made durable survives.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Its data directory (the AOF lives there).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// A client for it.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(format!("redis://127.0.0.1:{}/", self.port)).expect("a Redis URL")
    }
}

/// A port nothing listens on right now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

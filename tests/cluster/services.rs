//! The cluster's shared services, each started per test on 127.0.0.1, a free port and its
//! own temporary directory, and stopped when dropped: PostgreSQL (a fresh cluster from
//! `initdb`, as the `postgres` user when the tests run as root, since PostgreSQL refuses
//! root), Redis (append-only file fsynced on every write, so a restart in the same
//! directory keeps every acknowledged write) and nginx (round-robin over the nodes with
//! the WebSocket proxy settings of README's Cluster section, no sticky sessions).
#![allow(dead_code)] // A shared harness: not every test uses every method.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// How long a service may take to accept connections (the machine is shared and slow).
const START_WAIT: Duration = Duration::from_secs(60);

/// A port nothing listens on right now (the kernel's pick; the short race until the
/// service binds it is acceptable in tests).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Waits until something accepts TCP connections on `port`, or panics with `log()`.
async fn wait_listening(port: u16, what: &str, log: impl Fn() -> String) {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} did not listen on {port} within {START_WAIT:?}:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A child process ended gently on drop: SIGTERM (SIGINT for PostgreSQL's fast
/// shutdown), a bounded wait, then SIGKILL, so no server outlives its test.
struct Daemon {
    child: Option<Child>,
    stop_signal: libc::c_int,
}

impl Daemon {
    fn new(child: Child, stop_signal: libc::c_int) -> Self {
        Self {
            child: Some(child),
            stop_signal,
        }
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Whether the process has exited (e.g. because its port was taken).
    fn exited(&mut self) -> bool {
        self.child
            .as_mut()
            .is_none_or(|child| matches!(child.try_wait(), Ok(Some(_))))
    }

    /// Stops the process (gently, then by force) and waits for it.
    async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            signal(pid, self.stop_signal);
        }
        if tokio::time::timeout(Duration::from_secs(20), child.wait())
            .await
            .is_err()
        {
            let _ = child.kill().await;
        }
    }

    /// Kills the process without warning and waits for it.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = child.id() {
            signal(pid, self.stop_signal);
            // Drop cannot await: poll for a bounded time, then kill.
            for _ in 0..100 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = child.start_kill();
    }
}

/// Sends `sig` to the one process `pid` (never a group).
pub fn signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = i32::try_from(pid) {
        if pid > 1 {
            // SAFETY: a plain syscall on integers, aimed at one child of ours.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

/// A program by name: `$env_var` if set, else the first of `name` on `PATH` or the
/// given fallbacks (`/usr/sbin` is not on every user's `PATH`), else `name` itself.
fn program(env_var: &str, name: &str, fallbacks: &[&str]) -> PathBuf {
    if let Some(path) = std::env::var_os(env_var) {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|dir| dir.join(name));
    on_path
        .chain(fallbacks.iter().map(PathBuf::from))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

// ---------------------------------------------------------------------------------------
// PostgreSQL
// ---------------------------------------------------------------------------------------

/// A private PostgreSQL cluster with one fresh database.
pub struct Postgres {
    process: Daemon,
    /// `postgres://postgres@127.0.0.1:PORT/zerostate`
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// Where PostgreSQL's programs live: `ZEROSTATE_PG_BIN`, or Debian's newest
/// `/usr/lib/postgresql/<version>/bin`.
fn pg_bin() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZEROSTATE_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("PostgreSQL is not installed (apt-get install postgresql, or set ZEROSTATE_PG_BIN)")
}

/// The `postgres` account's uid and gid when we run as root (PostgreSQL refuses root);
/// `None` when we are not root and run it as ourselves.
fn pg_user() -> Option<(u32, u32)> {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return None;
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam reads a static entry; we copy the two integers out at once and
    // the tests do not call getpwnam concurrently with anything that frees it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    assert!(
        !entry.is_null(),
        "running as root needs a `postgres` user to run PostgreSQL (apt-get install postgresql)"
    );
    // SAFETY: checked non-null just above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Some((uid, gid))
}

/// A command run as the `postgres` user when we are root (as `runuser -u postgres` would).
fn pg_command(program: PathBuf) -> Command {
    let mut cmd = Command::new(program);
    if let Some((uid, gid)) = pg_user() {
        cmd.uid(uid).gid(gid);
    }
    cmd.env_remove("PGDATA").env("LC_ALL", "C");
    cmd
}

/// Starts `postgres` on `port`; `None` if it exited before listening.
async fn spawn_postgres(
    bin: &Path,
    data: &Path,
    dir: &Path,
    port: u16,
    log_path: &Path,
) -> Option<Daemon> {
    let log = std::fs::File::create(log_path).expect("log");
    if let Some((uid, gid)) = pg_user() {
        std::os::unix::fs::chown(log_path, Some(uid), Some(gid)).expect("chown log");
    }
    // Durability of PostgreSQL itself is not under test (it is never killed), so its
    // fsyncs are skipped to spare the shared machine.
    let child = pg_command(bin.join("postgres"))
        .arg("-D")
        .arg(data)
        .arg("-p")
        .arg(port.to_string())
        .arg("-k")
        .arg(dir)
        .args([
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("start postgres");
    let mut process = Daemon::new(child, libc::SIGINT);
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        if process.exited() {
            return None;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "PostgreSQL did not listen on {port} within {START_WAIT:?}:\n{}",
            read_log(log_path)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(process)
}

impl Postgres {
    /// initdb in a temp dir, start on a free port, create the database `zerostate`.
    pub async fn start() -> Postgres {
        let bin = pg_bin();
        let dir = tempfile::Builder::new()
            .prefix("zs-cluster-pg-")
            .tempdir()
            .expect("temp dir");
        if let Some((uid, gid)) = pg_user() {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).expect("chown pg dir");
        }
        let data = dir.path().join("data");
        let status = pg_command(bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("initdb.log")).expect("log"),
            ))
            .status()
            .await
            .expect("run initdb");
        assert!(
            status.success(),
            "initdb failed:\n{}",
            read_log(&dir.path().join("initdb.log"))
        );
        let log_path = dir.path().join("postgres.log");
        // The port is free when picked, but another process may take it before
        // PostgreSQL binds it: then it exits, and we try another one.
        let mut started = None;
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = spawn_postgres(&bin, &data, dir.path(), port, &log_path).await {
                started = Some((process, port));
                break;
            }
        }
        let (process, port) =
            started.unwrap_or_else(|| panic!("PostgreSQL did not start:\n{}", read_log(&log_path)));
        // Accepting TCP is not accepting queries yet (startup recovery): retry createdb.
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let out = pg_command(bin.join("createdb"))
                .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
                .arg("zerostate")
                .output()
                .await
                .expect("run createdb");
            if out.status.success() {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "createdb failed: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                read_log(&log_path)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Postgres {
            process,
            url: format!("postgres://postgres@127.0.0.1:{port}/zerostate"),
            port,
            dir,
        }
    }

    /// PostgreSQL's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("postgres.log"))
    }

    /// Runs one SQL statement with `psql` and returns its unaligned output.
    pub async fn psql(&self, sql: &str) -> String {
        let out = pg_command(pg_bin().join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U",
                "postgres",
                "-d",
                "zerostate",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
            ])
            .arg("-c")
            .arg(sql)
            .output()
            .await
            .expect("run psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Stops the server (fast shutdown).
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

// ---------------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------------

/// A private redis-server whose append-only file is fsynced on every write, restartable
/// in the same directory and on the same port.
pub struct Redis {
    process: Daemon,
    /// `redis://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    /// Starts redis-server on a free port in a new temporary directory.
    pub async fn start() -> Redis {
        let dir = tempfile::Builder::new()
            .prefix("zs-cluster-redis-")
            .tempdir()
            .expect("temp dir");
        // As for PostgreSQL: a port taken meanwhile makes Redis exit; try another.
        let mut started = None;
        for _ in 0..5 {
            let port = free_port();
            if let Some(process) = Self::spawn(dir.path(), port).await {
                started = Some((process, port));
                break;
            }
        }
        let (process, port) = started.unwrap_or_else(|| {
            panic!(
                "redis-server did not start:\n{}",
                read_log(&dir.path().join("redis.log"))
            )
        });
        Redis {
            process,
            url: format!("redis://127.0.0.1:{port}"),
            port,
            dir,
        }
    }

    /// Starts redis-server on `port`; `None` if it exited before answering.
    async fn spawn(dir: &Path, port: u16) -> Option<Daemon> {
        let child = Command::new(program(
            "ZEROSTATE_REDIS_SERVER",
            "redis-server",
            &["/usr/bin/redis-server", "/usr/sbin/redis-server"],
        ))
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .arg("--dir")
        .arg(dir)
        .args(["--appendonly", "yes", "--appendfsync", "always"])
        .args(["--save", "", "--daemonize", "no", "--protected-mode", "no"])
        .arg("--logfile")
        .arg(dir.join("redis.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start redis-server (apt-get install redis-server)");
        let mut process = Daemon::new(child, libc::SIGTERM);
        // Ready means answering PING with PONG (not LOADING the append-only file).
        let deadline = tokio::time::Instant::now() + START_WAIT;
        while !ping(port).await {
            if process.exited() {
                return None;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server did not answer PING within {START_WAIT:?}:\n{}",
                read_log(&dir.join("redis.log"))
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Some(process)
    }

    /// Stops Redis (SIGTERM: it writes out and exits) and waits for it.
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }

    /// Kills Redis without warning (SIGKILL).
    pub async fn kill(&mut self) {
        self.process.kill().await;
    }

    /// Starts Redis again in the same directory on the same port (after `stop` or
    /// `kill`); retries while the port is still held by the old process.
    pub async fn start_again(&mut self) {
        assert!(self.process.pid().is_none(), "redis is still running");
        wait_port_free(self.port).await;
        self.process = Self::spawn(self.dir.path(), self.port)
            .await
            .unwrap_or_else(|| panic!("redis-server did not start again:\n{}", self.log()));
    }

    /// Redis's log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("redis.log"))
    }
}

/// Whether Redis on `port` answers `PING` with `+PONG`.
async fn ping(port: u16) -> bool {
    let Ok(Ok(mut stream)) = tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect(("127.0.0.1", port)),
    )
    .await
    else {
        return false;
    };
    if stream.write_all(b"PING\r\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut buf)).await {
        Ok(Ok(n)) => buf[..n].starts_with(b"+PONG"),
        _ => false,
    }
}

/// Waits until nothing listens on `port` any more.
async fn wait_port_free(port: u16) {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    while std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "port {port} still busy after {START_WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// nginx
// ---------------------------------------------------------------------------------------

/// An nginx in front of the nodes: round-robin, no sticky sessions.
pub struct Nginx {
    process: Daemon,
    pub port: u16,
    dir: tempfile::TempDir,
}

/// The nginx configuration for a cluster (the same settings as `scripts/cluster.sh`
/// writes; README's Cluster section explains each one).
pub fn nginx_config(dir: &Path, listen_port: u16, node_ports: &[u16]) -> String {
    let d = dir.display();
    let servers: String = node_ports
        .iter()
        .map(|p| format!("        server 127.0.0.1:{p} max_fails=1 fail_timeout=1s;\n"))
        .collect();
    // As root the workers would run as `nobody`, which cannot write our temp dir.
    // SAFETY: getuid has no preconditions.
    let user = if unsafe { libc::getuid() } == 0 {
        "user root;\n"
    } else {
        ""
    };
    format!(
        r#"{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    map $http_upgrade $connection_upgrade {{
        default upgrade;
        ''      '';
    }}
    upstream zerostate {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{listen_port};
        client_max_body_size 1m;
        location / {{
            proxy_pass http://zerostate;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
"#
    )
}

impl Nginx {
    /// Starts nginx on a free port in front of `node_ports`.
    pub async fn start(node_ports: &[u16]) -> Nginx {
        let dir = tempfile::Builder::new()
            .prefix("zs-cluster-nginx-")
            .tempdir()
            .expect("temp dir");
        std::fs::create_dir_all(dir.path().join("tmp")).expect("tmp dir");
        // nginx's workers may run as another user: let them into their temp dirs.
        for path in [dir.path().to_owned(), dir.path().join("tmp")] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, nginx_config(dir.path(), port, node_ports)).expect("write conf");
        let child = Command::new(program("ZEROSTATE_NGINX", "nginx", &["/usr/sbin/nginx"]))
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("stderr.log")).expect("log"),
            ))
            .kill_on_drop(true)
            .spawn()
            .expect("start nginx (apt-get install nginx-light)");
        let process = Daemon::new(child, libc::SIGQUIT);
        let error_log = dir.path().join("error.log");
        let stderr_log = dir.path().join("stderr.log");
        wait_listening(port, "nginx", || {
            format!("{}{}", read_log(&stderr_log), read_log(&error_log))
        })
        .await;
        Nginx { process, port, dir }
    }

    /// `http://127.0.0.1:PORT`
    pub fn address(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's error log so far.
    pub fn log(&self) -> String {
        read_log(&self.dir.path().join("error.log"))
    }

    /// Stops nginx gracefully.
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

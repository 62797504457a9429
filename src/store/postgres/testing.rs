//! A throwaway PostgreSQL server for tests: `initdb` in a temporary directory, then
//! `postgres` on 127.0.0.1 and a free port with its unix socket in that directory
//! (never the system's cluster or port 5432). As root it runs as the `postgres` user,
//! since PostgreSQL refuses root. One server serves a whole test binary
//! ([`fresh_database`] hands out a new database per case); it is stopped and its
//! directory removed when the process exits, and killed by the kernel if the process
//! dies without exiting (parent-death signal).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Where Debian keeps PostgreSQL's programs, one directory per major version (CI
/// installs it with apt); the newest is used, and `ZEROSTATE_PG_BIN` overrides it.
const DEBIAN_VERSIONS_DIR: &str = "/usr/lib/postgresql";
/// How long the server gets to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The `bin` directory of the newest PostgreSQL Debian installed (by major version).
fn newest_debian_bin_dir() -> PathBuf {
    let newest = std::fs::read_dir(DEBIAN_VERSIONS_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .max_by_key(|(version, _)| *version);
    newest.map_or_else(
        || Path::new(DEBIAN_VERSIONS_DIR).join("15/bin"),
        |(_, bin)| bin,
    )
}

/// A running throwaway server. Dropping it stops it and removes its directory.
pub struct PgServer {
    port: u16,
    child: Mutex<Option<Child>>,
    dir: Mutex<Option<tempfile::TempDir>>,
}

impl PgServer {
    /// Initializes a cluster in a new temporary directory and starts it.
    pub fn start() -> std::io::Result<Self> {
        let bin = std::env::var_os("ZEROSTATE_PG_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(newest_debian_bin_dir);
        let dir = tempfile::Builder::new().prefix("zerostate-pg-").tempdir()?;
        let owner = postgres_user_if_root()?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let data = dir.path().join("data");
        let status = as_owner(Command::new(bin.join("initdb")), owner)
            .args(["-D"])
            .arg(&data)
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(
                dir.path().join("initdb.log"),
            )?))
            .status()?;
        if !status.success() {
            return Err(std::io::Error::other(format!(
                "initdb failed; see {}",
                dir.path().join("initdb.log").display()
            )));
        }
        // A port found free can be taken (by another test's outgoing connection) before
        // postgres binds it: then it exits at once, and another port is tried.
        let mut dir = Some(dir);
        let mut last_error = None;
        for _ in 0..5 {
            let port = free_port()?;
            let home = dir.take().expect("kept between attempts");
            let child = spawn_postgres(&bin, home.path(), &data, port, owner)?;
            let server = Self {
                port,
                child: Mutex::new(Some(child)),
                dir: Mutex::new(Some(home)),
            };
            match server.wait_ready(&bin) {
                Ok(()) => return Ok(server),
                Err(err) => {
                    last_error = Some(err);
                    let exited = server
                        .child
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                        .is_some_and(|child| matches!(child.try_wait(), Ok(Some(_))));
                    if !exited {
                        break;
                    }
                    // Keep the data directory for the next port; `stop` would remove it.
                    dir = server.dir.lock().unwrap_or_else(|e| e.into_inner()).take();
                    server.stop();
                }
            }
        }
        Err(last_error.unwrap_or_else(|| std::io::Error::other("postgres did not start")))
    }

    /// `postgres://postgres@127.0.0.1:PORT/<database>`
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Waits until the server accepts sessions (`pg_isready`: a listening socket alone
    /// still answers "the database system is starting up").
    fn wait_ready(&self, bin: &Path) -> std::io::Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            let ready = Command::new(bin.join("pg_isready"))
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres"])
                .status()?;
            if ready.success() {
                return Ok(());
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(std::io::Error::other(format!(
                        "postgres exited at start ({status})"
                    )));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(std::io::Error::other("postgres was not ready in time"))
    }

    /// Stops the server (fast shutdown, then a kill after a few seconds) and removes
    /// its directory. Idempotent.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap_or_else(|e| e.into_inner()).take() {
            // SIGINT is PostgreSQL's "fast" shutdown: sessions are ended at once.
            // SAFETY: `kill` only sends a signal to our own child.
            unsafe {
                libc::kill(child.id() as libc::pid_t, libc::SIGINT);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        drop(self.dir.lock().unwrap_or_else(|e| e.into_inner()).take());
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `postgres` user's ids when this process is root (PostgreSQL refuses to run as
/// root), else `None`: the server runs as us.
fn postgres_user_if_root() -> std::io::Result<Option<(u32, u32)>> {
    // SAFETY: getuid cannot fail.
    if unsafe { libc::getuid() } != 0 {
        return Ok(None);
    }
    let name = std::ffi::CString::new("postgres").expect("no NUL");
    // SAFETY: getpwnam returns a pointer to static storage or NULL; we copy the two
    // ids out at once, before any other call could overwrite it.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return Err(std::io::Error::other(
            "running as root and there is no `postgres` user to run PostgreSQL as",
        ));
    }
    // SAFETY: checked non-null above.
    let (uid, gid) = unsafe { ((*entry).pw_uid, (*entry).pw_gid) };
    Ok(Some((uid, gid)))
}

fn as_owner(mut cmd: Command, owner: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = owner {
        cmd.uid(uid).gid(gid);
    }
    cmd
}

/// Starts `postgres` from a thread that lives as long as the process, with a
/// parent-death signal: if this test process dies without running its exit handlers,
/// the kernel stops the server (the signal follows the spawning thread, hence the
/// thread that never ends).
fn spawn_postgres(
    bin: &Path,
    dir: &Path,
    data: &Path,
    port: u16,
    owner: Option<(u32, u32)>,
) -> std::io::Result<Child> {
    let mut cmd = as_owner(Command::new(bin.join("postgres")), owner);
    cmd.arg("-D")
        .arg(data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(dir)
        // A test database needs no durability, and many clients at once.
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=400"])
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(
            dir.join("postgres.log"),
        )?));
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: prctl is async-signal-safe; it runs after the uid change (which
        // would clear the setting) and just before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGQUIT) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("postgres-parent".into())
        .spawn(move || {
            let _ = tx.send(cmd.spawn());
            loop {
                std::thread::park();
            }
        })?;
    rx.recv()
        .map_err(|_| std::io::Error::other("postgres spawner thread died"))?
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// The server this test binary shares, started on first use.
fn shared() -> &'static PgServer {
    static SHARED: OnceLock<PgServer> = OnceLock::new();
    SHARED.get_or_init(|| {
        let server = PgServer::start().expect("start a throwaway PostgreSQL");
        extern "C" fn stop_at_exit() {
            if let Some(server) = SHARED.get() {
                server.stop();
            }
        }
        // SAFETY: registers a plain function to run at process exit.
        unsafe {
            libc::atexit(stop_at_exit);
        }
        server
    })
}

/// A URL to a new, empty database on the shared server.
pub async fn fresh_database() -> String {
    use sqlx::Connection;
    let server = tokio::task::spawn_blocking(shared)
        .await
        .expect("start PostgreSQL");
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    let mut conn = sqlx::PgConnection::connect(&server.url("postgres"))
        .await
        .expect("connect to the test PostgreSQL");
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .expect("create a test database");
    let _ = conn.close().await;
    server.url(&name)
}

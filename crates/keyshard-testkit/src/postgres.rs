//! A private PostgreSQL server per test (and per simulator run), in the shape of
//! [`RedisServer`](crate::RedisServer): `initdb` into a throw-away directory, `postgres` on a
//! free loopback port, stop and restart on the same port, everything removed on drop.
//!
//! `initdb` and `postgres` refuse to run as root. When this process is root (CI containers,
//! the compose rehearsal), the directory is handed to the `postgres` OS user (created by
//! Debian's `postgresql` package) and both programs run as that user through `setpriv`, which
//! `exec`s the program. `runuser -u postgres` would do for `initdb`, but for the server it
//! forks and waits, so the process we hold would be `runuser` rather than the postmaster and
//! stopping it would leave the server running.
//!
//! The binaries come from [`POSTGRES_BIN_DIR_ENV`] when set, else from `PATH`, else from the
//! newest `/usr/lib/postgresql/<version>/bin` (where Debian puts them, off `PATH`).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::{free_port, PORT_ATTEMPTS};

/// Environment variable naming a directory that holds `initdb` and `postgres`.
pub const POSTGRES_BIN_DIR_ENV: &str = "KEYSHARD_POSTGRES_BIN_DIR";

/// Where Debian's `postgresql-<version>` packages put the server binaries.
const DEBIAN_LIB_DIR: &str = "/usr/lib/postgresql";

/// The OS user the server runs as when this process is root.
const RUN_AS: &str = "postgres";

/// How long a fresh server may take to report `ready`. It takes well under a second on an
/// idle machine, a little more after an immediate stop (crash recovery replays the WAL);
/// 30 s leaves room for a 2-core CI box building and testing at the same time, and only a
/// broken start ever waits that long.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two looks at `postmaster.pid`: short next to a start, long enough not to
/// spin a core.
const PROBE_INTERVAL: Duration = Duration::from_millis(10);

/// Tells apart the temp dirs of several servers in one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// How a [`PostgresServer`] is set up.
#[derive(Clone, Debug, Default)]
pub struct PostgresOptions {
    /// `fsync` on: commits survive an OS crash. Off by default, which is safe for a test
    /// server (a crash of the server alone loses nothing: the data is in the OS page cache)
    /// and makes commits several times faster; durability tests turn it on.
    pub fsync: bool,
    /// The directory holding `initdb` and `postgres`; `None` looks them up (module docs).
    pub bin_dir: Option<PathBuf>,
}

/// A private PostgreSQL server on `127.0.0.1` with trust authentication for the superuser
/// `postgres`; stopped (and its data removed) on drop.
#[derive(Debug)]
pub struct PostgresServer {
    bin_dir: PathBuf,
    options: PostgresOptions,
    /// `Some((uid, gid))` of the `postgres` user when we are root and must switch to it.
    run_as: Option<(u32, u32)>,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PostgresServer {
    /// Starts a server with the default options (no `fsync`) on a free port and waits until
    /// it accepts connections.
    ///
    /// # Panics
    /// If the server cannot be started, with a message that names the package to install when
    /// the binaries are missing.
    pub fn start() -> PostgresServer {
        Self::start_with(PostgresOptions::default())
    }

    /// [`start`](Self::start) with explicit options.
    pub fn start_with(options: PostgresOptions) -> PostgresServer {
        match Self::try_start_with(options) {
            Ok(server) => server,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!("{e}"),
            Err(e) => panic!("could not start postgres: {e}"),
        }
    }

    /// Starts a server with the default options; [`io::ErrorKind::NotFound`] (with the
    /// package to install in the message) when the binaries are missing.
    pub fn try_start() -> io::Result<PostgresServer> {
        Self::try_start_with(PostgresOptions::default())
    }

    /// [`try_start`](Self::try_start) with explicit options.
    pub fn try_start_with(options: PostgresOptions) -> io::Result<PostgresServer> {
        let bin_dir = match &options.bin_dir {
            Some(dir) => dir.clone(),
            None => find_bin_dir()?,
        };
        for bin in ["initdb", "postgres"] {
            if !bin_dir.join(bin).is_file() {
                return Err(not_found(&format!(
                    "{} is missing",
                    bin_dir.join(bin).display()
                )));
            }
        }
        let dir = std::env::temp_dir().join(format!(
            "keyshard-pg-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        let mut server = PostgresServer {
            bin_dir,
            options,
            run_as: None,
            port: 0,
            dir,
            child: None,
        };
        // From here on, drop removes the directory whatever fails. The owner of a directory we just created is our effective uid: root is uid 0.
        if fs::metadata(&server.dir)?.uid() == 0 {
            let (uid, gid) = os_user(RUN_AS)?;
            std::os::unix::fs::chown(&server.dir, Some(uid), Some(gid))?;
            server.run_as = Some((uid, gid));
        }
        server.initdb()?;
        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => {
                    tracing::debug!(port = server.port, dir = %server.dir.display(), "postgres ready");
                    return Ok(server);
                }
                Err(e) => {
                    tracing::debug!(attempt, port = server.port, error = %e, "postgres did not start; trying another port");
                    server.stop();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (the maintenance database).
    pub fn url(&self) -> String {
        self.url_for("postgres")
    }

    /// The URL of database `name` on this server.
    pub fn url_for(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The port the server listens on; it stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (the unix socket lives here too).
    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Where the server's output goes (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("postgres.log")
    }

    /// Creates database `name` (with `createdb` from the same installation) and returns its
    /// URL: many tests can share one server, each with a database of its own.
    pub fn create_database(&self, name: &str) -> io::Result<String> {
        let out = Command::new(self.client("createdb"))
            .args(["-h", "127.0.0.1", "-U", "postgres", "-p"])
            .arg(self.port.to_string())
            .arg(name)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "createdb {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(self.url_for(name))
    }

    /// Stops the server at once (PostgreSQL's immediate shutdown, `SIGQUIT`: no checkpoint,
    /// the next start replays the WAL, as after a crash) and waits for it to exit. Clients see
    /// their connections drop. Does nothing when it is not running.
    ///
    /// Not `SIGKILL`: a killed postmaster leaves its backends behind for a moment, holding the
    /// shared memory, and a restart on the same data directory would refuse to start.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signalled = Command::new("kill")
                .args(["-QUIT", &child.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !signalled {
                // Already gone, or no `kill` binary: make sure it is gone.
                let _ = child.kill();
            }
            let _ = child.wait();
            tracing::debug!(port = self.port, "postgres stopped");
        }
    }

    /// Starts the server again on the same port and data (stopping it first if it runs) and
    /// returns once it accepts connections.
    ///
    /// # Panics
    /// If the server does not come back, for instance because another process took the port.
    pub fn restart(&mut self) {
        self.stop();
        // The port was ours a moment ago; one more try covers a bind that races the kernel
        // releasing it.
        let mut result = self.spawn_and_wait();
        if result.is_err() {
            self.stop();
            result = self.spawn_and_wait();
        }
        if let Err(e) = result {
            panic!("could not restart postgres on port {}: {e}", self.port);
        }
        tracing::debug!(port = self.port, "postgres restarted");
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// A client program (`createdb`, `psql`) from the bin dir, else from `PATH`. Clients do
    /// not mind running as root.
    fn client(&self, program: &str) -> PathBuf {
        let local = self.bin_dir.join(program);
        if local.is_file() {
            local
        } else {
            PathBuf::from(program)
        }
    }

    /// `program` from the bin dir, run as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        match self.run_as {
            Some((uid, gid)) => {
                let mut cmd = Command::new("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg("--")
                    .arg(path);
                cmd
            }
            None => Command::new(path),
        }
    }

    fn log_file(&self) -> io::Result<File> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
    }

    /// Creates the cluster: superuser `postgres`, trust authentication (loopback only),
    /// UTF-8 with the C locale so sorting does not depend on the machine.
    fn initdb(&self) -> io::Result<()> {
        let log = self.log_file()?;
        let status = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C"])
            // Nothing to make durable in a throw-away cluster; saves a second per server.
            .arg("--no-sync")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .map_err(|e| spawn_error("initdb", self.run_as.is_some(), e))?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "initdb failed ({status}): {}",
                self.log_tail()
            )));
        }
        Ok(())
    }

    /// Spawns `postgres` on `self.port` and waits until it reports `ready`.
    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let log = self.log_file()?;
        let data = self.data_dir();
        let fsync = if self.options.fsync { "on" } else { "off" };
        let mut cmd = self.command("postgres");
        cmd.arg("-D")
            .arg(&data)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", data.display()))
            .arg("-c")
            .arg(format!("fsync={fsync}"))
            .arg("-c")
            // Torn pages only matter after an OS crash, which fsync=off gives up on anyway.
            .arg(format!("full_page_writes={fsync}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| spawn_error("postgres", self.run_as.is_some(), e))?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls `postmaster.pid` until it names our process, our port and the `ready` state,
    /// the process exits, or [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pid_file = self.data_dir().join("postmaster.pid");
        loop {
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "postgres exited during start on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            let pid = self.child.as_ref().map(Child::id);
            if let Ok(text) = fs::read_to_string(&pid_file) {
                if postmaster_ready(&text, pid, self.port) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "postgres on port {} was not ready within {READY_TIMEOUT:?}: {}",
                        self.port,
                        self.log_tail()
                    ),
                ));
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }

    /// The last lines of the server log, for error messages.
    fn log_tail(&self) -> String {
        let mut text = String::new();
        if File::open(self.log_path())
            .and_then(|mut f| f.read_to_string(&mut text))
            .is_err()
        {
            return "(no log)".into();
        }
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }
}

impl Drop for PostgresServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// How long `psql` may take to connect: a server that is up answers in milliseconds; one that
/// is down (stopped by a test, restarting) should fail the query fast so the caller can retry.
const PSQL_CONNECT_TIMEOUT_SECS: u32 = 5;

/// Runs `sql` with `psql` against `url` (a `postgres://` URL) and returns its rows, one per
/// line, fields separated by `|` (`psql -A -t`). `psql` comes from the server installation
/// when one is found, else from `PATH`: it reads a database this process did not start as
/// well (the simulator against an external `DATABASE_URL`). An error carries psql's message.
pub fn psql(url: &str, sql: &str) -> io::Result<String> {
    let program = find_bin_dir()
        .ok()
        .map(|d| d.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("psql"));
    let out = Command::new(program)
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-d"])
        .arg(url)
        .arg("-c")
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", PSQL_CONNECT_TIMEOUT_SECS.to_string())
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "psql failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    String::from_utf8(out.stdout).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Whether `postmaster.pid` says the postmaster `pid` listens on `port` and accepts
/// connections. Its lines: pid, data dir, start time, port, socket dir, listen address,
/// shared memory key, status (`starting`, `ready`, `stopping`, padded with spaces).
fn postmaster_ready(text: &str, pid: Option<u32>, port: u16) -> bool {
    let lines: Vec<&str> = text.lines().collect();
    lines.len() >= 8
        && lines[0].trim().parse::<u32>().ok() == pid
        && lines[3].trim() == port.to_string()
        && lines[7].trim() == "ready"
}

/// The directory with `initdb` and `postgres`: [`POSTGRES_BIN_DIR_ENV`], then `PATH`, then
/// the newest `/usr/lib/postgresql/<version>/bin`.
fn find_bin_dir() -> io::Result<PathBuf> {
    if let Some(dir) = std::env::var_os(POSTGRES_BIN_DIR_ENV) {
        return Ok(PathBuf::from(dir));
    }
    let has_both = |d: &Path| d.join("initdb").is_file() && d.join("postgres").is_file();
    let path = std::env::var_os("PATH").unwrap_or_default();
    if let Some(dir) = std::env::split_paths(&path).find(|d| has_both(d)) {
        // A `postgres` on PATH is often a symlink into the installation (as on this project's
        // CI image); its real directory also holds the clients (`createdb`, `psql`).
        return Ok(fs::canonicalize(dir.join("postgres"))
            .ok()
            .and_then(|p| p.parent().map(Path::to_path_buf))
            .filter(|d| has_both(d))
            .unwrap_or(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(DEBIAN_LIB_DIR)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| has_both(bin))
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).ok_or_else(|| {
        not_found(&format!(
            "initdb and postgres are neither on PATH nor under {DEBIAN_LIB_DIR}/*/bin"
        ))
    })
}

fn not_found(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "PostgreSQL server binaries not found ({what}); install them: \
             apt-get install -y postgresql, or set {POSTGRES_BIN_DIR_ENV}, \
             or run ./deploy-multi.sh test"
        ),
    )
}

/// An error for a program that could not be spawned; when it runs through `setpriv`, a
/// missing program after the binaries were found means `setpriv` itself (util-linux) is
/// missing.
fn spawn_error(program: &str, via_setpriv: bool, e: io::Error) -> io::Error {
    let via = if via_setpriv { " through setpriv" } else { "" };
    io::Error::new(e.kind(), format!("spawning {program}{via}: {e}"))
}

/// The uid and gid of OS user `name`, from `/etc/passwd`.
fn os_user(name: &str) -> io::Result<(u32, u32)> {
    let passwd = fs::read_to_string("/etc/passwd")?;
    passwd
        .lines()
        .find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        })
        .flatten()
        .ok_or_else(|| {
            not_found(&format!(
                "running as root needs the OS user {name:?}, which the package creates"
            ))
        })
}

#[cfg(test)]
mod tests;

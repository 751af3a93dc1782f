//! Test support for keyshard: a private `redis-server` and a private PostgreSQL per test (and
//! per simulator run).
//!
//! - [`RedisServer`]: starts `redis-server` on a free loopback port with no persistence and a
//!   throw-away working directory, and can kill it (SIGKILL) and restart it on the same port,
//!   empty, so tests can take Redis away from a running cluster and give it back; or stop it
//!   saving its data and start it again with that data, as `docker restart` does to a Redis
//!   with a volume.
//! - [`PostgresServer`] (module [`postgres`]): `initdb` into a temp dir and `postgres` on a
//!   free loopback port, stopped and restarted on the same port with its data, so tests can
//!   take Postgres away for a while; [`PostgresOptions`] keeps `fsync` on for durability tests.
//! - [`free_port`]: a loopback TCP port nobody listens on right now.
//!
//! The crate is synchronous and uses only `std` (plus `tracing`), so it works from plain
//! `#[test]`s, from `#[tokio::test]`s and from the simulator alike. The binary is
//! `redis-server` from `PATH`, or the path in `KEYSHARD_REDIS_SERVER` when that is set.

pub mod postgres;

pub use postgres::{psql, PostgresOptions, PostgresServer};

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Environment variable naming the `redis-server` binary to run instead of the one on `PATH`.
pub const REDIS_SERVER_ENV: &str = "KEYSHARD_REDIS_SERVER";

/// How long a fresh `redis-server` may take to answer `PING`. It is ready in a few
/// milliseconds on an idle machine; 10 s leaves room for a loaded 2-core CI box running
/// many test binaries at once, and only a genuinely broken start ever waits that long.
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause between two readiness probes: short enough to add little latency to every test,
/// long enough not to spin a core while the server starts.
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// Connect/read/write timeout of one readiness probe; loopback answers in microseconds.
const PROBE_IO_TIMEOUT: Duration = Duration::from_millis(500);

/// How many free ports a server start tries (`try_start` here, the simulator's instances).
/// Between `free_port` releasing a port and the server binding it another process, or an
/// outgoing connection's source port, can take it; a handful of tries makes that race
/// practically impossible to lose every time while still failing fast on a real problem.
pub const PORT_ATTEMPTS: u32 = 5;

/// Tells apart the temp dirs of several servers in one process.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A private `redis-server` on `127.0.0.1`, killed (and its temp dir removed) on drop.
#[derive(Debug)]
pub struct RedisServer {
    bin: OsString,
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// If the server cannot be started, with a message that says how to install
    /// `redis-server` when the binary is missing.
    pub fn start() -> RedisServer {
        Self::start_with(default_binary())
    }

    /// [`start`](Self::start) with an explicit `redis-server` binary.
    pub fn start_with(bin: impl Into<OsString>) -> RedisServer {
        match Self::try_start_with(bin) {
            Ok(server) => server,
            Err(e) if e.kind() == io::ErrorKind::NotFound => panic!(
                "redis-server not found ({e}); install it: apt-get install redis-server, \
                 or run ./deploy-multi.sh test"
            ),
            Err(e) => panic!("could not start redis-server: {e}"),
        }
    }

    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// Fails with [`io::ErrorKind::NotFound`] when the `redis-server` binary is missing.
    pub fn try_start() -> io::Result<RedisServer> {
        Self::try_start_with(default_binary())
    }

    /// [`try_start`](Self::try_start) with an explicit `redis-server` binary.
    pub fn try_start_with(bin: impl Into<OsString>) -> io::Result<RedisServer> {
        let dir = std::env::temp_dir().join(format!(
            "keyshard-redis-{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        let mut server = RedisServer {
            bin: bin.into(),
            port: 0,
            dir,
            child: None,
        };
        let mut last_err = None;
        for attempt in 1..=PORT_ATTEMPTS {
            server.port = free_port();
            match server.spawn_and_wait() {
                Ok(()) => {
                    tracing::debug!(port = server.port, dir = %server.dir.display(), "redis-server ready");
                    return Ok(server);
                }
                // A missing binary will not appear on the next port.
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(e),
                Err(e) => {
                    tracing::debug!(attempt, port = server.port, error = %e, "redis-server did not start; trying another port");
                    server.kill();
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port the server listens on; it stays the same across [`restart`](Self::restart).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the server's output goes (appended to across restarts).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("redis.log")
    }

    /// Kills the server with SIGKILL (no clean shutdown, like a crash) and waits for it to
    /// exit. Does nothing when it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // `kill` fails only when the process has already exited, which is what we want.
            let _ = child.kill();
            let _ = child.wait();
            tracing::debug!(port = self.port, "redis-server killed");
        }
    }

    /// Starts the server again on the same port (killing it first if it still runs) and
    /// returns once it answers `PING`. The data is gone: nothing is persisted.
    ///
    /// # Panics
    /// If the server does not come back, for instance because another process took the port.
    pub fn restart(&mut self) {
        self.kill();
        // A dump left by `stop_saving` would be loaded: an empty restart must not see it.
        let _ = fs::remove_file(self.dump_path());
        self.start_again();
    }

    /// Stops the server the way `docker stop` stops a Redis with a volume: `SHUTDOWN SAVE`
    /// writes every key (with its absolute expiry time) to the working directory, and the
    /// process exits. [`restart_with_data`](Self::restart_with_data) brings that data back.
    /// Does nothing when it is not running.
    ///
    /// # Panics
    /// If the server answers `SHUTDOWN SAVE` with an error (e.g. the save failed).
    pub fn stop_saving(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // On success Redis closes the connection without a reply; an error comes back as a
        // `-ERR` line.
        let answer = shutdown_save(self.port);
        let status = child.wait();
        match answer {
            Ok(reply) if reply.starts_with('-') => {
                panic!("redis-server refused SHUTDOWN SAVE: {}", reply.trim_end())
            }
            _ => tracing::debug!(
                port = self.port,
                ?status,
                "redis-server stopped, data saved"
            ),
        }
    }

    /// Starts the server again on the same port with the data [`stop_saving`](Self::stop_saving)
    /// wrote (stopping it that way first if it still runs), like `docker restart redis`: keys
    /// are kept, and keys whose expiry time passed while it was down are gone. Returns once it
    /// answers `PING` (after the data is loaded).
    ///
    /// # Panics
    /// If the server does not come back.
    pub fn restart_with_data(&mut self) {
        self.stop_saving();
        self.start_again();
    }

    /// Starts a stopped server on its port and waits for `PING`.
    fn start_again(&mut self) {
        // After SIGKILL the kernel may hold the listening socket a moment longer; redis sets
        // SO_REUSEADDR, so one quick retry covers the rare case where the bind still fails.
        let mut result = self.spawn_and_wait();
        if result.is_err() {
            self.kill();
            result = self.spawn_and_wait();
        }
        if let Err(e) = result {
            panic!("could not restart redis-server on port {}: {e}", self.port);
        }
        tracing::debug!(port = self.port, "redis-server restarted");
    }

    /// Where `SHUTDOWN SAVE` writes the data and where a start loads it from.
    fn dump_path(&self) -> PathBuf {
        self.dir.join("dump.rdb")
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Spawns `redis-server` on `self.port` and waits until it answers `PING`.
    fn spawn_and_wait(&mut self) -> io::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let bin = &self.bin;
        let child = Command::new(bin)
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            // No RDB snapshots and no AOF: a test server starts empty and leaves nothing behind
            // (but `stop_saving`'s explicit `SHUTDOWN SAVE` still writes `dump.rdb` here).
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("spawning {}: {e}", Path::new(&bin).display()),
                )
            })?;
        self.child = Some(child);
        self.wait_ready()
    }

    /// Polls `PING` until `+PONG` comes back, the process exits, or [`READY_TIMEOUT`] passes.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if !self.is_running() {
                return Err(io::Error::other(format!(
                    "redis-server exited during start on port {}: {}",
                    self.port,
                    self.log_tail()
                )));
            }
            // The answer must come from our own process: if another server took the port
            // between `free_port` and our bind, ours is about to exit and the other one
            // would answer PING just as well.
            let pid = self.child.as_ref().map(Child::id);
            if ping(self.port).is_ok() && server_pid(self.port).ok() == pid {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "redis-server on port {} did not answer PING within {READY_TIMEOUT:?}: {}",
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

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// `redis-server` from `PATH`, or the binary named by [`REDIS_SERVER_ENV`].
fn default_binary() -> OsString {
    std::env::var_os(REDIS_SERVER_ENV).unwrap_or_else(|| "redis-server".into())
}

/// One raw `PING` over RESP; `Ok` only when the answer is `+PONG`.
fn ping(port: u16) -> io::Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_IO_TIMEOUT))?;
    stream.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 7];
    stream.read_exact(&mut buf)?;
    if &buf == b"+PONG\r\n" {
        Ok(())
    } else {
        // e.g. `-LOADING` while a server that persisted data loads it.
        Err(io::Error::other(format!(
            "unexpected PING answer {:?}",
            String::from_utf8_lossy(&buf)
        )))
    }
}

/// Sends `SHUTDOWN SAVE`; returns what the server answered before closing the connection
/// (nothing on success, a `-ERR …` line when it refused).
fn shutdown_save(port: u16) -> io::Result<String> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_IO_TIMEOUT)?;
    // Saving a test server's few keys takes milliseconds; the read ends when it exits.
    stream.set_read_timeout(Some(READY_TIMEOUT))?;
    stream.write_all(b"SHUTDOWN SAVE\r\n")?;
    let mut reply = String::new();
    // A reset connection is also how a server that exited says goodbye.
    let _ = stream.read_to_string(&mut reply);
    Ok(reply)
}

/// The `process_id` the server on `port` reports in `INFO server`.
fn server_pid(port: u16) -> io::Result<u32> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = TcpStream::connect_timeout(&addr, PROBE_IO_TIMEOUT)?;
    stream.set_read_timeout(Some(PROBE_IO_TIMEOUT))?;
    stream.set_write_timeout(Some(PROBE_IO_TIMEOUT))?;
    stream.write_all(b"INFO server\r\n")?;
    // A RESP bulk string: `$<len>\r\n<len bytes>\r\n`.
    let mut reader = io::BufReader::new(stream);
    let mut header = String::new();
    io::BufRead::read_line(&mut reader, &mut header)?;
    let len: usize = header
        .strip_prefix('$')
        .and_then(|n| n.trim_end().parse().ok())
        .ok_or_else(|| io::Error::other(format!("unexpected INFO answer {header:?}")))?;
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| io::Error::other("INFO server has no process_id"))
}

/// A loopback TCP port that was free a moment ago: the OS picks it for a listener that is
/// dropped at once. Someone else may take it before the caller binds it (see `try_start`).
///
/// # Panics
/// If no loopback socket can be bound at all.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a loopback socket to find a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_and_restarts_on_the_same_port() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert_eq!(server.url(), format!("redis://127.0.0.1:{port}"));
        assert!(server.is_running());
        ping(port).expect("fresh server answers PING");
        let pid = server.child.as_ref().map(Child::id);
        assert_eq!(server_pid(port).ok(), pid);

        server.kill();
        assert!(!server.is_running());
        assert!(ping(port).is_err(), "a killed server must not answer");
        server.kill(); // idempotent

        server.restart();
        assert_eq!(server.port(), port);
        assert!(server.is_running());
        ping(port).expect("restarted server answers PING");
    }

    /// One inline command and the first line of its answer.
    fn inline(port: u16, command: &str) -> String {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        stream.set_read_timeout(Some(PROBE_IO_TIMEOUT)).unwrap();
        stream
            .write_all(format!("{command}\r\n").as_bytes())
            .unwrap();
        let mut line = String::new();
        io::BufRead::read_line(&mut io::BufReader::new(stream), &mut line).unwrap();
        line
    }

    #[test]
    fn a_restart_with_data_keeps_keys_and_an_empty_restart_does_not() {
        let mut server = RedisServer::start();
        let port = server.port();
        assert_eq!(inline(port, "SET kept v"), "+OK\r\n");
        assert_eq!(inline(port, "SET short v PX 200"), "+OK\r\n");
        server.stop_saving();
        assert!(!server.is_running());
        assert!(ping(port).is_err(), "a stopped server must not answer");
        // Down longer than `short` lives: its absolute expiry passes meanwhile.
        std::thread::sleep(Duration::from_millis(300));
        server.restart_with_data();
        assert_eq!(server.port(), port);
        assert_eq!(inline(port, "EXISTS kept"), ":1\r\n");
        assert_eq!(inline(port, "EXISTS short"), ":0\r\n");
        // Still running: `restart_with_data` stops it saving first.
        assert_eq!(inline(port, "SET later v"), "+OK\r\n");
        server.restart_with_data();
        assert_eq!(inline(port, "EXISTS later"), ":1\r\n");

        server.restart();
        assert_eq!(
            inline(port, "DBSIZE"),
            ":0\r\n",
            "an empty restart loads no dump"
        );
    }

    #[test]
    fn drop_kills_and_cleans_up() {
        let server = RedisServer::start();
        let (port, dir) = (server.port(), server.dir.clone());
        assert!(dir.exists());
        drop(server);
        assert!(ping(port).is_err());
        assert!(!dir.exists());
    }

    #[test]
    fn two_servers_get_different_ports() {
        let a = RedisServer::start();
        let b = RedisServer::start();
        assert_ne!(a.port(), b.port());
        ping(a.port()).unwrap();
        ping(b.port()).unwrap();
    }

    #[test]
    fn a_port_held_by_another_redis_is_not_taken_for_ours() {
        let other = RedisServer::start();
        let mut clash = RedisServer {
            bin: default_binary(),
            port: other.port(),
            dir: other.dir.join("clash"),
            child: None,
        };
        fs::create_dir_all(&clash.dir).unwrap();
        let err = clash.spawn_and_wait().expect_err("the port is taken");
        assert!(err.to_string().contains("exited during start"), "{err}");
        ping(other.port()).expect("the other server is untouched");
    }

    #[test]
    fn a_missing_binary_is_reported_as_not_found() {
        let err = RedisServer::try_start_with("/nonexistent/redis-server").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }

    #[test]
    #[should_panic(
        expected = "install it: apt-get install redis-server, or run ./deploy-multi.sh test"
    )]
    fn start_explains_how_to_install_a_missing_binary() {
        RedisServer::start_with("/nonexistent/redis-server");
    }

    #[test]
    fn taken_port_is_not_reported_ready() {
        // A listener that accepts but never answers PING: the probe must not take it for redis.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(ping(port).is_err());
    }
}

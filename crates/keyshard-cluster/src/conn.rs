//! The Redis connections and the one retry/reconnect policy for them.
//!
//! - [`Redis`]: the shared, multiplexed `ConnectionManager` that reconnects by itself, with a
//!   time budget on every call. Every non-blocking call goes through it.
//! - [`Dedicated`]: a connection of its own for a blocking read (`XREADGROUP … BLOCK`), with
//!   its reconnect backoff. A `BLOCK` on the shared connection would hold up every call queued
//!   behind it (a claim among them), so no blocking read ever runs there: the job reader's
//!   read goes through [`Dedicated::query`], and the blocking read command is built in one
//!   place (`jobs::stream`).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, RedisResult};
use tokio_util::sync::CancellationToken;

use crate::error::{redact_url, url_password, ClusterError};

/// How long one connection attempt may take. A Redis in the same region connects in a few
/// milliseconds; after a second it is not coming, and the next call tries again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The manager's own per-response limit, a safety net under the tighter per-call budgets
/// below (every call here also has its own `tokio::time::timeout`).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// After this many timeouts in a row the connection is presumed half-open (a silent network
/// drop never resets the socket, so the manager would keep waiting on it) and is replaced.
/// Three rules out one slow answer while replacing a dead socket within about a second.
const REBUILD_AFTER_TIMEOUTS: u32 = 3;

/// A dedicated connection's first wait after a failed connect...
const RECONNECT_FIRST: Duration = Duration::from_millis(100);

/// ...doubling up to this: a Redis outage costs each reader one attempt every 5 s, and a
/// Redis that is back is used within 5 s. (The shared connection needs no backoff: it is only
/// tried when a call needs it, and the calls come from loops with their own intervals.)
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// How much longer than its `BLOCK` a blocking read may take to answer. The library's default
/// response timeout (500 ms) is shorter than a blocking read: every idle read would fail, and
/// an entry handed over just then would be stranded in the pending list. Two seconds cover a
/// busy Redis answering late without hiding a dead one for long.
const BLOCK_MARGIN: Duration = Duration::from_secs(2);

/// A lazily connecting, self-healing Redis handle.
pub(crate) struct Redis {
    client: redis::Client,
    /// Created on first use because the manager needs a running Tokio runtime, which
    /// `Cluster::new` does not require.
    manager: RwLock<Option<ConnectionManager>>,
    timeouts_in_a_row: AtomicU32,
}

impl Redis {
    /// Parses the URL; does not connect.
    pub(crate) fn open(url: &str) -> Result<Self, ClusterError> {
        let client = open_client(url)?;
        Ok(Self {
            client,
            manager: RwLock::new(None),
            timeouts_in_a_row: AtomicU32::new(0),
        })
    }

    /// A connection of its own for blocking reads of at most `block`; connects on first use.
    pub(crate) fn dedicated(&self, op: &'static str, block: Duration) -> Dedicated {
        Dedicated {
            client: self.client.clone(),
            op,
            block,
            conn: None,
            backoff: Backoff::default(),
            failed: false,
        }
    }

    fn manager(&self) -> Result<ConnectionManager, ClusterError> {
        // The lock only guards a clone of an `Arc`-backed handle, never an await point, so a
        // std lock is right here (the mini-redis rule).
        if let Some(m) = self
            .manager
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            return Ok(m.clone());
        }
        let mut slot = self.manager.write().unwrap_or_else(|e| e.into_inner());
        if let Some(m) = slot.as_ref() {
            return Ok(m.clone());
        }
        let m = self.new_manager()?;
        *slot = Some(m.clone());
        Ok(m)
    }

    fn new_manager(&self) -> Result<ConnectionManager, ClusterError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            // No retries inside one reconnect: while Redis is down every call fails fast (the
            // caller falls back to the static rule) and the next call starts a fresh attempt,
            // so a Redis that comes back is used on the next tick instead of after a backoff.
            .set_number_of_retries(0);
        ConnectionManager::new_lazy_with_config(self.client.clone(), config).map_err(|source| {
            ClusterError::Redis {
                op: "connect",
                source,
            }
        })
    }

    /// Runs `f` once on the shared connection within `budget`.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &'static str,
        budget: Duration,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempt = async {
            f(self.manager()?)
                .await
                .map_err(|source| ClusterError::Redis { op, source })
        };
        self.within(op, budget, attempt).await
    }

    /// Like [`run`](Self::run), but a call that fails on a broken connection (refused, reset,
    /// dropped; not a timeout) is tried once more within the same budget: the failure made the
    /// manager start a fresh connection, and right after a Redis restart that second try is
    /// the one that reaches the new server. The claim needs this: without it, the first claim
    /// after an outage would fall back to the static rule while peers already claim through
    /// Redis again, and both could answer. Only for idempotent calls or ones whose first try
    /// cannot have reached Redis.
    pub(crate) async fn run_retrying<T, F, Fut>(
        &self,
        op: &'static str,
        budget: Duration,
        f: F,
    ) -> Result<T, ClusterError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let attempts = async {
            match f(self.manager()?).await {
                Err(e) if e.is_io_error() && !e.is_timeout() => {
                    tracing::debug!(op, error = %e, "Redis connection broken; retrying once on a fresh one");
                    f(self.manager()?).await
                }
                other => other,
            }
            .map_err(|source| ClusterError::Redis { op, source })
        };
        self.within(op, budget, attempts).await
    }

    /// Bounds `work` by `budget` and keeps the count of timeouts in a row.
    async fn within<T>(
        &self,
        op: &'static str,
        budget: Duration,
        work: impl Future<Output = Result<T, ClusterError>>,
    ) -> Result<T, ClusterError> {
        crate::round_trips::record(op);
        match tokio::time::timeout(budget, work).await {
            Ok(Ok(v)) => {
                self.timeouts_in_a_row.store(0, Ordering::Relaxed);
                Ok(v)
            }
            Ok(Err(e)) => {
                match &e {
                    ClusterError::Redis { source, .. } if source.is_timeout() => self.timed_out(),
                    _ => self.timeouts_in_a_row.store(0, Ordering::Relaxed),
                }
                Err(e)
            }
            Err(_) => {
                self.timed_out();
                Err(ClusterError::Timeout {
                    op,
                    timeout: budget,
                })
            }
        }
    }

    fn timed_out(&self) {
        let n = self.timeouts_in_a_row.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= REBUILD_AFTER_TIMEOUTS {
            self.timeouts_in_a_row.store(0, Ordering::Relaxed);
            if let Ok(m) = self.new_manager() {
                tracing::debug!(
                    timeouts = n,
                    "replacing a Redis connection that stopped answering"
                );
                *self.manager.write().unwrap_or_else(|e| e.into_inner()) = Some(m);
            }
        }
    }
}

/// A connection of its own for blocking reads, reconnecting with [`Backoff`] when it breaks.
/// Its response timeout is the `BLOCK` plus [`BLOCK_MARGIN`], so an idle blocking read ends
/// with an empty answer, never a timeout.
///
/// The policy: a failed connect waits the backoff and tries again; a failed call drops the
/// connection, and the next connect also waits the backoff first, so a Redis that accepts
/// connections but refuses every read (still loading, or a key of the wrong type) costs one
/// attempt per backoff step, not a busy loop; a call that succeeds resets the backoff.
pub(crate) struct Dedicated {
    client: redis::Client,
    op: &'static str,
    block: Duration,
    conn: Option<MultiplexedConnection>,
    backoff: Backoff,
    /// The last call failed: wait the backoff before the next connect.
    failed: bool,
}

impl Dedicated {
    /// The longest `BLOCK` a command on this connection may ask for.
    pub(crate) fn block(&self) -> Duration {
        self.block
    }

    /// Runs `cmd` (which may `BLOCK` up to [`block`](Self::block)) on this connection,
    /// connecting first if needed; a new connection is handed to `setup` first (e.g. to
    /// create a consumer group). `None` only when `shutdown` comes first.
    pub(crate) async fn query<T, F, Fut>(
        &mut self,
        cmd: &redis::Cmd,
        shutdown: &CancellationToken,
        setup: F,
    ) -> Option<Result<T, ClusterError>>
    where
        T: redis::FromRedisValue,
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<()>>,
    {
        let op = self.op;
        let c = self.connected(shutdown, setup).await?;
        let result = tokio::select! {
            _ = shutdown.cancelled() => return None,
            r = cmd.query_async::<T>(c) => r,
        };
        match result {
            Ok(v) => {
                self.backoff.reset();
                Some(Ok(v))
            }
            Err(source) => {
                self.conn = None;
                self.failed = true;
                Some(Err(ClusterError::Redis { op, source }))
            }
        }
    }

    /// The open connection, or a new one (see [`query`](Self::query)).
    async fn connected<F, Fut>(
        &mut self,
        shutdown: &CancellationToken,
        setup: F,
    ) -> Option<&mut MultiplexedConnection>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<()>>,
    {
        while self.conn.is_none() {
            if self.failed {
                tokio::select! {
                    _ = shutdown.cancelled() => return None,
                    _ = tokio::time::sleep(self.backoff.next_delay()) => {}
                }
            }
            let attempt = async {
                let c = self.connect().await?;
                setup(c.clone())
                    .await
                    .map_err(|source| ClusterError::Redis {
                        op: self.op,
                        source,
                    })?;
                Ok::<_, ClusterError>(c)
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return None,
                r = attempt => r,
            };
            match result {
                Ok(c) => {
                    self.failed = false;
                    self.conn = Some(c);
                }
                Err(e) => {
                    tracing::debug!(op = self.op, "cannot open a dedicated connection: {e}");
                    self.failed = true;
                }
            }
        }
        self.conn.as_mut()
    }

    async fn connect(&self) -> Result<MultiplexedConnection, ClusterError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(self.block + BLOCK_MARGIN));
        // Bounded on top of the library's own connect timeout, which does not cover the
        // handshake (AUTH, SELECT) of a Redis that accepts but never answers.
        tokio::time::timeout(
            CONNECT_TIMEOUT,
            self.client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| ClusterError::Timeout {
            op: self.op,
            timeout: CONNECT_TIMEOUT,
        })?
        .map_err(|source| ClusterError::Redis {
            op: self.op,
            source,
        })
    }
}

/// Exponential reconnect backoff: [`RECONNECT_FIRST`], doubling up to [`RECONNECT_MAX`].
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            next: RECONNECT_FIRST,
        }
    }
}

impl Backoff {
    /// The wait before the next attempt; each call doubles the one after it, up to the cap.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(RECONNECT_MAX);
        delay
    }

    /// A call succeeded: the next failure starts from the first wait again.
    pub(crate) fn reset(&mut self) {
        self.next = RECONNECT_FIRST;
    }
}

/// A client for `url`, with an error that never shows the password.
pub(crate) fn open_client(url: &str) -> Result<redis::Client, ClusterError> {
    redis::Client::open(url).map_err(|e| {
        let mut reason = e.to_string();
        if let Some(pw) = url_password(url) {
            reason = reason.replace(pw, "***");
        }
        ClusterError::InvalidUrl {
            url: redact_url(url),
            reason,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..9).map(|_| b.next_delay().as_millis() as u64).collect();
        assert_eq!(
            waits,
            [100, 200, 400, 800, 1_600, 3_200, 5_000, 5_000, 5_000]
        );
        b.reset();
        assert_eq!(b.next_delay(), RECONNECT_FIRST);
    }

    // Port 1 on loopback: nothing listens, every connect is refused at once. Paused time
    // runs the backoff sleeps without real waiting.
    #[tokio::test(start_paused = true)]
    async fn an_unreachable_redis_is_retried_until_shutdown() {
        let redis = Redis::open("redis://127.0.0.1:1").unwrap();
        let mut link = redis.dedicated("test read", Duration::from_secs(1));
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            stop.cancel();
        });
        let got: Option<Result<(), _>> = link
            .query(&redis::cmd("PING"), &shutdown, |_| async { Ok(()) })
            .await;
        assert!(
            got.is_none(),
            "never connected, so only shutdown ends the wait"
        );
        assert!(shutdown.is_cancelled());
    }
}

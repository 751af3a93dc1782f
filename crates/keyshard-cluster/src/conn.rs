//! The Redis connection: one multiplexed `ConnectionManager` that reconnects by itself, and a
//! time budget on every call.

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::RwLock;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisResult;

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

    pub(crate) fn client(&self) -> redis::Client {
        self.client.clone()
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

//! Errors of the ledger, with the conditions callers branch on as variants.

use keyshard_cluster::ClusterError;

/// What went wrong writing, reading or migrating the ledger.
///
/// No variant carries a database password: sqlx's errors name the server, not the URL, and
/// [`LedgerError::InvalidUrl`] is built from a redacted URL.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// `DATABASE_URL` does not parse; `url` has its password replaced by `***`.
    #[error("invalid database URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// Postgres refused, failed or could not be reached during `op`.
    #[error("Postgres error during {op}: {source}")]
    Database {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Postgres did not answer `op` within its time budget; the statement may still commit
    /// (every write here is idempotent, so trying again is safe).
    #[error("Postgres did not answer {op} within {timeout:?}")]
    Timeout {
        op: &'static str,
        timeout: std::time::Duration,
    },
    /// Applying the migrations failed (a bad migration, a database changed by hand).
    #[error("migrating the ledger schema failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The buffer's Redis side failed.
    #[error(transparent)]
    Redis(#[from] ClusterError),
    /// Postgres does not know the time zone (`QUOTA_TIMEZONE` and the like).
    #[error("unknown time zone {0:?}")]
    InvalidTimezone(String),
    /// A price table string does not parse; every problem is listed.
    #[error("invalid price table: {}", .0.join("; "))]
    InvalidPrices(Vec<String>),
}

impl LedgerError {
    pub(crate) fn db(op: &'static str) -> impl FnOnce(sqlx::Error) -> LedgerError {
        move |source| LedgerError::Database { op, source }
    }

    /// Whether the error says Postgres (or Redis) is unavailable rather than that the request
    /// is wrong: worth retrying later.
    pub fn is_unavailable(&self) -> bool {
        match self {
            LedgerError::Timeout { .. } => true,
            LedgerError::Redis(e) => e.is_redis_unavailable(),
            LedgerError::Database { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::Tls(_)
                ) || source
                    .as_database_error()
                    .and_then(|e| e.code())
                    // Class 57 (operator intervention: shutdown, crash recovery), class 08
                    // (connection exceptions), 53 (insufficient resources).
                    .is_some_and(|c| {
                        c.starts_with("57") || c.starts_with("08") || c.starts_with("53")
                    })
            }
            _ => false,
        }
    }
}

/// Bounds `work` by `budget`.
pub(crate) async fn within<T>(
    op: &'static str,
    budget: std::time::Duration,
    work: impl std::future::Future<Output = Result<T, LedgerError>>,
) -> Result<T, LedgerError> {
    tokio::time::timeout(budget, work)
        .await
        .unwrap_or(Err(LedgerError::Timeout {
            op,
            timeout: budget,
        }))
}

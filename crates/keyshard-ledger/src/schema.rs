//! The schema: `migrations/` at the repository root (plain SQL, sqlx's `NNNN_name.sql`),
//! embedded in the binary at build time and applied under Postgres's advisory lock, so N
//! instances starting together apply each migration once; also the connection pool.

use std::time::Duration;

use keyshard_cluster::redact_url;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};

use crate::LedgerError;

/// The embedded `migrations/` folder (`build.rs` rebuilds the crate when it changes).
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// Connections per instance: the writer holds one for a few milliseconds four times a
/// second, and reads (`/사용량`, the CLI) are rare; a few more than one keep a slow read from
/// delaying a batch. Small on purpose: N instances share the server's `max_connections`.
pub const POOL_SIZE: u32 = 4;

/// How long a caller waits for a connection: a Postgres that is down must fail a batch fast
/// (it stays buffered and is retried), not hold the writer for sqlx's default 30 s.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);

/// A pool for `url` that connects on first use, so an instance starts (and answers users)
/// while Postgres is still down. The error never shows the password. Needs a Tokio runtime
/// (the pool's maintenance task).
pub fn connect_lazy(url: &str) -> Result<PgPool, LedgerError> {
    PgPoolOptions::new()
        .max_connections(POOL_SIZE)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_lazy(url)
        .map_err(|e| {
            let mut reason = e.to_string();
            if let Some(pw) = password(url) {
                reason = reason.replace(pw, "***");
            }
            LedgerError::InvalidUrl {
                url: redact_url(url),
                reason,
            }
        })
}

fn password(url: &str) -> Option<&str> {
    let redacted = redact_url(url);
    if redacted == url {
        return None;
    }
    // The password is what `redact_url` replaced with `***`.
    let start = redacted.find("***")?;
    let tail = &redacted[start + 3..];
    let end = url.len() - tail.len();
    url.get(start..end).filter(|p| !p.is_empty())
}

/// Applies the embedded migrations that the database lacks.
///
/// sqlx's `Migrator` takes `pg_advisory_lock` (a session lock keyed by the database name)
/// before it even creates `_sqlx_migrations`, and releases it at the end, so concurrent
/// callers wait for each other and then find the work done. It does not release the lock when
/// a migration fails, so the connection is closed rather than returned to the pool: closing
/// the session is what releases a session lock.
pub async fn migrate(pool: &PgPool) -> Result<(), LedgerError> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(LedgerError::db("migrate connect"))?;
    // `run_direct` rather than `run(&mut *conn)`: the latter's `Acquire` bound makes the
    // future unusable in `tokio::spawn` ("implementation of `Acquire` is not general
    // enough"); sqlx keeps `run_direct` public for exactly this.
    match MIGRATOR.run_direct(&mut *conn).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = sqlx::Connection::close(conn.detach()).await;
            Err(e.into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_bad_url_is_reported_without_its_password() {
        let err = connect_lazy("postgres://u:hunter2@h:notaport/db").unwrap_err();
        let text = format!("{err} {err:?}");
        assert!(matches!(err, LedgerError::InvalidUrl { .. }), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(password("postgres://u:hunter2@h/db"), Some("hunter2"));
        assert_eq!(password("postgres://h/db"), None);
    }

    #[test]
    fn the_migrations_are_embedded_in_order() {
        let versions: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
        assert!(!versions.is_empty());
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        assert_eq!(MIGRATOR.iter().next().unwrap().description, "ledger");
    }
}

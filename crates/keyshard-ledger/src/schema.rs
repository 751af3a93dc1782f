//! The schema: `migrations/` at the repository root (plain SQL, sqlx's `NNNN_name.sql`),
//! embedded in the binary at build time and applied under Postgres's advisory lock, so N
//! instances starting together apply each migration once; also the connection pool.

use std::time::Duration;

use keyshard_cluster::redact_url;
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgPool, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use crate::{backoff_delay, LedgerError};

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

/// The first pause before [`migrate_until_done`] tries again...
const MIGRATE_RETRY_FIRST: Duration = Duration::from_millis(500);

/// ...doubling up to this: a Postgres that comes back is migrated (and written to) within
/// 10 s, and N instances waiting for it make a handful of connection attempts a minute.
const MIGRATE_RETRY_MAX: Duration = Duration::from_secs(10);

/// [`migrate`], tried again with a growing pause until it succeeds: an instance starts (and
/// answers Discord) while Postgres is down, and its rows wait in Redis until the schema is
/// there. `true` once applied; `false` when `shutdown` came first. The first failure is
/// logged at `warn`, a failure that is not an outage (a broken migration, a database changed
/// by hand) at `error` every time, since it will not heal by itself.
pub async fn migrate_until_done(pool: &PgPool, shutdown: &CancellationToken) -> bool {
    let mut failures = 0u32;
    loop {
        let result = tokio::select! {
            r = migrate(pool) => r,
            () = shutdown.cancelled() => return false,
        };
        match result {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!(failures, "ledger schema applied; writing usage rows");
                }
                return true;
            }
            Err(e) => {
                failures += 1;
                if !e.is_unavailable() {
                    tracing::error!(error = %e, "applying the ledger migrations failed; retrying");
                } else if failures == 1 {
                    tracing::warn!(error = %e, "Postgres unreachable: the ledger migrations wait for it (usage rows wait in Redis meanwhile)");
                } else {
                    tracing::debug!(error = %e, failures, "Postgres still unreachable");
                }
                let delay = backoff_delay(failures, MIGRATE_RETRY_FIRST, MIGRATE_RETRY_MAX);
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return false,
                }
            }
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

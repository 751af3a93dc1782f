//! Retention: raw rows and rollup days older than configured ages are deleted in bounded
//! batches, so pruning never holds a long lock or a long transaction on a big table.
//!
//! Defaults: raw rows 90 days (a dispute or an invoice about last month can still be checked
//! row by row), rollup 730 days (year-over-year reports; a rollup day is a few thousand rows
//! where the raw day may be a million). Reads older than the raw retention round their edge
//! days out to whole UTC days ([`Span::raw_kept_since_ms`](crate::Span)).
//!
//! Invariant: the raw retention must be far longer than a row can wait in the buffer
//! (minutes). A row written again after its first copy was pruned would be inserted (and
//! counted in the rollup) a second time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyshard_cluster::run_every;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::within;
use crate::plan::DAY_MS;
use crate::LedgerError;

/// Rows deleted per statement: each batch is a short transaction touching a few thousand
/// rows (tens of milliseconds), so writers and autovacuum interleave with it; a year of
/// backlog on a first run is still only a few thousand statements.
pub const PRUNE_BATCH: i64 = 5_000;

/// How long one delete batch may take before the pass gives up until the next one.
const BATCH_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`spawn_pruner`] runs: retention is in days, an hour late is nothing, and a
/// pass with nothing to delete is one indexed query per table.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// How long rows are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub raw: Duration,
    pub rollup: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            raw: Duration::from_secs(90 * 86_400),
            rollup: Duration::from_secs(730 * 86_400),
        }
    }
}

impl Retention {
    /// The oldest instant whose raw rows are kept at `now_ms` (for [`Span`](crate::Span)).
    pub fn raw_kept_since(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.raw.as_millis() as u64)
    }

    /// The first UTC day (number since 1970-01-01) whose rollup rows are kept at `now_ms`.
    pub fn rollup_kept_since_day(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.rollup.as_millis() as u64) / DAY_MS
    }
}

/// What one [`prune`] deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub raw_rows: u64,
    pub rollup_rows: u64,
}

/// Deletes raw rows created before `raw_before_ms` and rollup rows of days before
/// `rollup_before_day`, [`PRUNE_BATCH`] rows per statement.
pub async fn prune(
    pool: &PgPool,
    raw_before_ms: u64,
    rollup_before_day: u64,
) -> Result<Pruned, LedgerError> {
    let mut out = Pruned::default();
    let raw_before = i64::try_from(raw_before_ms).unwrap_or(i64::MAX);
    loop {
        let n = batch(
            pool,
            "DELETE FROM ledger WHERE interaction_id IN (
                 SELECT interaction_id FROM ledger
                 WHERE created_at < timestamptz 'epoch' + interval '1 millisecond' * $1
                 LIMIT $2)",
            raw_before,
        )
        .await?;
        out.raw_rows += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    let day = i64::try_from(rollup_before_day.min(i32::MAX as u64)).unwrap_or(0);
    loop {
        let n = batch(
            pool,
            "DELETE FROM ledger_daily WHERE ctid IN (
                 SELECT ctid FROM ledger_daily
                 WHERE day < date '1970-01-01' + $1::int4
                 LIMIT $2)",
            day,
        )
        .await?;
        out.rollup_rows += n;
        if n < PRUNE_BATCH as u64 {
            break;
        }
    }
    Ok(out)
}

async fn batch(pool: &PgPool, sql: &'static str, cutoff: i64) -> Result<u64, LedgerError> {
    let sql_cutoff = sqlx::query(sql).bind(cutoff).bind(PRUNE_BATCH);
    within("ledger prune", BATCH_TIMEOUT, async {
        sql_cutoff
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(LedgerError::db("ledger prune"))
    })
    .await
}

/// Prunes every [`PRUNE_EVERY`] (the first pass at once) until `shutdown`. Every instance may
/// run it: two passes at once delete disjoint or already-deleted rows, nothing worse.
pub fn spawn_pruner(
    pool: PgPool,
    retention: Retention,
    shutdown: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(run_every(
        "ledger prune",
        PRUNE_EVERY,
        shutdown,
        None,
        move || {
            let pool = pool.clone();
            async move {
                let now = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                let p = prune(
                    &pool,
                    retention.raw_kept_since(now),
                    retention.rollup_kept_since_day(now),
                )
                .await?;
                if p.raw_rows + p.rollup_rows > 0 {
                    tracing::info!(
                        raw = p.raw_rows,
                        rollup = p.rollup_rows,
                        "pruned ledger rows past retention"
                    );
                }
                Ok::<(), LedgerError>(())
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cutoffs_follow_the_retention() {
        let r = Retention {
            raw: Duration::from_secs(2 * 86_400),
            rollup: Duration::from_secs(10 * 86_400),
        };
        let now = 100 * DAY_MS + 5;
        assert_eq!(r.raw_kept_since(now), 98 * DAY_MS + 5);
        assert_eq!(r.rollup_kept_since_day(now), 90);
        assert_eq!(r.raw_kept_since(5), 0, "no underflow");
        assert_eq!(Retention::default().raw, Duration::from_secs(90 * 86_400));
    }
}

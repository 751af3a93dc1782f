//! Retention: old raw rows and old rollup days go, in bounded batches; the rest stays.

use keyshard_ledger::retention::PRUNE_BATCH;
use keyshard_ledger::{prune, write_batch, DAY_MS};

use crate::support::*;

#[tokio::test]
async fn old_rows_are_pruned_in_batches_and_recent_ones_stay() {
    let db = TestDb::new().await;
    // More old rows than one delete batch takes, so the loop must go round.
    let old_n = PRUNE_BATCH as usize * 2 + 100;
    let old = rows(21, old_n, BASE_MS - 10 * DAY_MS, 2 * DAY_MS);
    let recent = rows(22, 500, BASE_MS, DAY_MS);
    for chunk in old.chunks(2_000).chain(recent.chunks(500)) {
        write_batch(&db.pool, chunk).await.unwrap();
    }
    let days_before: i64 = sqlx::query_scalar("SELECT count(DISTINCT day) FROM ledger_daily")
        .fetch_one(&db.pool)
        .await
        .unwrap();

    // Raw rows older than 5 days before BASE go; rollup days before BASE - 9 days go.
    let raw_before = BASE_MS - 5 * DAY_MS;
    let rollup_before_day = (BASE_MS - 9 * DAY_MS) / DAY_MS;
    let p = prune(&db.pool, raw_before, rollup_before_day)
        .await
        .unwrap();
    assert_eq!(p.raw_rows as usize, old_n);
    assert_eq!(count(&db.pool).await, 500);
    let oldest_day: i64 =
        sqlx::query_scalar("SELECT min(day - date '1970-01-01')::int8 FROM ledger_daily")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(oldest_day as u64, rollup_before_day);
    assert!(p.rollup_rows > 0);
    let days_after: i64 = sqlx::query_scalar("SELECT count(DISTINCT day) FROM ledger_daily")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        days_after < days_before && days_after >= 2,
        "{days_before} → {days_after}"
    );

    let again = prune(&db.pool, raw_before, rollup_before_day)
        .await
        .unwrap();
    assert_eq!((again.raw_rows, again.rollup_rows), (0, 0));
}

//! Bytes per row, measured by hand (`cargo test -p keyshard-ledger --test it -- --ignored
//! --nocapture bytes_per_row`): 100,000 generated rows over 30 days, then the sizes
//! Postgres reports. The rows are the realistic mix (`usage_rows`: each user in one guild,
//! served by its primary with that instance's key), so the rollup's size is meaningful too.

use keyshard_ledger::{write_batch, DAY_MS};

use crate::support::*;

#[tokio::test]
#[ignore = "a measurement for BENCHMARKS.md, run by hand"]
async fn bytes_per_row() {
    let db = TestDb::new().await;
    let n = 100_000;
    let all = usage_rows(31, n, 300, BASE_MS - 30 * DAY_MS, 30 * DAY_MS);
    for chunk in all.chunks(1_000) {
        write_batch(&db.pool, chunk).await.unwrap();
    }
    sqlx::query("VACUUM ANALYZE ledger")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("VACUUM ANALYZE ledger_daily")
        .execute(&db.pool)
        .await
        .unwrap();
    let (avg_row, heap, indexes, total): (f64, i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT avg(pg_column_size(l.*))::float8 FROM ledger l),
                pg_relation_size('ledger'), pg_indexes_size('ledger'),
                pg_total_relation_size('ledger')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let (daily_rows, daily_avg, daily_total): (i64, f64, i64) = sqlx::query_as(
        "SELECT count(*), avg(pg_column_size(d.*))::float8, pg_total_relation_size('ledger_daily')
         FROM ledger_daily d",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let per = |b: i64| b as f64 / n as f64;
    println!("ledger: {n} rows; tuple data avg {avg_row:.1} B (pg_column_size)");
    println!(
        "ledger: heap {:.1} B/row, indexes {:.1} B/row, total {:.1} B/row = {:.1} MB per million rows",
        per(heap),
        per(indexes),
        per(total),
        per(total) * 1e6 / 1048576.0
    );
    let idx: Vec<(String, i64)> = sqlx::query_as(
        "SELECT indexrelid::regclass::text, pg_relation_size(indexrelid)
         FROM pg_index WHERE indrelid IN ('ledger'::regclass, 'ledger_daily'::regclass) ORDER BY 1",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    for (name, bytes) in idx {
        println!(
            "  index {name}: {bytes} B ({:.1} B per ledger row)",
            per(bytes)
        );
    }
    println!(
        "ledger_daily: {daily_rows} rows for {n} ledger rows over 30 days ({:.1} per day), \
         avg {daily_avg:.1} B, total {daily_total} B ({:.1} B per ledger row)",
        daily_rows as f64 / 30.0,
        per(daily_total)
    );
    // The budget this layout was designed to: a row with its indexes well under 300 bytes.
    assert!(per(total) < 300.0, "{:.1} B per row", per(total));
}

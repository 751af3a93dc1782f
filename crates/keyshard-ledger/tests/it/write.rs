//! `write_batch`: exactly once, including the rollup, however often and however
//! concurrently a row is written.

use keyshard_ledger::{format_key_fp, write_batch, LedgerRow, Routing, Status};
use keyshard_routing::snowflake_at;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use crate::support::*;

async fn rollup_sums(pool: &sqlx::PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "SELECT coalesce(sum(interactions), 0)::int8, coalesce(sum(cost_micros), 0)::int8,
                coalesce(sum(tokens_in), 0)::int8 FROM ledger_daily",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_batch_written_twice_changes_nothing_the_second_time() {
    let db = TestDb::new().await;
    // Two days around a UTC midnight, so the rollup has several days.
    let batch = rows(1, 300, BASE_MS, 48 * HOUR_MS);
    assert_eq!(write_batch(&db.pool, &batch).await.unwrap(), 300);
    let before = rollup_sums(&db.pool).await;
    assert_eq!(before.0, 300);
    let cost: u64 = batch.iter().map(|r| r.cost_micros).sum();
    assert_eq!(before.1 as u64, cost);

    assert_eq!(write_batch(&db.pool, &batch).await.unwrap(), 0);
    // A batch that repeats a row within itself and overlaps the first one.
    let mut mixed = batch[..10].to_vec();
    mixed.extend(rows(2, 20, BASE_MS, HOUR_MS));
    mixed.push(mixed[12].clone());
    assert_eq!(write_batch(&db.pool, &mixed).await.unwrap(), 20);
    assert_eq!(count(&db.pool).await, 320);
    assert_eq!(rollup_sums(&db.pool).await.0, 320);
    assert_eq!(rollup_mismatches(&db.pool).await, 0);
    assert_eq!(write_batch(&db.pool, &[]).await.unwrap(), 0);
    let wanted: Vec<u64> = vec![batch[0].interaction_id, 1, mixed[15].interaction_id];
    let mut want = vec![batch[0].interaction_id, mixed[15].interaction_id];
    want.sort();
    assert_eq!(
        keyshard_ledger::present(&db.pool, &wanted).await.unwrap(),
        want
    );
}

#[tokio::test]
async fn four_concurrent_writers_with_overlapping_batches_write_each_row_once() {
    let db = TestDb::new().await;
    let all = rows(3, 2_000, BASE_MS, 30 * HOUR_MS);
    // Writer k writes rows [300k, 300k + 1100), shuffled, in batches of 100: every row is
    // written by up to four writers at once, in a different order by each.
    let writers: Vec<_> = (0..4u64)
        .map(|k| {
            let mut mine = all[(300 * k as usize)..(300 * k as usize + 1_100)].to_vec();
            mine.shuffle(&mut SmallRng::seed_from_u64(k));
            let pool = db.pool.clone();
            tokio::spawn(async move {
                let mut inserted = 0;
                for chunk in mine.chunks(100) {
                    inserted += write_batch(&pool, chunk)
                        .await
                        .expect("no deadlock, no error");
                }
                inserted
            })
        })
        .collect();
    let mut inserted = 0;
    for w in writers {
        inserted += w.await.unwrap();
    }
    let distinct = 300 * 3 + 1_100;
    assert_eq!(
        inserted, distinct as u64,
        "every row inserted by exactly one writer"
    );
    assert_eq!(count(&db.pool).await, distinct as i64);
    assert_eq!(rollup_sums(&db.pool).await.0, distinct as i64);
    assert_eq!(rollup_mismatches(&db.pool).await, 0);
}

#[tokio::test]
async fn a_row_is_stored_as_written() {
    let db = TestDb::new().await;
    let created = BASE_MS + 123;
    let mut r = LedgerRow::new(
        snowflake_at(created, 9),
        u64::MAX >> 2,
        42,
        "video",
        2,
        3,
        Routing::PrimaryOverloaded,
        created + 90_000,
    );
    r.guild_id = Some(7);
    r.rescued = true;
    r.moved = true;
    r.provider = Some("minimax".into());
    r.model = Some("MiniMax-Hailuo-02".into());
    r.key_fp = Some("0a1b2c3d4e5f".into());
    r.video_secs = 6;
    r.cost_micros = 280_200;
    r.status = Status::Failed;
    r.error_class = Some("key_problem".into());
    r.acked_ms = Some(created + 12);
    r.started_ms = Some(created + 1_012);
    r.provider_ms = Some(80_000);
    write_batch(&db.pool, &[r.clone()]).await.unwrap();

    let got: (
        i64,
        i64,
        Option<i64>,
        i64,
        String,
        String,
        i16,
        i16,
        i16,
        i16,
    ) = sqlx::query_as(
        "SELECT user_id, (extract(epoch FROM created_at) * 1000)::int8, key_fp, cost_micros,
                command, error_class, primary_instance, served_by, reason, status
         FROM ledger",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(got.0 as u64, r.user_id);
    assert_eq!(got.1 as u64, created);
    assert_eq!(format_key_fp(got.2.unwrap()), "0a1b2c3d4e5f");
    assert_eq!(got.3, 280_200);
    assert_eq!((got.4.as_str(), got.5.as_str()), ("video", "key_problem"));
    assert_eq!((got.6, got.7, got.8, got.9), (2, 3, 2, 1));
    let times: (i32, i32, i32, i32, bool, bool, bool) = sqlx::query_as(
        "SELECT ack_ms, start_ms, finish_ms, provider_ms, rescued, stolen, moved FROM ledger",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(times, (12, 1_012, 90_000, 80_000, true, false, true));
    let daily: (i64, i64, i64, String) =
        sqlx::query_as("SELECT guild_id, failed, queue_ms, provider FROM ledger_daily")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(daily, (7, 1, 1_000, "minimax".to_owned()));
}

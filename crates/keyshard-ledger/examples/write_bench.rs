//! Batch write throughput of `write_batch` on a private Postgres (rows/s), for BENCHMARKS.md.
//!
//! ```text
//! cargo run --release -p keyshard-ledger --example write_bench -- [rows] [batch] [writers] [fsync]
//! cargo run --release -p keyshard-ledger --example write_bench -- 200000 500 1
//! cargo run --release -p keyshard-ledger --example write_bench -- 200000 500 4 fsync
//! ```
//!
//! Defaults: 200,000 rows, batches of 500 (the writer's default), 1 writer, `fsync` off.
//! Rows are spread over 30 days and 500 users, each in one guild and served by its primary
//! (so a user-day is a few rollup rows, as in real use); each writer writes its own share.
//! A measurement, not a test: nothing here asserts a speed.

use std::time::Instant;

use keyshard_ledger::{connect_lazy, migrate, write_batch, LedgerRow, Routing};
use keyshard_routing::snowflake_at;
use keyshard_testkit::{PostgresOptions, PostgresServer};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const DAY_MS: u64 = 86_400_000;
const BASE_MS: u64 = 1_742_068_800_000;

fn rows(n: usize) -> Vec<LedgerRow> {
    let mut rng = SmallRng::seed_from_u64(7);
    (0..n)
        .map(|i| {
            let created = BASE_MS + (i as u64 * 30 * DAY_MS) / n as u64;
            let user = rng.random_range(0..500u64);
            let instance = (user % 4 + 1) as u32;
            let mut r = LedgerRow::new(
                snowflake_at(created, i as u32),
                user,
                rng.random_range(0..200),
                ["chat", "image", "video"][rng.random_range(0..3)],
                instance,
                instance,
                Routing::Primary,
                created + 5_000,
            );
            r.guild_id = Some(user % 50);
            r.provider = Some("openai".into());
            r.model = Some("gpt-4o-mini".into());
            r.key_fp = Some(format!("{:012x}", u64::from(instance) * 0x1111_1111));
            r.tokens_in = rng.random_range(10..2_000);
            r.tokens_out = rng.random_range(10..1_000);
            r.cost_micros = rng.random_range(10..1_000);
            r.acked_ms = Some(created + 20);
            r.started_ms = Some(created + 30);
            r.provider_ms = Some(4_000);
            r
        })
        .collect()
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg =
        |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (n, batch, writers) = (arg(0, 200_000), arg(1, 500).max(1), arg(2, 1).max(1));
    let fsync = args.iter().any(|a| a == "fsync");

    let server = PostgresServer::start_with(PostgresOptions {
        fsync,
        ..PostgresOptions::default()
    });
    let url = server.create_database("bench").expect("createdb");
    let pool = connect_lazy(&url).expect("url");
    migrate(&pool).await.expect("migrate");
    let all = rows(n);
    let shares: Vec<Vec<LedgerRow>> = (0..writers)
        .map(|w| all.iter().skip(w).step_by(writers).cloned().collect())
        .collect();

    let start = Instant::now();
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut inserted = 0;
                for chunk in share.chunks(batch) {
                    inserted += write_batch(&pool, chunk).await.expect("write");
                }
                inserted
            })
        })
        .collect();
    let mut inserted = 0;
    for t in tasks {
        inserted += t.await.expect("writer");
    }
    let secs = start.elapsed().as_secs_f64();
    let daily: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_daily")
        .fetch_one(&pool)
        .await
        .expect("count");
    println!(
        "write_batch: {inserted} rows in {secs:.2} s = {:.0} rows/s \
         (batch {batch}, {writers} writer(s), fsync {}; {daily} rollup rows)",
        inserted as f64 / secs,
        if fsync { "on" } else { "off" }
    );
}

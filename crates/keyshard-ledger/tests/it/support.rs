//! Shared scaffolding: a private Postgres shared by the tests running at the same time (one
//! fresh database each), generated rows, the rollup-equals-raw check, and waiting for a
//! condition with a deadline.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use keyshard_cluster::{Cluster, ClusterConfig};
use keyshard_ledger::{connect_lazy, migrate, LedgerRow, Routing, Status};
use keyshard_routing::snowflake_at;
use keyshard_testkit::PostgresServer;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sqlx::PgPool;

/// How long a test waits for something that takes well under a second on an idle machine
/// (a Postgres restart, a few writer ticks) on a loaded 2-core CI box.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A fixed instant (2025-03-15 20:00 UTC) the generated rows are spread around.
pub const BASE_MS: u64 = 1_742_068_800_000;
pub const HOUR_MS: u64 = 3_600_000;

/// The server the running tests share; it stops when the last of them drops its handle.
static SHARED: Mutex<Weak<PostgresServer>> = Mutex::new(Weak::new());
static NEXT_DB: AtomicU32 = AtomicU32::new(0);

/// A database of its own on the shared server, migrated.
pub struct TestDb {
    pub pool: PgPool,
    _server: Arc<PostgresServer>,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let server = shared_server();
        let (pool, _) = fresh_database(&server).await;
        TestDb {
            pool,
            _server: server,
        }
    }
}

/// The server the running tests share (started by the first one that needs it).
pub fn shared_server() -> Arc<PostgresServer> {
    let mut slot = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    match slot.upgrade() {
        Some(s) => s,
        None => {
            let s = Arc::new(PostgresServer::start());
            *slot = Arc::downgrade(&s);
            s
        }
    }
}

/// A new, migrated database on `server`.
pub async fn fresh_database(server: &PostgresServer) -> (PgPool, String) {
    let (pool, url) = empty_database(server);
    migrate(&pool).await.expect("migrations apply");
    (pool, url)
}

/// A new database on `server` with nothing in it.
pub fn empty_database(server: &PostgresServer) -> (PgPool, String) {
    let name = format!("t{}", NEXT_DB.fetch_add(1, Ordering::Relaxed));
    let url = server.create_database(&name).expect("createdb");
    (connect_lazy(&url).expect("valid URL"), url)
}

/// `n` rows with distinct interaction ids created within `span_ms` after `base_ms`, over a
/// few users, guilds (and DMs), commands, providers, keys and instances; seeded.
pub fn rows(seed: u64, n: usize, base_ms: u64, span_ms: u64) -> Vec<LedgerRow> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let created = base_ms + rng.random_range(0..span_ms.max(1));
        // The low 22 bits make ids distinct within a millisecond; the seed keeps two calls
        // with different seeds apart.
        let id = snowflake_at(created, (seed as u32).wrapping_mul(7_919) ^ i as u32);
        out.push(row_at(&mut rng, id));
    }
    out
}

/// Like [`rows`], but shaped like real use: `users` users, each in one guild (a tenth in
/// DMs), always served by its primary with that instance's key for the provider.
pub fn usage_rows(seed: u64, n: usize, users: u64, base_ms: u64, span_ms: u64) -> Vec<LedgerRow> {
    let mut out = rows(seed, n, base_ms, span_ms);
    let mut rng = SmallRng::seed_from_u64(seed ^ 0x5eed);
    for r in &mut out {
        r.user_id = rng.random_range(0..users);
        r.guild_id = (r.user_id % 10 != 0).then_some(1_000 + r.user_id % 40);
        r.primary = (r.user_id % 4 + 1) as u32;
        r.served_by = r.primary;
        if let Some(p) = &r.provider {
            let provider_no = p.len() as u64;
            r.key_fp = Some(format!(
                "{:012x}",
                u64::from(r.served_by) << 8 | provider_no
            ));
        }
    }
    out
}

/// One generated row for interaction `id`.
pub fn row_at(rng: &mut SmallRng, id: u64) -> LedgerRow {
    let command = ["chat", "image", "video", "status"][rng.random_range(0..4)];
    let mut r = LedgerRow::new(
        id,
        rng.random_range(1..=12),
        rng.random_range(100..104),
        command,
        rng.random_range(1..=4),
        rng.random_range(1..=4),
        [Routing::Primary, Routing::PrimaryDown, Routing::Degraded][rng.random_range(0..3)],
        0,
    );
    r.guild_id = [None, Some(555), Some(777)][rng.random_range(0..3)];
    r.acked_ms = Some(r.created_ms + rng.random_range(1..40));
    r.finished_ms = r.created_ms + rng.random_range(100..60_000);
    r.rescued = rng.random_bool(0.05);
    r.stolen = rng.random_bool(0.05);
    if command != "status" {
        let (provider, model) = match command {
            "chat" => ("openai", "gpt-4o-mini"),
            "image" => (["minimax", "stability"][rng.random_range(0..2)], "image-01"),
            _ => ("minimax", "MiniMax-Hailuo-02"),
        };
        r.provider = Some(provider.into());
        r.model = Some(model.into());
        r.key_fp = Some(format!("{:012x}", rng.random_range(1u64..5) * 0x1111_1111));
        r.started_ms = Some(r.acked_ms.unwrap() + rng.random_range(0..5_000));
        r.provider_ms = Some(rng.random_range(50..30_000));
        r.tokens_in = rng.random_range(0..2_000);
        r.tokens_out = rng.random_range(0..1_000);
        r.images = if command == "image" {
            rng.random_range(1..5)
        } else {
            0
        };
        r.video_secs = if command == "video" { 6 } else { 0 };
        r.cost_micros = rng.random_range(0..500_000);
    }
    if rng.random_bool(0.1) {
        r.status = Status::Failed;
        r.error_class = Some("rate_limited".into());
    }
    r
}

/// Rows in `ledger`.
pub async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Every interaction id in `ledger`, sorted.
pub async fn ids(pool: &PgPool) -> Vec<u64> {
    let ids: Vec<i64> = sqlx::query_scalar("SELECT interaction_id FROM ledger ORDER BY 1")
        .fetch_all(pool)
        .await
        .unwrap();
    ids.into_iter().map(|i| i as u64).collect()
}

/// Groups where `ledger_daily` and the sums of `ledger` disagree (both directions): 0 when
/// the rollup counts every row exactly once.
pub async fn rollup_mismatches(pool: &PgPool) -> i64 {
    let a = keyshard_ledger::audit(pool).await.unwrap();
    assert_eq!(a.rows, a.rollup_interactions, "{a:?}");
    a.mismatched_groups as i64
}

/// Polls `cond` every 20 ms until it holds.
///
/// # Panics
/// When `cond` does not hold within `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if cond().await {
            return;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster handle with the fast timings of the cluster crate's tests (heartbeat 100 ms,
/// dead after 400 ms), so a stopped instance is dead within half a second.
pub fn cluster(redis_url: &str, id: u32) -> Cluster {
    Cluster::new(ClusterConfig {
        heartbeat: Duration::from_millis(100),
        dead_after: Duration::from_millis(400),
        snapshot_every: Duration::from_millis(50),
        ..ClusterConfig::new(redis_url, "kstest", id, 4)
    })
    .expect("valid cluster config")
}

/// The writer's pace in tests: the default shape, ticks 5× faster so outages resolve
/// within a second or two.
pub fn fast_writer() -> keyshard_ledger::WriterConfig {
    keyshard_ledger::WriterConfig {
        interval: Duration::from_millis(50),
        takeover_every: Duration::from_millis(100),
        max_backoff: Duration::from_millis(500),
        ..keyshard_ledger::WriterConfig::default()
    }
}

//! The durable buffer end to end, against real Redis and Postgres servers: rows recorded are
//! written once; Postgres stopped while rows keep coming, Redis restarted empty with rows
//! unwritten, Redis down: every row exactly once; a dead instance's stream is written by one
//! live peer.

use std::time::Duration;

use keyshard_cluster::{Cluster, LedgerStream};
use keyshard_ledger::{connect_lazy, LedgerRow, LedgerWriter, Recorded};
use keyshard_routing::snowflake_at;
use keyshard_testkit::{PostgresServer, RedisServer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// One instance: its cluster handle and ledger writer, both running.
struct Instance {
    cluster: Cluster,
    writer: LedgerWriter,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Instance {
    fn start(redis_url: &str, id: u32, pool: PgPool) -> Instance {
        let cluster = cluster(redis_url, id);
        let writer = LedgerWriter::new(&cluster, pool, fast_writer());
        let shutdown = CancellationToken::new();
        let tasks = vec![
            cluster.spawn(shutdown.clone()),
            writer.spawn(shutdown.clone()),
        ];
        Instance {
            cluster,
            writer,
            shutdown,
            tasks,
        }
    }

    /// Stops the loops (the writer pushes what it holds) and waits for them.
    async fn stop(mut self) {
        self.shutdown.cancel();
        for t in self.tasks.drain(..) {
            t.await.unwrap();
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// `n` rows with ids `first..first + n` (as snowflakes around BASE_MS).
fn numbered(first: u64, n: u64) -> Vec<LedgerRow> {
    let mut rng = SmallRng::seed_from_u64(first);
    (first..first + n)
        .map(|k| row_at(&mut rng, snowflake_at(BASE_MS + k, (k % 1_000) as u32)))
        .collect()
}

fn record_all(writer: &LedgerWriter, rows: &[LedgerRow]) {
    for r in rows {
        assert_eq!(writer.record(r), Recorded::Queued);
    }
}

/// Waits until `pool` holds exactly `rows` and `writer` holds nothing; then checks every
/// row is there once and the rollup counts each once.
async fn assert_written_once(pool: &PgPool, writer: &LedgerWriter, rows: &[LedgerRow]) {
    let n = rows.len() as i64;
    wait_until(
        "every row in Postgres and nothing buffered",
        PATIENCE,
        || async { count(pool).await >= n && writer.stats().buffered == 0 },
    )
    .await;
    let mut want: Vec<u64> = rows.iter().map(|r| r.interaction_id).collect();
    want.sort();
    assert_eq!(ids(pool).await, want, "every row, none missing, none extra");
    assert_eq!(
        rollup_mismatches(pool).await,
        0,
        "the rollup counts each row once"
    );
    let rolled: i64 = sqlx::query_scalar("SELECT sum(interactions)::int8 FROM ledger_daily")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(rolled, n);
}

/// Runs blocking server control (stop, restart) without stalling the runtime's workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_rows_are_written_once() {
    let redis = RedisServer::start();
    let db = TestDb::new().await;
    let one = Instance::start(&redis.url(), 1, db.pool.clone());
    let rows = numbered(0, 300);
    // A second record of a row the writer still holds is a duplicate. Checked right after the
    // first, while it is surely still held: the writer forgets a row once Postgres has it, a
    // quarter of a second later (on a loaded machine, before 300 records are done).
    assert_eq!(one.writer.record(&rows[0]), Recorded::Queued);
    assert_eq!(one.writer.record(&rows[0]), Recorded::Duplicate);
    record_all(&one.writer, &rows[1..]);
    assert_written_once(&db.pool, &one.writer, &rows).await;
    let s = one.writer.stats();
    assert_eq!((s.recorded, s.written), (300, 300));
    assert_eq!(s.oldest_buffered_age_ms, None);
    assert_eq!(LedgerStream::new(&one.cluster).backlog(1).await.unwrap(), 0);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_while_rows_keep_coming_loses_and_doubles_nothing() {
    let redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    let (pool, _) = fresh_database(&pg).await;
    let one = Instance::start(&redis.url(), 1, pool.clone());

    let before = numbered(0, 100);
    record_all(&one.writer, &before);
    wait_until("the first rows written", PATIENCE, || async {
        count(&pool).await == 100
    })
    .await;

    blocking(|| pg.stop());
    // Rows keep coming for two seconds while Postgres is down.
    let during = numbered(100, 200);
    for chunk in during.chunks(20) {
        record_all(&one.writer, chunk);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_until("the writer to notice", PATIENCE, || async {
        one.writer.stats().write_failures > 0
    })
    .await;
    let s = one.writer.stats();
    assert!(s.postgres_failing && s.buffered > 0, "{s:?}");
    assert!(s.oldest_buffered_age_ms.is_some());

    blocking(|| pg.restart());
    let after = numbered(300, 100);
    record_all(&one.writer, &after);
    let all: Vec<LedgerRow> = [before, during, after].concat();
    assert_written_once(&pool, &one.writer, &all).await;
    assert!(!one.writer.stats().postgres_failing);
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_empty_with_rows_unwritten_loses_and_doubles_nothing() {
    let mut redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    let (pool, _) = fresh_database(&pg).await;
    let one = Instance::start(&redis.url(), 1, pool.clone());
    let stream = LedgerStream::new(&one.cluster);

    // Postgres down: rows reach Redis and stay there.
    blocking(|| pg.stop());
    let lost = numbered(0, 150);
    record_all(&one.writer, &lost);
    wait_until("the rows in Redis", PATIENCE, || async {
        one.writer.stats().not_in_redis == 0 && stream.backlog(1).await.unwrap_or(0) == 150
    })
    .await;

    // Redis comes back empty: those 150 rows are gone from it.
    blocking(|| redis.restart());
    let later = numbered(150, 50);
    record_all(&one.writer, &later);
    wait_until(
        "the writer to push the lost rows again",
        PATIENCE,
        || async { one.writer.stats().repushed >= 150 },
    )
    .await;

    blocking(|| pg.restart());
    let all: Vec<LedgerRow> = [lost, later].concat();
    assert_written_once(&pool, &one.writer, &all).await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_rows_go_straight_to_postgres() {
    let mut redis = RedisServer::start();
    let db = TestDb::new().await;
    let one = Instance::start(&redis.url(), 1, db.pool.clone());
    let first = numbered(0, 20);
    record_all(&one.writer, &first);
    wait_until("the first rows written", PATIENCE, || async {
        count(&db.pool).await == 20
    })
    .await;

    redis.kill();
    let during = numbered(20, 100);
    record_all(&one.writer, &during);
    wait_until("the rows written without Redis", PATIENCE, || async {
        count(&db.pool).await == 120
    })
    .await;
    assert!(one.writer.stats().push_failures > 0);

    blocking(|| redis.restart());
    let after = numbered(120, 30);
    record_all(&one.writer, &after);
    let all: Vec<LedgerRow> = [first, during, after].concat();
    assert_written_once(&db.pool, &one.writer, &all).await;
    one.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_stream_is_written_by_one_live_peer() {
    let redis = RedisServer::start();
    let db = TestDb::new().await;
    let one = Instance::start(&redis.url(), 1, db.pool.clone());
    let three = Instance::start(&redis.url(), 3, db.pool.clone());

    // Instance 2 cannot reach Postgres: its rows pile up in its stream; then it dies.
    let nowhere = connect_lazy("postgres://postgres@127.0.0.1:1/none").unwrap();
    let two = Instance::start(&redis.url(), 2, nowhere);
    let orphans = numbered(0, 80);
    record_all(&two.writer, &orphans);
    let stream = LedgerStream::new(&one.cluster);
    wait_until("instance 2's rows in its stream", PATIENCE, || async {
        two.writer.stats().not_in_redis == 0 && stream.backlog(2).await.unwrap_or(0) == 80
    })
    .await;
    assert_eq!(count(&db.pool).await, 0);
    two.stop().await;

    wait_until("a live peer to write them", PATIENCE, || async {
        count(&db.pool).await == 80 && stream.backlog(2).await.unwrap_or(1) == 0
    })
    .await;
    let taken = one.writer.stats().taken_over + three.writer.stats().taken_over;
    assert_eq!(taken, 80, "one taker, each row once");
    assert_eq!(rollup_mismatches(&db.pool).await, 0);
    let mut want: Vec<u64> = orphans.iter().map(|r| r.interaction_id).collect();
    want.sort();
    assert_eq!(ids(&db.pool).await, want);
    one.stop().await;
    three.stop().await;
}

/// Rows the bot appends to the stream itself (in the script that marks the interaction
/// answered) are known to the writer, so an empty Redis restart loses them no more than the
/// rows it pushed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_appended_by_the_bot_survive_an_empty_redis_restart() {
    let mut redis = RedisServer::start();
    let mut pg = PostgresServer::start();
    let (pool, _) = fresh_database(&pg).await;
    let one = Instance::start(&redis.url(), 1, pool.clone());
    let stream = LedgerStream::new(&one.cluster);

    blocking(|| pg.stop());
    let appended = numbered(0, 60);
    for r in &appended {
        // What the claim confirmation or the done marker's script does, then tells the writer.
        stream.push(&LedgerWriter::encode(r)).await.unwrap();
        assert_eq!(one.writer.recorded_in_redis(r), Recorded::Queued);
    }
    assert_eq!(
        one.writer.recorded_in_redis(&appended[0]),
        Recorded::Duplicate
    );
    let s = one.writer.stats();
    assert_eq!((s.recorded, s.not_in_redis, s.buffered), (60, 0, 60));

    blocking(|| redis.restart());
    wait_until("the writer to push them again", PATIENCE, || async {
        one.writer.stats().repushed >= 60
    })
    .await;
    blocking(|| pg.restart());
    assert_written_once(&pool, &one.writer, &appended).await;
    one.stop().await;
}

/// Writing waits for the schema (an instance starts while Postgres is down or not migrated:
/// rows wait in Redis), and a graceful stop writes what is left instead of leaving it there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_wait_for_the_schema_and_a_graceful_stop_writes_what_is_left() {
    let redis = RedisServer::start();
    let server = shared_server();
    let (pool, _) = empty_database(&server);
    let cluster = cluster(&redis.url(), 1);
    // Ticks an hour apart: after the first one, only the stop writes.
    let writer = LedgerWriter::new(
        &cluster,
        pool.clone(),
        keyshard_ledger::WriterConfig {
            interval: Duration::from_secs(3_600),
            ..fast_writer()
        },
    );
    let shutdown = CancellationToken::new();
    let migrated = std::sync::Arc::new(tokio::sync::Notify::new());
    let cluster_task = cluster.spawn(shutdown.clone());
    let task = writer.spawn_when(shutdown.clone(), {
        let migrated = migrated.clone();
        async move { migrated.notified().await }
    });
    let stream = LedgerStream::new(&cluster);
    let early = numbered(0, 40);
    record_all(&writer, &early);
    wait_until("the rows in Redis", PATIENCE, || async {
        stream.backlog(1).await.unwrap_or(0) == 40
    })
    .await;
    assert_eq!(
        writer.stats().write_failures,
        0,
        "no write before the schema"
    );

    keyshard_ledger::migrate(&pool).await.unwrap();
    migrated.notify_one();
    wait_until("the first tick to write them", PATIENCE, || async {
        count(&pool).await == 40
    })
    .await;

    let late = numbered(40, 25);
    record_all(&writer, &late);
    wait_until("the late rows in Redis", PATIENCE, || async {
        stream.backlog(1).await.unwrap_or(0) == 25
    })
    .await;
    assert_eq!(count(&pool).await, 40, "no tick before the stop");
    shutdown.cancel();
    task.await.unwrap();
    cluster_task.await.unwrap();
    let all: Vec<LedgerRow> = [early, late].concat();
    assert_written_once(&pool, &writer, &all).await;
    assert_eq!(stream.backlog(1).await.unwrap(), 0, "nothing left in Redis");
}

//! [`LedgerWriter`]: the durable buffer between an answered interaction and Postgres.
//!
//! ```text
//! record(row) ──► memory (outbox) ──push loop──► Redis {c}:ledger:{me} ──write loop──► Postgres
//!   (sync, never waits)        on every record        every 250 ms: read ≤ batch, write_batch, XACK+XDEL
//! ```
//!
//! - The acknowledgement never waits: [`LedgerWriter::record`] only serializes the row and
//!   queues it in memory; the push loop, woken by it, pipelines the rows into Redis (a crash
//!   loses at most the rows of that one round trip).
//! - Postgres down: the batch fails, its entries stay pending in the stream, and the write
//!   loop tries again with a growing pause ([`backoff_delay`]); nothing is lost (the stream
//!   holds them) and nothing is doubled (`write_batch` is idempotent).
//! - Redis down: rows wait in the bounded outbox, and the write loop writes them straight to
//!   Postgres meanwhile; the push loop pushes whatever is left when Redis answers.
//! - Redis restarted empty: rows pushed but not written are still in memory
//!   ([`Buffer`](crate::buffer::Buffer)); the write loop notices the restart (the cluster's
//!   `{c}:gen` changed, or its stream lost its group, or a drained read did not return rows
//!   pushed before it) and pushes them again.
//! - A dead peer's stream is taken over by one live writer (`LedgerStream::lock_takeover`)
//!   and written like its own.
//! - Rows the bot appended to the stream itself, in the same Redis script that marked the
//!   interaction answered (the claim confirmation, a job's done marker), are handed to
//!   [`LedgerWriter::recorded_in_redis`]: held in memory as pushed, so an empty Redis restart
//!   loses them no more than the others.
//! - Writing waits for the schema ([`LedgerWriter::spawn_when`]): an instance that starts
//!   while Postgres is down keeps its rows in Redis until the migrations are applied.
//! - A graceful stop pushes what is left in memory and writes its own stream one last time,
//!   so a rolling restart leaves nothing behind in Redis.
//!
//! Why every 250 ms: at 200 interactions a second a tick carries ~50 rows, so one statement
//! and one round trip serve many rows (per-row cost is what limits throughput), while a row
//! is in Postgres a quarter of a second after it was recorded, which nobody reading usage can
//! tell from instant; four small statements a second per instance cost Postgres nothing.
//! A tick's rows still go in statements of 16, 5 ms apart, and each instance's ticks start at
//! its own point of the interval ([`statements`], [`stagger`]): Postgres's CPU for 60 rows at
//! once, with every instance's at the same moment, was what delayed acknowledgements most on
//! a machine that Postgres shares with the instances.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keyshard_cluster::ledger::Entry;
use keyshard_cluster::{run_every, Cluster, InstanceId, LedgerStream};
use sqlx::PgPool;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

mod settings;

pub use settings::{backoff_delay, stagger, statements, WriterConfig, WriterStats};

use crate::buffer::{Buffer, Recorded};
use crate::{write_batch, LedgerError, LedgerRow};

/// How long shutdown may spend pushing (or writing) what is left in memory: a drain must
/// not hang on an unreachable Redis, and a second or two covers a healthy one many times.
const FINAL_BUDGET: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Counters {
    recorded: AtomicU64,
    written: AtomicU64,
    duplicates: AtomicU64,
    batches: AtomicU64,
    write_failures: AtomicU64,
    push_failures: AtomicU64,
    malformed: AtomicU64,
    taken_over: AtomicU64,
}

#[derive(Default)]
struct Backoff {
    failures: u32,
    retry_at: Option<Instant>,
}

/// The handle the bot keeps: [`record`](Self::record) rows, [`spawn`](Self::spawn) the loops,
/// read [`stats`](Self::stats). Cheap to clone.
#[derive(Clone)]
pub struct LedgerWriter {
    inner: Arc<Inner>,
}

struct Inner {
    stream: LedgerStream,
    pool: PgPool,
    cfg: WriterConfig,
    me: InstanceId,
    /// How long the write and takeover loops wait, once the schema is in place, before their
    /// first tick ([`stagger`]).
    stagger: Duration,
    /// A std Mutex: every use is a few in-memory operations and never spans an await.
    buffer: Mutex<Buffer>,
    wake_push: Arc<Notify>,
    counters: Counters,
    backoff: Mutex<Backoff>,
    /// The last `{c}:gen` seen by the write loop.
    generation: Mutex<Option<String>>,
    redis_down: AtomicBool,
    /// The schema is in place: writing may start (see [`LedgerWriter::spawn_when`]).
    schema_ready: AtomicBool,
}

impl std::fmt::Debug for LedgerWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerWriter")
            .field("instance", &self.inner.me)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

/// Whether writing may start: once `gate` opens, and this instance's `stagger` after that
/// (instances that waited for the schema together become ready together); `false` when
/// `stop` comes first.
async fn opened(
    mut gate: watch::Receiver<bool>,
    stagger: Duration,
    stop: &CancellationToken,
) -> bool {
    let open = async {
        gate.wait_for(|open| *open).await.is_ok() && {
            tokio::time::sleep(stagger).await;
            true
        }
    };
    stop.run_until_cancelled(open).await == Some(true)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LedgerWriter {
    /// A writer for `cluster`'s instance, writing to `pool`. Touches neither Redis nor
    /// Postgres until [`spawn`](Self::spawn).
    pub fn new(cluster: &Cluster, pool: PgPool, cfg: WriterConfig) -> LedgerWriter {
        LedgerWriter {
            inner: Arc::new(Inner {
                stream: LedgerStream::new(cluster),
                pool,
                me: cluster.instance_id(),
                stagger: stagger(
                    cluster.instance_id(),
                    cluster.config().instance_count,
                    cfg.interval,
                ),
                buffer: Mutex::new(Buffer::new(cfg.limits)),
                wake_push: Arc::new(Notify::new()),
                counters: Counters::default(),
                backoff: Mutex::new(Backoff::default()),
                generation: Mutex::new(None),
                redis_down: AtomicBool::new(false),
                schema_ready: AtomicBool::new(false),
                cfg,
            }),
        }
    }

    fn buffer(&self) -> MutexGuard<'_, Buffer> {
        self.inner.buffer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `row` for the ledger and returns at once (no I/O). Call it once the interaction
    /// is answered; a second row for the same interaction id is ignored while the first is
    /// buffered, and by Postgres after.
    pub fn record(&self, row: &LedgerRow) -> Recorded {
        let json = serde_json::to_string(row).expect("a LedgerRow always serializes");
        let outcome = self
            .buffer()
            .record(row.interaction_id, Arc::from(json), now_ms());
        match outcome {
            Recorded::Queued => {
                self.inner.counters.recorded.fetch_add(1, Ordering::Relaxed);
                self.inner.wake_push.notify_one();
            }
            Recorded::Dropped => {
                let dropped = self.buffer().counters().dropped;
                // Every drop is counted; the log says it once per thousand so a long double
                // outage does not flood it.
                if dropped % 1_000 == 1 {
                    tracing::error!(
                        dropped,
                        interaction_id = row.interaction_id,
                        "ledger outbox full (Redis and Postgres unreachable): usage rows are being lost"
                    );
                }
            }
            Recorded::Duplicate => {}
        }
        outcome
    }

    /// For a row already appended to this instance's stream by the bot (module docs): counted
    /// as recorded and held in memory as pushed until it is written. No I/O.
    pub fn recorded_in_redis(&self, row: &LedgerRow) -> Recorded {
        let json = serde_json::to_string(row).expect("a LedgerRow always serializes");
        let outcome = self
            .buffer()
            .record_pushed(row.interaction_id, Arc::from(json), now_ms());
        if outcome == Recorded::Queued {
            self.inner.counters.recorded.fetch_add(1, Ordering::Relaxed);
        }
        outcome
    }

    /// Whether the schema is in place and writing has started ([`spawn_when`](Self::spawn_when)).
    pub fn schema_ready(&self) -> bool {
        self.inner.schema_ready.load(Ordering::Acquire)
    }

    /// The row's JSON as the stream carries it (what the bot appends in its own scripts).
    pub fn encode(row: &LedgerRow) -> String {
        serde_json::to_string(row).expect("a LedgerRow always serializes")
    }

    /// Starts the push, write and takeover loops; they stop when `shutdown` is cancelled,
    /// after which the task pushes what is still only in memory (or, with Redis down, writes
    /// it to Postgres) and writes its own stream once more, within a few seconds, and ends.
    pub fn spawn(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        self.spawn_when(shutdown, std::future::ready(()))
    }

    /// [`spawn`](Self::spawn), with writing to Postgres (the write and takeover loops) held
    /// until `schema` resolves, e.g. once the migrations are applied. Rows are pushed to Redis
    /// meanwhile, and wait there.
    pub fn spawn_when(
        &self,
        shutdown: CancellationToken,
        schema: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> JoinHandle<()> {
        let cfg = self.inner.cfg;
        let gate = self.schema_gate(shutdown.clone(), schema);
        let stagger = self.inner.stagger;
        let push = {
            let me = self.clone();
            run_every(
                "ledger push",
                cfg.interval,
                shutdown.clone(),
                Some(self.inner.wake_push.clone()),
                move || {
                    let me = me.clone();
                    async move { me.push_tick().await }
                },
            )
        };
        let write = {
            let (me, stop, gate) = (self.clone(), shutdown.clone(), gate.clone());
            async move {
                if opened(gate, stagger, &stop).await {
                    run_every("ledger write", cfg.interval, stop, None, move || {
                        let me = me.clone();
                        async move { me.write_tick().await }
                    })
                    .await;
                }
            }
        };
        let takeover = {
            let me = self.clone();
            async move {
                if opened(gate, stagger, &shutdown).await {
                    run_every(
                        "ledger takeover",
                        cfg.takeover_every,
                        shutdown,
                        None,
                        move || {
                            let me = me.clone();
                            async move { me.takeover_tick().await }
                        },
                    )
                    .await;
                }
            }
        };
        let me = self.clone();
        tokio::spawn(async move {
            tokio::join!(push, write, takeover);
            me.finish().await;
        })
    }

    /// A gate that opens (`true`) once `schema` resolves, unless `stop` comes first.
    fn schema_gate(
        &self,
        stop: CancellationToken,
        schema: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> watch::Receiver<bool> {
        let (me, (tx, rx)) = (self.clone(), watch::channel(false));
        tokio::spawn(async move {
            if stop.run_until_cancelled(schema).await.is_some() {
                me.inner.schema_ready.store(true, Ordering::Release);
                let _ = tx.send(true);
            }
        });
        rx
    }

    /// Shutdown: what is only in memory goes to Redis, or to Postgres if Redis is down; then
    /// this instance's stream is written once more, so a graceful stop leaves nothing waiting
    /// in Redis for a restart or a peer (a Postgres that is down leaves it there, safely).
    async fn finish(&self) {
        let schema = self.inner.schema_ready.load(Ordering::Acquire);
        let last = async {
            if self.push_tick().await.is_err() {
                if schema {
                    let _ = self.write_direct().await;
                }
            } else if schema {
                let _ = self.write_tick().await;
            }
        };
        let _ = tokio::time::timeout(FINAL_BUDGET, last).await;
        let left = self.buffer().not_in_redis();
        if left > 0 {
            tracing::warn!(
                rows = left,
                "ledger rows still only in memory at shutdown: lost"
            );
        }
    }

    /// Pushes every waiting row, a pipeline of `batch` rows at a time.
    async fn push_tick(&self) -> Result<(), LedgerError> {
        loop {
            let taken = self.buffer().take_waiting(self.inner.cfg.batch);
            if taken.is_empty() {
                return Ok(());
            }
            let ids: Vec<u64> = taken.iter().map(|(id, _)| *id).collect();
            let rows: Vec<Arc<str>> = taken.into_iter().map(|(_, json)| json).collect();
            match self.inner.stream.push_many(&rows).await {
                Ok(()) => {
                    self.buffer().pushed(&ids);
                    self.redis_answered();
                }
                Err(e) => {
                    self.buffer().put_back(&ids);
                    self.inner
                        .counters
                        .push_failures
                        .fetch_add(1, Ordering::Relaxed);
                    self.redis_failed();
                    return Err(e.into());
                }
            }
        }
    }

    async fn write_tick(&self) -> Result<(), LedgerError> {
        if self.backing_off() {
            return Ok(());
        }
        if self.inner.redis_down.load(Ordering::Relaxed) {
            self.write_direct().await?;
        }
        let mark = self.buffer().mark();
        let generation = self
            .inner
            .stream
            .generation()
            .await
            .inspect_err(|_| self.redis_failed())?;
        self.redis_answered();
        let changed = {
            let mut seen = self
                .inner
                .generation
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let changed = seen.as_ref().is_some_and(|s| *s != generation);
            *seen = Some(generation);
            changed
        };
        if changed {
            let n = self.buffer().repush_before(mark);
            tracing::warn!(
                rows = n,
                "Redis restarted empty; pushing again the ledger rows it may have lost"
            );
            self.inner.wake_push.notify_one();
        }
        let me = self.inner.me;
        for _ in 0..self.inner.cfg.batches_per_tick {
            let mark = self.buffer().mark();
            let batch = self
                .inner
                .stream
                .read(me, self.inner.cfg.batch)
                .await
                .inspect_err(|_| self.redis_failed())?;
            self.write_entries(me, &batch.entries).await?;
            if batch.recreated || batch.drained {
                // Every row pushed before this read should have been in it: the ones still
                // here were lost (an empty restart) or written by someone else.
                let n = self.buffer().repush_before(mark);
                if n > 0 {
                    tracing::info!(
                        rows = n,
                        recreated = batch.recreated,
                        "ledger rows missing from Redis; pushing them again"
                    );
                    self.inner.wake_push.notify_one();
                }
            }
            if batch.drained {
                break;
            }
        }
        Ok(())
    }

    /// While Redis is down: waiting rows straight to Postgres.
    async fn write_direct(&self) -> Result<(), LedgerError> {
        for _ in 0..self.inner.cfg.batches_per_tick {
            let taken = self.buffer().take_waiting(self.inner.cfg.batch);
            if taken.is_empty() {
                break;
            }
            let ids: Vec<u64> = taken.iter().map(|(id, _)| *id).collect();
            // Our own JSON: it parses.
            let rows: Vec<LedgerRow> = taken
                .iter()
                .filter_map(|(_, json)| serde_json::from_str(json).ok())
                .collect();
            match self.write(&rows).await {
                Ok(()) => self.buffer().written(ids),
                Err(e) => {
                    self.buffer().put_back(&ids);
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn takeover_tick(&self) -> Result<(), LedgerError> {
        if self.backing_off() {
            return Ok(());
        }
        for dead in self.inner.stream.dead_with_backlog().await? {
            if !self.inner.stream.lock_takeover(dead).await? {
                continue;
            }
            let before = self.inner.counters.taken_over.load(Ordering::Relaxed);
            for _ in 0..self.inner.cfg.batches_per_tick {
                let batch = self.inner.stream.read(dead, self.inner.cfg.batch).await?;
                self.write_entries(dead, &batch.entries).await?;
                if batch.drained {
                    break;
                }
            }
            let rows = self.inner.counters.taken_over.load(Ordering::Relaxed) - before;
            tracing::info!(
                dead,
                rows,
                "wrote the ledger rows a dead instance left in Redis"
            );
        }
        Ok(())
    }

    /// Writes the rows of `entries` (read from `owner`'s stream), then acknowledges them all.
    async fn write_entries(&self, owner: InstanceId, entries: &[Entry]) -> Result<(), LedgerError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut rows = Vec::with_capacity(entries.len());
        for e in entries {
            match e.row.as_deref().map(serde_json::from_str::<LedgerRow>) {
                Some(Ok(row)) => rows.push(row),
                other => {
                    self.inner
                        .counters
                        .malformed
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        owner,
                        entry = %e.id,
                        error = ?other.and_then(Result::err).map(|e| e.to_string()),
                        "dropping a ledger stream entry that is not a row"
                    );
                }
            }
        }
        self.write(&rows).await?;
        // In Postgres now, whatever happens to the acknowledgement.
        self.buffer().written(rows.iter().map(|r| r.interaction_id));
        if owner != self.inner.me {
            self.inner
                .counters
                .taken_over
                .fetch_add(rows.len() as u64, Ordering::Relaxed);
        }
        let ids: Vec<String> = entries.iter().map(|e| e.id.clone()).collect();
        // A failed acknowledgement leaves the entries pending: read and written again next
        // time, which inserts nothing.
        self.inner
            .stream
            .ack(owner, &ids)
            .await
            .inspect_err(|_| self.redis_failed())?;
        Ok(())
    }

    /// `rows` in one statement or several, spread as [`statements`] says.
    async fn write(&self, rows: &[LedgerRow]) -> Result<(), LedgerError> {
        let (per_statement, gap) = statements(rows.len(), &self.inner.cfg);
        for (i, part) in rows.chunks(per_statement).enumerate() {
            if i > 0 && !gap.is_zero() {
                tokio::time::sleep(gap).await;
            }
            self.write_statement(part).await?;
        }
        Ok(())
    }

    /// `write_batch` with the counters and the backoff.
    async fn write_statement(&self, rows: &[LedgerRow]) -> Result<(), LedgerError> {
        if rows.is_empty() {
            return Ok(());
        }
        let c = &self.inner.counters;
        match write_batch(&self.inner.pool, rows).await {
            Ok(inserted) => {
                c.batches.fetch_add(1, Ordering::Relaxed);
                c.written.fetch_add(inserted, Ordering::Relaxed);
                c.duplicates
                    .fetch_add(rows.len() as u64 - inserted, Ordering::Relaxed);
                let mut b = self.inner.backoff.lock().unwrap_or_else(|e| e.into_inner());
                if b.failures > 0 {
                    tracing::info!(
                        failures = b.failures,
                        "Postgres answers again; writing the buffered ledger rows"
                    );
                }
                *b = Backoff::default();
                Ok(())
            }
            Err(e) => {
                c.write_failures.fetch_add(1, Ordering::Relaxed);
                let mut b = self.inner.backoff.lock().unwrap_or_else(|e| e.into_inner());
                b.failures += 1;
                let delay = backoff_delay(
                    b.failures,
                    self.inner.cfg.interval,
                    self.inner.cfg.max_backoff,
                );
                b.retry_at = Some(Instant::now() + delay);
                if b.failures == 1 {
                    tracing::warn!(error = %e, "ledger write failed; rows stay buffered and are retried");
                } else {
                    tracing::debug!(error = %e, failures = b.failures, ?delay, "ledger write failed again");
                }
                Err(e)
            }
        }
    }

    fn backing_off(&self) -> bool {
        let b = self.inner.backoff.lock().unwrap_or_else(|e| e.into_inner());
        b.retry_at.is_some_and(|t| Instant::now() < t)
    }

    fn redis_failed(&self) {
        self.inner.redis_down.store(true, Ordering::Relaxed);
    }

    fn redis_answered(&self) {
        self.inner.redis_down.store(false, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests;

//! The writer's settings ([`WriterConfig`]), its retry pause ([`backoff_delay`]), how it
//! spreads its statements ([`statements`], [`stagger`]) and what it reports ([`WriterStats`],
//! [`LedgerWriter::stats`](super::LedgerWriter::stats)).

use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;

use crate::buffer::Limits;

/// How the writer paces itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriterConfig {
    /// How often the write loop reads a batch (module docs: 250 ms).
    pub interval: Duration,
    /// Rows per `write_batch` and per push pipeline. 500 rows are ~250 KB of JSON to read and
    /// one statement of a few milliseconds; larger batches gain little per row and make one
    /// failed statement redo more.
    pub batch: usize,
    /// Batches one tick writes at most before yielding (a backlog after an outage drains at
    /// up to `batch × batches_per_tick` rows per tick).
    pub batches_per_tick: usize,
    /// The longest pause between tries while Postgres fails: a Postgres back from a restart
    /// is used within this, and N instances retrying do not hammer one that is struggling.
    pub max_backoff: Duration,
    /// How often to look for dead peers' streams: about once per heartbeat, as often as
    /// liveness can change.
    pub takeover_every: Duration,
    /// Rows per statement while a tick's rows are few (see [`statements`]).
    pub spread_rows: usize,
    /// The pause between two of a tick's spread statements.
    pub spread_gap: Duration,
    pub limits: Limits,
}

impl Default for WriterConfig {
    fn default() -> Self {
        WriterConfig {
            interval: Duration::from_millis(250),
            batch: 500,
            batches_per_tick: 20,
            max_backoff: Duration::from_secs(5),
            takeover_every: Duration::from_secs(1),
            spread_rows: 16,
            spread_gap: Duration::from_millis(5),
            limits: Limits::default(),
        }
    }
}

/// How `rows` rows read in one go are written: `(rows per statement, pause between two)`.
///
/// Postgres spends ~15 µs of CPU per row here (the insert, its indexes, the rollup): 60 rows,
/// a quarter second of 1,000 interactions/s shared by 4 instances, are 1–2 ms of one core at
/// once. On a machine that Postgres shares with the instances, every acknowledgement in that
/// moment waits for a core (ack p99 at 1,000/s on two cores: 2.4 ms with one statement per
/// tick, ~2.0 ms spread; BENCHMARKS.md). So a tick's rows go in statements of
/// `spread_rows`, `spread_gap` apart, as long as they are done within half an interval; more
/// than that (a backlog after an outage) go in statements of `batch` rows, back to back.
pub fn statements(rows: usize, cfg: &WriterConfig) -> (usize, Duration) {
    let spread = cfg.spread_rows.max(1);
    let gaps = rows.div_ceil(spread).saturating_sub(1);
    let spread_fits = !cfg.spread_gap.is_zero()
        && cfg
            .spread_gap
            .saturating_mul(u32::try_from(gaps).unwrap_or(u32::MAX))
            <= cfg.interval / 2;
    if rows > spread && spread_fits {
        (spread, cfg.spread_gap)
    } else {
        (cfg.batch.max(1), Duration::ZERO)
    }
}

/// How long after writing may start instance `me` of `count` starts its write loop: the N
/// writers of instances started together (a compose file), or made ready together by the
/// schema they waited for, would otherwise send their statements to Postgres in the same
/// milliseconds, each tick.
pub fn stagger(me: u32, count: u32, interval: Duration) -> Duration {
    let count = count.max(1);
    interval / count * (me.saturating_sub(1) % count)
}

/// The pause after `failures` failed writes in a row: `base`, doubling, at most `max`.
pub fn backoff_delay(failures: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    base.saturating_mul(factor).min(max)
}

/// Counters and gauges of the writer, for `/metrics` and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WriterStats {
    /// Rows accepted by [`LedgerWriter::record`].
    pub recorded: u64,
    /// Rows inserted into Postgres (by this instance, for itself or a dead peer).
    pub written: u64,
    /// Rows written again that Postgres already had (after a crash, a re-push, a takeover).
    pub duplicates: u64,
    /// `write_batch` calls that succeeded.
    pub batches: u64,
    /// `write_batch` calls that failed (Postgres down or refusing).
    pub write_failures: u64,
    /// Push pipelines that failed (Redis down).
    pub push_failures: u64,
    /// Stream entries that were not a row (acknowledged and dropped).
    pub malformed: u64,
    /// Rows written from dead peers' streams.
    pub taken_over: u64,
    /// Rows refused because the outbox was full: lost (Redis and Postgres both down).
    pub dropped: u64,
    /// Rows forgotten from memory at the unwritten bound (still in Redis).
    pub unprotected: u64,
    /// Rows pushed again after Redis lost them (or might have).
    pub repushed: u64,
    /// Rows in memory, not yet known to be in Postgres.
    pub buffered: u64,
    /// Of those, rows not yet in Redis.
    pub not_in_redis: u64,
    /// How long ago the oldest buffered row was recorded.
    pub oldest_buffered_age_ms: Option<u64>,
    /// Writes have failed since the last success.
    pub postgres_failing: bool,
}

impl super::LedgerWriter {
    pub fn stats(&self) -> WriterStats {
        let c = &self.inner.counters;
        let (bc, buffered, not_in_redis, oldest) = {
            let b = self.buffer();
            (
                b.counters(),
                b.len() as u64,
                b.not_in_redis() as u64,
                b.oldest_recorded_ms(),
            )
        };
        let failing = self
            .inner
            .backoff
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .failures
            > 0;
        WriterStats {
            recorded: c.recorded.load(Ordering::Relaxed),
            written: c.written.load(Ordering::Relaxed),
            duplicates: c.duplicates.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            write_failures: c.write_failures.load(Ordering::Relaxed),
            push_failures: c.push_failures.load(Ordering::Relaxed),
            malformed: c.malformed.load(Ordering::Relaxed),
            taken_over: c.taken_over.load(Ordering::Relaxed),
            dropped: bc.dropped,
            unprotected: bc.unprotected,
            repushed: bc.repushed,
            buffered,
            not_in_redis,
            oldest_buffered_age_ms: oldest.map(|t| super::now_ms().saturating_sub(t)),
            postgres_failing: failing,
        }
    }
}

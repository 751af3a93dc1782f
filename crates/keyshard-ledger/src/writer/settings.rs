//! The writer's settings ([`WriterConfig`]), its retry pause ([`backoff_delay`]) and what it
//! reports ([`WriterStats`]).

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
            limits: Limits::default(),
        }
    }
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

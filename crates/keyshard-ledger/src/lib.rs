//! The usage ledger: one Postgres row per answered interaction, written exactly once through a
//! durable buffer, with a daily rollup for fast reads. Redis stays the hot path: recording a
//! row never waits on Postgres (or on Redis).
//!
//! - [`row`]: [`LedgerRow`], what the bot builds when an interaction is answered, and its
//!   codes ([`Status`], [`Routing`]).
//! - [`writer`]: [`LedgerWriter`], the durable buffer: `record` (in memory, no I/O) → this
//!   instance's Redis stream (`keyshard_cluster::ledger`) → `write_batch` every 250 ms; Postgres
//!   or Redis outages and empty Redis restarts lose and double nothing; dead peers' streams
//!   are taken over. [`buffer`] is its pure bookkeeping.
//! - [`write`]: [`write_batch`], rows and rollup in one idempotent statement.
//! - [`read`]: [`usage`], [`top`], [`totals`], [`user_usage`] (whole UTC days from the
//!   rollup, edges from raw rows, as [`plan`] decides); [`audit`] and [`present`] for the
//!   simulator's `ledger.*` report.
//! - [`price`]: [`PriceTable`] (`LEDGER_PRICES`) and the cost estimate in micro-dollars.
//! - [`retention`]: [`prune`] in bounded batches, [`Retention`] defaults, [`spawn_pruner`].
//! - [`schema`]: `migrations/` embedded ([`MIGRATOR`]), [`migrate`] under the advisory lock
//!   (and [`migrate_until_done`], retrying while Postgres is down), [`connect_lazy`].
//! - [`error`] holds [`LedgerError`].

pub mod buffer;
pub mod error;
pub mod plan;
pub mod price;
pub mod read;
pub mod retention;
pub mod row;
pub mod schema;
pub mod write;
pub mod writer;

pub use buffer::{Limits, Recorded};
pub use error::LedgerError;
pub use plan::{plan, Plan, DAY_MS};
pub use price::{Price, PriceTable, DEFAULT_PRICES};
pub use read::{
    audit, local_bounds, present, top, totals, usage, user_usage, Audit, Dimension, LocalBounds,
    Rank, Span, Totals, UsageFilter, UsageLine, UserUsage,
};
pub use retention::{prune, spawn_pruner, Pruned, Retention};
pub use row::{format_key_fp, LedgerRow, Routing, Status};
pub use schema::{connect_lazy, migrate, migrate_until_done, MIGRATOR};
pub use write::write_batch;
pub use writer::{backoff_delay, LedgerWriter, WriterConfig, WriterStats};

/// The pool type every function here takes, re-exported so callers name one crate (only this
/// crate depends on sqlx).
pub use sqlx::PgPool;

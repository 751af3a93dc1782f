//! The Redis mechanism of a keyshard cluster; the policy it applies lives in
//! `keyshard-routing`.
//!
//! Every instance holds one [`Cluster`] handle. Its background loops write the instance's
//! heartbeat (`{c}:hb:{id}`, a JSON [`Heartbeat`] with a TTL, carrying the published [`Load`])
//! and read every instance's heartbeat into a [`Membership`](keyshard_routing::Membership)
//! snapshot. [`Cluster::claim`] turns the snapshot into a decision for one interaction: the
//! effective owner claims `{c}:claim:{id}` with `SET NX` at once, fallbacks after their delay,
//! and exactly one wins. While Redis is unreachable, the handle is degraded and claims follow
//! the static rule (`primary(user) == me`); it recovers by itself.
//!
//! - [`config`]: [`ClusterConfig`] and the [`Load`] an instance publishes.
//! - [`cluster`]: the [`Cluster`] handle, [`ClaimOutcome`], degraded mode.
//! - [`status`]: the read-only view for the CLI and the simulator ([`fetch_status`],
//!   [`ClusterStatus`], [`AssignReport`]).
//! - [`jobs`]: durable jobs on per-instance Redis Streams, workers, rescue of a dead peer's
//!   jobs, stealing a waiting job, idempotent delivery ([`Jobs`], [`Job`], [`JobHandler`]);
//!   a folder whose `mod.rs` lists its parts. A job's arguments are `keyshard-types`'
//!   [`JobArgs`], decoded once when the entry is read; one that does not decode is an
//!   [`UnreadableJob`] for the handler to answer.
//! - [`gateway`]: the gateway's shared state: one IDENTIFY queue for the whole cluster
//!   ([`IdentifyQueue`]: one per bucket per window, never below the day's reserve, a restart
//!   backoff for a crash loop, local spacing without Redis) and the command set registered
//!   once per change ([`sync_commands`]).
//! - [`memory`]: conversation memory per user and channel ([`Memory`]).
//! - [`ledger`]: the Redis side of the usage ledger's durable buffer, a stream per instance
//!   ([`LedgerStream`]); the rows and the Postgres side live in `keyshard-ledger`.
//! - [`quota`]: quotas and cooldowns checked and reserved in one Lua script per interaction,
//!   refunded once, overrides cached in a hash, local counters while Redis fails ([`Quotas`]).
//! - [`stats`]: cluster statistics in per-minute Redis hashes ([`Stats`], [`read_window`]).
//! - [`requests_per_day`]: a counter per provider key and UTC day ([`RequestsPerDay`]) that
//!   the bot hands to the providers as their daily request store.
//! - [`key_marks`]: the cluster-wide "key out of service" mark of a provider key
//!   ([`KeyMarks`], with an expiry its prober renews), which the bot keeps in step with its
//!   keys' health.
//! - [`round_trips`]: counts the Redis calls of a piece of work ([`RoundTrips`]), e.g. one
//!   interaction's acknowledgement path, for `/metrics`.
//! - [`heartbeat`]: the heartbeat JSON.
//! - [`keys`]: the Redis key layout; every key string is built there.
//! - [`metrics`]: counters ([`ClusterMetrics`]).
//! - [`error`]: the [`ClusterError`] enum.
//! - [`task`]: [`run_every`], the one shape of every background loop (the bot's too).
//! - [`clock`]: the wall clock ([`clock::now_ms`]), read here and passed into routing.
//! - `conn` (private): the shared self-reconnecting connection with a time budget on every
//!   call, dedicated connections for blocking reads, and the one reconnect backoff.

pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod gateway;
pub mod heartbeat;
pub mod jobs;
pub mod key_marks;
pub mod keys;
pub mod ledger;
pub mod memory;
pub mod metrics;
pub mod quota;
pub mod requests_per_day;
pub mod round_trips;
pub mod stats;
pub mod status;
pub mod task;

mod conn;

pub use cluster::{ClaimOutcome, Cluster, Confirmed, Receipt, BACKGROUND_BUDGET, CLAIM_BUDGET};
pub use config::{ClusterConfig, Load};
pub use error::{redact_url, ClusterError};
pub use gateway::{sync_commands, BudgetSource, CommandSync, Grant, IdentifyQueue, IdentifyWait};
pub use heartbeat::Heartbeat;
pub use jobs::{
    Arrival, ClaimInfo, Delivery, Job, JobArgs, JobContext, JobHandler, JobKind, JobStats, Jobs,
    Outcome, Ready, Slot, Submitted, UnreadableJob,
};
pub use key_marks::{KeyMarks, MarkedKey};
pub use ledger::LedgerStream;
pub use memory::{Memory, Turn};
pub use metrics::{ClusterMetrics, MetricsSnapshot};
pub use quota::{QuotaAsk, QuotaDecision, Quotas, Scope, Standing};
pub use requests_per_day::RequestsPerDay;
pub use round_trips::RoundTrips;
pub use stats::{publish_info, read_info, read_window, Stats, Window};
pub use status::{
    fetch_membership, fetch_status, AssignReport, ClusterStatus, InstanceStatus, LadderRung,
};
pub use task::run_every;

// Re-exported so callers name one crate for the cluster types.
pub use keyshard_routing::{
    Assignment, ClaimTiming, InstanceId, Membership, OverloadPolicy, Reason, UserId,
};

//! What the framework, the commands and the HTTP probes share: [`Data`] (handles, not logic),
//! poise's [`Context`] and [`Error`] for this bot, [`Claimed`] (the claim's decision carried to
//! the command) and [`EdgeState`] (lifecycle flags).
//!
//! A leaf of the bot's import graph: it names nothing from `edge`, `commands`, `work` or
//! `respond`, only the leaf modules `config`, `metrics` and `shards`, so every other module can
//! use it without a cycle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshard_cluster::{Cluster, Jobs, Stats};
use keyshard_providers::Providers;
use keyshard_routing::Assignment;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::shards::ShardBoard;

pub type Error = anyhow::Error;
pub type Context<'a> = poise::Context<'a, Data, Error>;

/// What every command can reach: handles, not logic. Cloned once per shard's framework (every
/// field is a handle).
#[derive(Clone)]
pub struct Data {
    pub config: Arc<Config>,
    pub cluster: Cluster,
    pub jobs: Jobs,
    pub stats: Stats,
    pub providers: Providers,
    pub metrics: Arc<Metrics>,
    pub state: Arc<EdgeState>,
}

/// Lifecycle flags shared by the bot, the HTTP server and the shutdown path.
#[derive(Default)]
pub struct EdgeState {
    /// Every shard's gateway session is READY (see [`ShardBoard::all_up`]).
    pub gateway_ready: AtomicBool,
    /// The shards of this instance: up or not, latency, what their IDENTIFYs wait for.
    pub shards: Arc<ShardBoard>,
    /// The slash commands are registered (by this instance or, for the same set, by another).
    pub commands_registered: AtomicBool,
    /// The command registration has been started (by the first shard READY).
    pub registering: AtomicBool,
    /// Shutting down: take no new interactions, finish the ones in hand.
    pub draining: AtomicBool,
    /// Interactions this instance has claimed and not finished answering.
    pub in_flight: AtomicUsize,
}

impl EdgeState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// What the claim decided, kept for the command (as poise invocation data). While it exists
/// the interaction counts as in flight, so a draining instance waits for it.
pub struct Claimed {
    pub assignment: Assignment,
    /// The claim decision, the start of the ack latency this instance controls.
    pub decided_at: Instant,
    /// How long the claim took when this instance claimed as the owner (one Redis round trip).
    pub redis_rtt: Option<Duration>,
    interaction_id: u64,
    cluster: Cluster,
    state: Arc<EdgeState>,
}

impl Claimed {
    /// A won claim for `interaction_id`, decided now; counted in flight until dropped.
    pub fn new(
        assignment: Assignment,
        redis_rtt: Option<Duration>,
        interaction_id: u64,
        cluster: Cluster,
        state: Arc<EdgeState>,
    ) -> Self {
        state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            assignment,
            decided_at: Instant::now(),
            redis_rtt,
            interaction_id,
            cluster,
            state,
        }
    }
}

impl Drop for Claimed {
    /// The invocation is over, so the interaction has been acknowledged (or failed beyond
    /// help): confirm the claim so it no longer lapses, off the acknowledgement's path.
    fn drop(&mut self) {
        self.state.in_flight.fetch_sub(1, Ordering::AcqRel);
        let (cluster, id) = (self.cluster.clone(), self.interaction_id);
        tokio::spawn(async move { cluster.confirm(id).await });
    }
}

//! What the framework, the commands and the HTTP probes share: [`Data`] (handles, not logic),
//! poise's [`Context`] and [`Error`] for this bot, [`Claimed`] (the claim's decision carried to
//! the command, and what the user got, for the ledger) and [`EdgeState`] (lifecycle flags).
//!
//! A leaf of the bot's import graph: it names nothing from `edge`, `commands`, `work` or
//! `respond`, only the leaf modules `config`, `metrics`, `ledger`, `clock` and `shards`, so
//! every other module can use it without a cycle.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshard_cluster::{ClaimInfo, Cluster, InstanceId, Jobs, Quotas, RoundTrips, Stats};
use keyshard_ledger::{LedgerRow, Routing, Status};
use keyshard_providers::Providers;
use keyshard_routing::Assignment;

use crate::clock::unix_ms;
use crate::config::Config;
use crate::ledger::Ledger;
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
    /// The usage ledger; `None` when `DATABASE_URL` is unset.
    pub ledger: Option<Arc<Ledger>>,
    /// The cluster's quotas (`keyshard_cluster::Quotas`).
    pub quotas: Quotas,
}

/// The stable English name of a command (its `en-US` name: `ping`, `chat`, `usage`, …), as
/// the ledger and the statistics record it, whatever language the slash command shows.
pub fn command_name(command: &poise::Command<Data, Error>) -> &str {
    command
        .name_localizations
        .iter()
        .find(|(locale, _)| locale == "en-US")
        .map_or(&*command.name, |(_, name)| &**name)
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
    /// Interactions the edge claimed for this instance and poise has not yet checked (see
    /// `edge`).
    pub decided: Decisions,
}

/// What the edge's claim decided for an interaction this instance answers, before poise saw
/// it: the claim check takes it to build the [`Claimed`].
pub struct Decided {
    pub assignment: Assignment,
    pub how: HowClaimed,
    /// How long the claim took when this instance claimed as the owner (one round trip).
    pub redis_rtt: Option<Duration>,
    /// The claim's Redis round trips, the start of the interaction's count.
    pub trips: RoundTrips,
    /// When the interaction arrived (Unix ms), for [`Decisions`]' pruning.
    pub received_ms: u64,
}

/// The [`Decided`] claim of each interaction the edge hands to poise, for the claim check to
/// take. A std Mutex: an insert or a removal, never held across an await.
#[derive(Default)]
pub struct Decisions(std::sync::Mutex<std::collections::HashMap<u64, Decided>>);

impl Decisions {
    /// Past this many, decisions older than [`DECISION_LIFE_MS`] are dropped: one poise never
    /// checks (a panic in its parsing) would otherwise stay.
    const PRUNE_ABOVE: usize = 4_096;

    pub fn put(&self, interaction_id: u64, decided: Decided) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= Self::PRUNE_ABOVE {
            let since = decided.received_ms.saturating_sub(DECISION_LIFE_MS);
            map.retain(|_, d| d.received_ms >= since);
        }
        map.insert(interaction_id, decided);
    }

    pub fn take(&self, interaction_id: u64) -> Option<Decided> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&interaction_id)
    }
}

/// Longer than any wait before a claim, which ends before Discord's 3 s deadline.
const DECISION_LIFE_MS: u64 = 60_000;

impl EdgeState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }
}

/// Who asked what, where: the interaction as the ledger row needs it.
#[derive(Clone, Debug)]
pub struct Asked {
    pub interaction_id: u64,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    /// The command's stable name ([`command_name`]).
    pub command: String,
}

/// How the claim was won, besides its [`Assignment`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HowClaimed {
    /// Redis was unreachable: the static rule decided.
    pub degraded: bool,
    /// This instance is the first fallback whose sweep took the lapsed claim of this instance
    /// (see `ClaimOutcome::Won`).
    pub swept_from: Option<InstanceId>,
}

/// What the user got from an interaction answered without a job, for its ledger row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answered {
    /// What was asked for (a ping, an admin view, a usage report).
    Ok,
    /// A check said no before any work: the class names which (`input`, `not_admin`, …).
    Refused(&'static str),
    /// An error message (`⚠️`): the class names what failed (`internal`, `queue`, …).
    Failed(&'static str),
}

impl Answered {
    fn status(self) -> (Status, Option<&'static str>) {
        match self {
            Answered::Ok => (Status::Ok, None),
            Answered::Refused(c) => (Status::Refused, Some(c)),
            Answered::Failed(c) => (Status::Failed, Some(c)),
        }
    }
}

/// What the claim decided, kept for the command (as poise invocation data), and what the user
/// got. While it exists the interaction counts as in flight, so a draining instance waits for
/// it; when it goes (the invocation is over) it confirms the claim, with the interaction's
/// ledger row when it was answered without a job (see `ledger`).
pub struct Claimed {
    pub assignment: Assignment,
    pub how: HowClaimed,
    /// The claim decision, the start of the ack latency this instance controls.
    pub decided_at: Instant,
    /// How long the claim took when this instance claimed as the owner (one Redis round trip).
    pub redis_rtt: Option<Duration>,
    asked: Asked,
    /// When Discord accepted the acknowledgement (Unix ms).
    acked_ms: Option<u64>,
    /// What the user got and when (Unix ms); `None` while unanswered or answered by a job.
    answer: Option<(Answered, u64)>,
    /// Set on a sweep that found the interaction answered already by the instance that held
    /// the claim before: the row is recorded on its behalf.
    recovered_for: Option<InstanceId>,
    /// A job command refused by its quota (the class): answered without a job, so a sweeping
    /// fallback that finds it answered records its row as refused.
    refused: Option<&'static str>,
    /// The claim needs no confirmation when the invocation ends ([`Claimed::settled`]).
    settled: bool,
    me: InstanceId,
    instance_count: u32,
    cluster: Cluster,
    state: Arc<EdgeState>,
    ledger: Option<Arc<Ledger>>,
    /// The Redis round trips of this interaction's acknowledgement path (claim, queueing,
    /// confirmation), counted into `metrics` once the confirmation is done.
    pub trips: RoundTrips,
    metrics: Arc<crate::metrics::Metrics>,
}

impl Claimed {
    /// A won claim for the interaction `asked`, decided now; counted in flight until dropped.
    pub fn new(
        assignment: Assignment,
        how: HowClaimed,
        redis_rtt: Option<Duration>,
        asked: Asked,
        data: &Data,
    ) -> Self {
        data.state.in_flight.fetch_add(1, Ordering::AcqRel);
        Self {
            assignment,
            how,
            decided_at: Instant::now(),
            redis_rtt,
            asked,
            acked_ms: None,
            answer: None,
            recovered_for: None,
            refused: None,
            settled: false,
            me: data.config.instance_id,
            instance_count: data.config.instance_count,
            cluster: data.cluster.clone(),
            state: data.state.clone(),
            ledger: data.ledger.clone(),
            trips: RoundTrips::new(),
            metrics: data.metrics.clone(),
        }
    }

    /// Discord accepted the acknowledgement (a deferred reply, or the answer itself) now.
    pub fn acked(&mut self) {
        self.acked_ms.get_or_insert_with(unix_ms);
    }

    /// The interaction was answered now, without a job. The last answer counts (an error
    /// message after a failed view).
    pub fn answered(&mut self, answered: Answered) {
        let now = unix_ms();
        self.acked_ms.get_or_insert(now);
        self.answer = Some((answered, now));
    }

    /// Discord said the interaction was answered already. When this instance swept the lapsed
    /// claim of another, that one answered and died (or stalled) before confirming: its row
    /// is recorded here, on its behalf, with the routing reason `recovered`. `false` when
    /// there is nothing to recover (this instance lost an ordinary race).
    pub fn recover(&mut self) -> bool {
        let Some(holder) = self.how.swept_from else {
            return false;
        };
        self.recovered_for = Some(holder);
        self.answered(self.refused.map_or(Answered::Ok, Answered::Refused));
        true
    }

    /// This job command is being refused by its quota (`class`): it is answered without a
    /// job, whichever instance's answer reaches Discord (the verdict is the same for all).
    pub fn refusing(&mut self, class: &'static str) {
        self.refused = Some(class);
    }

    /// Whether this job command was refused by its quota (answered without a job).
    pub fn is_refusal(&self) -> bool {
        self.refused.is_some()
    }

    /// What a job queued for this interaction carries about its claim; `recovered` when this
    /// instance queues it for the one whose lapsed claim it swept.
    pub fn claim_info(&self, recovered: bool) -> ClaimInfo {
        ClaimInfo {
            reason: self.assignment.reason,
            degraded: self.how.degraded,
            acked_ms: self.acked_ms.unwrap_or_else(unix_ms),
            recovered,
        }
    }

    /// The job's queueing confirmed the claim, or found it swept: the invocation's end needs
    /// no confirmation of its own (one round trip fewer).
    pub fn settled(&mut self) {
        self.settled = true;
    }

    /// The ledger row of an interaction answered without a job.
    fn row(&self) -> Option<LedgerRow> {
        let (answered, at) = self.answer?;
        let a = &self.asked;
        let (served_by, reason) = match self.recovered_for {
            Some(holder) => (holder, Routing::Recovered),
            None if self.how.degraded => (self.me, Routing::Degraded),
            None => (self.me, Routing::from(self.assignment.reason)),
        };
        let mut row = LedgerRow::new(
            a.interaction_id,
            a.user_id,
            a.channel_id,
            a.command.clone(),
            keyshard_routing::primary(a.user_id, self.instance_count),
            served_by,
            reason,
            at,
        );
        row.guild_id = a.guild_id;
        row.acked_ms = self.acked_ms;
        (row.status, row.error_class) = {
            let (status, class) = answered.status();
            (status, class.map(str::to_owned))
        };
        Some(row)
    }
}

impl Drop for Claimed {
    /// The invocation is over, so the interaction has been acknowledged (or failed beyond
    /// help): confirm the claim so it no longer lapses, off the acknowledgement's path, with
    /// the ledger row when the interaction was answered without a job (a queued job's claim
    /// was confirmed with its queueing, see [`Claimed::settled`]). The interaction stays
    /// in flight until the confirmation is done, so a draining instance records its last rows.
    fn drop(&mut self) {
        let (cluster, id, state) = (
            self.cluster.clone(),
            self.asked.interaction_id,
            self.state.clone(),
        );
        let row = self.ledger.clone().zip(self.row());
        let (trips, metrics) = (self.trips.clone(), self.metrics.clone());
        let settled = self.settled;
        tokio::spawn(async move {
            trips
                .scope(async {
                    match row {
                        Some((ledger, row)) => ledger.confirm(&cluster, row).await,
                        None if settled => {}
                        None => cluster.confirm(id).await,
                    }
                })
                .await;
            metrics.observe_ack_round_trips(&trips.ops());
            state.in_flight.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

//! The load scenario: seeded users and commands, open-loop arrivals at a fixed rate, chaos at
//! fixed times, a bounded wait for the answers, and the [`Report`].
//!
//! [`run_scenario`] is the one call the CLI and the end-to-end tests make. It runs in four
//! phases ([`run`]): start (Redis, Postgres for the usage ledger, the fake Discord, the
//! instances, until every one is ready and sees the others) → drive (the load, the chaos
//! schedule, heartbeat sampling and a progress line) → drain (wait for the answers) → collect
//! (wait for the ledger to have every answered interaction, stop everything, read the ledger
//! back, judge, report).
//! Everything random (users, commands, prompts, inter-arrival gaps) comes from one RNG seeded
//! with [`ScenarioConfig::seed`], so a run is repeatable up to the timing of real processes.
//!
//! - [`load`]: what is sent (commands, mix, users, options).
//! - [`chaos`]: what is done to the cluster, and when.
//! - [`observe`]: heartbeats read from Redis as plain data, and the progress line.
//! - [`scrape`]: the instances' `/metrics` read once at the end (ack-path round trips, keys
//!   out of service, circuits).

pub mod chaos;
pub mod load;
pub mod memory;
pub mod observe;
mod plot_input;
mod run;
pub mod scrape;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::discord::DiscordConfig;
use crate::judge::DEFAULT_OVERLOAD_WAIT;
use crate::report::{Report, ScenarioSummary};

pub use chaos::{parse_secs, Chaos, ChaosAction, DEFAULT_POSTGRES_DOWN, REDIS_RESTART_DOWN};
pub use load::{build_spec, make_users, CommandKind, Mix, Skew, UserPicker};

/// The fake providers, as the scenario needs them. Implemented in [`crate::providers`] by the
/// fake-provider side; the scenario only asks for env, capacity and 429 counts.
pub trait ProviderFakes: Send + Sync {
    /// Base URLs and this instance's own fake keys (`OPENAI_BASE_URL`, `OPENAI_API_KEY`, …).
    fn instance_env(&self, instance: u32) -> Vec<(String, String)>;
    /// The sum of the fake keys' limits for this mix over `instances` instances, per minute.
    fn capacity_per_min(&self, mix: &Mix, instances: u32) -> Option<f64>;
    /// 429 answers the fakes have given so far.
    fn provider_429(&self) -> u64;
    /// How much of each lane the mix uses the keys admitted in `[from, to)`, against what
    /// `instances` keys allow in that time. Wall-clock instants: the fakes must run on
    /// tokio's real clock (not paused), as every scenario does.
    fn lane_use(
        &self,
        mix: &Mix,
        instances: u32,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> Vec<crate::report::LaneUse>;
    /// Revokes (or restores) instance `instance`'s key of `provider` (`openai`, `minimax`,
    /// `stability`): the fakes answer it as invalid meanwhile.
    fn set_revoked(&self, instance: u32, provider: &str, revoked: bool);
    /// Every key revoked during the run, with times in seconds since `start`.
    fn revocations(
        &self,
        instances: u32,
        start: std::time::Instant,
    ) -> Vec<crate::report::RevokedKey>;
}

/// Everything a scenario run needs.
#[derive(Clone)]
pub struct ScenarioConfig {
    pub instances: u32,
    pub users: u32,
    /// Interactions per second (open loop: arrivals do not wait for answers).
    pub rate: f64,
    pub duration: Duration,
    pub mix: Mix,
    pub skew: Skew,
    /// `--noisy-user SHARE`: one user sends this share of the interactions (the others are
    /// picked among the rest as usual); the report then has `fairness.*`. `Some(0.0)` keeps
    /// that user silent, the baseline "same run without that user".
    pub noisy_user: Option<f64>,
    pub chaos: Vec<Chaos>,
    pub seed: u64,
    /// Share of interactions sent from a DM rather than the guild.
    pub dm_share: f64,
    /// The guilds guild interactions come from (a user always from the same one); several
    /// spread the interactions over the shards.
    pub guilds: u32,
    /// `SHARD_COUNT` for the instances; `None` is `auto` (the fake's recommendation).
    pub shards: Option<u32>,
    pub keyshard_bin: PathBuf,
    /// Use this Redis instead of starting a private one.
    pub redis_url: Option<String>,
    /// Run with the usage ledger: a private Postgres (or [`Self::database_url`]) passed to the
    /// instances as `DATABASE_URL`, read back after the drain into `ledger.*`.
    pub ledger: bool,
    /// Use this Postgres database instead of starting a private one. It must be dedicated to
    /// the run: every row in it is judged against this run's interactions.
    pub database_url: Option<String>,
    /// How long after the drain to wait for the ledger to hold a row for every answered
    /// interaction before reading it for the report (rows trail the answers by the writers'
    /// 250 ms batches, by up to their 5 s backoff after a Postgres outage).
    pub ledger_settle: Duration,
    /// Where instance logs go; a fresh temp dir when `None`.
    pub run_dir: Option<PathBuf>,
    /// How long to wait for outstanding answers after the last arrival.
    pub drain_deadline: Duration,
    /// How long the answers must stay quiet before the drain counts as done (a streamed
    /// answer edits its reply several times).
    pub settle: Duration,
    pub discord: DiscordConfig,
    /// `RUST_LOG` for the instances ([`crate::cluster::INSTANCE_LOG`] by default: starts, stops
    /// and takeovers).
    pub rust_log: String,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    /// `OVERLOAD_WAIT_SECS` for the instances; [`crate::judge::DEFAULT_OVERLOAD_WAIT`] when
    /// `None`. Always passed, so the judge and the instances use the same number.
    pub overload_wait_secs: Option<f64>,
    /// Extra env for every instance (e.g. `CLAIM_GRACE_MS`).
    pub env: Vec<(String, String)>,
    /// Send exactly this many interactions, evenly spaced over `duration` (back to back when
    /// it is 0), instead of Poisson arrivals at `rate`: a burst with a known size (the quota
    /// no-overrun check sends 200).
    pub count: Option<u64>,
    pub providers: Option<Arc<dyn ProviderFakes>>,
    /// How often the heartbeats are read from Redis to judge takeovers.
    pub sample_period: Duration,
    /// How often a progress line is logged during the run; `None` for none.
    pub progress_every: Option<Duration>,
    /// Drop mix entries the instances did not register instead of failing (the demo runs
    /// whatever commands the bot has).
    pub skip_unregistered: bool,
    /// Draw the run over time into this SVG file ([`crate::report::plot`]).
    pub plot: Option<PathBuf>,
    /// How often the instances' and Redis's memory is sampled ([`memory`]); `None`: not at all.
    pub memory_every: Option<Duration>,
}

impl ScenarioConfig {
    pub fn new(instances: u32, users: u32, rate: f64, duration: Duration, mix: Mix) -> Self {
        Self {
            instances,
            users,
            rate,
            duration,
            mix,
            skew: Skew::Uniform,
            noisy_user: None,
            chaos: Vec::new(),
            plot: None,
            seed: 1,
            dm_share: 0.1,
            guilds: 1,
            shards: None,
            keyshard_bin: crate::cluster::default_keyshard_bin(),
            redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
            ledger: true,
            database_url: None,
            ledger_settle: Duration::from_secs(30),
            run_dir: None,
            drain_deadline: Duration::from_secs(120),
            settle: Duration::from_millis(500),
            discord: DiscordConfig::default(),
            rust_log: crate::cluster::INSTANCE_LOG.into(),
            heartbeat_ms: 250,
            dead_after_ms: 1_000,
            overload_wait_secs: None,
            env: Vec::new(),
            count: None,
            providers: None,
            sample_period: Duration::from_millis(100),
            // Often enough that a run never looks stuck, rarely enough to read.
            progress_every: Some(Duration::from_secs(5)),
            skip_unregistered: false,
            // Often enough for a 30 s run to have a few samples, and a 10-minute soak sixty.
            memory_every: Some(Duration::from_secs(10)),
        }
    }

    pub fn kill(mut self, instance: u32, at: Duration) -> Self {
        self.chaos.push(Chaos {
            at,
            action: ChaosAction::Kill(instance),
        });
        self
    }

    /// The overload threshold the instances run with: an `OVERLOAD_WAIT_SECS` in [`Self::env`]
    /// (passed last, so it wins), else [`Self::overload_wait_secs`], else the default.
    pub fn overload_wait(&self) -> Duration {
        self.env
            .iter()
            .rev()
            .find(|(k, _)| k == "OVERLOAD_WAIT_SECS")
            .and_then(|(_, v)| v.parse::<f64>().ok())
            .or(self.overload_wait_secs)
            .and_then(|s| Duration::try_from_secs_f64(s).ok())
            .unwrap_or(DEFAULT_OVERLOAD_WAIT)
    }

    /// The shards every instance runs.
    pub fn shards_per_instance(&self) -> u32 {
        self.shards
            .unwrap_or(self.discord.gateway.recommended_shards)
            .max(1)
    }

    fn summary(&self) -> ScenarioSummary {
        ScenarioSummary {
            instances: self.instances,
            users: self.users,
            rate_per_s: self.rate,
            duration_s: self.duration.as_secs_f64(),
            mix: self.mix.to_string(),
            skew: self.skew.to_string(),
            noisy_user: self.noisy_user,
            seed: self.seed,
            chaos: self.chaos.iter().map(Chaos::to_string).collect(),
        }
    }
}

/// Runs a whole scenario: Redis, fake Discord, fake providers (when given), N instances, the
/// load, the chaos, the drain, and the report.
pub async fn run_scenario(cfg: ScenarioConfig) -> anyhow::Result<Report> {
    Ok(run_scenario_with_records(cfg).await?.0)
}

/// [`run_scenario`], also returning every interaction's record, for tests that check more
/// than the totals (who answered each interaction, when).
pub async fn run_scenario_with_records(
    cfg: ScenarioConfig,
) -> anyhow::Result<(Report, Vec<crate::discord::InteractionRecord>)> {
    let mut run = run::Run::start(cfg).await?;
    let load = run.drive().await?;
    let drained = run.drain(&load).await;
    run.collect(&load, drained).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_overload_threshold_is_the_one_the_instances_get() {
        let mut cfg = ScenarioConfig::new(
            4,
            10,
            1.0,
            Duration::from_secs(1),
            "ping=1".parse().unwrap(),
        );
        assert_eq!(cfg.overload_wait(), DEFAULT_OVERLOAD_WAIT);
        cfg.overload_wait_secs = Some(5.0);
        assert_eq!(cfg.overload_wait(), Duration::from_secs(5));
        cfg.env.push(("OVERLOAD_WAIT_SECS".into(), "2.5".into()));
        assert_eq!(cfg.overload_wait(), Duration::from_millis(2_500));
    }
}

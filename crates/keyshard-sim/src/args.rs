//! The command line of the `keyshard-sim` binary: its verbs and their flags (clap).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use keyshard_sim::attach::control::DEFAULT_URL;
use keyshard_sim::attach::Note;
use keyshard_sim::discord::GatewayRules;
use keyshard_sim::scenario::{Chaos, ChaosAction, Mix, Skew};

#[derive(Parser)]
#[command(
    name = "keyshard-sim",
    version,
    about = "Fake Discord + fake providers + N real keyshard processes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: how large the enum is costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a scenario against N real `keyshard` processes and write the JSON report.
    Run(Box<RunArgs>),
    /// Run only the fakes (and a private Redis) and print the env that points an instance at them.
    Serve(ServeArgs),
    /// A canned scenario: 4 instances, ~40 users, every command, instance 2 killed half-way.
    Demo(Box<DemoArgs>),
    /// Tell a running `serve --control` what was done to the cluster from outside, and when:
    /// WHAT[@UNIX_MS] (kill:2, stop:3, start:3, restart:redis, rolling-restart, …).
    Note(NoteArgs),
    /// Print the env overlay of a running `serve --control`: the env file that points the
    /// compose file's keyshard-N services at its fakes.
    Env(EnvArgs),
}

#[derive(Args)]
pub struct RunArgs {
    #[arg(long, default_value_t = 4)]
    pub instances: u32,
    #[arg(long, default_value_t = 100)]
    pub users: u32,
    /// Interactions per second (open loop).
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Offer this multiple of the fake keys' capacity for the mix instead of --rate
    /// (e.g. 1.5 to saturate); needs a mix with a provider command.
    #[arg(long)]
    pub load_factor: Option<f64>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Send exactly N interactions, evenly spaced over --duration (0: back to back), instead
    /// of Poisson arrivals at --rate.
    #[arg(long)]
    pub count: Option<u64>,
    /// Weighted commands: ping=1[,chat=W,image=W,video=W].
    #[arg(long, default_value = "ping=1")]
    pub mix: Mix,
    /// User popularity: uniform, or zipf:S.
    #[arg(long, default_value = "uniform")]
    pub skew: Skew,
    /// One user sends this share (0..=1) of the interactions; the report gets
    /// `fairness.{others_p95_ms,noisy_p95_ms,noisy_share}`. 0 keeps that user silent: the
    /// baseline run "without the noisy user" (with --load-factor scaled by 1 - SHARE).
    #[arg(long, value_parser = parse_share)]
    pub noisy_user: Option<f64>,
    /// SIGKILL an instance: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Kill))]
    pub kill: Vec<Chaos>,
    /// SIGTERM an instance: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Terminate))]
    pub terminate: Vec<Chaos>,
    /// Start an instance again: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Restart))]
    pub restart: Vec<Chaos>,
    /// Close an instance's gateway sessions: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::DropSession))]
    pub drop_session: Vec<Chaos>,
    /// Invalidate an instance's sessions with op 9, resumable: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, |i| ChaosAction::InvalidateSession { instance: i, resumable: true }))]
    pub invalidate_session: Vec<Chaos>,
    /// Invalidate an instance's sessions with op 9, not resumable (a fresh IDENTIFY):
    /// INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, |i| ChaosAction::InvalidateSession { instance: i, resumable: false }))]
    pub invalidate_session_fresh: Vec<Chaos>,
    /// Crash-loop an instance: killed as soon as it IDENTIFYs, started again at once, for SPAN
    /// seconds: INSTANCE@SECS+SPAN (repeatable).
    #[arg(long, value_parser = Chaos::parse_crash_loop)]
    pub crash_loop: Vec<Chaos>,
    /// Revoke an instance's key of a provider and restore it later: PROVIDER:INSTANCE@FROM-TO
    /// (e.g. openai:2@20-60; the fake answers that key with 401 meanwhile; repeatable).
    #[arg(long, value_parser = Chaos::parse_revoke_key)]
    pub revoke_key: Vec<[Chaos; 2]>,
    /// The guilds guild interactions come from (spread over the shards).
    #[arg(long, default_value_t = 1)]
    pub guilds: u32,
    /// Kill and restart the private Redis at SECS, empty (repeatable).
    #[arg(long, value_parser = keyshard_sim::scenario::parse_secs)]
    pub redis_restart: Vec<Duration>,
    /// Restart the private Redis at SECS as `docker restart redis` does: its data saved and
    /// loaded again, 0.7 s away, its address silent meanwhile (repeatable).
    #[arg(long, value_parser = keyshard_sim::scenario::parse_secs)]
    pub redis_restart_with_data: Vec<Duration>,
    /// Stop the private Postgres at SECS and start it again --postgres-down seconds later
    /// (repeatable).
    #[arg(long, value_parser = keyshard_sim::scenario::parse_secs)]
    pub postgres_restart: Vec<Duration>,
    /// How long each --postgres-restart keeps Postgres down, in seconds.
    #[arg(long, default_value_t = keyshard_sim::scenario::DEFAULT_POSTGRES_DOWN.as_secs_f64())]
    pub postgres_down: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where to write the JSON report (`-`: standard output, the text report then goes to
    /// standard error).
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Drive the instances of a running `serve --control` (the URL of its control API) instead
    /// of starting instances: the load goes to the fake Discord they are connected to, chaos
    /// comes from `note`, and the exit code is 1 unless every interaction was answered once.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = DEFAULT_URL)]
    pub attach: Option<String>,
    /// With --attach: the load goes on past --duration until a note of this name arrives
    /// (the end of the chaos schedule), for at most 180 s more.
    #[arg(long, requires = "attach")]
    pub until_note: Option<String>,
    /// With --attach: seconds to wait for every instance to be ready before the load.
    #[arg(long, requires = "attach", default_value_t = 180.0)]
    pub ready_timeout: f64,
    /// Draw the run over time into this SVG: offered load, answers and queue depth per
    /// instance, lane use against the limit, chaos marks.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Sample each instance's resident memory and Redis's memory every SECS (0: never); the
    /// report's `memory` section.
    #[arg(long, default_value_t = 10.0)]
    pub memory_every: f64,
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Args)]
pub struct NoteArgs {
    /// The control API of `serve --control`.
    #[arg(long, default_value = DEFAULT_URL)]
    pub attach: String,
    /// WHAT[@UNIX_MS]; without a time, the service stamps it on arrival.
    #[arg(required = true)]
    pub notes: Vec<Note>,
}

#[derive(Args)]
pub struct EnvArgs {
    /// The control API of `serve --control`.
    #[arg(long, default_value = DEFAULT_URL)]
    pub attach: String,
}

#[derive(Args)]
pub struct CommonArgs {
    /// The `keyshard` binary (default: next to this executable).
    #[arg(long)]
    pub keyshard_bin: Option<PathBuf>,
    /// Use this Redis instead of a private redis-server.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Run without the usage ledger (no Postgres, no `ledger.*` in the report).
    #[arg(long)]
    pub no_ledger: bool,
    /// Use this Postgres database for the ledger instead of a private one. It must be
    /// dedicated to the run: every row in it is judged against the run's interactions. (Not
    /// read from DATABASE_URL, so a real ledger is never used by accident.)
    #[arg(long)]
    pub database_url: Option<String>,
    /// Where instance logs go (default: a fresh temp dir).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// RUST_LOG for the instances (their logs go to `instance-N.log` in the run directory).
    #[arg(long, env = "RUST_LOG", default_value = keyshard_sim::cluster::INSTANCE_LOG)]
    pub instance_log: String,
    /// Seconds to wait for outstanding answers after the load.
    #[arg(long, default_value_t = 120.0)]
    pub drain: f64,
    /// OVERLOAD_WAIT_SECS for the instances.
    #[arg(long)]
    pub overload_wait_secs: Option<f64>,
    /// Every fake provider key allows this many requests per minute on every lane (default:
    /// the providers' published limits).
    #[arg(long)]
    pub provider_rpm: Option<u32>,
    /// Extra instance env, NAME=VALUE (repeatable).
    #[arg(long = "instance-env", value_parser = parse_kv)]
    pub instance_env: Vec<(String, String)>,
    /// A daily limit per user for a command, CMD=N (chat, image, video; repeatable): the same
    /// as `--instance-env QUOTA_<CMD>_USER_DAILY=N`. The report's `quota.*` judges the run
    /// against every `QUOTA_<CMD>_{USER,GUILD}_DAILY` the instances get.
    #[arg(long, value_parser = parse_quota)]
    pub quota: Vec<(String, String)>,
    /// The maximum wait of a command, KIND=SECS (chat, image, video; 0: none; repeatable): the
    /// same as `--instance-env MAX_WAIT_SECS_<KIND>=SECS`. The report's `overload.*` judges
    /// the accepted answers against every `MAX_WAIT_SECS_<KIND>` the instances get.
    #[arg(long, value_parser = parse_max_wait)]
    pub max_wait: Vec<(String, String)>,
    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// Discord's session rules as the fake enforces them (defaults: Discord's own).
#[derive(Args)]
pub struct GatewayArgs {
    /// SHARD_COUNT for the instances (default: auto, the fake's recommendation).
    #[arg(long)]
    pub shards: Option<u32>,
    /// `shards` in the fake's `GET /gateway/bot`.
    #[arg(long, default_value_t = 1)]
    pub recommended_shards: u32,
    /// `session_start_limit.max_concurrency`.
    #[arg(long, default_value_t = 1)]
    pub max_concurrency: u32,
    /// Seconds between two IDENTIFYs of a bucket (Discord: 5); the instances get the same.
    #[arg(long)]
    pub identify_window: Option<f64>,
    /// `session_start_limit.remaining` at the start (of 1000).
    #[arg(long, default_value_t = 1000)]
    pub session_starts: u32,
    /// The guilds the bot is in (over 2,500 per shard: close 4011).
    #[arg(long, default_value_t = 1)]
    pub bot_guilds: u64,
}

impl GatewayArgs {
    pub fn rules(&self, default_window: Duration) -> anyhow::Result<GatewayRules> {
        let window = match self.identify_window {
            Some(w) => keyshard_sim::scenario::parse_secs(&w.to_string())?,
            None => default_window,
        };
        Ok(GatewayRules {
            recommended_shards: self.recommended_shards.max(1),
            identify_remaining: self.session_starts,
            max_concurrency: self.max_concurrency.max(1),
            identify_window: window,
            bot_guilds: self.bot_guilds,
            ..GatewayRules::default()
        })
    }
}

#[derive(Args)]
pub struct ServeArgs {
    #[arg(long, default_value_t = 4, env = "INSTANCE_COUNT")]
    pub instances: u32,
    /// Where the fake Discord listens; the fake providers take the next port (default:
    /// loopback, free ports).
    #[arg(long)]
    pub bind: Option<SocketAddr>,
    /// The host name the instances reach the fakes by (a compose service name), given out in
    /// the gateway URL and every other URL, with the bound port unless it names its own.
    #[arg(long)]
    pub advertise: Option<String>,
    /// Serve the control API here (`run --attach`, `note`, `env`), for instances started by
    /// someone else: no private Redis, the heartbeats are read from --redis-url.
    #[arg(long, requires = "redis_url")]
    pub control: Option<SocketAddr>,
    /// With --control: the cluster's Redis.
    #[arg(long)]
    pub redis_url: Option<String>,
    /// With --control: each instance's HTTP address (the default shows where its number goes).
    #[arg(long, default_value = "http://keyshard-{n}:8080")]
    pub instance_url: String,
    /// With --control: CLUSTER_NAME written into the overlay.
    #[arg(long, default_value = "rehearse")]
    pub cluster_name: String,
    /// With --control: also write the env overlay to this file.
    #[arg(long)]
    pub env_out: Option<PathBuf>,
}

#[derive(Args)]
pub struct DemoArgs {
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long)]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
}

pub fn parse_quota(s: &str) -> anyhow::Result<(String, String)> {
    let (cmd, n) = s.split_once('=').context("expected CMD=N, e.g. image=10")?;
    if !matches!(cmd, "chat" | "image" | "video") {
        anyhow::bail!("{cmd:?} has no quota (chat, image, video)");
    }
    let n: u64 = n.parse().context("the limit is a number")?;
    Ok((
        format!("QUOTA_{}_USER_DAILY", cmd.to_ascii_uppercase()),
        n.to_string(),
    ))
}

pub fn parse_max_wait(s: &str) -> anyhow::Result<(String, String)> {
    let (kind, n) = s
        .split_once('=')
        .context("expected KIND=SECS, e.g. chat=20")?;
    if !matches!(kind, "chat" | "image" | "video") {
        anyhow::bail!("{kind:?} has no maximum wait (chat, image, video)");
    }
    let n: u64 = n.parse().context("the maximum is whole seconds")?;
    Ok((
        format!("MAX_WAIT_SECS_{}", kind.to_ascii_uppercase()),
        n.to_string(),
    ))
}

pub fn parse_kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').context("expected NAME=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// A share of the load, 0 to 1.
pub fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

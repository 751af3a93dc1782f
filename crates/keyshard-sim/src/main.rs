//! The `keyshard-sim` binary: `run` a scenario, `serve` only the fakes, or run the `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use keyshard_sim::discord::{DiscordConfig, FakeDiscord, GatewayRules};
use keyshard_sim::providers::{FakeLimits, FakeProvidersConfig};
use keyshard_sim::report::Report;
use keyshard_sim::scenario::{
    run_scenario, Chaos, ChaosAction, CommandKind, Mix, ProviderFakes, ScenarioConfig, Skew,
};
use keyshard_sim::wiring::ScenarioProviders;

#[derive(Parser)]
#[command(
    name = "keyshard-sim",
    version,
    about = "Fake Discord + fake providers + N real keyshard processes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
// Parsed once per process: how large the enum is costs nothing.
#[allow(clippy::large_enum_variant)]
enum Command {
    /// Run a scenario against N real `keyshard` processes and write the JSON report.
    Run(Box<RunArgs>),
    /// Run only the fakes (and a private Redis) and print the env that points an instance at them.
    Serve(ServeArgs),
    /// A canned scenario: 4 instances, ~40 users, every command, instance 2 killed half-way.
    Demo(Box<DemoArgs>),
}

#[derive(Args)]
struct RunArgs {
    #[arg(long, default_value_t = 4)]
    instances: u32,
    #[arg(long, default_value_t = 100)]
    users: u32,
    /// Interactions per second (open loop).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Offer this multiple of the fake keys' capacity for the mix instead of --rate
    /// (e.g. 1.5 to saturate); needs a mix with a provider command.
    #[arg(long)]
    load_factor: Option<f64>,
    /// Seconds of load.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Weighted commands: ping=1[,chat=W,image=W,video=W].
    #[arg(long, default_value = "ping=1")]
    mix: Mix,
    /// User popularity: uniform, or zipf:S.
    #[arg(long, default_value = "uniform")]
    skew: Skew,
    /// One user sends this share (0..=1) of the interactions; the report gets
    /// `fairness.{others_p95_ms,noisy_p95_ms,noisy_share}`. 0 keeps that user silent: the
    /// baseline run "without the noisy user" (with --load-factor scaled by 1 - SHARE).
    #[arg(long, value_parser = parse_share)]
    noisy_user: Option<f64>,
    /// SIGKILL an instance: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Kill))]
    kill: Vec<Chaos>,
    /// SIGTERM an instance: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Terminate))]
    terminate: Vec<Chaos>,
    /// Start an instance again: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::Restart))]
    restart: Vec<Chaos>,
    /// Close an instance's gateway sessions: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, ChaosAction::DropSession))]
    drop_session: Vec<Chaos>,
    /// Invalidate an instance's sessions with op 9, resumable: INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, |i| ChaosAction::InvalidateSession { instance: i, resumable: true }))]
    invalidate_session: Vec<Chaos>,
    /// Invalidate an instance's sessions with op 9, not resumable (a fresh IDENTIFY):
    /// INSTANCE@SECS (repeatable).
    #[arg(long, value_parser = |s: &str| Chaos::parse_instance(s, |i| ChaosAction::InvalidateSession { instance: i, resumable: false }))]
    invalidate_session_fresh: Vec<Chaos>,
    /// Crash-loop an instance: killed as soon as it IDENTIFYs, started again at once, for SPAN
    /// seconds: INSTANCE@SECS+SPAN (repeatable).
    #[arg(long, value_parser = Chaos::parse_crash_loop)]
    crash_loop: Vec<Chaos>,
    /// The guilds guild interactions come from (spread over the shards).
    #[arg(long, default_value_t = 1)]
    guilds: u32,
    /// Kill and restart the private Redis at SECS (repeatable).
    #[arg(long, value_parser = keyshard_sim::scenario::parse_secs)]
    redis_restart: Vec<Duration>,
    /// Stop the private Postgres at SECS and start it again --postgres-down seconds later
    /// (repeatable).
    #[arg(long, value_parser = keyshard_sim::scenario::parse_secs)]
    postgres_restart: Vec<Duration>,
    /// How long each --postgres-restart keeps Postgres down, in seconds.
    #[arg(long, default_value_t = keyshard_sim::scenario::DEFAULT_POSTGRES_DOWN.as_secs_f64())]
    postgres_down: f64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct CommonArgs {
    /// The `keyshard` binary (default: next to this executable).
    #[arg(long)]
    keyshard_bin: Option<PathBuf>,
    /// Use this Redis instead of a private redis-server.
    #[arg(long, env = "REDIS_URL")]
    redis_url: Option<String>,
    /// Run without the usage ledger (no Postgres, no `ledger.*` in the report).
    #[arg(long)]
    no_ledger: bool,
    /// Use this Postgres database for the ledger instead of a private one. It must be
    /// dedicated to the run: every row in it is judged against the run's interactions. (Not
    /// read from DATABASE_URL, so a real ledger is never used by accident.)
    #[arg(long)]
    database_url: Option<String>,
    /// Where instance logs go (default: a fresh temp dir).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// RUST_LOG for the instances (their logs go to `instance-N.log` in the run directory).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    instance_log: String,
    /// Seconds to wait for outstanding answers after the load.
    #[arg(long, default_value_t = 120.0)]
    drain: f64,
    /// OVERLOAD_WAIT_SECS for the instances.
    #[arg(long)]
    overload_wait_secs: Option<f64>,
    /// Every fake provider key allows this many requests per minute on every lane (default:
    /// the providers' published limits).
    #[arg(long)]
    provider_rpm: Option<u32>,
    /// Extra instance env, NAME=VALUE (repeatable).
    #[arg(long = "instance-env", value_parser = parse_kv)]
    instance_env: Vec<(String, String)>,
    #[command(flatten)]
    gateway: GatewayArgs,
}

/// Discord's session rules as the fake enforces them (defaults: Discord's own).
#[derive(Args)]
struct GatewayArgs {
    /// SHARD_COUNT for the instances (default: auto, the fake's recommendation).
    #[arg(long)]
    shards: Option<u32>,
    /// `shards` in the fake's `GET /gateway/bot`.
    #[arg(long, default_value_t = 1)]
    recommended_shards: u32,
    /// `session_start_limit.max_concurrency`.
    #[arg(long, default_value_t = 1)]
    max_concurrency: u32,
    /// Seconds between two IDENTIFYs of a bucket (Discord: 5); the instances get the same.
    #[arg(long)]
    identify_window: Option<f64>,
    /// `session_start_limit.remaining` at the start (of 1000).
    #[arg(long, default_value_t = 1000)]
    session_starts: u32,
    /// The guilds the bot is in (over 2,500 per shard: close 4011).
    #[arg(long, default_value_t = 1)]
    bot_guilds: u64,
}

impl GatewayArgs {
    fn rules(&self, default_window: Duration) -> anyhow::Result<GatewayRules> {
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
struct ServeArgs {
    #[arg(long, default_value_t = 4)]
    instances: u32,
}

#[derive(Args)]
struct DemoArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    json: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

fn parse_kv(s: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s.split_once('=').context("expected NAME=VALUE")?;
    Ok((k.to_string(), v.to_string()))
}

/// The fake providers for a run, when the mix has a command that calls one.
async fn start_providers(
    mix: &Mix,
    common: &CommonArgs,
) -> anyhow::Result<Option<Arc<dyn ProviderFakes>>> {
    let needs = mix.kinds().any(|k| {
        matches!(
            k,
            CommandKind::Chat | CommandKind::Image | CommandKind::Video
        )
    });
    if !needs {
        return Ok(None);
    }
    Ok(Some(
        ScenarioProviders::start(provider_config(common))
            .await?
            .shared(),
    ))
}

fn provider_config(common: &CommonArgs) -> FakeProvidersConfig {
    let mut cfg = FakeProvidersConfig::default();
    if let Some(rpm) = common.provider_rpm {
        cfg.limits = FakeLimits::uniform(rpm, Duration::from_secs(60));
    }
    cfg
}

fn base_config(
    instances: u32,
    users: u32,
    rate: f64,
    duration: f64,
    mix: Mix,
    common: &CommonArgs,
) -> anyhow::Result<ScenarioConfig> {
    let mut cfg = ScenarioConfig::new(
        instances,
        users,
        rate,
        keyshard_sim::scenario::parse_secs(&duration.to_string())?,
        mix,
    );
    if let Some(bin) = &common.keyshard_bin {
        cfg.keyshard_bin = bin.clone();
    }
    cfg.redis_url = common.redis_url.clone().filter(|u| !u.is_empty());
    cfg.ledger = !common.no_ledger;
    cfg.database_url = common.database_url.clone().filter(|u| !u.is_empty());
    cfg.run_dir = common.run_dir.clone();
    cfg.rust_log = common.instance_log.clone();
    cfg.drain_deadline = keyshard_sim::scenario::parse_secs(&common.drain.to_string())?;
    cfg.overload_wait_secs = common.overload_wait_secs;
    cfg.env = common.instance_env.clone();
    cfg.shards = common.gateway.shards;
    cfg.discord.gateway = common
        .gateway
        .rules(GatewayRules::default().identify_window)?;
    Ok(cfg)
}

fn write_report(report: &Report, json: Option<&PathBuf>) -> anyhow::Result<()> {
    println!("{}", report.render());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    let mut cfg = base_config(
        args.instances,
        args.users,
        args.rate,
        args.duration,
        args.mix.clone(),
        &args.common,
    )?;
    cfg.skew = args.skew;
    cfg.noisy_user = args.noisy_user;
    cfg.seed = args.seed;
    cfg.guilds = args.guilds;
    cfg.chaos = [
        args.kill,
        args.terminate,
        args.restart,
        args.drop_session,
        args.invalidate_session,
        args.invalidate_session_fresh,
        args.crash_loop,
    ]
    .concat()
    .into_iter()
    .chain(args.redis_restart.into_iter().map(|at| Chaos {
        at,
        action: ChaosAction::RedisRestart,
    }))
    .chain(args.postgres_restart.into_iter().map(|at| Chaos {
        at,
        action: ChaosAction::PostgresRestart {
            down: Duration::from_secs_f64(args.postgres_down.max(0.0)),
        },
    }))
    .collect();
    cfg.providers = start_providers(&args.mix, &args.common).await?;
    if let Some(factor) = args.load_factor {
        let capacity = cfg
            .providers
            .as_ref()
            .and_then(|p| p.capacity_per_min(&cfg.mix, cfg.instances))
            .context("--load-factor needs a mix with chat, image or video")?;
        cfg.rate = factor * capacity / 60.0;
        println!(
            "offered load {factor} × capacity {capacity}/min = {:.2} interactions/s",
            cfg.rate
        );
    }
    let report = run_scenario(cfg).await?;
    write_report(&report, args.json.as_ref())
}

async fn demo(args: DemoArgs) -> anyhow::Result<()> {
    // Every command a user can call; those needing a provider only when the fake providers
    // run, and any the instances did not register are left out rather than failing the demo.
    let mix: Mix = "ping=3,chat=3,image=2,video=1,balancer=1,assign=1,perf=1".parse()?;
    let providers = start_providers(&mix, &args.common).await?;
    let duration = 30.0;
    let mut cfg = base_config(4, 40, 4.0, duration, mix, &args.common)?;
    // A second between IDENTIFYs (Discord: 5 s): the four instances come up one after another
    // in the cluster's queue, as they would, without a 15 s wait before the demo starts.
    if args.common.gateway.identify_window.is_none() {
        cfg.discord.gateway.identify_window = Duration::from_secs(1);
    }
    cfg.seed = args.seed;
    cfg.skip_unregistered = true;
    cfg.providers = providers;
    cfg.chaos = vec![Chaos {
        at: Duration::from_secs_f64(duration / 2.0),
        action: ChaosAction::Kill(2),
    }];
    println!(
        "keyshard demo: 4 instances, 40 users, requested mix {}, instance 2 killed at {:.0} s",
        cfg.mix,
        duration / 2.0
    );
    let report = run_scenario(cfg).await?;
    write_report(&report, args.json.as_ref())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let redis = tokio::task::spawn_blocking(keyshard_testkit::RedisServer::try_start)
        .await?
        .context("starting a private redis-server")?;
    let discord = FakeDiscord::start(DiscordConfig::default()).await?;
    let providers = ScenarioProviders::start(FakeProvidersConfig::default()).await?;
    let window = discord.config().gateway.identify_window.as_millis();
    println!(
        "# fake Discord at {}, fake providers at http://{}, Redis at {}",
        discord.base_url(),
        providers.fakes().addr(),
        redis.url()
    );
    println!("# env for instance k (1..={}):", args.instances);
    for k in 1..=args.instances {
        let mut env = vec![
            (
                "DISCORD_TOKEN".to_string(),
                keyshard_sim::cluster::SIM_DISCORD_TOKEN.to_string(),
            ),
            ("INSTANCE_ID".into(), k.to_string()),
            ("INSTANCE_COUNT".into(), args.instances.to_string()),
            ("REDIS_URL".into(), redis.url()),
            ("CLUSTER_NAME".into(), "sim".into()),
            ("DISCORD_API_BASE".into(), discord.api_base(k)),
            ("HTTP_BIND".into(), format!("127.0.0.1:{}", 8080 + k)),
            ("IDENTIFY_WINDOW_MS".into(), window.to_string()),
        ];
        env.extend(providers.instance_env(k));
        let line: Vec<String> = env.iter().map(|(n, v)| format!("{n}={v}")).collect();
        println!("{}", line.join(" "));
    }
    println!("# Ctrl-C to stop");
    tokio::signal::ctrl_c().await?;
    let records = discord.records();
    println!(
        "# {} interactions, {} acknowledged",
        records.len(),
        records.iter().filter(|r| r.ack().is_some()).count()
    );
    drop(redis);
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// Colour codes only for a person at a terminal: not in a file or a pipe, and not when
/// `NO_COLOR` is set (https://no-color.org).
fn colour_stderr() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("KEYSHARD_SIM_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,keyshard_sim=info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(colour_stderr())
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("keyshard-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let work = match cli.command {
            // `serve` waits for Ctrl-C itself and ends normally on it.
            Command::Serve(a) => return serve(a).await,
            Command::Run(a) => Box::pin(run(*a))
                as std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>>>>,
            Command::Demo(a) => Box::pin(demo(*a)),
        };
        // Ctrl-C or SIGTERM drops the scenario, and with it every child process (kill on drop).
        tokio::select! {
            r = work => r,
            () = interrupted() => Err(anyhow::anyhow!("interrupted")),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keyshard-sim: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// A share of the load, 0 to 1.
fn parse_share(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?} is not a share between 0 and 1")),
    }
}

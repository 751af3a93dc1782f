//! The `keyshard-sim` binary: `run` a scenario, `serve` only the fakes, or run the `demo`.
//! `serve --control` is the compose service of a rehearsal; `run --attach`, `note` and `env`
//! are its clients (see `keyshard_sim::attach`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use keyshard_sim::attach::control::{self as attach_control, DEFAULT_URL};
use keyshard_sim::attach::drive::{Event, RunRequest};
use keyshard_sim::attach::{Note, ServiceConfig};
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
    /// Tell a running `serve --control` what was done to the cluster from outside, and when:
    /// WHAT[@UNIX_MS] (kill:2, stop:3, start:3, restart:redis, rolling-restart, …).
    Note(NoteArgs),
    /// Print the env overlay of a running `serve --control`: the env file that points the
    /// compose file's keyshard-N services at its fakes.
    Env(EnvArgs),
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
    /// Send exactly N interactions, evenly spaced over --duration (0: back to back), instead
    /// of Poisson arrivals at --rate.
    #[arg(long)]
    count: Option<u64>,
    /// Weighted commands: ping=1[,chat=W,image=W,video=W].
    #[arg(long, default_value = "ping=1")]
    mix: Mix,
    /// User popularity: uniform, or zipf:S.
    #[arg(long, default_value = "uniform")]
    skew: Skew,
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
    /// Revoke an instance's key of a provider and restore it later: PROVIDER:INSTANCE@FROM-TO
    /// (e.g. openai:2@20-60; the fake answers that key with 401 meanwhile; repeatable).
    #[arg(long, value_parser = Chaos::parse_revoke_key)]
    revoke_key: Vec<[Chaos; 2]>,
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
    /// Where to write the JSON report (`-`: standard output, the text report then goes to
    /// standard error).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Drive the instances of a running `serve --control` (the URL of its control API) instead
    /// of starting instances: the load goes to the fake Discord they are connected to, chaos
    /// comes from `note`, and the exit code is 1 unless every interaction was answered once.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = DEFAULT_URL)]
    attach: Option<String>,
    /// With --attach: the load goes on past --duration until a note of this name arrives
    /// (the end of the chaos schedule), for at most 180 s more.
    #[arg(long, requires = "attach")]
    until_note: Option<String>,
    /// With --attach: seconds to wait for every instance to be ready before the load.
    #[arg(long, requires = "attach", default_value_t = 180.0)]
    ready_timeout: f64,
    /// Draw the run over time into this SVG: offered load, answers and queue depth per
    /// instance, lane use against the limit, chaos marks.
    #[arg(long)]
    plot: Option<PathBuf>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct NoteArgs {
    /// The control API of `serve --control`.
    #[arg(long, default_value = DEFAULT_URL)]
    attach: String,
    /// WHAT[@UNIX_MS]; without a time, the service stamps it on arrival.
    #[arg(required = true)]
    notes: Vec<Note>,
}

#[derive(Args)]
struct EnvArgs {
    /// The control API of `serve --control`.
    #[arg(long, default_value = DEFAULT_URL)]
    attach: String,
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
    /// A daily limit per user for a command, CMD=N (chat, image, video; repeatable): the same
    /// as `--instance-env QUOTA_<CMD>_USER_DAILY=N`. The report's `quota.*` judges the run
    /// against every `QUOTA_<CMD>_{USER,GUILD}_DAILY` the instances get.
    #[arg(long, value_parser = parse_quota)]
    quota: Vec<(String, String)>,
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
    #[arg(long, default_value_t = 4, env = "INSTANCE_COUNT")]
    instances: u32,
    /// Where the fake Discord listens; the fake providers take the next port (default:
    /// loopback, free ports).
    #[arg(long)]
    bind: Option<SocketAddr>,
    /// The host name the instances reach the fakes by (a compose service name), given out in
    /// the gateway URL and every other URL, with the bound port unless it names its own.
    #[arg(long)]
    advertise: Option<String>,
    /// Serve the control API here (`run --attach`, `note`, `env`), for instances started by
    /// someone else: no private Redis, the heartbeats are read from --redis-url.
    #[arg(long, requires = "redis_url")]
    control: Option<SocketAddr>,
    /// With --control: the cluster's Redis.
    #[arg(long)]
    redis_url: Option<String>,
    /// With --control: each instance's HTTP address (the default shows where its number goes).
    #[arg(long, default_value = "http://keyshard-{n}:8080")]
    instance_url: String,
    /// With --control: CLUSTER_NAME written into the overlay.
    #[arg(long, default_value = "rehearse")]
    cluster_name: String,
    /// With --control: also write the env overlay to this file.
    #[arg(long)]
    env_out: Option<PathBuf>,
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

fn parse_quota(s: &str) -> anyhow::Result<(String, String)> {
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
    cfg.env.extend(common.quota.iter().cloned());
    cfg.shards = common.gateway.shards;
    cfg.discord.gateway = common
        .gateway
        .rules(GatewayRules::default().identify_window)?;
    Ok(cfg)
}

fn write_report(report: &Report, json: Option<&PathBuf>) -> anyhow::Result<()> {
    if json.is_some_and(|p| p.as_os_str() == "-") {
        eprintln!("{}", report.render());
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    println!("{}", report.render());
    if let Some(path) = json {
        let text = serde_json::to_string_pretty(report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        println!("report written to {}", path.display());
    }
    Ok(())
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    if let Some(url) = &args.attach {
        return run_attached(url, &args).await;
    }
    let mut cfg = base_config(
        args.instances,
        args.users,
        args.rate,
        args.duration,
        args.mix.clone(),
        &args.common,
    )?;
    cfg.skew = args.skew;
    cfg.seed = args.seed;
    cfg.count = args.count;
    cfg.guilds = args.guilds;
    cfg.plot = args.plot.clone();
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
    .chain(args.revoke_key.into_iter().flatten())
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

/// `run --attach`: the run happens in the service; this prints its events as they come and
/// the report at the end.
async fn run_attached(url: &str, args: &RunArgs) -> anyhow::Result<()> {
    if !(args.kill.is_empty()
        && args.terminate.is_empty()
        && args.restart.is_empty()
        && args.drop_session.is_empty()
        && args.redis_restart.is_empty()
        && args.load_factor.is_none())
    {
        anyhow::bail!(
            "with --attach the instances are not the simulator's: chaos is done from outside and \
             told with `keyshard-sim note`, and the load is given with --rate"
        );
    }
    let req = RunRequest {
        users: args.users,
        rate: args.rate,
        duration_s: args.duration,
        until_note: args.until_note.clone(),
        mix: args.mix.to_string(),
        skew: args.skew.to_string(),
        seed: args.seed,
        drain_s: args.common.drain,
        ready_timeout_s: args.ready_timeout,
        ..RunRequest::default()
    };
    // Progress goes to stderr, so that `--json -` leaves stdout to the JSON alone.
    let last = attach_control::run(url, &req, |e| match e {
        Event::Waiting { what } => eprintln!("waiting: {what}"),
        Event::LoadStarted { unix_ms } => eprintln!("load started at unix_ms={unix_ms}"),
        Event::Progress { line } => eprintln!("{line}"),
        Event::LoadDone { sent, load_s } => {
            eprintln!("load done: {sent} sent in {load_s:.1} s; waiting for the last answers");
        }
        Event::Report { .. } | Event::Error { .. } => {}
    })
    .await?;
    let (report, text, failures) = match last {
        Event::Report {
            report,
            text,
            failures,
        } => (report, text, failures),
        Event::Error { message } => anyhow::bail!("the run failed: {message}"),
        _ => unreachable!("run returns a report or an error"),
    };
    let json_text = serde_json::to_string_pretty(&report)? + "\n";
    match args.json.as_ref() {
        Some(p) if p.as_os_str() == "-" => {
            eprintln!("{text}");
            print!("{json_text}");
        }
        Some(p) => {
            println!("{text}");
            std::fs::write(p, json_text).with_context(|| format!("writing {}", p.display()))?;
            println!("report written to {}", p.display());
        }
        None => println!("{text}"),
    }
    if failures.is_empty() {
        eprintln!("exactly-once: held");
        Ok(())
    } else {
        anyhow::bail!("exactly-once broken: {}", failures.join("; "))
    }
}

async fn note(args: NoteArgs) -> anyhow::Result<()> {
    attach_control::send_notes(&args.attach, &args.notes).await
}

async fn env(args: EnvArgs) -> anyhow::Result<()> {
    print!("{}", attach_control::fetch_env(&args.attach).await?);
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    if let Some(control) = args.control {
        let mut cfg = ServiceConfig::new(
            args.instances,
            args.bind
                .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0))),
            args.redis_url.clone().unwrap_or_default(),
        );
        cfg.advertise = args.advertise.clone();
        cfg.instance_url = args.instance_url.clone();
        cfg.cluster_name = args.cluster_name.clone();
        return attach_control::serve(cfg, control, args.env_out.clone(), interrupted()).await;
    }
    let redis = tokio::task::spawn_blocking(keyshard_testkit::RedisServer::try_start)
        .await?
        .context("starting a private redis-server")?;
    let bind = args
        .bind
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let providers_bind = SocketAddr::new(
        bind.ip(),
        bind.port()
            .checked_add(1)
            .filter(|_| bind.port() != 0)
            .unwrap_or(0),
    );
    let advertise = args.advertise.as_deref();
    let discord = FakeDiscord::start_on(DiscordConfig::default(), bind, advertise).await?;
    let providers =
        ScenarioProviders::start_on(FakeProvidersConfig::default(), providers_bind, advertise)
            .await?;
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
            // `serve` waits for Ctrl-C (or SIGTERM) itself and ends normally on it.
            Command::Serve(a) => return serve(a).await,
            Command::Note(a) => return note(a).await,
            Command::Env(a) => return env(a).await,
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

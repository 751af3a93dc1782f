//! The `keyshard-sim` binary: `run` a scenario, `serve` only the fakes, or run the `demo`.
//! `serve --control` is the compose service of a rehearsal; `run --attach`, `note` and `env`
//! are its clients (see `keyshard_sim::attach`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use keyshard_sim::attach::control as attach_control;
use keyshard_sim::attach::drive::{Event, RunRequest};
use keyshard_sim::attach::ServiceConfig;
use keyshard_sim::discord::{DiscordConfig, FakeDiscord, GatewayRules};
use keyshard_sim::providers::{FakeLimits, FakeProvidersConfig};
use keyshard_sim::report::Report;
use keyshard_sim::scenario::{
    run_scenario, Chaos, ChaosAction, CommandKind, Mix, ProviderFakes, ScenarioConfig,
};
use keyshard_sim::wiring::ScenarioProviders;

mod args;

use args::*;

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
    cfg.env.extend(common.max_wait.iter().cloned());
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
    cfg.noisy_user = args.noisy_user;
    cfg.seed = args.seed;
    cfg.count = args.count;
    cfg.guilds = args.guilds;
    cfg.plot = args.plot.clone();
    cfg.memory_every =
        (args.memory_every > 0.0).then(|| Duration::from_secs_f64(args.memory_every));
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
    .chain(args.redis_restart_with_data.into_iter().map(|at| Chaos {
        at,
        action: ChaosAction::RedisRestartWithData,
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
        && args.redis_restart_with_data.is_empty()
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

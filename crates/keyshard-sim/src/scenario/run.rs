//! The phases of one scenario run, in order: [`Run::start`] → [`Run::drive`] → [`Run::drain`]
//! → [`Run::collect`]. Each is a method on [`Run`], which holds what the phases share.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::chaos::{run_chaos, ChaosAction};
use super::load::{build_spec, make_users, CommandKind, UserPicker};
use super::memory;
use super::observe::{self, HeartbeatReader, Samples};
use super::plot_input::plot_data;
use super::ScenarioConfig;
use crate::cluster::{InstanceEnv, ProcessCluster, ProcessConfig};
use crate::discord::{FakeDiscord, InteractionRecord, RegisteredCommand};
use crate::judge::{down_intervals, Observations, OverloadRule};
use crate::report::{steady_window, MemorySample, Report, ReportInput};

/// Private Redis or the given URL.
enum RedisHandle {
    Private(Arc<Mutex<keyshard_testkit::RedisServer>>),
    External(String),
}

impl RedisHandle {
    async fn start(url: Option<&String>) -> anyhow::Result<Self> {
        Ok(match url {
            Some(url) => RedisHandle::External(url.clone()),
            None => {
                let server = tokio::task::spawn_blocking(keyshard_testkit::RedisServer::try_start)
                    .await?
                    .context(
                        "starting a private redis-server (install redis-server, or set REDIS_URL)",
                    )?;
                RedisHandle::Private(Arc::new(Mutex::new(server)))
            }
        })
    }

    fn url(&self) -> String {
        match self {
            RedisHandle::Private(s) => s.lock().unwrap_or_else(|e| e.into_inner()).url(),
            RedisHandle::External(u) => u.clone(),
        }
    }

    /// The server chaos may restart: only a private one.
    fn private(&self) -> Option<Arc<Mutex<keyshard_testkit::RedisServer>>> {
        match self {
            RedisHandle::Private(s) => Some(s.clone()),
            RedisHandle::External(_) => None,
        }
    }
}

/// The usage ledger's Postgres: a private server (chaos may stop it) or the given URL.
enum PostgresHandle {
    Private {
        server: Arc<Mutex<keyshard_testkit::PostgresServer>>,
        url: String,
    },
    External(String),
}

impl PostgresHandle {
    /// `None` with the ledger off.
    async fn start(cfg: &ScenarioConfig) -> anyhow::Result<Option<Self>> {
        if !cfg.ledger {
            return Ok(None);
        }
        if let Some(url) = &cfg.database_url {
            return Ok(Some(PostgresHandle::External(url.clone())));
        }
        let (server, url) = tokio::task::spawn_blocking(|| {
            let server = keyshard_testkit::PostgresServer::try_start()?;
            let url = server.create_database("ledger")?;
            Ok::<_, std::io::Error>((server, url))
        })
        .await?
        .context("starting a private Postgres for the usage ledger (install postgresql, or run with --no-ledger)")?;
        Ok(Some(PostgresHandle::Private {
            server: Arc::new(Mutex::new(server)),
            url,
        }))
    }

    fn url(&self) -> &str {
        match self {
            PostgresHandle::Private { url, .. } | PostgresHandle::External(url) => url,
        }
    }

    /// The server chaos may stop: only a private one.
    fn private(&self) -> Option<Arc<Mutex<keyshard_testkit::PostgresServer>>> {
        match self {
            PostgresHandle::Private { server, .. } => Some(server.clone()),
            PostgresHandle::External(_) => None,
        }
    }
}

/// How often the ledger is read while waiting for it to settle: each read is one `psql`
/// process and a scan of the run's rows; four a second shows the buffer's 250 ms batches.
const LEDGER_POLL: Duration = Duration::from_millis(250);

/// When the load ran.
pub(super) struct Load {
    /// The first dispatch: the time origin of the report.
    start: Instant,
    last_sent: Instant,
    /// The noisy user's id, with `--noisy-user`.
    noisy_user: Option<u64>,
}

/// What the phases share.
pub(super) struct Run {
    /// The run's configuration, its mix narrowed to the commands the instances registered.
    cfg: ScenarioConfig,
    redis: RedisHandle,
    redis_url: String,
    postgres: Option<PostgresHandle>,
    cluster_name: String,
    discord: FakeDiscord,
    /// Shared with the chaos task while the load runs.
    cluster: Arc<tokio::sync::Mutex<ProcessCluster>>,
    registered: HashMap<String, RegisteredCommand>,
    run_dir: PathBuf,
    samples: Samples,
    /// Seconds from the first instance's start until every instance was ready.
    ready_s: f64,
    /// Stops the sampler and the progress line.
    stop: CancellationToken,
    watchers: Vec<JoinHandle<()>>,
    /// The memory sampler ([`memory`]), awaited for its samples in `collect`.
    memory: Option<JoinHandle<Vec<MemorySample>>>,
}

impl Run {
    /// Phase 1: Redis, the fake Discord and the instances, until every instance is ready, its
    /// heartbeat is in Redis and its own view sees all the others.
    pub(super) async fn start(mut cfg: ScenarioConfig) -> anyhow::Result<Run> {
        validate(&cfg)?;
        let redis = RedisHandle::start(cfg.redis_url.as_ref()).await?;
        let redis_url = redis.url();
        let postgres = PostgresHandle::start(&cfg).await?;
        let discord = FakeDiscord::start(cfg.discord.clone()).await?;
        let run_dir = cfg.run_dir.clone().unwrap_or_else(|| {
            std::env::temp_dir().join(format!(
                "keyshard-sim-{}-{}",
                std::process::id(),
                crate::discord::unix_ms()
            ))
        });
        let mut pcfg = process_config(&cfg, redis_url.clone(), run_dir.clone());
        pcfg.database_url = postgres.as_ref().map(|p| p.url().to_owned());
        let cluster_name = pcfg.cluster_name.clone();
        tracing::info!(instances = cfg.instances, run_dir = %run_dir.display(), "starting instances");
        let mut cluster = ProcessCluster::start(pcfg, &discord).await?;
        let ready_s = ready_seconds(&cluster.events());
        let sessions = (cfg.instances * cfg.shards_per_instance()) as usize;
        discord
            .wait_sessions(sessions, Duration::from_secs(10))
            .await?;
        let registered = narrow_mix(&mut cfg, &discord)?;
        let mut reader = HeartbeatReader::new(&redis_url, &cluster_name, cfg.instances)?;
        observe::wait_all_alive(&mut reader, cfg.instances).await?;
        // 10 s, as for the heartbeats: a view refreshes every quarter heartbeat.
        cluster
            .wait_converged(cfg.instances as usize, Duration::from_secs(10))
            .await?;
        Ok(Run {
            cfg,
            redis,
            redis_url,
            postgres,
            cluster_name,
            discord,
            cluster: Arc::new(tokio::sync::Mutex::new(cluster)),
            registered,
            run_dir,
            samples: Samples::default(),
            ready_s,
            stop: CancellationToken::new(),
            watchers: Vec::new(),
            memory: None,
        })
    }

    /// Where the memory sampler reads: every instance's HTTP address (fixed per id across
    /// restarts), Redis, and the cluster's key prefix.
    async fn memory_probe(&self) -> memory::MemoryProbe {
        let cluster = self.cluster.lock().await;
        memory::MemoryProbe {
            instances: (1..=self.cfg.instances)
                .filter_map(|id| Some((id, cluster.http_addr(id)?)))
                .collect(),
            redis_url: self.redis_url.clone(),
            cluster_name: self.cluster_name.clone(),
        }
    }

    /// Phase 2: the open-loop load (Poisson arrivals at `rate`, each at its scheduled time
    /// whatever the answers do) with the chaos actions at their times, while the heartbeats
    /// are sampled and a progress line is logged.
    pub(super) async fn drive(&mut self) -> anyhow::Result<Load> {
        let cfg = &self.cfg;
        let reader = HeartbeatReader::new(&self.redis_url, &self.cluster_name, cfg.instances)?;
        self.watchers.push(tokio::spawn(observe::sample_heartbeats(
            reader,
            cfg.sample_period,
            self.samples.clone(),
            self.stop.clone(),
        )));
        let mut rng = SmallRng::seed_from_u64(cfg.seed);
        let users = make_users(&mut rng, cfg.users);
        // With `--noisy-user SHARE`, the first user sends that share of the load and the
        // others are picked as usual among the rest.
        let noisy = cfg
            .noisy_user
            .map(|share| (users[0], share.clamp(0.0, 1.0)));
        let others = if noisy.is_some() && users.len() > 1 {
            &users[1..]
        } else {
            &users[..]
        };
        let picker = UserPicker::new(others.len(), cfg.skew);
        let start = Instant::now();
        if let Some(every) = cfg.memory_every {
            let probe = self.memory_probe().await;
            self.memory = Some(tokio::spawn(memory::sample(
                probe,
                start,
                every,
                self.stop.clone(),
            )));
        }
        if let Some(every) = cfg.progress_every {
            self.watchers.push(tokio::spawn(observe::report_progress(
                self.discord.clone(),
                self.samples.clone(),
                start,
                every,
                self.stop.clone(),
            )));
        }
        tracing::info!(
            "load: {}/s for {:.0} s, mix {}",
            cfg.rate,
            cfg.duration.as_secs_f64(),
            cfg.mix
        );
        let chaos = tokio::spawn(run_chaos(
            cfg.chaos.clone(),
            start,
            self.cluster.clone(),
            self.discord.clone(),
            self.redis.private(),
            self.postgres.as_ref().and_then(PostgresHandle::private),
            cfg.providers.clone(),
        ));
        let end = start + cfg.duration;
        let mut next = start;
        let mut last_sent = start;
        let mut sent: u64 = 0;
        while match cfg.count {
            Some(n) => sent < n,
            None => next < end,
        } {
            sent += 1;
            tokio::time::sleep_until(next.into()).await;
            let user = match noisy {
                Some((id, share)) if rng.random_bool(share) => id,
                _ => others[picker.pick(&mut rng)],
            };
            let kind = cfg.mix.pick(&mut rng);
            let dm = rng.random_bool(cfg.dm_share.clamp(0.0, 1.0));
            let registered = self.registered.get(kind.name());
            let mut spec = build_spec(kind, registered, user, dm, &users, &mut rng);
            if spec.guild_id.is_some() && cfg.guilds > 1 {
                spec.guild_id = Some(crate::discord::sim_guild(
                    (user % u64::from(cfg.guilds)) as u32,
                ));
            }
            last_sent = self.discord.send_interaction(spec).sent_at;
            let u: f64 = rng.random::<f64>();
            next += match cfg.count {
                Some(n) => cfg.duration / n.clamp(1, u64::from(u32::MAX)) as u32,
                None => Duration::from_secs_f64(-(1.0 - u).ln() / cfg.rate),
            };
        }
        if let Err(e) = chaos.await? {
            tracing::warn!(error = %e, "a chaos action failed");
        }
        Ok(Load {
            start,
            last_sent,
            noisy_user: noisy.map(|(id, _)| id),
        })
    }

    /// Phase 3: waits for the answers, up to the drain deadline. Returns whether every
    /// acknowledged interaction got its final answer.
    pub(super) async fn drain(&self, load: &Load) -> bool {
        let cfg = &self.cfg;
        let discord = &self.discord;
        // Anything not acknowledged once the last ack window has closed is lost for good;
        // after that, only answers to acknowledged interactions are awaited. The 50 ms cover
        // a callback in flight as the window closes.
        let windows_closed = load.last_sent + cfg.discord.ack_window + Duration::from_millis(50);
        tokio::time::sleep_until(windows_closed.into()).await;
        tracing::info!("load done; waiting for the last answers");
        discord.drain(0, cfg.drain_deadline, cfg.settle).await
    }

    /// Phase 4: stops the watchers and the instances, then judges and counts everything.
    /// Long because it is the run's ordered teardown (watchers, then instances, then the
    /// ledger read-back, then the judge), each step needing the previous one's output.
    pub(super) async fn collect(
        self,
        load: &Load,
        drained: bool,
    ) -> anyhow::Result<(Report, Vec<InteractionRecord>)> {
        let finished = Instant::now();
        self.stop.cancel();
        for w in self.watchers {
            w.await.ok();
        }
        let memory = match (self.memory, self.cfg.memory_every) {
            (Some(task), Some(every)) => {
                Some(memory::summarize(every, task.await.unwrap_or_default()))
            }
            _ => None,
        };
        let mut cluster = Arc::try_unwrap(self.cluster)
            .map_err(|_| anyhow::anyhow!("the cluster is still shared after the run"))?
            .into_inner();
        // The instances' writers still run: a killed instance's stream is taken over, rows
        // held back by a Postgres outage are written.
        let settle_ms = match &self.postgres {
            Some(pg) => Some(wait_ledger(pg.url(), &self.discord, self.cfg.ledger_settle).await),
            None => None,
        };
        let scraped = super::scrape::scrape(&mut cluster, self.cfg.instances).await;
        let events = cluster.events();
        cluster.shutdown().await;
        drop(cluster);

        let cfg = &self.cfg;
        let discord = &self.discord;
        let records = discord.records();
        let ledger = match (&self.postgres, settle_ms) {
            (Some(pg), Some(settle_ms)) => {
                let url = pg.url().to_owned();
                let reading = tokio::task::spawn_blocking(move || crate::ledger::read(&url))
                    .await?
                    .context("reading the usage ledger back")?;
                let mut l = crate::ledger::judge(&records, &reading);
                l.settle_ms = settle_ms;
                Some(l)
            }
            _ => None,
        };
        let down = down_intervals(&events);
        let samples = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let providers = cfg.providers.as_ref();
        let report = Report::compute(&ReportInput {
            scenario: cfg.summary(),
            instances: cfg.instances,
            records: &records,
            ack_window: cfg.discord.ack_window,
            observed: Observations {
                down: &down,
                samples: &samples,
                // A decision rests on a view up to a heartbeat old, of heartbeats written up to
                // a heartbeat earlier, read by the sampler up to a period later.
                lag: Duration::from_millis(cfg.heartbeat_ms * 2) + cfg.sample_period,
                period: cfg.sample_period,
                overload: OverloadRule {
                    max_wait: cfg.overload_wait(),
                },
            },
            start: load.start,
            end: finished,
            capacity_per_min: providers.and_then(|p| p.capacity_per_min(&cfg.mix, cfg.instances)),
            provider_429: providers.map_or(0, |p| p.provider_429()),
            lanes: providers.map_or_else(Vec::new, |p| {
                let (from, to) = steady_window(load.start, cfg.duration);
                p.lane_use(&cfg.mix, cfg.instances, from, to)
            }),
            gateway: (1..=cfg.instances)
                .map(|i| (i, discord.gateway_stats(i)))
                .collect(),
            ready_s: self.ready_s,
            command_puts: discord.command_puts_total(),
            session_starts_left: discord.session_start_limit().remaining,
            token_reset: discord.token_reset(),
            unattributed_messages: discord.unattributed_messages().len() as u64,
            unknown_routes: discord.unknown_routes().len() as u64,
            drain_timed_out: !drained,
            ledger,
            noisy_user: load.noisy_user,
        });
        let mut report = report;
        let limits = crate::quota::QuotaLimits::from_env(&cfg.env);
        if !limits.is_empty() {
            report.quota = Some(crate::quota::judge(&records, &limits));
        }
        if cfg.mix.0.iter().any(|(c, _)| {
            matches!(
                c,
                CommandKind::Chat | CommandKind::Image | CommandKind::Video
            )
        }) {
            report.waiting = Some(crate::waiting::judge_waiting(&records));
            let max_waits = crate::waiting::max_waits(&cfg.env);
            report.overload = Some(crate::waiting::judge_overload(&records, &max_waits));
        }
        if let Some(path) = &cfg.plot {
            let svg = plot_data(cfg, &records, &samples, &events, load.start, finished);
            std::fs::write(path, crate::report::plot::svg(&svg))
                .with_context(|| format!("writing the plot to {}", path.display()))?;
            tracing::info!(path = %path.display(), "plot written");
        }
        report.instance_metrics = Some(scraped);
        report.memory = memory;
        report.revoked_keys =
            providers.map_or_else(Vec::new, |p| p.revocations(cfg.instances, load.start));
        tracing::info!(run_dir = %self.run_dir.display(), "scenario finished");
        Ok((report, records))
    }
}

/// Waits until the ledger has a row for every interaction answered so far, up to `deadline`;
/// returns how long that took (in ms; the deadline if it never did). A failed read (Postgres
/// still coming back) counts as not yet.
async fn wait_ledger(url: &str, discord: &FakeDiscord, deadline: Duration) -> f64 {
    let started = Instant::now();
    let mut last_missing = None;
    loop {
        let records = discord.records();
        let url = url.to_owned();
        let read = tokio::task::spawn_blocking(move || crate::ledger::read(&url)).await;
        match read {
            Ok(Ok(reading)) => {
                let missing = crate::ledger::missing(&records, &reading);
                if missing == 0 {
                    return started.elapsed().as_secs_f64() * 1000.0;
                }
                last_missing = Some(missing);
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "ledger read failed; retrying"),
            Err(e) => tracing::debug!(error = %e, "ledger read task failed; retrying"),
        }
        if started.elapsed() >= deadline {
            tracing::warn!(
                missing = ?last_missing,
                "the ledger did not catch up with the answers within {deadline:?}"
            );
            return started.elapsed().as_secs_f64() * 1000.0;
        }
        tokio::time::sleep(LEDGER_POLL).await;
    }
}

fn validate(cfg: &ScenarioConfig) -> anyhow::Result<()> {
    if cfg.instances == 0 || cfg.users == 0 {
        bail!("a scenario needs at least one instance and one user");
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        bail!("the rate must be a positive number of interactions per second");
    }
    for c in &cfg.chaos {
        if let Some(i) = c.instance() {
            if i == 0 || i > cfg.instances {
                bail!("chaos {c} names an instance outside 1..={}", cfg.instances);
            }
        }
        if matches!(c.action, ChaosAction::PostgresRestart { .. })
            && (!cfg.ledger || cfg.database_url.is_some())
        {
            bail!("chaos {c} needs the ledger on with the private Postgres");
        }
    }
    Ok(())
}

/// Seconds from the first start to the last readiness among process events.
fn ready_seconds(events: &[crate::cluster::ProcessEvent]) -> f64 {
    use crate::cluster::ProcessEventKind;
    let first = events
        .iter()
        .filter(|e| e.kind == ProcessEventKind::Started)
        .map(|e| e.at)
        .min();
    let last = events
        .iter()
        .filter(|e| e.kind == ProcessEventKind::Ready)
        .map(|e| e.at)
        .max();
    match (first, last) {
        (Some(f), Some(l)) => l.saturating_duration_since(f).as_secs_f64(),
        _ => 0.0,
    }
}

/// How the instances are started for this run.
fn process_config(cfg: &ScenarioConfig, redis_url: String, run_dir: PathBuf) -> ProcessConfig {
    let mut pcfg = ProcessConfig::new(cfg.keyshard_bin.clone(), cfg.instances, redis_url, run_dir);
    pcfg.rust_log = cfg.rust_log.clone();
    pcfg.heartbeat_ms = cfg.heartbeat_ms;
    pcfg.dead_after_ms = cfg.dead_after_ms;
    // Always passed, so the instances and the judge use the same threshold.
    pcfg.overload_wait_secs = Some(cfg.overload_wait().as_secs_f64());
    pcfg.env = cfg.env.clone();
    if let Some(n) = cfg.shards {
        pcfg.env.insert(0, ("SHARD_COUNT".into(), n.to_string()));
    }
    // Every session of the cluster IDENTIFYs one window after another in the worst case
    // (one bucket), so the last instance may be ready that long after the first.
    let sessions = cfg.instances * cfg.shards_per_instance();
    pcfg.ready_deadline += cfg.discord.gateway.identify_window * sessions;
    if let Some(p) = &cfg.providers {
        let p = p.clone();
        let hook: InstanceEnv = Arc::new(move |i| p.instance_env(i));
        pcfg.instance_env = Some(hook);
    }
    pcfg
}

/// The commands the instances registered, by name; the mix loses those they did not register
/// when the run allows it (the demo runs whatever commands the bot has), or the run fails.
fn narrow_mix(
    cfg: &mut ScenarioConfig,
    discord: &FakeDiscord,
) -> anyhow::Result<HashMap<String, RegisteredCommand>> {
    let registered: HashMap<String, RegisteredCommand> = discord
        .commands()
        .into_iter()
        .filter(|c| c.guild_id.is_none())
        .map(|c| (c.name.clone(), c))
        .collect();
    let missing: Vec<&str> = cfg
        .mix
        .kinds()
        .map(CommandKind::name)
        .filter(|n| !registered.contains_key(*n))
        .collect();
    if missing.is_empty() {
        return Ok(registered);
    }
    let names = registered.keys().cloned().collect::<Vec<_>>().join(", ");
    if !cfg.skip_unregistered {
        bail!(
            "the mix names commands the instances did not register: {} (registered: {names})",
            missing.join(", ")
        );
    }
    tracing::info!(skipped = %missing.join(", "), registered = %names, "commands not registered; left out of the mix");
    cfg.mix.0.retain(|(k, _)| registered.contains_key(k.name()));
    if cfg.mix.0.is_empty() {
        bail!("none of the mix's commands is registered (registered: {names})");
    }
    Ok(registered)
}

//! The load scenario: seeded users and commands, open-loop arrivals at a fixed rate, chaos at
//! fixed times (SIGKILL, SIGTERM, restart, dropped gateway session, Redis restart), a bounded
//! wait for the answers, and the [`Report`].
//!
//! [`run_scenario`] is the one call the CLI and the end-to-end tests make. Everything random
//! (users, commands, prompts, inter-arrival gaps) comes from one RNG seeded with
//! [`ScenarioConfig::seed`], so a run is repeatable up to the timing of real processes.
//!
//! Commands are filled in from what the instances registered: every required option gets a
//! value of its type (a prompt for a string, the first choice when there are choices), so the
//! driver follows the bot's command definitions instead of hard-coding their options.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use keyshard_routing::{snowflake_at, Membership, OverloadPolicy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::cluster::{InstanceEnv, ProcessCluster, ProcessConfig};
use crate::discord::{DiscordConfig, FakeDiscord, InteractionSpec, RegisteredCommand};
use crate::report::{down_intervals, steady_window, Report, ReportInput, ScenarioSummary};

/// A command the driver can send, by its mix key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CommandKind {
    Ping,
    Chat,
    Image,
    Video,
    Balancer,
    Assign,
    Perf,
}

impl CommandKind {
    pub const ALL: [CommandKind; 7] = [
        CommandKind::Ping,
        CommandKind::Chat,
        CommandKind::Image,
        CommandKind::Video,
        CommandKind::Balancer,
        CommandKind::Assign,
        CommandKind::Perf,
    ];

    /// The registered (Korean) command name.
    pub fn name(self) -> &'static str {
        match self {
            CommandKind::Ping => "핑",
            CommandKind::Chat => "채팅",
            CommandKind::Image => "이미지",
            CommandKind::Video => "비디오",
            CommandKind::Balancer => "로드밸런서",
            CommandKind::Assign => "할당",
            CommandKind::Perf => "성능",
        }
    }

    /// Whether only admins may call it.
    pub fn is_admin(self) -> bool {
        matches!(
            self,
            CommandKind::Balancer | CommandKind::Assign | CommandKind::Perf
        )
    }

    /// The key used in `--mix`.
    pub fn key(self) -> &'static str {
        match self {
            CommandKind::Ping => "ping",
            CommandKind::Chat => "chat",
            CommandKind::Image => "image",
            CommandKind::Video => "video",
            CommandKind::Balancer => "balancer",
            CommandKind::Assign => "assign",
            CommandKind::Perf => "perf",
        }
    }
}

impl FromStr for CommandKind {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        CommandKind::ALL
            .into_iter()
            .find(|k| k.key() == s || k.name() == s)
            .with_context(|| {
                format!("unknown command {s:?} (ping, chat, image, video, balancer, assign, perf)")
            })
    }
}

/// Weighted command mix: `ping=1,chat=2`.
#[derive(Clone, Debug, PartialEq)]
pub struct Mix(pub Vec<(CommandKind, f64)>);

impl Mix {
    /// Picks a command by weight.
    pub fn pick(&self, rng: &mut impl Rng) -> CommandKind {
        let total: f64 = self.0.iter().map(|(_, w)| w).sum();
        let mut x = rng.random::<f64>() * total;
        for (k, w) in &self.0 {
            if x < *w {
                return *k;
            }
            x -= w;
        }
        self.0.last().map_or(CommandKind::Ping, |(k, _)| *k)
    }

    pub fn kinds(&self) -> impl Iterator<Item = CommandKind> + '_ {
        self.0.iter().map(|(k, _)| *k)
    }
}

impl FromStr for Mix {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, w) = part.split_once('=').unwrap_or((part, "1"));
            let w: f64 = w
                .parse()
                .with_context(|| format!("mix weight {w:?} is not a number"))?;
            if !(w.is_finite() && w >= 0.0) {
                bail!("mix weight {w} must be a non-negative number");
            }
            if w > 0.0 {
                out.push((k.parse()?, w));
            }
        }
        if out.is_empty() {
            bail!("the mix {s:?} has no command with a positive weight");
        }
        Ok(Mix(out))
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .0
            .iter()
            .map(|(k, w)| format!("{}={w}", k.key()))
            .collect();
        f.write_str(&parts.join(","))
    }
}

/// How users are picked.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Skew {
    Uniform,
    /// Zipf with exponent `s` over the users (user 1 the busiest).
    Zipf(f64),
}

impl FromStr for Skew {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> anyhow::Result<Self> {
        if s == "uniform" || s == "none" {
            return Ok(Skew::Uniform);
        }
        let exp = s
            .strip_prefix("zipf:")
            .with_context(|| format!("skew {s:?}: expected zipf:S or uniform"))?;
        let exp: f64 = exp
            .parse()
            .with_context(|| format!("zipf exponent {exp:?}"))?;
        if !(exp.is_finite() && exp > 0.0) {
            bail!("zipf exponent must be positive");
        }
        Ok(Skew::Zipf(exp))
    }
}

impl fmt::Display for Skew {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Skew::Uniform => f.write_str("uniform"),
            Skew::Zipf(s) => write!(f, "zipf:{s}"),
        }
    }
}

/// Something the simulator does to the cluster at a given time into the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ChaosAction {
    /// SIGKILL the instance (a crash).
    Kill(u32),
    /// SIGTERM and wait (a graceful stop).
    Terminate(u32),
    /// Start a stopped instance again (killing it first if it runs).
    Restart(u32),
    /// Close the instance's gateway websocket (it should resume).
    DropSession(u32),
    /// SIGKILL the private Redis and start it again, empty (only with the private Redis).
    RedisRestart,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chaos {
    pub at: Duration,
    pub action: ChaosAction,
}

impl Chaos {
    /// Parses `INSTANCE@SECS` for an instance action.
    pub fn parse_instance(s: &str, make: fn(u32) -> ChaosAction) -> anyhow::Result<Chaos> {
        let (i, t) = s
            .split_once('@')
            .with_context(|| format!("{s:?}: expected INSTANCE@SECS"))?;
        Ok(Chaos {
            at: parse_secs(t)?,
            action: make(i.parse().with_context(|| format!("instance {i:?}"))?),
        })
    }
}

impl fmt::Display for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at.as_secs_f64();
        match self.action {
            ChaosAction::Kill(i) => write!(f, "kill:{i}@{t}"),
            ChaosAction::Terminate(i) => write!(f, "terminate:{i}@{t}"),
            ChaosAction::Restart(i) => write!(f, "restart:{i}@{t}"),
            ChaosAction::DropSession(i) => write!(f, "drop-session:{i}@{t}"),
            ChaosAction::RedisRestart => write!(f, "redis-restart@{t}"),
        }
    }
}

/// Seconds, possibly fractional.
pub fn parse_secs(s: &str) -> anyhow::Result<Duration> {
    let v: f64 = s
        .parse()
        .with_context(|| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).with_context(|| format!("{s:?} is not a valid duration"))
}

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
    pub chaos: Vec<Chaos>,
    pub seed: u64,
    /// Share of interactions sent from a DM rather than the guild.
    pub dm_share: f64,
    pub keyshard_bin: PathBuf,
    /// Use this Redis instead of starting a private one.
    pub redis_url: Option<String>,
    /// Where instance logs go; a fresh temp dir when `None`.
    pub run_dir: Option<PathBuf>,
    /// How long to wait for outstanding answers after the last arrival.
    pub drain_deadline: Duration,
    /// How long the answers must stay quiet before the drain counts as done (a streamed
    /// answer edits its reply several times).
    pub settle: Duration,
    pub discord: DiscordConfig,
    pub rust_log: String,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub overload_wait_secs: Option<f64>,
    /// Extra env for every instance (e.g. `CLAIM_GRACE_MS`).
    pub env: Vec<(String, String)>,
    pub providers: Option<Arc<dyn ProviderFakes>>,
    /// How often the cluster membership is read from Redis to classify takeovers.
    pub sample_period: Duration,
    /// Drop mix entries the instances did not register instead of failing (the demo runs
    /// whatever commands the bot has).
    pub skip_unregistered: bool,
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
            chaos: Vec::new(),
            seed: 1,
            dm_share: 0.1,
            keyshard_bin: crate::cluster::default_keyshard_bin(),
            redis_url: std::env::var("REDIS_URL").ok().filter(|u| !u.is_empty()),
            run_dir: None,
            drain_deadline: Duration::from_secs(120),
            settle: Duration::from_millis(500),
            discord: DiscordConfig::default(),
            rust_log: "warn".into(),
            heartbeat_ms: 250,
            dead_after_ms: 1_000,
            overload_wait_secs: None,
            env: Vec::new(),
            providers: None,
            sample_period: Duration::from_millis(100),
            skip_unregistered: false,
        }
    }

    pub fn kill(mut self, instance: u32, at: Duration) -> Self {
        self.chaos.push(Chaos {
            at,
            action: ChaosAction::Kill(instance),
        });
        self
    }

    fn summary(&self) -> ScenarioSummary {
        ScenarioSummary {
            instances: self.instances,
            users: self.users,
            rate_per_s: self.rate,
            duration_s: self.duration.as_secs_f64(),
            mix: self.mix.to_string(),
            skew: self.skew.to_string(),
            seed: self.seed,
            chaos: self.chaos.iter().map(Chaos::to_string).collect(),
        }
    }
}

/// `count` distinct, realistic user ids: snowflakes created between 2016 and 2024.
pub fn make_users(rng: &mut impl Rng, count: u32) -> Vec<u64> {
    const FROM_MS: u64 = 1_451_606_400_000; // 2016-01-01
    const TO_MS: u64 = 1_704_067_200_000; // 2024-01-01
    let mut seen = HashSet::new();
    let mut users = Vec::with_capacity(count as usize);
    while users.len() < count as usize {
        let id = snowflake_at(rng.random_range(FROM_MS..TO_MS), rng.random::<u32>());
        if seen.insert(id) {
            users.push(id);
        }
    }
    users
}

/// Picks user indexes uniformly or by Zipf rank.
pub struct UserPicker {
    cdf: Option<Vec<f64>>,
    count: usize,
}

impl UserPicker {
    pub fn new(count: usize, skew: Skew) -> Self {
        let cdf = match skew {
            Skew::Uniform => None,
            Skew::Zipf(s) => {
                let mut acc = 0.0;
                let mut cdf: Vec<f64> = (1..=count)
                    .map(|k| {
                        acc += 1.0 / (k as f64).powf(s);
                        acc
                    })
                    .collect();
                for c in &mut cdf {
                    *c /= acc;
                }
                Some(cdf)
            }
        };
        Self { cdf, count }
    }

    pub fn pick(&self, rng: &mut impl Rng) -> usize {
        match &self.cdf {
            None => rng.random_range(0..self.count),
            Some(cdf) => {
                let x = rng.random::<f64>();
                cdf.partition_point(|c| *c < x).min(self.count - 1)
            }
        }
    }
}

const PROMPTS: &[&str] = &[
    "오늘 서울 날씨에 어울리는 점심 메뉴 추천해줘",
    "Rust에서 async trait를 쓰는 방법을 알려줘",
    "a watercolor fox reading a book under a maple tree",
    "밤하늘 아래 등대, 유화 스타일",
    "Explain consistent hashing in two sentences",
    "고양이가 우주선을 조종하는 짧은 영상",
    "Summarize the plot of Hamlet for a ten-year-old",
    "미니멀한 카페 로고 디자인",
    "waves crashing on a rocky shore at sunset, slow motion",
    "한국어로 하이쿠 한 편 써줘",
];

/// Fills the command's required options from its registration.
pub fn build_spec(
    kind: CommandKind,
    registered: Option<&RegisteredCommand>,
    user: u64,
    dm: bool,
    users: &[u64],
    rng: &mut impl Rng,
) -> InteractionSpec {
    // The admin commands come from the admin the instances are configured with, as in a real
    // server where only admins see them.
    let user = if kind.is_admin() {
        crate::cluster::ADMIN_USER_ID
    } else {
        user
    };
    let dm = dm && !kind.is_admin();
    let mut spec = if dm {
        InteractionSpec::dm(kind.name(), user)
    } else {
        InteractionSpec::guild(kind.name(), user)
    };
    let Some(options) = registered
        .and_then(|c| c.body.get("options"))
        .and_then(Value::as_array)
    else {
        return spec;
    };
    for o in options {
        let required = o.get("required").and_then(Value::as_bool).unwrap_or(false);
        let name = o.get("name").and_then(Value::as_str).unwrap_or_default();
        if !required || name.is_empty() {
            continue;
        }
        let first_choice = o
            .get("choices")
            .and_then(Value::as_array)
            .and_then(|c| c.first())
            .and_then(|c| c.get("value"));
        spec = match o.get("type").and_then(Value::as_u64) {
            Some(3) => {
                let value = match first_choice.and_then(Value::as_str) {
                    Some(v) => v.to_string(),
                    None => {
                        let mut p = PROMPTS[rng.random_range(0..PROMPTS.len())].to_string();
                        let max = o.get("max_length").and_then(Value::as_u64).unwrap_or(6000);
                        if p.chars().count() as u64 > max {
                            p = p.chars().take(max as usize).collect();
                        }
                        p
                    }
                };
                spec.string(name, &value)
            }
            Some(4) | Some(10) => {
                let v = first_choice
                    .and_then(Value::as_i64)
                    .or_else(|| o.get("min_value").and_then(Value::as_i64))
                    .unwrap_or(1);
                spec.integer(name, v)
            }
            Some(5) => spec.bool(name, false),
            Some(6) => spec.user(name, users[rng.random_range(0..users.len())]),
            _ => spec,
        };
    }
    spec
}

/// Private Redis or the given URL.
enum RedisHandle {
    Private(Arc<Mutex<keyshard_testkit::RedisServer>>),
    External(String),
}

impl RedisHandle {
    fn url(&self) -> String {
        match self {
            RedisHandle::Private(s) => s.lock().unwrap_or_else(|e| e.into_inner()).url(),
            RedisHandle::External(u) => u.clone(),
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
    mut cfg: ScenarioConfig,
) -> anyhow::Result<(Report, Vec<crate::discord::InteractionRecord>)> {
    if cfg.instances == 0 || cfg.users == 0 {
        bail!("a scenario needs at least one instance and one user");
    }
    if !(cfg.rate.is_finite() && cfg.rate > 0.0) {
        bail!("the rate must be a positive number of interactions per second");
    }
    for c in &cfg.chaos {
        if let ChaosAction::Kill(i)
        | ChaosAction::Terminate(i)
        | ChaosAction::Restart(i)
        | ChaosAction::DropSession(i) = c.action
        {
            if i == 0 || i > cfg.instances {
                bail!("chaos {c} names an instance outside 1..={}", cfg.instances);
            }
        }
    }
    let redis = match &cfg.redis_url {
        Some(url) => RedisHandle::External(url.clone()),
        None => {
            let server = tokio::task::spawn_blocking(keyshard_testkit::RedisServer::try_start)
                .await?
                .context(
                    "starting a private redis-server (install redis-server, or set REDIS_URL)",
                )?;
            RedisHandle::Private(Arc::new(Mutex::new(server)))
        }
    };
    let redis_url = redis.url();
    let discord = FakeDiscord::start(cfg.discord.clone()).await?;
    let run_dir = match &cfg.run_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!(
            "keyshard-sim-{}-{}",
            std::process::id(),
            crate::discord::unix_ms()
        )),
    };
    let mut pcfg = ProcessConfig::new(
        cfg.keyshard_bin.clone(),
        cfg.instances,
        redis_url.clone(),
        run_dir.clone(),
    );
    pcfg.rust_log = cfg.rust_log.clone();
    pcfg.heartbeat_ms = cfg.heartbeat_ms;
    pcfg.dead_after_ms = cfg.dead_after_ms;
    pcfg.overload_wait_secs = cfg.overload_wait_secs;
    pcfg.env = cfg.env.clone();
    if let Some(p) = &cfg.providers {
        let p = p.clone();
        let hook: InstanceEnv = Arc::new(move |i| p.instance_env(i));
        pcfg.instance_env = Some(hook);
    }
    let cluster_name = pcfg.cluster_name.clone();
    tracing::info!(instances = cfg.instances, run_dir = %run_dir.display(), "starting instances");
    let cluster = ProcessCluster::start(pcfg, &discord).await?;
    discord
        .wait_sessions(cfg.instances as usize, Duration::from_secs(10))
        .await?;

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
    if !missing.is_empty() {
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
    }

    let cluster = Arc::new(tokio::sync::Mutex::new(cluster));
    let stop = CancellationToken::new();
    let overload = OverloadPolicy {
        max_wait: cfg
            .overload_wait_secs
            .map_or(OverloadPolicy::default().max_wait, Duration::from_secs_f64),
        ..OverloadPolicy::default()
    };
    wait_all_alive(&redis_url, &cluster_name, cfg.instances, &overload).await?;
    // Each instance refreshes its own snapshot every quarter heartbeat; that refresh is not
    // observable from outside, so give it one full heartbeat after Redis shows everyone alive.
    // Otherwise the first interactions can meet a peer that has not seen the last starter yet.
    tokio::time::sleep(Duration::from_millis(cfg.heartbeat_ms)).await;
    let samples: Arc<Mutex<Vec<(Instant, Membership)>>> = Arc::default();
    let sampler = tokio::spawn(sample_membership(
        redis_url.clone(),
        cluster_name.clone(),
        cfg.instances,
        overload,
        cfg.sample_period,
        samples.clone(),
        stop.clone(),
    ));

    let mut rng = SmallRng::seed_from_u64(cfg.seed);
    let users = make_users(&mut rng, cfg.users);
    let picker = UserPicker::new(users.len(), cfg.skew);
    let start = Instant::now();
    let chaos = tokio::spawn(run_chaos(
        cfg.chaos.clone(),
        start,
        cluster.clone(),
        discord.clone(),
        match &redis {
            RedisHandle::Private(s) => Some(s.clone()),
            RedisHandle::External(_) => None,
        },
    ));

    // Open loop: Poisson arrivals at `rate`, each at its scheduled time whatever the answers do.
    let end = start + cfg.duration;
    let mut next = start;
    let mut last_sent = start;
    while next < end {
        tokio::time::sleep_until(next.into()).await;
        let user = users[picker.pick(&mut rng)];
        let kind = cfg.mix.pick(&mut rng);
        let dm = rng.random_bool(cfg.dm_share.clamp(0.0, 1.0));
        let spec = build_spec(
            kind,
            registered.get(kind.name()),
            user,
            dm,
            &users,
            &mut rng,
        );
        last_sent = discord.send_interaction(spec).sent_at;
        let u: f64 = rng.random::<f64>();
        next += Duration::from_secs_f64(-(1.0 - u).ln() / cfg.rate);
    }
    if let Err(e) = chaos.await? {
        tracing::warn!(error = %e, "a chaos action failed");
    }

    // Anything not acknowledged once the last ack window has closed is lost for good; after
    // that, only answers to acknowledged interactions are awaited.
    tokio::time::sleep_until(
        (last_sent + cfg.discord.ack_window + Duration::from_millis(50)).into(),
    )
    .await;
    let drain_until = Instant::now() + cfg.drain_deadline;
    // Every ack window has closed, so both "never acked" and "completed" are final: records
    // before the cursor never need looking at again, which keeps each wake-up cheap while
    // thousands of records wait.
    let mut cursor = 0;
    let mut all_answered = move |recs: &[crate::discord::InteractionRecord]| {
        while let Some(r) = recs.get(cursor) {
            if r.ack().is_some() && !r.is_completed() {
                return false;
            }
            cursor += 1;
        }
        true
    };
    let mut drained = discord
        .wait_for(&mut all_answered, cfg.drain_deadline)
        .await;
    // Let streamed answers finish their last edits.
    while drained && Instant::now() < drain_until {
        if !discord.wait_change(cfg.settle).await {
            break;
        }
        drained = discord
            .wait_for(&mut all_answered, drain_until - Instant::now())
            .await;
    }
    let finished = Instant::now();
    stop.cancel();
    sampler.await.ok();

    let mut cluster = Arc::try_unwrap(cluster)
        .map_err(|_| anyhow::anyhow!("the cluster is still shared after the run"))?
        .into_inner();
    let events = cluster.events();
    cluster.shutdown().await;
    drop(cluster);

    let records = discord.records();
    let down = down_intervals(&events);
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let gateway = (1..=cfg.instances)
        .map(|i| (i, discord.gateway_stats(i)))
        .collect();
    let report = Report::compute(&ReportInput {
        scenario: cfg.summary(),
        instances: cfg.instances,
        records: &records,
        ack_window: cfg.discord.ack_window,
        down: &down,
        samples: &samples,
        sample_lag: Duration::from_millis(cfg.heartbeat_ms * 2) + cfg.sample_period,
        sample_period: cfg.sample_period,
        overload,
        start,
        end: finished,
        capacity_per_min: cfg
            .providers
            .as_ref()
            .and_then(|p| p.capacity_per_min(&cfg.mix, cfg.instances)),
        provider_429: cfg.providers.as_ref().map_or(0, |p| p.provider_429()),
        lanes: cfg.providers.as_ref().map_or_else(Vec::new, |p| {
            let (from, to) = steady_window(start, cfg.duration);
            p.lane_use(&cfg.mix, cfg.instances, from, to)
        }),
        gateway,
        unattributed_messages: discord.unattributed_messages().len() as u64,
        unknown_routes: discord.unknown_routes().len() as u64,
        drain_timed_out: !drained,
    });
    tracing::info!(run_dir = %run_dir.display(), "scenario finished");
    Ok((report, records))
}

/// Performs the chaos actions at their times.
async fn run_chaos(
    mut chaos: Vec<Chaos>,
    start: Instant,
    cluster: Arc<tokio::sync::Mutex<ProcessCluster>>,
    discord: FakeDiscord,
    redis: Option<Arc<Mutex<keyshard_testkit::RedisServer>>>,
) -> anyhow::Result<()> {
    chaos.sort_by_key(|c| c.at);
    for c in chaos {
        tokio::time::sleep_until((start + c.at).into()).await;
        tracing::info!(chaos = %c, "chaos");
        match c.action {
            ChaosAction::Kill(i) => cluster.lock().await.kill(i).await?,
            ChaosAction::Terminate(i) => {
                cluster
                    .lock()
                    .await
                    .terminate(i, Duration::from_secs(30))
                    .await?;
            }
            ChaosAction::Restart(i) => cluster.lock().await.restart(i).await?,
            ChaosAction::DropSession(i) => discord.drop_session(i),
            ChaosAction::RedisRestart => {
                let Some(redis) = redis.clone() else {
                    bail!("redis-restart needs the private redis-server (unset REDIS_URL)");
                };
                tokio::task::spawn_blocking(move || {
                    redis.lock().unwrap_or_else(|e| e.into_inner()).restart();
                })
                .await?;
            }
        }
    }
    Ok(())
}

/// Polls the membership until every instance's heartbeat is in Redis.
async fn wait_all_alive(
    redis_url: &str,
    cluster_name: &str,
    instances: u32,
    policy: &OverloadPolicy,
) -> anyhow::Result<()> {
    // Instances write their first heartbeat before they report ready, so this is normally
    // immediate; 10 s covers a loaded CI box.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m =
            keyshard_cluster::fetch_membership(redis_url, cluster_name, instances, policy).await;
        if let Ok(m) = &m {
            if m.alive_count() == instances as usize {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("not every instance has a heartbeat in Redis after 10 s: {m:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Reads the membership from Redis every `period` until stopped; a failed read is skipped
/// (the report then falls back on the simulator's own kill times).
async fn sample_membership(
    redis_url: String,
    cluster_name: String,
    instances: u32,
    policy: OverloadPolicy,
    period: Duration,
    out: Arc<Mutex<Vec<(Instant, Membership)>>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let read =
            keyshard_cluster::fetch_membership(&redis_url, &cluster_name, instances, &policy);
        if let Ok(m) = read.await {
            out.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((Instant::now(), m));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mix_skew_and_chaos() {
        let mix: Mix = "ping=1,chat=2,video=0".parse().unwrap();
        assert_eq!(
            mix.0,
            vec![(CommandKind::Ping, 1.0), (CommandKind::Chat, 2.0)]
        );
        assert_eq!(mix.to_string(), "ping=1,chat=2");
        assert!("ping=x".parse::<Mix>().is_err());
        assert!("nope=1".parse::<Mix>().is_err());
        assert_eq!("zipf:1.1".parse::<Skew>().unwrap(), Skew::Zipf(1.1));
        assert!("zipf:-1".parse::<Skew>().is_err());
        let k = Chaos::parse_instance("3@10.5", ChaosAction::Kill).unwrap();
        assert_eq!(
            (k.action, k.at),
            (ChaosAction::Kill(3), Duration::from_millis(10_500))
        );
        assert!(Chaos::parse_instance("3", ChaosAction::Kill).is_err());
    }

    #[test]
    fn users_are_distinct_seeded_snowflakes() {
        let a = make_users(&mut SmallRng::seed_from_u64(7), 500);
        let b = make_users(&mut SmallRng::seed_from_u64(7), 500);
        assert_eq!(a, b);
        assert_eq!(a.iter().collect::<HashSet<_>>().len(), 500);
        assert!(a.iter().all(|u| *u > 100_000_000_000_000_000));
        // Every instance of 4 is somebody's primary.
        let primaries: HashSet<u32> = a.iter().map(|u| keyshard_routing::primary(*u, 4)).collect();
        assert_eq!(primaries.len(), 4);
    }

    #[test]
    fn zipf_favours_the_first_users_and_uniform_does_not() {
        let mut rng = SmallRng::seed_from_u64(3);
        let zipf = UserPicker::new(100, Skew::Zipf(1.1));
        let first = (0..10_000).filter(|_| zipf.pick(&mut rng) == 0).count();
        // P(rank 1) = 1 / H(100, 1.1) ≈ 0.23.
        assert!((1_800..2_800).contains(&first), "{first}");
        let uniform = UserPicker::new(100, Skew::Uniform);
        let first = (0..10_000).filter(|_| uniform.pick(&mut rng) == 0).count();
        assert!(first < 200, "{first}");
    }

    #[test]
    fn required_options_are_filled_from_the_registration() {
        let reg = RegisteredCommand {
            id: 1,
            name: "이미지".into(),
            guild_id: None,
            instance: 1,
            body: serde_json::json!({"name": "이미지", "options": [
                {"type": 3, "name": "프롬프트", "required": true, "max_length": 5},
                {"type": 3, "name": "모델", "required": true,
                 "choices": [{"name": "MiniMax", "value": "minimax"}]},
                {"type": 5, "name": "비공개", "required": false},
                {"type": 6, "name": "대상", "required": true},
            ]}),
        };
        let mut rng = SmallRng::seed_from_u64(1);
        let spec = build_spec(
            CommandKind::Image,
            Some(&reg),
            10,
            false,
            &[20, 30],
            &mut rng,
        );
        assert_eq!(spec.options.len(), 3);
        match &spec.options[0] {
            crate::discord::OptionValue::String(n, v) => {
                assert_eq!(n, "프롬프트");
                assert!(v.chars().count() <= 5);
            }
            o => panic!("{o:?}"),
        }
        assert_eq!(
            spec.options[1],
            crate::discord::OptionValue::String("모델".into(), "minimax".into())
        );
        assert!(matches!(
            spec.options[2],
            crate::discord::OptionValue::User(_, 20 | 30)
        ));
    }
}

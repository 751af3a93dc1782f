//! The one typed `Config` of a keyshard instance: read once at start from the environment (and
//! `.env.multi` through dotenvy), validated as a whole, and readable from a plain map in tests.
//!
//! Every variable `X` except `INSTANCE_ID` and `INSTANCE_COUNT` may be given per instance as
//! `X_<INSTANCE_ID>` (`OPENAI_API_KEY_3` when `INSTANCE_ID=3`), which wins over plain `X`. That
//! is how one `.env.multi` holds a separate key set for each instance.
//!
//! [`check`] is `keyshard config check`: an env file read as every instance of the cluster will
//! read it, plus the rules that span instances.

pub mod check;

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use keyshard_cluster::JobKind;
use keyshard_ledger::{PriceTable, Retention};
use keyshard_providers::{
    KeyLimits, MiniMaxConfig, OpenAiConfig, ProviderConfig, Secret, StabilityConfig,
};
use keyshard_routing::{
    ClaimTiming, IdentifyPolicy, InstanceId, OverloadPolicy, RestartPolicy, ShardSetting,
};

/// Every problem found in the configuration, reported together so an operator fixes them in one go.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration ({} problem{}):\n{}", .problems.len(), if .problems.len() == 1 { "" } else { "s" }, .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

/// A keyshard instance's configuration. `Debug` never shows a secret.
#[derive(Clone, Debug)]
pub struct Config {
    pub discord_token: Secret,
    pub instance_id: InstanceId,
    pub instance_count: u32,
    pub redis_url: String,
    pub cluster_name: String,
    /// Users allowed to run the admin commands, besides members with Administrator permission.
    pub admin_user_ids: Vec<u64>,
    /// Register commands in this guild only (instant) instead of globally.
    pub guild_id: Option<u64>,
    /// A REST proxy or the simulator in place of `https://discord.com`.
    pub discord_api_base: Option<String>,
    pub http_bind: SocketAddr,
    pub overload: OverloadPolicy,
    pub heartbeat: Duration,
    pub dead_after: Duration,
    pub claim: ClaimTiming,
    pub openai: Option<OpenAiConfig>,
    pub minimax: Option<MiniMaxConfig>,
    pub stability: Option<StabilityConfig>,
    /// `TAKEOVER=off` keeps the static rule (benchmark comparison only).
    pub takeover: bool,
    /// The longest gap between two polls of a video task, and how often its progress
    /// message is refreshed (`VIDEO_POLL_MS`). Polls follow the render time
    /// (`MINIMAX_VIDEO_RENDER_SECS`, then what the tasks really took).
    pub video_poll: Duration,
    /// Exchanges kept per conversation (`CHAT_MEMORY_TURNS`).
    pub chat_memory_turns: usize,
    /// How long a conversation lasts after its last exchange (`CHAT_MEMORY_TTL_SECS`).
    pub chat_memory_ttl: Duration,
    /// The usage ledger; `None` when `DATABASE_URL` is unset (the ledger is off).
    pub ledger: Option<LedgerConfig>,
    /// Where "today" and "this month" begin for `/사용량` (and, later, daily quotas): an IANA
    /// zone name as Postgres knows it (`QUOTA_TIMEZONE`, default `Asia/Seoul`).
    pub quota_timezone: String,
    /// Shards, the cluster's IDENTIFY queue and the restart backoff.
    pub gateway: GatewayConfig,
    /// The longest expected wait a new job of each kind is queued for (`MAX_WAIT_SECS_*`).
    pub max_wait: MaxWait,
}

/// The longest expected wait for which a new job is queued, per kind (`MAX_WAIT_SECS_CHAT`,
/// `_IMAGE`, `_VIDEO`); past it the user is told at once and nothing is queued. `None`: no
/// limit (the variable set to 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxWait {
    pub chat: Option<Duration>,
    pub image: Option<Duration>,
    pub video: Option<Duration>,
}

impl MaxWait {
    /// The limit for a job of `kind`.
    pub fn of(&self, kind: JobKind) -> Option<Duration> {
        match kind {
            JobKind::Chat => self.chat,
            JobKind::Image => self.image,
            JobKind::Video => self.video,
        }
    }
}

/// `MAX_WAIT_SECS_<KIND>`, with the defaults chosen for how long each command is worth
/// waiting for: a chat answer is a conversation, and a minute of "thinking" is as long as
/// anyone keeps looking (60 s); an image takes 10-30 s to draw, so three minutes leaves room
/// for a queue several images deep (180 s); a video renders for minutes anyway, and ten
/// minutes keeps the answer well inside the interaction token's 15 (600 s).
fn read_max_wait(env: &mut Env<'_>) -> MaxWait {
    let mut secs = |name: &str, default: u64| {
        let s: u64 = env.parse(name, default);
        (s > 0).then(|| Duration::from_secs(s))
    };
    MaxWait {
        chat: secs("MAX_WAIT_SECS_CHAT", 60),
        image: secs("MAX_WAIT_SECS_IMAGE", 180),
        video: secs("MAX_WAIT_SECS_VIDEO", 600),
    }
}

/// The usage ledger's settings (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// `DATABASE_URL`: a secret as a whole (it may carry a password); log
    /// [`LedgerConfig::redacted_url`] instead.
    pub database_url: Secret,
    /// `LEDGER_PRICES` over the built-in list prices (`keyshard_ledger::DEFAULT_PRICES`).
    pub prices: PriceTable,
    /// `LEDGER_RAW_RETENTION_DAYS` (90) and `LEDGER_ROLLUP_RETENTION_DAYS` (730).
    pub retention: Retention,
}

impl LedgerConfig {
    /// Reads the ledger's variables alone (for `keyshard migrate` and `keyshard usage`):
    /// `.env.multi` and the environment, `DATABASE_URL` required.
    pub fn from_env() -> Result<LedgerConfig, ConfigError> {
        load_env_file();
        LedgerConfig::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<LedgerConfig, ConfigError> {
        let mut env = Env::new(&lookup);
        let ledger = read_ledger(&mut env);
        match ledger {
            Some(l) if env.problems.is_empty() => Ok(l),
            Some(_) => Err(ConfigError {
                problems: env.problems,
            }),
            None => {
                env.problem("DATABASE_URL is not set (the usage ledger is off)".into());
                Err(ConfigError {
                    problems: env.problems,
                })
            }
        }
    }

    /// The URL with its password replaced by `***`, for log lines.
    pub fn redacted_url(&self) -> String {
        let url = self.database_url.expose();
        match database_password(url) {
            Some(pw) => url.replacen(&format!(":{pw}@"), ":***@", 1),
            None => url.to_owned(),
        }
    }
}

/// The password in a `postgres://user:password@host/db` URL, if any. Unlike a Redis URL, a
/// Postgres URL's `user@host` names a user, not a password, so only what follows the `:` of
/// the user info counts.
pub fn database_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The ledger's variables; `None` when `DATABASE_URL` is unset. Problems go to `env`.
fn read_ledger(env: &mut Env<'_>) -> Option<LedgerConfig> {
    let url = env.get("DATABASE_URL")?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // The URL may carry a password: name the variable, not the value.
        env.problem(
            "DATABASE_URL must start with postgres:// or postgresql:// (postgres://user:password@host:5432/db)"
                .into(),
        );
    }
    let prices = match env.get("LEDGER_PRICES") {
        None => PriceTable::defaults(),
        Some(spec) => PriceTable::parse(&spec).unwrap_or_else(|e| {
            env.problem(format!("LEDGER_PRICES: {e}"));
            PriceTable::defaults()
        }),
    };
    let defaults = Retention::default();
    let days = |d: Duration| d.as_secs() / 86_400;
    let raw_days: u64 = env.parse("LEDGER_RAW_RETENTION_DAYS", days(defaults.raw));
    let rollup_days: u64 = env.parse("LEDGER_ROLLUP_RETENTION_DAYS", days(defaults.rollup));
    // A row can wait in the buffer for minutes at most; a raw retention of at least a day
    // keeps a late row from being written again after its first copy was pruned (see
    // keyshard-ledger's `retention`), and the rollup must outlive the raw rows it sums.
    if raw_days == 0 || rollup_days < raw_days {
        env.problem(format!(
            "LEDGER_RAW_RETENTION_DAYS ({raw_days}) must be at least 1 and LEDGER_ROLLUP_RETENTION_DAYS ({rollup_days}) at least as long"
        ));
    }
    Some(LedgerConfig {
        database_url: Secret::new(url),
        prices,
        retention: Retention {
            raw: Duration::from_secs(raw_days.saturating_mul(86_400)),
            rollup: Duration::from_secs(rollup_days.saturating_mul(86_400)),
        },
    })
}

/// The gateway settings: `SHARD_COUNT`, `IDENTIFY_WINDOW_MS`, `IDENTIFY_RESERVE`,
/// `RESTART_BACKOFF_MS`, `RESTART_BACKOFF_MAX_MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `auto` (Discord's recommendation) or a number; every instance runs every shard.
    pub shards: ShardSetting,
    pub identify: IdentifyPolicy,
    pub restart: RestartPolicy,
}

/// What the read-only CLI verbs (`status`, `assign`) need: no token, no instance id.
#[derive(Clone, Debug)]
pub struct ViewConfig {
    pub redis_url: String,
    pub cluster_name: String,
    pub instance_count: u32,
    pub overload: OverloadPolicy,
}

impl Config {
    /// Reads `.env.multi` (when present; real environment variables win) and the environment.
    pub fn from_env() -> Result<Config, ConfigError> {
        load_env_file();
        Config::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration from a map, as tests do.
    pub fn from_map(map: &HashMap<String, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| map.get(k).cloned())
    }

    /// Reads and validates the configuration from any lookup function.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let (config, problems) = Config::read(&lookup);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError { problems })
        }
    }

    /// Reads every setting, with the default in place of a value that is wrong, and lists the
    /// problems. `config check` compares instances with it even when one of them has problems.
    fn read(lookup: &dyn Fn(&str) -> Option<String>) -> (Config, Vec<String>) {
        let mut env = Env::new(lookup);
        let instance_count: u32 = env.parse_min("INSTANCE_COUNT", 4, 1);
        let instance_id = match env.raw("INSTANCE_ID") {
            None => {
                env.problem("INSTANCE_ID is missing (1..=INSTANCE_COUNT)".into());
                1
            }
            Some(v) => match v.trim().parse::<u32>() {
                Ok(id) if id >= 1 && id <= instance_count.max(1) => id,
                Ok(id) => {
                    env.problem(format!(
                        "INSTANCE_ID={id} is outside 1..={instance_count} (INSTANCE_COUNT={instance_count})"
                    ));
                    1
                }
                Err(_) => {
                    env.problem(format!("INSTANCE_ID={v:?} is not a number"));
                    1
                }
            },
        };
        env.instance = Some(instance_id);

        let discord_token = env.secret("DISCORD_TOKEN");
        let discord_token = match discord_token {
            Some(t) => t,
            None => {
                env.problem(
                    "DISCORD_TOKEN is missing: the bot token, from the Discord developer portal"
                        .into(),
                );
                Secret::new(String::new())
            }
        };
        let view = read_view(&mut env, instance_count);
        let admin_user_ids = env.id_list("ADMIN_USER_IDS");
        let guild_id = env.optional_parse::<u64>("GUILD_ID");
        let discord_api_base = env.get_from("DISCORD_API_BASE").map(|(source, b)| {
            let base = b.trim_end_matches('/').to_owned();
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                env.problem(format!(
                    "{source}={base:?} must start with http:// or https://"
                ));
            }
            base
        });
        let http_bind = env.parse_with("HTTP_BIND", "0.0.0.0:8080", SocketAddr::from_str);
        let heartbeat = Duration::from_millis(env.parse_min("HEARTBEAT_MS", 1_000, 1));
        let dead_after = Duration::from_millis(env.parse_min("DEAD_AFTER_MS", 3_000, 1));
        if dead_after <= heartbeat {
            env.problem(format!(
                "DEAD_AFTER_MS ({}) must be longer than HEARTBEAT_MS ({}), or live instances look dead between beats",
                dead_after.as_millis(),
                heartbeat.as_millis()
            ));
        }
        let defaults = ClaimTiming::default();
        let claim = ClaimTiming {
            grace: Duration::from_millis(
                env.parse("CLAIM_GRACE_MS", defaults.grace.as_millis() as u64),
            ),
            step: Duration::from_millis(
                env.parse("CLAIM_STEP_MS", defaults.step.as_millis() as u64),
            ),
            ..defaults
        };

        let openai = env
            .provider(
                "OPENAI",
                "https://api.openai.com/v1",
                500,
                60,
                Some(200_000),
                Some(10_000),
                16,
                60,
            )
            .map(|common| OpenAiConfig {
                chat_model: env
                    .get("OPENAI_CHAT_MODEL")
                    .unwrap_or_else(|| "gpt-4o-mini".into()),
                image_model: env
                    .get("OPENAI_IMAGE_MODEL")
                    .unwrap_or_else(|| "gpt-image-1".into()),
                // gpt-image-1 at tier 1 allows 5 images a minute, far below the chat limit.
                image_rpm: env.parse_min("OPENAI_IMAGE_RPM", 5, 1),
                max_completion_tokens: env.parse_min("OPENAI_MAX_TOKENS", 1024, 1),
                common,
            });
        let minimax = env
            .provider(
                "MINIMAX",
                "https://api.minimax.io",
                10,
                60,
                None,
                None,
                4,
                120,
            )
            .map(|common| MiniMaxConfig {
                image_model: env
                    .get("MINIMAX_IMAGE_MODEL")
                    .unwrap_or_else(|| "image-01".into()),
                video_model: env
                    .get("MINIMAX_VIDEO_MODEL")
                    .unwrap_or_else(|| "MiniMax-Hailuo-02".into()),
                video_rpm: env.parse_min("MINIMAX_VIDEO_RPM", 5, 1),
                video_render: video_render(&mut env),
                common,
            });
        let stability = env
            // Stability publishes 150 requests per 10 s (and a 60 s timeout beyond it).
            .provider(
                "STABILITY",
                "https://api.stability.ai",
                150,
                10,
                None,
                None,
                8,
                90,
            )
            .map(|common| StabilityConfig { common });

        // MiniMax asks for polls about every 10 s: the longest gap between two polls (they
        // start near the expected render time), and the progress message's refresh.
        let video_poll = Duration::from_millis(env.parse_min("VIDEO_POLL_MS", 10_000, 1));
        let chat_memory_turns = env.parse_min("CHAT_MEMORY_TURNS", 10usize, 1);
        // A conversation idle for an hour starts afresh.
        let chat_memory_ttl = Duration::from_secs(env.parse_min("CHAT_MEMORY_TTL_SECS", 3_600, 1));
        let takeover = match env.get_from("TAKEOVER") {
            None => true,
            Some((source, v)) => match v.to_ascii_lowercase().as_str() {
                "on" | "true" | "1" => true,
                "off" | "false" | "0" => false,
                _ => {
                    env.problem(format!("{source}={v:?} must be on or off"));
                    true
                }
            },
        };
        let ledger = read_ledger(&mut env);
        let quota_timezone = env
            .get("QUOTA_TIMEZONE")
            .unwrap_or_else(|| "Asia/Seoul".into());
        // Postgres checks the name itself when `/사용량` first uses it; this catches a typo
        // that could never be a zone name.
        if quota_timezone.contains(char::is_whitespace) {
            env.problem(format!(
                "QUOTA_TIMEZONE={quota_timezone:?} must be a time zone name such as Asia/Seoul"
            ));
        }
        let gateway = read_gateway(&mut env);
        let max_wait = read_max_wait(&mut env);

        let config = Config {
            discord_token,
            instance_id,
            instance_count,
            redis_url: view.redis_url,
            cluster_name: view.cluster_name,
            admin_user_ids,
            guild_id,
            discord_api_base,
            http_bind,
            overload: view.overload,
            heartbeat,
            dead_after,
            claim,
            openai,
            minimax,
            stability,
            takeover,
            video_poll,
            chat_memory_turns,
            chat_memory_ttl,
            ledger,
            quota_timezone,
            gateway,
            max_wait,
        };
        (config, env.problems)
    }

    /// The cluster handle's settings.
    pub fn cluster(&self) -> keyshard_cluster::ClusterConfig {
        keyshard_cluster::ClusterConfig {
            redis_url: self.redis_url.clone(),
            cluster_name: self.cluster_name.clone(),
            instance_id: self.instance_id,
            instance_count: self.instance_count,
            heartbeat: self.heartbeat,
            dead_after: self.dead_after,
            // A quarter of the heartbeat keeps the view at most ~¼ s behind by default while
            // costing one pipelined round trip per refresh.
            snapshot_every: (self.heartbeat / 4).max(Duration::from_millis(50)),
            overload: self.overload,
            claim: self.claim,
            takeover: self.takeover,
        }
    }
}

impl ViewConfig {
    /// Reads `.env.multi` (when present) and the environment.
    pub fn from_env() -> Result<ViewConfig, ConfigError> {
        load_env_file();
        ViewConfig::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<ViewConfig, ConfigError> {
        let mut env = Env::new(&lookup);
        let count = env.parse_min("INSTANCE_COUNT", 4u32, 1);
        let view = read_view(&mut env, count);
        if env.problems.is_empty() {
            Ok(view)
        } else {
            Err(ConfigError {
                problems: env.problems,
            })
        }
    }
}

/// The env file read before the environment: `KEYSHARD_ENV_FILE`, or `.env.multi` in the
/// working directory. A missing file is fine (docker-compose passes the environment directly).
fn load_env_file() {
    let path = std::env::var("KEYSHARD_ENV_FILE").unwrap_or_else(|_| ".env.multi".into());
    match dotenvy::from_filename(&path) {
        Ok(_) => tracing::debug!(path, "read env file"),
        Err(e) if e.not_found() => {}
        // The message names the line, never its value.
        Err(e) => tracing::warn!(path, error = %e, "could not read env file"),
    }
}

fn read_view(env: &mut Env<'_>, instance_count: u32) -> ViewConfig {
    let (source, redis_url) = env
        .get_from("REDIS_URL")
        .unwrap_or_else(|| ("REDIS_URL".into(), "redis://127.0.0.1:6379".into()));
    if redis::Client::open(redis_url.as_str()).is_err() {
        // The URL may carry a password: name the variable, not the value.
        env.problem(format!(
            "{source} is not a valid Redis URL (expected redis://[:password@]host:port[/db])"
        ));
    }
    let (source, cluster_name) = env
        .get_from("CLUSTER_NAME")
        .unwrap_or_else(|| ("CLUSTER_NAME".into(), "keyshard".into()));
    if cluster_name.is_empty() || cluster_name.contains(char::is_whitespace) {
        env.problem(format!(
            "{source}={cluster_name:?} must be a non-empty word"
        ));
    }
    // f64 parses "inf" and "NaN", which no Duration holds: a number of seconds, 0 or more.
    let max_wait = match env.parse("OVERLOAD_WAIT_SECS", 20.0f64) {
        w if w.is_finite() && w >= 0.0 => w,
        w => {
            env.problem(format!(
                "OVERLOAD_WAIT_SECS={w} must be a number of seconds, 0 or more"
            ));
            20.0
        }
    };
    let overload = OverloadPolicy {
        max_wait: Duration::from_secs_f64(max_wait),
        ..OverloadPolicy::default()
    };
    ViewConfig {
        redis_url,
        cluster_name,
        instance_count,
        overload,
    }
}

/// The variable instance `instance` reads for `name`: `name_<instance>` when it is set (and not
/// empty), else `name` when it is set. The one statement of the per-instance rule: the loading
/// below and `config check` both go through it.
fn source_name(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &str,
    instance: Option<InstanceId>,
) -> Option<String> {
    let set = |n: &str| lookup(n).is_some_and(|v| !v.trim().is_empty());
    if let Some(per_instance) = instance.map(|id| format!("{name}_{id}")) {
        if set(&per_instance) {
            return Some(per_instance);
        }
    }
    set(name).then(|| name.to_owned())
}

/// `MINIMAX_VIDEO_RENDER_SECS`: how long a video task takes to render. It sizes the video
/// jobs run at once (a job holds its slot while its task renders, so using the creation
/// limit takes `rate × render` of them) and starts the poll plan. Hailuo takes minutes; two
/// is a middle the plan corrects as tasks finish (and warns about when far off).
fn video_render(env: &mut Env<'_>) -> Duration {
    let secs: f64 = env.parse("MINIMAX_VIDEO_RENDER_SECS", 120.0);
    if !(0.1..=86_400.0).contains(&secs) {
        env.problem(format!(
            "MINIMAX_VIDEO_RENDER_SECS={secs} must be between 0.1 and 86400 seconds"
        ));
        return Duration::from_secs(120);
    }
    Duration::from_secs_f64(secs)
}

/// The gateway settings. Discord's IDENTIFY window is 5 s; a shorter `IDENTIFY_WINDOW_MS` is
/// for the simulator, which enforces the same value on its side.
fn read_gateway(env: &mut Env<'_>) -> GatewayConfig {
    let shards = match env.get("SHARD_COUNT") {
        None => ShardSetting::Auto,
        Some(v) if v.eq_ignore_ascii_case("auto") => ShardSetting::Auto,
        Some(v) => match v.parse::<u32>() {
            Ok(n) if n >= 1 => ShardSetting::Fixed(n),
            _ => {
                env.problem(format!(
                    "SHARD_COUNT={v:?} must be auto or a number of shards (at least 1)"
                ));
                ShardSetting::Auto
            }
        },
    };
    let window = Duration::from_millis(env.parse("IDENTIFY_WINDOW_MS", 5_000));
    // Fifty of Discord's 1000 daily session starts: enough for an operator to restart a
    // whole cluster of a dozen shards by hand after a crash loop or a bad deploy spent the rest.
    let reserve = env.parse("IDENTIFY_RESERVE", 50u32);
    let defaults = RestartPolicy::default();
    let restart = RestartPolicy {
        base: Duration::from_millis(
            env.parse("RESTART_BACKOFF_MS", defaults.base.as_millis() as u64),
        ),
        max: Duration::from_millis(
            env.parse("RESTART_BACKOFF_MAX_MS", defaults.max.as_millis() as u64),
        ),
    };
    if window.is_zero() {
        env.problem("IDENTIFY_WINDOW_MS must be at least 1".into());
    }
    if restart.max < restart.base {
        env.problem(format!(
            "RESTART_BACKOFF_MAX_MS ({}) must not be shorter than RESTART_BACKOFF_MS ({})",
            restart.max.as_millis(),
            restart.base.as_millis()
        ));
    }
    GatewayConfig {
        shards,
        identify: IdentifyPolicy { window, reserve },
        restart,
    }
}

/// A lookup with the per-instance override rule, collecting problems instead of stopping at the first.
struct Env<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    instance: Option<InstanceId>,
    problems: Vec<String>,
}

impl<'a> Env<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            instance: None,
            problems: Vec::new(),
        }
    }

    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// `X` as set, without the per-instance rule (for `INSTANCE_ID` itself).
    fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// `X_<INSTANCE_ID>` if set, else `X`; empty counts as unset.
    fn get(&self, name: &str) -> Option<String> {
        self.get_from(name).map(|(_, v)| v)
    }

    /// The value as [`Env::get`] finds it, with the name it was found under (`OPENAI_RPM_2` or
    /// `OPENAI_RPM`), so a problem names the line the operator has to fix.
    fn get_from(&self, name: &str) -> Option<(String, String)> {
        let source = source_name(self.lookup, name, self.instance)?;
        let value = self.raw(&source)?.trim().to_owned();
        Some((source, value))
    }

    /// A number, or `None` (with a problem) when it does not parse or is below `min`.
    fn number<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        min: Option<T>,
    ) -> Option<T> {
        let (source, v) = self.get_from(name)?;
        match v.parse::<T>() {
            Ok(x) => match min {
                Some(min) if x < min => {
                    self.problem(format!("{source}={x} must be at least {min}"));
                    None
                }
                _ => Some(x),
            },
            Err(_) => {
                self.problem(format!("{source}={v:?} is not a valid number"));
                None
            }
        }
    }

    fn parse<T: FromStr + PartialOrd + fmt::Display>(&mut self, name: &str, default: T) -> T {
        self.number(name, None).unwrap_or(default)
    }

    /// A number with a smallest sensible value: a zero limit, period or timeout is a typo that
    /// would stall or spin the instance, so it is refused at start.
    fn parse_min<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
        min: T,
    ) -> T {
        self.number(name, Some(min)).unwrap_or(default)
    }

    fn optional_min<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        min: T,
    ) -> Option<T> {
        self.number(name, Some(min))
    }

    fn optional_parse<T: FromStr + PartialOrd + fmt::Display>(&mut self, name: &str) -> Option<T> {
        self.number(name, None)
    }

    fn parse_with<T, E>(
        &mut self,
        name: &str,
        default: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> T {
        let (source, v) = self
            .get_from(name)
            .unwrap_or_else(|| (name.to_owned(), default.to_owned()));
        match f(&v) {
            Ok(x) => x,
            Err(_) => {
                self.problem(format!("{source}={v:?} is not valid (expected host:port)"));
                f(default).unwrap_or_else(|_| unreachable!("defaults are valid"))
            }
        }
    }

    fn id_list(&mut self, name: &str) -> Vec<u64> {
        let Some((source, v)) = self.get_from(name) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse() {
                Ok(id) => ids.push(id),
                Err(_) => self.problem(format!("{source} has {part:?}, which is not a user id")),
            }
        }
        ids
    }

    /// A secret: never echoed back, placeholders rejected by name.
    fn secret(&mut self, name: &str) -> Option<Secret> {
        let (source, value) = self.get_from(name)?;
        let secret = Secret::new(value);
        if secret.looks_like_placeholder() {
            self.problem(format!(
                "{source} is still a placeholder; put the real value in .env.multi"
            ));
        }
        Some(secret)
    }

    /// One provider's settings, or `None` when it has no key (the provider is then disabled).
    #[allow(clippy::too_many_arguments)] // one call per provider, each with its published defaults
    fn provider(
        &mut self,
        prefix: &str,
        base_url: &str,
        rpm: u32,
        window_secs: u64,
        tpm: Option<u32>,
        rpd: Option<u32>,
        concurrency: u32,
        timeout_secs: u64,
    ) -> Option<ProviderConfig> {
        let api_key = self.secret(&format!("{prefix}_API_KEY"))?;
        let (source, base_url) = self
            .get_from(&format!("{prefix}_BASE_URL"))
            .unwrap_or_else(|| (format!("{prefix}_BASE_URL"), base_url.to_owned()));
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            self.problem(format!(
                "{source}={base_url:?} must start with http:// or https://"
            ));
        }
        // An empty TPM or RPD means "no such limit"; a set one must allow something.
        let limits = KeyLimits {
            rpm: self.parse_min(&format!("{prefix}_RPM"), rpm, 1),
            tpm: self.optional_min(&format!("{prefix}_TPM"), 1).or(tpm),
            rpd: self.optional_min(&format!("{prefix}_RPD"), 1).or(rpd),
            concurrency: self.parse_min(&format!("{prefix}_CONCURRENCY"), concurrency, 1),
            window: Duration::from_secs(self.parse_min(
                &format!("{prefix}_WINDOW_SECS"),
                window_secs,
                1,
            )),
        };
        let timeout =
            Duration::from_secs(self.parse_min(&format!("{prefix}_TIMEOUT_SECS"), timeout_secs, 1));
        Some(
            ProviderConfig::new(api_key, base_url)
                .with_limits(limits)
                .with_timeout(timeout),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn minimal_config_uses_defaults() {
        let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "2")])).unwrap();
        assert_eq!((c.instance_id, c.instance_count), (2, 4));
        assert_eq!(c.cluster_name, "keyshard");
        assert!(c.openai.is_none() && c.minimax.is_none() && c.stability.is_none());
        assert_eq!(c.http_bind.port(), 8080);
    }

    #[test]
    fn per_instance_keys_win() {
        let c = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "3"),
            ("OPENAI_API_KEY", "sk-shared"),
            ("OPENAI_API_KEY_3", "sk-three"),
            ("OPENAI_RPM_3", "120"),
        ]))
        .unwrap();
        let openai = c.openai.unwrap();
        assert_eq!(openai.common.api_key.expose(), "sk-three");
        assert_eq!(openai.common.limits.rpm, 120);
    }

    #[test]
    fn the_video_render_time_defaults_to_two_minutes_and_is_checked() {
        let base = [
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("MINIMAX_API_KEY", "mm-real-key"),
        ];
        let c = Config::from_map(&map(&base)).unwrap();
        let minimax = c.minimax.unwrap();
        assert_eq!(minimax.video_render, Duration::from_secs(120));
        assert_eq!(c.video_poll, Duration::from_secs(10));
        let with = |v: &str| {
            let mut pairs = base.to_vec();
            pairs.push(("MINIMAX_VIDEO_RENDER_SECS", v));
            Config::from_map(&map(&pairs))
        };
        let c = with("6.5").unwrap();
        assert_eq!(
            c.minimax.unwrap().video_render,
            Duration::from_millis(6_500)
        );
        for bad in ["0", "-3", "inf", "NaN", "a while"] {
            let err = with(bad).unwrap_err().to_string();
            assert!(err.contains("MINIMAX_VIDEO_RENDER_SECS"), "{bad}: {err}");
        }
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let err = Config::from_map(&map(&[
            ("INSTANCE_ID", "5"),
            ("INSTANCE_COUNT", "4"),
            ("REDIS_URL", "http://nope"),
            ("OPENAI_API_KEY", "sk-real"),
            ("OPENAI_RPM", "lots"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 4, "{text}");
        for needle in [
            "INSTANCE_ID=5",
            "DISCORD_TOKEN is missing",
            "REDIS_URL",
            "OPENAI_RPM=\"lots\"",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
    }

    #[test]
    fn secrets_never_show() {
        let c = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "MTIz.secret-token"),
            ("INSTANCE_ID", "1"),
            ("OPENAI_API_KEY", "sk-very-secret"),
        ]))
        .unwrap();
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("secret-token") && !debug.contains("sk-very-secret"),
            "{debug}"
        );
        assert!(debug.contains("***"));
    }

    #[test]
    fn placeholders_are_rejected_by_name_without_echoing() {
        let err = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "your-discord-bot-token"),
            ("INSTANCE_ID", "1"),
            ("MINIMAX_API_KEY_1", "CHANGE_ME"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("DISCORD_TOKEN is still a placeholder"),
            "{text}"
        );
        assert!(
            text.contains("MINIMAX_API_KEY_1 is still a placeholder"),
            "{text}"
        );
        assert!(!text.contains("your-discord-bot-token"));
    }

    #[test]
    fn a_problem_names_the_variable_as_written_and_zero_limits_are_refused() {
        let err = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "2"),
            ("OPENAI_API_KEY_2", "sk-real"),
            ("OPENAI_TIMEOUT_SECS_2", "0"),
            ("OPENAI_RPD", "0"),
            ("HEARTBEAT_MS_2", "soon"),
        ]))
        .unwrap_err();
        assert_eq!(
            err.problems,
            [
                "HEARTBEAT_MS_2=\"soon\" is not a valid number",
                "OPENAI_RPD=0 must be at least 1",
                "OPENAI_TIMEOUT_SECS_2=0 must be at least 1",
            ]
        );
    }

    #[test]
    fn overload_wait_is_a_finite_number_of_seconds() {
        for bad in ["inf", "NaN", "-1"] {
            let err = Config::from_map(&map(&[
                ("DISCORD_TOKEN", "tok"),
                ("INSTANCE_ID", "1"),
                ("OVERLOAD_WAIT_SECS", bad),
            ]))
            .unwrap_err();
            assert!(
                err.problems[0].starts_with("OVERLOAD_WAIT_SECS="),
                "{bad}: {err}"
            );
        }
        let c = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("OVERLOAD_WAIT_SECS", "2.5"),
        ]))
        .unwrap();
        assert_eq!(c.overload.max_wait, Duration::from_millis(2_500));
    }

    #[test]
    fn the_ledger_is_off_without_a_database_url_and_its_password_never_shows() {
        let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "1")])).unwrap();
        assert!(c.ledger.is_none());
        assert_eq!(c.quota_timezone, "Asia/Seoul");

        let c = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            (
                "DATABASE_URL",
                "postgres://keyshard:pg-s3cret@db:5432/keyshard",
            ),
            ("LEDGER_PRICES", "openai/*=in:1,out:2"),
            ("LEDGER_RAW_RETENTION_DAYS", "30"),
        ]))
        .unwrap();
        let ledger = c.ledger.as_ref().unwrap();
        assert_eq!(ledger.retention.raw, Duration::from_secs(30 * 86_400));
        assert!(ledger.prices.knows("openai", "some-new-model"));
        assert_eq!(
            ledger.redacted_url(),
            "postgres://keyshard:***@db:5432/keyshard"
        );
        let debug = format!("{c:?}");
        assert!(!debug.contains("pg-s3cret"), "{debug}");
        assert!(crate::logging::secrets(&c).contains(&"pg-s3cret".to_string()));
        assert_eq!(
            database_password("postgres://postgres@127.0.0.1:5432/x"),
            None
        );

        let err = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("DATABASE_URL", "mysql://u:pg-s3cret@h/db"),
            ("LEDGER_PRICES", "openai/x=bogus:1"),
            ("LEDGER_ROLLUP_RETENTION_DAYS", "10"),
        ]))
        .unwrap_err();
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        assert!(!text.contains("pg-s3cret"), "{text}");
        for needle in [
            "DATABASE_URL must start",
            "LEDGER_PRICES",
            "LEDGER_ROLLUP_RETENTION_DAYS (10)",
        ] {
            assert!(text.contains(needle), "{needle} missing from:\n{text}");
        }
        let missing = LedgerConfig::from_lookup(|_| None).unwrap_err().to_string();
        assert!(missing.contains("DATABASE_URL is not set"), "{missing}");
    }

    #[test]
    fn gateway_settings_default_to_discords_and_are_checked() {
        let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "1")])).unwrap();
        assert_eq!(c.gateway.shards, ShardSetting::Auto);
        assert_eq!(c.gateway.identify.window, Duration::from_secs(5));
        assert_eq!(c.gateway.identify.reserve, 50);
        assert_eq!(c.gateway.restart, RestartPolicy::default());
        let c = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("SHARD_COUNT", "4"),
            ("IDENTIFY_WINDOW_MS", "500"),
            ("IDENTIFY_RESERVE", "0"),
        ]))
        .unwrap();
        assert_eq!(c.gateway.shards, ShardSetting::Fixed(4));
        assert_eq!(c.gateway.identify.window, Duration::from_millis(500));
        assert_eq!(c.gateway.identify.reserve, 0);
        let err = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("SHARD_COUNT", "0"),
            ("RESTART_BACKOFF_MS", "9000"),
            ("RESTART_BACKOFF_MAX_MS", "1000"),
        ]))
        .unwrap_err();
        assert_eq!(err.problems.len(), 2, "{err}");
        assert!(err.to_string().contains("SHARD_COUNT=\"0\""), "{err}");
    }

    #[test]
    fn view_config_needs_no_token() {
        let v =
            ViewConfig::from_lookup(|k| (k == "CLUSTER_NAME").then(|| "c1".to_string())).unwrap();
        assert_eq!((v.cluster_name.as_str(), v.instance_count), ("c1", 4));
    }
}

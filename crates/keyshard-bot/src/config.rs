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
mod env;
mod gateway;
mod ledger;
mod quota;

pub(crate) use env::source_name;
use env::Env;
use gateway::read_gateway;
pub use gateway::GatewayConfig;
use ledger::read_ledger;
pub use ledger::{database_password, LedgerConfig};
use quota::read_quota;
pub use quota::QuotaConfig;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use keyshard_cluster::JobKind;
use keyshard_providers::{MiniMaxConfig, OpenAiConfig, Secret, StabilityConfig};
use keyshard_routing::{ClaimTiming, InstanceId, OverloadPolicy};

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
    /// Quotas and cooldowns per command (`QUOTA_<CMD>_*`), who is never limited, and the
    /// zone whose midnight resets the daily counts.
    pub quota: QuotaConfig,
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
    /// Long but flat: one setting after another in the order of `.env.multi.example`, each
    /// with its default and its check beside it; the groups with rules of their own are in
    /// `config/` (`env`, `ledger`, `gateway`, `quota`).
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
        let quota = read_quota(&mut env, &quota_timezone, &admin_user_ids);
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
            quota,
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

#[cfg(test)]
mod tests;

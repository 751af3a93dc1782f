//! The one typed `Config` of a keyshard instance: read once at start from the environment (and
//! `.env.multi` through dotenvy), validated as a whole, and readable from a plain map in tests.
//!
//! Every variable `X` except `INSTANCE_ID` may be given per instance as `X_<INSTANCE_ID>`
//! (`OPENAI_API_KEY_3` when `INSTANCE_ID=3`), which wins over plain `X`. That is how one
//! `.env.multi` holds a separate key set for each instance.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

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
    /// How often a video task is polled (`VIDEO_POLL_MS`).
    pub video_poll: Duration,
    /// Exchanges kept per conversation (`CHAT_MEMORY_TURNS`).
    pub chat_memory_turns: usize,
    /// How long a conversation lasts after its last exchange (`CHAT_MEMORY_TTL_SECS`).
    pub chat_memory_ttl: Duration,
    /// Shards, the cluster's IDENTIFY queue and the restart backoff.
    pub gateway: GatewayConfig,
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
        let mut env = Env::new(&lookup);
        let instance_count: u32 = env.parse("INSTANCE_COUNT", 4);
        if instance_count == 0 {
            env.problem("INSTANCE_COUNT must be at least 1".into());
        }
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
                env.problem("DISCORD_TOKEN is missing".into());
                Secret::new(String::new())
            }
        };
        let view = read_view(&mut env, instance_count);
        let admin_user_ids = env.id_list("ADMIN_USER_IDS");
        let guild_id = env.optional_parse::<u64>("GUILD_ID");
        let discord_api_base = env
            .get("DISCORD_API_BASE")
            .map(|b| b.trim_end_matches('/').to_owned());
        if let Some(base) = &discord_api_base {
            if !(base.starts_with("http://") || base.starts_with("https://")) {
                env.problem(format!(
                    "DISCORD_API_BASE={base:?} must start with http:// or https://"
                ));
            }
        }
        let http_bind = env.parse_with("HTTP_BIND", "0.0.0.0:8080", SocketAddr::from_str);
        let heartbeat = Duration::from_millis(env.parse("HEARTBEAT_MS", 1_000));
        let dead_after = Duration::from_millis(env.parse("DEAD_AFTER_MS", 3_000));
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
                image_rpm: env.parse("OPENAI_IMAGE_RPM", 5),
                max_completion_tokens: env.parse("OPENAI_MAX_TOKENS", 1024),
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
                video_rpm: env.parse("MINIMAX_VIDEO_RPM", 5),
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

        // MiniMax asks for polls about every 10 s; the simulator's videos finish in seconds.
        let video_poll = Duration::from_millis(env.parse("VIDEO_POLL_MS", 10_000));
        let chat_memory_turns = env.parse("CHAT_MEMORY_TURNS", 10usize);
        // A conversation idle for an hour starts afresh.
        let chat_memory_ttl = Duration::from_secs(env.parse("CHAT_MEMORY_TTL_SECS", 3_600));
        let takeover = match env
            .get("TAKEOVER")
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            None | Some("on" | "true" | "1") => true,
            Some("off" | "false" | "0") => false,
            Some(other) => {
                env.problem(format!("TAKEOVER={other:?} must be on or off"));
                true
            }
        };
        if video_poll.is_zero() || chat_memory_turns == 0 {
            env.problem("VIDEO_POLL_MS and CHAT_MEMORY_TURNS must be at least 1".into());
        }
        let gateway = read_gateway(&mut env);

        if !env.problems.is_empty() {
            return Err(ConfigError {
                problems: env.problems,
            });
        }
        Ok(Config {
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
            gateway,
        })
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
        let count = env.parse("INSTANCE_COUNT", 4u32);
        if count == 0 {
            env.problem("INSTANCE_COUNT must be at least 1".into());
        }
        let view = read_view(&mut env, count.max(1));
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
    let redis_url = env
        .get("REDIS_URL")
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if redis::Client::open(redis_url.as_str()).is_err() {
        // The URL may carry a password: name the variable, not the value.
        env.problem(
            "REDIS_URL is not a valid Redis URL (expected redis://[:password@]host:port[/db])"
                .into(),
        );
    }
    let cluster_name = env.get("CLUSTER_NAME").unwrap_or_else(|| "keyshard".into());
    if cluster_name.is_empty() || cluster_name.contains(char::is_whitespace) {
        env.problem(format!(
            "CLUSTER_NAME={cluster_name:?} must be a non-empty word"
        ));
    }
    let overload = OverloadPolicy {
        max_wait: Duration::from_secs_f64(env.parse("OVERLOAD_WAIT_SECS", 20.0f64).max(0.0)),
        ..OverloadPolicy::default()
    };
    ViewConfig {
        redis_url,
        cluster_name,
        instance_count,
        overload,
    }
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
        self.instance
            .and_then(|id| self.raw(&format!("{name}_{id}")))
            .or_else(|| self.raw(name))
            .map(|v| v.trim().to_owned())
    }

    fn parse<T: FromStr + Copy + fmt::Display>(&mut self, name: &str, default: T) -> T {
        match self.get(name) {
            None => default,
            Some(v) => match v.parse() {
                Ok(x) => x,
                Err(_) => {
                    self.problem(format!("{name}={v:?} is not a valid number"));
                    default
                }
            },
        }
    }

    fn optional_parse<T: FromStr>(&mut self, name: &str) -> Option<T> {
        let v = self.get(name)?;
        match v.parse() {
            Ok(x) => Some(x),
            Err(_) => {
                self.problem(format!("{name}={v:?} is not a valid number"));
                None
            }
        }
    }

    fn parse_with<T, E>(
        &mut self,
        name: &str,
        default: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> T {
        let v = self.get(name).unwrap_or_else(|| default.to_owned());
        match f(&v) {
            Ok(x) => x,
            Err(_) => {
                self.problem(format!("{name}={v:?} is not valid (expected host:port)"));
                f(default).unwrap_or_else(|_| unreachable!("defaults are valid"))
            }
        }
    }

    fn id_list(&mut self, name: &str) -> Vec<u64> {
        let Some(v) = self.get(name) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse() {
                Ok(id) => ids.push(id),
                Err(_) => self.problem(format!("{name} has {part:?}, which is not a user id")),
            }
        }
        ids
    }

    /// A secret: never echoed back, placeholders rejected by name.
    fn secret(&mut self, name: &str) -> Option<Secret> {
        let secret = Secret::new(self.get(name)?);
        if secret.looks_like_placeholder() {
            self.problem(format!(
                "{name} is still a placeholder; put the real value in .env.multi"
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
        let base_url = self
            .get(&format!("{prefix}_BASE_URL"))
            .unwrap_or_else(|| base_url.to_owned())
            .trim_end_matches('/')
            .to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            self.problem(format!(
                "{prefix}_BASE_URL={base_url:?} must start with http:// or https://"
            ));
        }
        let limits = KeyLimits {
            rpm: self.parse(&format!("{prefix}_RPM"), rpm),
            tpm: self.optional_parse(&format!("{prefix}_TPM")).or(tpm),
            rpd: self.optional_parse(&format!("{prefix}_RPD")).or(rpd),
            concurrency: self.parse(&format!("{prefix}_CONCURRENCY"), concurrency),
            window: Duration::from_secs(self.parse(&format!("{prefix}_WINDOW_SECS"), window_secs)),
        };
        if limits.rpm == 0 || limits.concurrency == 0 || limits.window.is_zero() {
            self.problem(format!(
                "{prefix}_RPM, {prefix}_CONCURRENCY and {prefix}_WINDOW_SECS must be at least 1"
            ));
        }
        let timeout =
            Duration::from_secs(self.parse(&format!("{prefix}_TIMEOUT_SECS"), timeout_secs));
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
            text.contains("MINIMAX_API_KEY is still a placeholder"),
            "{text}"
        );
        assert!(!text.contains("your-discord-bot-token"));
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

//! The gateway settings: shards, the cluster's IDENTIFY queue and the restart backoff.

use std::time::Duration;

use keyshard_routing::{IdentifyPolicy, RestartPolicy, ShardSetting};

use super::Env;

/// The gateway settings: `SHARD_COUNT`, `IDENTIFY_WINDOW_MS`, `IDENTIFY_RESERVE`,
/// `RESTART_BACKOFF_MS`, `RESTART_BACKOFF_MAX_MS`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayConfig {
    /// `auto` (Discord's recommendation) or a number; every instance runs every shard.
    pub shards: ShardSetting,
    pub identify: IdentifyPolicy,
    pub restart: RestartPolicy,
}

/// The gateway settings. Discord's IDENTIFY window is 5 s; a shorter `IDENTIFY_WINDOW_MS` is
/// for the simulator, which enforces the same value on its side.
pub(super) fn read_gateway(env: &mut Env<'_>) -> GatewayConfig {
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
    let window = Duration::from_millis(env.parse_min("IDENTIFY_WINDOW_MS", 5_000, 1));
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

//! What a scenario sets about the fake Discord: its session rules ([`GatewayRules`]) and the
//! server's settings ([`DiscordConfig`]).

use std::time::Duration;

/// Discord's session rules, as the scenario sets them (`developers/events/gateway.mdx`).
#[derive(Clone, Debug, PartialEq)]
pub struct GatewayRules {
    /// `shards` in `GET /gateway/bot`: Discord's recommended shard count.
    pub recommended_shards: u32,
    /// `session_start_limit.total`: IDENTIFYs allowed per day.
    pub identify_total: u32,
    /// `session_start_limit.remaining` when the fake starts.
    pub identify_remaining: u32,
    /// When the first day ends (`reset_after`); later days last 24 h.
    pub identify_reset_after: Duration,
    /// `session_start_limit.max_concurrency`: IDENTIFY buckets (`shard_id % max_concurrency`).
    pub max_concurrency: u32,
    /// One IDENTIFY per bucket per this long (Discord: 5 s); a second one gets op 9. Zero
    /// turns the rule off.
    pub identify_window: Duration,
    /// The guilds the bot is in: a session whose shard would hold more than
    /// [`MAX_GUILDS_PER_SHARD`] of them is closed with 4011 (sharding required).
    pub bot_guilds: u64,
}

/// Discord closes a session with 4011 when its shard would hold more guilds than this.
pub const MAX_GUILDS_PER_SHARD: u64 = 2_500;

/// Closed when an IDENTIFY names a shard outside `0..num_shards`.
pub const CLOSE_INVALID_SHARD: u16 = 4010;
/// Closed when a session's shard would hold too many guilds.
pub const CLOSE_SHARDING_REQUIRED: u16 = 4011;
/// Closed when the token is no longer valid: after the day's IDENTIFYs ran out, Discord
/// resets the token and ends every session.
pub const CLOSE_AUTHENTICATION_FAILED: u16 = 4004;

impl Default for GatewayRules {
    /// Discord's rules for a small bot: one shard, 1000 IDENTIFYs a day, one bucket, 5 s.
    fn default() -> Self {
        Self {
            recommended_shards: 1,
            identify_total: 1_000,
            identify_remaining: 1_000,
            identify_reset_after: Duration::from_secs(24 * 3_600),
            max_concurrency: 1,
            identify_window: Duration::from_secs(5),
            bot_guilds: 1,
        }
    }
}

impl GatewayRules {
    /// Discord's rules with a 100 ms IDENTIFY window, for tests that start several instances:
    /// the rule is enforced (and the cluster's queue used) without 5 s between sessions.
    pub fn quick() -> Self {
        Self {
            identify_window: Duration::from_millis(100),
            ..Self::default()
        }
    }
}

/// Timing rules and identity of the fake.
#[derive(Clone, Debug)]
pub struct DiscordConfig {
    /// The bot's application id (and user id), as READY announces it.
    pub application_id: u64,
    /// How long after the dispatch the first callback is accepted (Discord: 3 s).
    pub ack_window: Duration,
    /// How long an interaction token works for webhooks (Discord: 15 min).
    pub token_ttl: Duration,
    /// The heartbeat interval HELLO announces (Discord: 41.25 s).
    pub heartbeat_interval: Duration,
    /// Dispatches kept per session for RESUME; older ones force a fresh IDENTIFY.
    pub replay_buffer: usize,
    /// How long a session without a socket keeps collecting dispatches for a RESUME.
    pub resume_window: Duration,
    /// `(instance, delay)`: the answers to that instance's interaction callbacks are held for
    /// `delay` after the fake has decided them (a slow path between one instance and
    /// Discord). The callback counts as accepted when decided, so a slow instance's claim can
    /// lapse after it answered, and a test can kill it between its answer and its next step.
    pub callback_delay: Option<(u32, Duration)>,
    /// Session starts, buckets, shards.
    pub gateway: GatewayRules,
}

impl Default for DiscordConfig {
    fn default() -> Self {
        Self {
            application_id: 1_170_000_000_000_000_001,
            ack_window: Duration::from_secs(3),
            token_ttl: Duration::from_secs(15 * 60),
            heartbeat_interval: Duration::from_millis(41_250),
            // Minutes of traffic at the simulator's rates; a killed instance's session must
            // not grow without bound while nobody resumes it.
            replay_buffer: 20_000,
            // Discord keeps a session resumable for a short while; a restarted process
            // identifies anew, so only a dropped socket within this window resumes.
            resume_window: Duration::from_secs(60),
            callback_delay: None,
            gateway: GatewayRules::default(),
        }
    }
}

impl DiscordConfig {
    /// Discord's rules with a quick IDENTIFY window ([`GatewayRules::quick`]), for tests.
    pub fn quick() -> Self {
        Self {
            gateway: GatewayRules::quick(),
            ..Self::default()
        }
    }
}

//! The plain data the fake Discord takes and gives: an interaction to send, what was sent,
//! sessions, gateway counters, the session start limit, registered commands.

use std::fmt;
use std::time::{Duration, Instant};

use super::{SIM_CHANNEL_ID, SIM_GUILD_ID};

/// One option value in `data.options`.
#[derive(Clone, Debug, PartialEq)]
pub enum OptionValue {
    String(String, String),
    Integer(String, i64),
    Bool(String, bool),
    /// A user option; the user also goes into `data.resolved.users`.
    User(String, u64),
}

/// What to send: a chat-input command from one user, in a guild or a DM.
#[derive(Clone, Debug, PartialEq)]
pub struct InteractionSpec {
    pub command: String,
    pub user_id: u64,
    pub username: String,
    /// `None` sends a DM interaction (top-level `user`, no `member`).
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    pub options: Vec<OptionValue>,
}

impl InteractionSpec {
    /// A command from `user_id` in the simulated guild.
    pub fn guild(command: &str, user_id: u64) -> Self {
        Self {
            command: command.into(),
            user_id,
            username: format!("user{user_id}"),
            guild_id: Some(SIM_GUILD_ID),
            channel_id: SIM_CHANNEL_ID,
            options: Vec::new(),
        }
    }

    /// A command from `user_id` in a DM with the bot (the channel id is derived from the user).
    pub fn dm(command: &str, user_id: u64) -> Self {
        Self {
            guild_id: None,
            channel_id: user_id ^ 0x5a5a,
            ..Self::guild(command, user_id)
        }
    }

    pub fn string(mut self, name: &str, value: &str) -> Self {
        self.options
            .push(OptionValue::String(name.into(), value.into()));
        self
    }

    pub fn integer(mut self, name: &str, value: i64) -> Self {
        self.options.push(OptionValue::Integer(name.into(), value));
        self
    }

    pub fn bool(mut self, name: &str, value: bool) -> Self {
        self.options.push(OptionValue::Bool(name.into(), value));
        self
    }

    pub fn user(mut self, name: &str, user_id: u64) -> Self {
        self.options.push(OptionValue::User(name.into(), user_id));
        self
    }
}

/// What [`FakeDiscord::send_interaction`] dispatched.
#[derive(Clone)]
pub struct SentInteraction {
    pub id: u64,
    /// The interaction token (a secret in real Discord: `Debug` hides it).
    pub token: String,
    pub sent_at: Instant,
    pub delivered_to: Vec<u32>,
}

impl fmt::Debug for SentInteraction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SentInteraction")
            .field("id", &self.id)
            .field("token", &"***")
            .field("delivered_to", &self.delivered_to)
            .finish()
    }
}

/// A session's view for tests and reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionInfo {
    pub session_id: String,
    pub instance: u32,
    /// `[shard_id, num_shards]` from its IDENTIFY.
    pub shard: [u32; 2],
    pub connected: bool,
    pub seq: u64,
}

/// Gateway counters per instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GatewayStats {
    /// IDENTIFYs accepted (each spends one of the day's session starts).
    pub identifies: u32,
    pub resumes: u32,
    /// Op 9 the client earned: an IDENTIFY over its bucket's rate, a RESUME of a session that
    /// is gone. Invalidations the simulator caused are in `invalidated`.
    pub invalid_sessions: u32,
    /// Sessions invalidated on purpose by [`FakeDiscord::invalidate_sessions`].
    pub invalidated: u32,
    /// Sockets the client closed with a close frame (the fake answers each with its own).
    pub clean_closes: u32,
    /// Sessions closed with 4011 (a bot that must shard connected with too few shards).
    pub sharding_required: u32,
}

/// `session_start_limit` as `GET /gateway/bot` reports it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStartLimit {
    pub total: u32,
    pub remaining: u32,
    pub reset_after: Duration,
    pub max_concurrency: u32,
}

/// A command registration as the fake stored it.
#[derive(Clone, Debug)]
pub struct RegisteredCommand {
    pub id: u64,
    pub name: String,
    pub guild_id: Option<u64>,
    pub instance: u32,
    pub body: serde_json::Value,
}

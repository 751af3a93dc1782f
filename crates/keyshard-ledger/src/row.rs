//! [`LedgerRow`]: one answered interaction, who asked, what ran, what it cost and how it went.
//! The durable buffer carries it as JSON; [`write_batch`](crate::write_batch) turns it into a
//! `ledger` row (see `migrations/0001_ledger.sql` for the column types).

use keyshard_routing::{created_at_ms, InstanceId, Reason};
use serde::{Deserialize, Serialize};

/// How the interaction ended for the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The final answer was the result.
    Ok,
    /// The user got an error message (`⚠️ …`).
    Failed,
    /// A check said no before any work (a quota, a cooldown, a permission).
    Refused,
}

impl Status {
    /// The `ledger.status` code.
    pub fn code(self) -> i16 {
        match self {
            Status::Ok => 0,
            Status::Failed => 1,
            Status::Refused => 2,
        }
    }
}

/// Why the serving instance answered: the routing decision of the claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Routing {
    /// The primary answered its own user.
    Primary,
    /// The primary was down; the next alive instance took over.
    PrimaryDown,
    /// The primary was overloaded or draining; the next available instance took over.
    PrimaryOverloaded,
    /// Every live instance was overloaded; the one with the smallest wait answered.
    AllOverloaded,
    /// The snapshot saw no instance alive.
    NoneAlive,
    /// Redis was unreachable: the static rule (the primary answers) decided.
    Degraded,
    /// Recorded by the fallback whose sweep took the lapsed claim of the instance that
    /// answered (`served_by`) and died or stalled before confirming it
    /// (`migrations/0002_recovered_reason.sql`); or a job that fallback queued because that
    /// instance acknowledged and died or stalled before queueing it (`served_by` the instance
    /// that ran it, `migrations/0004_recovered_job_reason.sql`).
    Recovered,
}

impl Routing {
    /// The `ledger.reason` code.
    pub fn code(self) -> i16 {
        match self {
            Routing::Primary => 0,
            Routing::PrimaryDown => 1,
            Routing::PrimaryOverloaded => 2,
            Routing::AllOverloaded => 3,
            Routing::NoneAlive => 4,
            Routing::Degraded => 5,
            Routing::Recovered => 6,
        }
    }
}

impl From<Reason> for Routing {
    fn from(r: Reason) -> Routing {
        match r {
            Reason::Primary => Routing::Primary,
            Reason::PrimaryDown => Routing::PrimaryDown,
            Reason::PrimaryOverloaded => Routing::PrimaryOverloaded,
            Reason::AllOverloaded => Routing::AllOverloaded,
            Reason::NoneAlive => Routing::NoneAlive,
        }
    }
}

/// One answered interaction. Built by the bot when the final answer has been posted (or the
/// interaction was answered without a job), recorded with
/// [`LedgerWriter::record`](crate::LedgerWriter::record). Times are Unix milliseconds.
///
/// Never holds a secret: the provider key appears only as its fingerprint
/// (`Secret::fingerprint`, 12 hex digits), the interaction token not at all, and
/// `error_class` is a class name, never an error text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerRow {
    /// The interaction's snowflake: the row's identity (one row per interaction, whichever
    /// instance or run writes it).
    pub interaction_id: u64,
    pub user_id: u64,
    /// `None` in direct messages.
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    /// The command's stable name (`chat`, `image`, `video`, …).
    pub command: String,
    /// The user's primary instance, `user % N + 1`.
    pub primary: InstanceId,
    /// The instance that posted the final answer.
    pub served_by: InstanceId,
    pub reason: Routing,
    /// The job was moved from a dead instance by a rescuer.
    #[serde(default)]
    pub rescued: bool,
    /// The job was taken from a busy peer's queue by an idle instance.
    #[serde(default)]
    pub stolen: bool,
    /// The job was moved to a peer because of this instance's key (auth, quota, balance).
    #[serde(default)]
    pub moved: bool,
    /// `openai`, `minimax`, `stability`; `None` when no provider was called.
    pub provider: Option<String>,
    pub model: Option<String>,
    /// The fingerprint of the key that served (12 hex digits), never the key.
    pub key_fp: Option<String>,
    #[serde(default)]
    pub tokens_in: u32,
    #[serde(default)]
    pub tokens_out: u32,
    #[serde(default)]
    pub images: u32,
    #[serde(default)]
    pub video_secs: u32,
    /// Estimated cost in micro-dollars ([`PriceTable::estimate_cost`](crate::PriceTable::estimate_cost)).
    #[serde(default)]
    pub cost_micros: u64,
    pub status: Status,
    /// Why it failed (an `ErrorClass` name or a bot-side class); `None` when ok.
    pub error_class: Option<String>,
    /// When the interaction was created (its snowflake time).
    pub created_ms: u64,
    pub acked_ms: Option<u64>,
    /// When the run that answered started (a rescued job: the rescuer's run).
    pub started_ms: Option<u64>,
    pub finished_ms: u64,
    /// Time spent in provider calls.
    pub provider_ms: Option<u64>,
}

impl LedgerRow {
    /// A row for an interaction answered without a provider call, created at its snowflake's
    /// time; the caller fills in the rest (`provider`, tokens, times, …) as it knows them.
    // Every argument is a column no row can do without; a builder would let one be forgotten.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        interaction_id: u64,
        user_id: u64,
        channel_id: u64,
        command: impl Into<String>,
        primary: InstanceId,
        served_by: InstanceId,
        reason: Routing,
        finished_ms: u64,
    ) -> LedgerRow {
        LedgerRow {
            interaction_id,
            user_id,
            guild_id: None,
            channel_id,
            command: command.into(),
            primary,
            served_by,
            reason,
            rescued: false,
            stolen: false,
            moved: false,
            provider: None,
            model: None,
            key_fp: None,
            tokens_in: 0,
            tokens_out: 0,
            images: 0,
            video_secs: 0,
            cost_micros: 0,
            status: Status::Ok,
            error_class: None,
            created_ms: created_at_ms(interaction_id),
            acked_ms: None,
            started_ms: None,
            finished_ms,
            provider_ms: None,
        }
    }

    /// The key fingerprint as the bigint the table stores; `None` without one or when it is
    /// not hex of at most 16 digits (the row is kept, without the key).
    pub(crate) fn key_fp_code(&self) -> Option<i64> {
        parse_key_fp(self.key_fp.as_deref()?)
    }

    /// Milliseconds after creation, as the table's int4 offsets (clamped: a clock a little
    /// behind Discord's can make one negative; a whole month cannot fit and is clamped).
    pub(crate) fn offset(&self, at_ms: u64) -> i32 {
        let d = at_ms as i128 - self.created_ms as i128;
        d.clamp(i32::MIN as i128, i32::MAX as i128) as i32
    }
}

/// A 12-hex-digit fingerprint as an integer (a value of at most 16 hex digits).
pub(crate) fn parse_key_fp(hex: &str) -> Option<i64> {
    if hex.is_empty() || hex.len() > 16 {
        return None;
    }
    // `as`: a 64-bit value round-trips through i64 unchanged; real fingerprints are 48 bits.
    u64::from_str_radix(hex, 16).ok().map(|v| v as i64)
}

/// The 12-digit form of a stored fingerprint (what `Secret::fingerprint` printed).
pub fn format_key_fp(code: i64) -> String {
    format!("{:012x}", code as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshard_routing::snowflake_at;

    #[test]
    fn json_round_trips_and_defaults_fill_the_counters() {
        let id = snowflake_at(1_750_000_000_000, 1);
        let mut row = LedgerRow::new(id, 7, 8, "chat", 2, 3, Routing::PrimaryDown, 1);
        row.key_fp = Some("0a1b2c3d4e5f".into());
        let json = serde_json::to_string(&row).unwrap();
        assert!(json.contains("\"reason\":\"primary_down\""), "{json}");
        assert_eq!(serde_json::from_str::<LedgerRow>(&json).unwrap(), row);
        assert_eq!(row.created_ms, 1_750_000_000_000);

        // A row from a build that did not know the counters yet still parses.
        let minimal = r#"{"interaction_id":1,"user_id":2,"guild_id":null,"channel_id":3,
            "command":"chat","primary":1,"served_by":1,"reason":"degraded","provider":null,
            "model":null,"key_fp":null,"status":"refused","error_class":null,"created_ms":5,
            "acked_ms":null,"started_ms":null,"finished_ms":6,"provider_ms":null}"#;
        let parsed: LedgerRow = serde_json::from_str(minimal).unwrap();
        assert_eq!((parsed.tokens_in, parsed.rescued), (0, false));
        assert_eq!(parsed.status.code(), 2);
        assert_eq!(parsed.reason.code(), 5);
    }

    #[test]
    fn codes_are_distinct_and_match_the_migration_comments() {
        let routing = [
            Routing::Primary,
            Routing::PrimaryDown,
            Routing::PrimaryOverloaded,
            Routing::AllOverloaded,
            Routing::NoneAlive,
            Routing::Degraded,
            Routing::Recovered,
        ];
        let codes: Vec<i16> = routing.iter().map(|r| r.code()).collect();
        assert_eq!(codes, vec![0, 1, 2, 3, 4, 5, 6]);
        assert_eq!(Routing::from(Reason::AllOverloaded), Routing::AllOverloaded);
        let sql = include_str!("../../../migrations/0001_ledger.sql");
        assert!(sql.contains("0 primary, 1 primary down, 2 primary overloaded, 3 all overloaded, 4 none alive, 5 degraded"));
        assert!(sql.contains("0 ok, 1 failed (the user got an error message), 2 refused"));
        let recovered = include_str!("../../../migrations/0002_recovered_reason.sql");
        assert!(recovered.contains("5 degraded (Redis unreachable, static rule), 6 recovered"));
        assert_eq!(
            [Status::Ok, Status::Failed, Status::Refused].map(Status::code),
            [0, 1, 2]
        );
    }

    #[test]
    fn fingerprints_and_offsets_convert() {
        assert_eq!(parse_key_fp("0a1b2c3d4e5f"), Some(0x0a1b_2c3d_4e5f));
        assert_eq!(format_key_fp(0x0a1b_2c3d_4e5f), "0a1b2c3d4e5f");
        assert_eq!(parse_key_fp("not hex"), None);
        assert_eq!(parse_key_fp(""), None);
        assert_eq!(parse_key_fp("ffffffffffffffff"), Some(-1));
        assert_eq!(format_key_fp(-1), "ffffffffffffffff");
        assert_eq!(parse_key_fp("1ffffffffffffffff"), None);

        let t = 1_750_000_000_000;
        let row = LedgerRow::new(snowflake_at(t, 0), 1, 1, "c", 1, 1, Routing::Primary, 0);
        assert_eq!(row.offset(t + 250), 250);
        assert_eq!(row.offset(t - 10), -10);
        assert_eq!(row.offset(u64::MAX), i32::MAX);
    }
}

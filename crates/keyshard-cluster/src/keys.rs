//! The Redis key layout (see the Redis-keys table in ARCHITECTURE.md).

use keyshard_routing::InstanceId;

/// `{c}:hb:{id}`: instance `id`'s heartbeat, a JSON [`Heartbeat`](crate::Heartbeat) with a TTL.
pub fn heartbeat(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:hb:{id}")
}

/// `{c}:claim:{interaction_id}`: the instance that won the interaction.
pub fn claim(cluster: &str, interaction_id: u64) -> String {
    format!("{cluster}:claim:{interaction_id}")
}

/// `{c}:gen`: a value set once per Redis lifetime (`SET NX`); a new value means Redis
/// restarted empty.
pub fn generation(cluster: &str) -> String {
    format!("{cluster}:gen")
}

/// `{c}:ledger:{id}`: instance `id`'s usage-ledger rows waiting for Postgres (a stream, group
/// `writers`; see [`ledger`](crate::ledger)).
pub fn ledger_stream(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:ledger:{id}")
}

/// `{c}:ledger-takeover:{dead}`: the peer writing a dead instance's ledger stream.
pub fn ledger_takeover(cluster: &str, dead: InstanceId) -> String {
    format!("{cluster}:ledger-takeover:{dead}")
}

/// How long a claim key lives: Discord keeps an interaction token valid for 15 minutes, after
/// which no instance can answer it anyway, so the key is no longer needed.
pub const CLAIM_TTL_MS: u64 = 15 * 60 * 1000;

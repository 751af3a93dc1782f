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

/// How long a claim key lives: Discord keeps an interaction token valid for 15 minutes, after
/// which no instance can answer it anyway, so the key is no longer needed.
pub const CLAIM_TTL_MS: u64 = 15 * 60 * 1000;

/// `{c}:rpd:{provider}:{key fingerprint}:{day}`: requests sent today with one provider key
/// (`day` is the UTC `YYYY-MM-DD`), so a restart does not reset the count. The key itself
/// never appears, only its fingerprint.
pub fn requests_per_day(cluster: &str, provider: &str, fingerprint: &str, day: &str) -> String {
    format!("{cluster}:rpd:{provider}:{fingerprint}:{day}")
}

//! The Redis key layout (see the Redis-keys table in ARCHITECTURE.md): every key, stream,
//! consumer group and consumer name the cluster uses is built here and nowhere else.

use keyshard_routing::InstanceId;

use crate::jobs::JobKind;

/// `{c}:hb:{id}`: instance `id`'s heartbeat, a JSON [`Heartbeat`](crate::Heartbeat) with a TTL.
pub fn heartbeat(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:hb:{id}")
}

/// `{c}:claim:{interaction_id}`: the instance that won the interaction.
pub fn claim(cluster: &str, interaction_id: u64) -> String {
    format!("{cluster}:claim:{interaction_id}")
}

/// `{c}:gen`: a value set once per life of Redis's data (`SET NX`); a new value means Redis
/// restarted empty. A restart that kept the data keeps it too: `INFO server`'s `run_id` tells
/// those (see `cluster::restart`).
pub fn generation(cluster: &str) -> String {
    format!("{cluster}:gen")
}

/// `{c}:jobs:{instance}:{kind}`: instance `instance`'s stream of jobs of one kind.
pub fn job_stream(cluster: &str, instance: InstanceId, kind: JobKind) -> String {
    format!("{cluster}:jobs:{instance}:{}", kind.as_str())
}

/// The consumer group every job stream has.
pub const JOB_GROUP: &str = "workers";

/// `i{id}`: the consumer instance `id`'s workers read its own streams as. A peer taking a
/// waiting job reads as this consumer too, so an entry it fails to move stays in `id`'s
/// pending list.
pub fn job_consumer(id: InstanceId) -> String {
    format!("i{id}")
}

/// `pool`: the consumer that holds a job stream's entries read ahead for the fair pick
/// (waiting, in the pending list, so a dead instance's rescue still finds them). A worker's
/// pick moves one to `i{id}` (or a thief's move to its peer's `i{id}`) with `XCLAIM`.
pub const JOB_POOL: &str = "pool";

/// `{c}:busy:{id}`: a hash, user id → that user's jobs instance `id` runs now (taken by the
/// fair pick); summed over instances it is the user's service in hand.
pub fn busy(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:busy:{id}")
}

/// `{c}:served`: a hash, user id → the sequence number of the last fair pick of that user's
/// job, and field `seq`, the counter those numbers come from.
pub fn served(cluster: &str) -> String {
    format!("{cluster}:served")
}

/// `rescue-{id}`: the consumer instance `id` moves a dead instance's entries as.
pub fn rescue_consumer(id: InstanceId) -> String {
    format!("rescue-{id}")
}

/// `{c}:done:{job_id}`: the run that posts a job's final answer (`SET NX`), so it goes out once.
pub fn done(cluster: &str, job_id: u64) -> String {
    format!("{cluster}:done:{job_id}")
}

/// `{c}:wedit:{job_id}`: a waiting edit of the job's reply is on its way (the sender's id);
/// the job's first run waits until it is gone, so no waiting edit lands after the answer.
pub fn waiting_edit(cluster: &str, job_id: u64) -> String {
    format!("{cluster}:wedit:{job_id}")
}

/// `{c}:started:{job_id}`: a run of the job has begun; no waiting edit follows.
pub fn job_started(cluster: &str, job_id: u64) -> String {
    format!("{cluster}:started:{job_id}")
}

/// `{c}:jobstate:{job_id}`: a job's resumable progress (e.g. a provider's task id).
pub fn job_state(cluster: &str, job_id: u64) -> String {
    format!("{cluster}:jobstate:{job_id}")
}

/// `{c}:rescue:{dead}`: the one instance moving dead instance `dead`'s jobs.
pub fn rescue(cluster: &str, dead: InstanceId) -> String {
    format!("{cluster}:rescue:{dead}")
}

/// `{c}:conv:{user}:{channel}`: the conversation memory of a user in a channel.
pub fn conversation(cluster: &str, user: u64, channel: u64) -> String {
    format!("{cluster}:conv:{user}:{channel}")
}

/// `{c}:stats:{unix_minute}`: the cluster's counters of one minute.
pub fn stats(cluster: &str, unix_minute: u64) -> String {
    format!("{cluster}:stats:{unix_minute}")
}

/// `{c}:info:{id}`: instance `id`'s published document (remaining key budget).
pub fn info(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:info:{id}")
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

/// `{c}:rpd:{provider}:{key fingerprint}:{day}`: requests sent today with one provider key
/// (`day` is the UTC `YYYY-MM-DD`), so a restart does not reset the count. The key itself
/// never appears, only its fingerprint.
pub fn requests_per_day(cluster: &str, provider: &str, fingerprint: &str, day: &str) -> String {
    format!("{cluster}:rpd:{provider}:{fingerprint}:{day}")
}

/// `{c}:keyout:{provider}:{key fingerprint}`: a provider key out of service for the whole
/// cluster (auth, quota or balance errors); the value names the instance that probes it.
pub fn key_out(cluster: &str, provider: &str, fingerprint: &str) -> String {
    format!("{cluster}:keyout:{provider}:{fingerprint}")
}

/// `{c}:gw:identify:{bucket}`: the last IDENTIFY of a rate-limit bucket (`shard_id %
/// max_concurrency`), `NX PX` the IDENTIFY window; the value names who sent it.
pub fn identify_slot(cluster: &str, bucket: u32) -> String {
    format!("{cluster}:gw:identify:{bucket}")
}

/// `{c}:gw:budget`: the session starts (IDENTIFYs) left in Discord's day for this cluster's
/// token, expiring when the day resets.
pub fn identify_budget(cluster: &str) -> String {
    format!("{cluster}:gw:budget")
}

/// `{c}:gw:restarts:{id}`: instance `id`'s starts since its last clean stop or stable run.
pub fn restarts(cluster: &str, id: InstanceId) -> String {
    format!("{cluster}:gw:restarts:{id}")
}

/// `{c}:commands:hash`: the hash of the command set last registered with Discord.
pub fn commands_hash(cluster: &str) -> String {
    format!("{cluster}:commands:hash")
}

/// `{c}:commands:lock`: the one instance registering a changed command set.
pub fn commands_lock(cluster: &str) -> String {
    format!("{cluster}:commands:lock")
}

/// `{c}:quota:{day}:u:{user}:{command}`: requests of a user and command accepted on `day`
/// (`YYYY-MM-DD` in `QUOTA_TIMEZONE`), reserved by the quota script, given back on a refund.
pub fn quota_user_day(cluster: &str, day: &str, user: u64, command: &str) -> String {
    format!("{cluster}:quota:{day}:u:{user}:{command}")
}

/// `{c}:quota:{day}:g:{guild}:{command}`: requests of a guild and command accepted on `day`.
pub fn quota_guild_day(cluster: &str, day: &str, guild: u64, command: &str) -> String {
    format!("{cluster}:quota:{day}:g:{guild}:{command}")
}

/// The pattern of every user's daily quota counter on `day` (for the reconciliation's `SCAN`).
pub fn quota_user_day_pattern(cluster: &str, day: &str) -> String {
    format!("{cluster}:quota:{day}:u:*")
}

/// `{c}:quota:cd:{user}:{command}`: a user's cooldown for a command, alive while it runs.
pub fn quota_cooldown(cluster: &str, user: u64, command: &str) -> String {
    format!("{cluster}:quota:cd:{user}:{command}")
}

/// `{c}:quota:resv:{interaction_id}`: what the quota script decided for an interaction (and
/// which counters it reserved), so a second call returns the first verdict and a refund gives
/// back exactly what was taken, once.
pub fn quota_reservation(cluster: &str, interaction_id: u64) -> String {
    format!("{cluster}:quota:resv:{interaction_id}")
}

/// `{c}:quota:overrides`: the admins' overrides (a hash, the cache of Postgres's
/// `quota_overrides`), read by the quota script in the same step as the counters.
pub fn quota_overrides(cluster: &str) -> String {
    format!("{cluster}:quota:overrides")
}

/// A field of [`quota_overrides`]: `u:{user}:{command}:{daily|cooldown}` or
/// `g:{guild}:{command}:daily`.
pub fn quota_override_field(scope: char, id: u64, command: &str, what: &str) -> String {
    format!("{scope}:{id}:{command}:{what}")
}

/// The field of [`quota_overrides`] that says the hash was loaded from Postgres since Redis
/// started: without it (Redis restarted empty) the cache is reloaded.
pub const QUOTA_OVERRIDES_LOADED: &str = "loaded";

/// `{c}:quota:reconcile`: the one instance comparing the counters with the ledger.
pub fn quota_reconcile_lock(cluster: &str) -> String {
    format!("{cluster}:quota:reconcile")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout is a contract with operators (ARCHITECTURE.md) and with older instances
    /// during a rolling restart: a changed key would split the cluster in two.
    #[test]
    fn keys_match_the_documented_layout() {
        let c = "ks";
        let got = [
            heartbeat(c, 2),
            claim(c, 99),
            generation(c),
            job_stream(c, 3, JobKind::Video),
            done(c, 7),
            job_state(c, 7),
            rescue(c, 4),
            conversation(c, 11, 12),
            stats(c, 29_000_000),
            info(c, 1),
            job_consumer(3),
            rescue_consumer(2),
            requests_per_day(c, "openai", "ab12", "2026-11-30"),
            ledger_stream(c, 2),
            ledger_takeover(c, 3),
            identify_slot(c, 0),
            identify_budget(c),
            restarts(c, 2),
            commands_hash(c),
            commands_lock(c),
            quota_user_day(c, "2026-11-30", 5, "image"),
            quota_guild_day(c, "2026-11-30", 6, "video"),
            quota_cooldown(c, 5, "chat"),
            quota_reservation(c, 99),
            quota_overrides(c),
            quota_override_field('u', 5, "image", "daily"),
            quota_reconcile_lock(c),
            key_out(c, "openai", "ab12"),
            busy(c, 2),
            served(c),
            waiting_edit(c, 7),
            job_started(c, 7),
        ];
        let want = [
            "ks:hb:2",
            "ks:claim:99",
            "ks:gen",
            "ks:jobs:3:video",
            "ks:done:7",
            "ks:jobstate:7",
            "ks:rescue:4",
            "ks:conv:11:12",
            "ks:stats:29000000",
            "ks:info:1",
            "i3",
            "rescue-2",
            "ks:rpd:openai:ab12:2026-11-30",
            "ks:ledger:2",
            "ks:ledger-takeover:3",
            "ks:gw:identify:0",
            "ks:gw:budget",
            "ks:gw:restarts:2",
            "ks:commands:hash",
            "ks:commands:lock",
            "ks:quota:2026-11-30:u:5:image",
            "ks:quota:2026-11-30:g:6:video",
            "ks:quota:cd:5:chat",
            "ks:quota:resv:99",
            "ks:quota:overrides",
            "u:5:image:daily",
            "ks:quota:reconcile",
            "ks:keyout:openai:ab12",
            "ks:busy:2",
            "ks:served",
            "ks:wedit:7",
            "ks:started:7",
        ];
        assert_eq!(got, want);
    }
}

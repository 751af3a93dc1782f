//! Quotas and cooldowns enforced across the cluster (DESIGN §8): one Lua script per
//! interaction, run by the instance that won its claim, checks every rule that applies (the
//! user's day, the guild's day, the user's cooldown; admins' overrides from the cached hash)
//! and reserves them all only when all pass, so concurrent requests on N instances can never
//! overrun a limit: Redis runs scripts one at a time, and the check and the deduction are the
//! same step. The policy (the order of the rules, what "today" is) is
//! `keyshard_routing::quota`; this module is the mechanism.
//!
//! The verdict is recorded under the interaction id (`{c}:quota:resv:{id}`): a second call for
//! the same interaction (a retry after a timeout, a sweep by a fallback) returns the first
//! verdict and reserves nothing more, and [`Quotas::refund`] gives back exactly what was
//! reserved, once.
//!
//! While Redis fails, each instance limits by its own counters ([`Local`], the same
//! [`judge`]): degraded, logged once, counted; a limit then holds per instance only, so the
//! cluster may accept up to N times a limit, but it never refuses everything.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshard_routing::{judge, Day, Limits, Override, Plan, QuotaCommand, Rule, Used, Verdict};

use crate::conn::Redis;
use crate::{keys, Cluster, ClusterError};

mod local;
mod scripts;

use local::Local;
use scripts::{ADMIT, REFUND};

/// The time budget of the calls off the acknowledgement path (refund, `/사용량`, `/한도`):
/// the claim's budget, far above a healthy round trip.
pub const QUOTA_BUDGET: Duration = Duration::from_millis(250);

/// The longest one attempt of the admission script may take: the connection's own response
/// limit. The caller's budget (what is left of the acknowledgement window) may allow more
/// than one attempt.
const ADMIT_ATTEMPT: Duration = Duration::from_secs(1);

/// An attempt with less time than this left is not started: no round trip fits.
const ADMIT_MIN_ATTEMPT: Duration = Duration::from_millis(50);

/// How long a reservation record lives: long enough for the slowest job to fail and refund
/// (a video may take 30 minutes, a rescued one twice that), short enough not to pile up.
pub const RESERVATION_TTL_MS: u64 = 2 * 3_600_000;

/// A daily counter outlives its day by this much: an instance whose clock runs a little behind
/// still finds yesterday's counter for its last requests, and the reconciliation can still
/// read a day that has just ended.
pub const DAY_MARGIN_MS: u64 = 3_600_000;

/// One interaction asking to be admitted.
#[derive(Clone, Debug)]
pub struct QuotaAsk {
    pub interaction_id: u64,
    pub user: u64,
    pub guild: Option<u64>,
    pub command: QuotaCommand,
    /// The defaults from env; the script applies the admins' overrides itself.
    pub defaults: Limits,
    pub day: Day,
    pub now_ms: u64,
}

/// The verdict, and whether it came from this instance's own counters (Redis failed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaDecision {
    pub verdict: Verdict,
    pub degraded: bool,
}

/// Whom an override is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    User(u64),
    Guild(u64),
}

impl Scope {
    fn fields(self, command: QuotaCommand) -> (String, Option<String>) {
        let c = command.as_str();
        match self {
            Scope::User(u) => (
                keys::quota_override_field('u', u, c, "daily"),
                Some(keys::quota_override_field('u', u, c, "cooldown")),
            ),
            Scope::Guild(g) => (keys::quota_override_field('g', g, c, "daily"), None),
        }
    }
}

/// One command's counters as read: the user's day, the guild's day, the cooldown's PTTL,
/// and the overrides' fields (user daily, user cooldown, guild daily).
type RawStanding = (Option<u64>, Option<u64>, i64, Vec<Option<u32>>);

/// A counter a reservation took: (day, whose, command).
type Taken = (String, Scope, QuotaCommand);

/// A user's standing for one command today, for `/사용량`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Standing {
    pub used: Used,
    /// The defaults with the overrides merged.
    pub limits: Limits,
}

/// Counters and gauges of the quota mechanism, for `/metrics`.
#[derive(Debug, Default)]
pub struct QuotaStats {
    /// Verdicts from the local counters because Redis failed.
    pub degraded_decisions: AtomicU64,
    /// Refunds that gave counts back.
    pub refunds: AtomicU64,
    /// The last reconciliation's drift (|reserved − answered| summed), or 0.
    pub drift: AtomicU64,
}

/// The cluster's quotas, on the instance's one Redis connection. Cheap to clone.
#[derive(Clone)]
pub struct Quotas {
    cluster: Cluster,
    redis: Arc<Redis>,
    prefix: String,
    local: Arc<Mutex<Local>>,
    degraded: Arc<AtomicBool>,
    pub stats: Arc<QuotaStats>,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Quotas {
    pub fn new(cluster: &Cluster) -> Quotas {
        Quotas {
            cluster: cluster.clone(),
            redis: cluster.redis(),
            prefix: cluster.config().cluster_name.clone(),
            local: Arc::default(),
            degraded: Arc::default(),
            stats: Arc::default(),
        }
    }

    /// Whether any override is known to this instance (loaded from Postgres or written here):
    /// with no default limit either, the claim path skips the script.
    pub fn has_overrides(&self) -> bool {
        !self.local.lock().expect("quota lock").overrides.is_empty()
    }

    /// Whether the last decision came from the local counters.
    pub fn is_degraded(&self) -> bool {
        self.degraded.load(Ordering::Relaxed)
    }

    /// Checks every rule for `ask` and, only when all pass, reserves them all, in one atomic
    /// step; idempotent per interaction. While Redis fails, the local counters decide.
    ///
    /// `budget` is how long the caller can wait (what is left of the acknowledgement window).
    /// A slow answer is not a failed Redis: a timed-out attempt may have run, and the next
    /// attempt returns its verdict (the reservation record), so a timeout is retried within
    /// the budget instead of falling back at once to local counters, which would let every
    /// instance admit up to the limit again under load. Only a Redis that refuses, a budget
    /// spent, or a timeout while the cluster already finds Redis unreachable falls back.
    pub async fn admit(&self, ask: &QuotaAsk, budget: Duration) -> QuotaDecision {
        let started = std::time::Instant::now();
        let result = loop {
            // While the cluster already finds Redis unreachable, one short attempt (the
            // claim's budget): a Redis that silently drops packets must not cost every
            // limited command the whole window.
            let degraded = self.cluster.is_degraded();
            let left = budget.saturating_sub(started.elapsed());
            let attempt = if degraded {
                QUOTA_BUDGET
            } else {
                left.clamp(ADMIT_MIN_ATTEMPT, ADMIT_ATTEMPT)
            };
            match self.admit_redis(ask, attempt).await {
                Err(e)
                    if e.is_timeout()
                        && !degraded
                        && budget.saturating_sub(started.elapsed()) >= ADMIT_MIN_ATTEMPT =>
                {
                    tracing::debug!(
                        interaction = ask.interaction_id,
                        "quota script slow ({e}); asking again"
                    );
                }
                other => break other,
            }
        };
        match result {
            Ok(verdict) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!("quotas: Redis answers again; counting in Redis");
                }
                QuotaDecision {
                    verdict,
                    degraded: false,
                }
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        "quotas degraded: Redis failed ({e}); limiting by this instance's own counters"
                    );
                }
                self.stats
                    .degraded_decisions
                    .fetch_add(1, Ordering::Relaxed);
                let verdict = self.local.lock().expect("quota lock").admit(ask);
                QuotaDecision {
                    verdict,
                    degraded: true,
                }
            }
        }
    }

    async fn admit_redis(&self, ask: &QuotaAsk, budget: Duration) -> Result<Verdict, ClusterError> {
        let p = &self.prefix;
        let c = ask.command.as_str();
        let resv = keys::quota_reservation(p, ask.interaction_id);
        let uday = keys::quota_user_day(p, &ask.day.date, ask.user, c);
        let gday = keys::quota_guild_day(p, &ask.day.date, ask.guild.unwrap_or(0), c);
        let cd = keys::quota_cooldown(p, ask.user, c);
        let ov = keys::quota_overrides(p);
        let (u_daily, u_cd) = Scope::User(ask.user).fields(ask.command);
        let (g_daily, _) = Scope::Guild(ask.guild.unwrap_or(0)).fields(ask.command);
        let to_reset = ask.day.next_ms.saturating_sub(ask.now_ms);
        let day_ttl = to_reset + DAY_MARGIN_MS;
        let d = ask.defaults;
        let script = &*ADMIT;
        // Retried once on a broken connection: the reservation record makes a second run
        // return the first verdict, so the retry cannot count twice.
        let reply: Vec<String> = self
            .redis
            .run_retrying("quota admit", budget, |mut conn| {
                let mut inv = script.prepare_invoke();
                inv.key(&resv).key(&uday).key(&gday).key(&cd).key(&ov);
                inv.arg(d.user_daily)
                    .arg(d.guild_daily)
                    .arg(d.cooldown_secs)
                    .arg(ask.now_ms)
                    .arg(to_reset)
                    .arg(u8::from(ask.guild.is_some()))
                    .arg(&u_daily)
                    .arg(u_cd.as_deref().unwrap_or(""))
                    .arg(&g_daily)
                    .arg(RESERVATION_TTL_MS)
                    .arg(day_ttl);
                async move { inv.invoke_async(&mut conn).await }
            })
            .await?;
        Ok(parse_verdict(&reply))
    }

    /// Gives back the daily counts that interaction `interaction_id` reserved (a job that
    /// failed, a job that was never queued, or a request refused by another check after its
    /// reservation, such as the maximum-wait refusal). Idempotent: `true` only for the call
    /// that gave something back. Never fails the caller: an error is logged.
    pub async fn refund(&self, interaction_id: u64) -> bool {
        if self
            .local
            .lock()
            .expect("quota lock")
            .refund(interaction_id)
        {
            self.stats.refunds.fetch_add(1, Ordering::Relaxed);
            return true;
        }
        let key = keys::quota_reservation(&self.prefix, interaction_id);
        let script = &*REFUND;
        let r: Result<i64, _> = self
            .redis
            .run_retrying("quota refund", QUOTA_BUDGET, |mut c| {
                let mut inv = script.prepare_invoke();
                inv.key(&key);
                async move { inv.invoke_async(&mut c).await }
            })
            .await;
        match r {
            Ok(1) => {
                self.stats.refunds.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(_) => false,
            Err(e) => {
                tracing::warn!(interaction = interaction_id, "quota refund failed: {e}");
                false
            }
        }
    }

    /// A user's counts, cooldown and effective limits for every command today (`/사용량`).
    pub async fn standing(
        &self,
        user: u64,
        guild: Option<u64>,
        defaults: &[Limits; 3],
        day: &Day,
        now_ms: u64,
    ) -> Result<Vec<(QuotaCommand, Standing)>, ClusterError> {
        let p = self.prefix.clone();
        let day_s = day.date.clone();
        let raw: Vec<RawStanding> = self
            .redis
            .run("quota standing", QUOTA_BUDGET, move |mut c| async move {
                let mut pipe = redis::pipe();
                for cmd in QuotaCommand::ALL {
                    let s = cmd.as_str();
                    let (ud, ucd) = Scope::User(user).fields(cmd);
                    let (gd, _) = Scope::Guild(guild.unwrap_or(0)).fields(cmd);
                    pipe.cmd("GET")
                        .arg(keys::quota_user_day(&p, &day_s, user, s))
                        .cmd("GET")
                        .arg(keys::quota_guild_day(&p, &day_s, guild.unwrap_or(0), s))
                        .cmd("PTTL")
                        .arg(keys::quota_cooldown(&p, user, s))
                        .cmd("HMGET")
                        .arg(keys::quota_overrides(&p))
                        .arg(ud)
                        .arg(ucd.unwrap_or_default())
                        .arg(gd);
                }
                let flat: Vec<redis::Value> = pipe.query_async(&mut c).await?;
                let mut out = Vec::new();
                for chunk in flat.chunks(4) {
                    out.push((
                        redis::from_redis_value(chunk[0].clone())?,
                        redis::from_redis_value(chunk[1].clone())?,
                        redis::from_redis_value(chunk[2].clone())?,
                        redis::from_redis_value(chunk[3].clone())?,
                    ));
                }
                Ok(out)
            })
            .await?;
        Ok(QuotaCommand::ALL
            .into_iter()
            .zip(raw)
            .map(|(cmd, (u, g, pttl, ov))| {
                let user_ov = Override {
                    daily: ov.first().copied().flatten(),
                    cooldown_secs: ov.get(1).copied().flatten(),
                };
                let guild_ov = Override {
                    daily: ov.get(2).copied().flatten(),
                    cooldown_secs: None,
                };
                let limits = keyshard_routing::merge(defaults[cmd as usize], user_ov, guild_ov);
                let used = Used {
                    user_today: u.unwrap_or(0),
                    guild_today: if guild.is_some() { g.unwrap_or(0) } else { 0 },
                    cooldown_until_ms: (pttl > 0).then(|| now_ms + pttl as u64),
                };
                (cmd, Standing { used, limits })
            })
            .collect())
    }

    /// Writes one override into the cache (after Postgres has it). `None` clears that field.
    pub async fn cache_override(
        &self,
        scope: Scope,
        command: QuotaCommand,
        o: Override,
    ) -> Result<(), ClusterError> {
        let (daily_f, cd_f) = scope.fields(command);
        let key = keys::quota_overrides(&self.prefix);
        {
            let mut local = self.local.lock().expect("quota lock");
            if o == Override::default() {
                local.overrides.remove(&(scope, command));
            } else {
                local.overrides.insert((scope, command), o);
            }
        }
        self.redis
            .run("quota override", QUOTA_BUDGET, move |mut c| async move {
                let mut pipe = redis::pipe();
                pipe.atomic();
                let mut put = |field: String, v: Option<u32>| match v {
                    Some(v) => {
                        pipe.cmd("HSET").arg(&key).arg(field).arg(v).ignore();
                    }
                    None => {
                        pipe.cmd("HDEL").arg(&key).arg(field).ignore();
                    }
                };
                put(daily_f, o.daily);
                if let Some(f) = cd_f {
                    put(f, o.cooldown_secs);
                }
                pipe.query_async::<()>(&mut c).await
            })
            .await
    }

    /// Replaces this instance's own copy of the overrides (for its local counters and for
    /// [`has_overrides`](Self::has_overrides)) without touching Redis.
    pub fn remember(&self, all: &[(Scope, QuotaCommand, Override)]) {
        self.local.lock().expect("quota lock").overrides =
            all.iter().map(|(s, c, o)| ((*s, *c), *o)).collect();
    }

    /// Whether the cache holds what Postgres had when it was loaded since Redis started.
    pub async fn cache_loaded(&self) -> Result<bool, ClusterError> {
        let key = keys::quota_overrides(&self.prefix);
        self.redis
            .run("quota cache check", QUOTA_BUDGET, move |mut c| async move {
                redis::cmd("HEXISTS")
                    .arg(&key)
                    .arg(keys::QUOTA_OVERRIDES_LOADED)
                    .query_async(&mut c)
                    .await
            })
            .await
    }

    /// Replaces the cache with `all` (every override in Postgres), in one atomic step.
    pub async fn load_cache(
        &self,
        all: Vec<(Scope, QuotaCommand, Override)>,
    ) -> Result<(), ClusterError> {
        let key = keys::quota_overrides(&self.prefix);
        {
            let mut local = self.local.lock().expect("quota lock");
            local.overrides = all.iter().map(|(s, c, o)| ((*s, *c), *o)).collect();
        }
        self.redis
            .run(
                "quota cache load",
                crate::BACKGROUND_BUDGET,
                move |mut c| async move {
                    let mut pipe = redis::pipe();
                    pipe.atomic().cmd("DEL").arg(&key).ignore();
                    for (scope, cmd, o) in &all {
                        let (daily_f, cd_f) = scope.fields(*cmd);
                        if let Some(v) = o.daily {
                            pipe.cmd("HSET").arg(&key).arg(daily_f).arg(v).ignore();
                        }
                        if let (Some(f), Some(v)) = (cd_f, o.cooldown_secs) {
                            pipe.cmd("HSET").arg(&key).arg(f).arg(v).ignore();
                        }
                    }
                    pipe.cmd("HSET")
                        .arg(&key)
                        .arg(keys::QUOTA_OVERRIDES_LOADED)
                        .arg(1)
                        .ignore();
                    pipe.query_async::<()>(&mut c).await
                },
            )
            .await
    }

    /// Today's reserved count per (user, command), from every user counter of `day`.
    pub async fn reserved_today(
        &self,
        day: &Day,
    ) -> Result<HashMap<(u64, String), u64>, ClusterError> {
        let pattern = keys::quota_user_day_pattern(&self.prefix, &day.date);
        let prefix_len = pattern.len() - 1;
        self.redis
            .run(
                "quota counters",
                crate::BACKGROUND_BUDGET,
                move |mut c| async move {
                    let mut found: Vec<String> = Vec::new();
                    let mut cursor: u64 = 0;
                    loop {
                        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                            .arg(cursor)
                            .arg("MATCH")
                            .arg(&pattern)
                            .arg("COUNT")
                            .arg(1000)
                            .query_async(&mut c)
                            .await?;
                        found.extend(batch);
                        cursor = next;
                        if cursor == 0 {
                            break;
                        }
                    }
                    let mut out = HashMap::new();
                    if found.is_empty() {
                        return Ok(out);
                    }
                    let values: Vec<Option<u64>> =
                        redis::cmd("MGET").arg(&found).query_async(&mut c).await?;
                    for (k, v) in found.iter().zip(values) {
                        let rest = &k[prefix_len..];
                        if let Some((user, cmd)) = rest.split_once(':') {
                            if let Ok(user) = user.parse() {
                                out.insert((user, cmd.to_owned()), v.unwrap_or(0));
                            }
                        }
                    }
                    Ok(out)
                },
            )
            .await
    }

    /// Takes the reconciliation lock for `ttl` (one instance compares at a time).
    pub async fn reconcile_lock(&self, me: u32, ttl: Duration) -> Result<bool, ClusterError> {
        let key = keys::quota_reconcile_lock(&self.prefix);
        let ms = ttl.as_millis() as u64;
        let r: Option<String> = self
            .redis
            .run(
                "quota reconcile lock",
                QUOTA_BUDGET,
                move |mut c| async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(me)
                        .arg("NX")
                        .arg("PX")
                        .arg(ms)
                        .query_async(&mut c)
                        .await
                },
            )
            .await?;
        Ok(r.is_some())
    }
}

/// `{"A"}` or `{"R", rule, limit, until_ms}`; anything else (never written) admits.
fn parse_verdict(reply: &[String]) -> Verdict {
    match reply {
        [r, rule, limit, until] if r == "R" => Verdict::Refuse {
            rule: Rule::parse(rule).unwrap_or(Rule::UserDaily),
            limit: limit.parse().unwrap_or(0),
            until_ms: until.parse().unwrap_or(0),
        },
        _ => Verdict::Admit,
    }
}

#[cfg(test)]
mod tests;

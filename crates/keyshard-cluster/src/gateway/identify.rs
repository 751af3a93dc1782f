//! [`IdentifyQueue`]: one IDENTIFY queue for the whole cluster.
//!
//! Every IDENTIFY of every instance asks [`IdentifyQueue::acquire`] first. One round trip reads
//! the bucket's slot (`{c}:gw:identify:{bucket}`, its PTTL), the day's session starts left
//! (`{c}:gw:budget`) and when they reset; `keyshard_routing::identify_turn` decides; a `Now`
//! takes the slot (`SET NX PX`, the window and a margin: `IdentifyPolicy::slot_hold`) and a
//! unit of the budget (`DECR`) in one script, and
//! `keeps_reserve` decides whether the take stands (a take that would go below the reserve
//! gives its unit back). Since the slot is taken atomically and the count is decremented one
//! take at a time, no two IDENTIFYs of a bucket go out within a window, whichever instances
//! send them, and the count never goes below the reserve.
//!
//! The budget is seeded from Discord's `GET /gateway/bot` ([`BudgetSource`]) with the day's
//! reset as the key's TTL; a later reading only ever lowers it within the day (another
//! process on the same token, a count that drifted). When the key expires the next IDENTIFY
//! reads it again.
//!
//! A start that follows a crash (no clean stop, no stable run since the last start) waits
//! `keyshard_routing::restart_delay` before its first IDENTIFY: the count of such starts is
//! `{c}:gw:restarts:{id}`, cleared by a clean stop or a stable run. A crash loop therefore
//! cannot spend the day's budget, whatever restarts it.
//!
//! Redis unreachable: one IDENTIFY per window from this process (`local_delay`), the rule
//! serenity itself keeps; the shared count is not known then and not spent.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use keyshard_routing::{
    bucket, identify_turn, keeps_reserve, local_delay, restart_delay, IdentifyPolicy, IdentifyTurn,
    IdentifyView, InstanceId, RestartPolicy, SessionBudget, WaitReason,
};
use tokio::time::Instant;

use crate::conn::Redis;
use crate::{keys, Cluster, ClusterError};

mod wait;

pub use wait::IdentifyWait;

/// How long a restart count outlives its last start: far longer than the longest backoff, so
/// a crash loop keeps counting; short enough that a removed instance's key goes away.
pub const RESTARTS_TTL: Duration = Duration::from_secs(24 * 3_600);

/// The time budget of one Redis call here. IDENTIFYs are not on the acknowledgement path,
/// and half a second is far above a healthy round trip; a Redis slower than that counts as
/// unreachable and the IDENTIFY falls back to local spacing.
const CALL_BUDGET: Duration = Duration::from_millis(500);

/// Waits between failed reads of the session budget from Discord: a second at first, doubling
/// to half a minute, so an unreachable Discord is asked about twice a minute per instance.
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(1);
const FETCH_RETRY_MAX: Duration = Duration::from_secs(30);

/// A reading of the day's session starts, boxed so the trait stays object-safe.
pub type BudgetFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SessionBudget, String>> + Send + 'a>>;

/// Where the day's session starts come from (the bot: Discord's `GET /gateway/bot`). The
/// error is a log-safe description.
pub trait BudgetSource: Send + Sync {
    fn fetch(&self) -> BudgetFuture<'_>;
}

/// A granted IDENTIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grant {
    pub shard: u32,
    /// The day's session starts left after this one (`None` without Redis).
    pub remaining: Option<u32>,
    /// Spaced by this process alone, Redis being unreachable.
    pub local: bool,
}

/// Takes the bucket's slot if it is free, then a unit of the budget if the budget is known:
/// `{0, pttl}` slot busy, `{1}` budget unknown (slot given back), `{2, remaining_after}`.
const TAKE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {0, redis.call('PTTL', KEYS[1])}
end
if redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('DEL', KEYS[1])
  return {1}
end
return {2, redis.call('DECR', KEYS[2])}
";

/// Gives a unit back (if the day's key still exists) and the slot (if still ours).
const REFUND_SCRIPT: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('INCR', KEYS[2]) end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
";

/// Stores a reading of the day's count: a new day's key with the reset as its TTL, or the
/// lower of the stored and the read count within the day. Returns what is stored.
const SEED_SCRIPT: &str = r"
local cur = redis.call('GET', KEYS[1])
if not cur then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return tonumber(ARGV[1])
end
if tonumber(ARGV[1]) < tonumber(cur) then
  redis.call('SET', KEYS[1], ARGV[1], 'KEEPTTL')
  return tonumber(ARGV[1])
end
return tonumber(cur)
";

static TAKE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(TAKE_SCRIPT));
static REFUND: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(REFUND_SCRIPT));
static SEED: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(SEED_SCRIPT));

/// What the take script did.
enum Take {
    Busy(Duration),
    BudgetUnknown,
    /// Taken by `holder`, leaving `after` in the day's count.
    Taken {
        after: i64,
        holder: String,
    },
}

/// The cluster-wide IDENTIFY queue, as one instance sees it. Cheap to clone.
#[derive(Clone)]
pub struct IdentifyQueue {
    inner: Arc<Inner>,
}

struct Inner {
    redis: Arc<Redis>,
    cluster_name: String,
    instance: InstanceId,
    policy: IdentifyPolicy,
    restart: RestartPolicy,
    max_concurrency: AtomicU32,
    source: Arc<dyn BudgetSource>,
    /// No IDENTIFY of this process before this (the restart backoff).
    backoff_until: Mutex<Option<Instant>>,
    /// The origin of the local spacing's milliseconds.
    epoch: Instant,
    /// This process's last IDENTIFY while Redis was unreachable (ms since `epoch`).
    last_local: Mutex<Option<u64>>,
    /// What each shard's IDENTIFY waits for right now.
    waits: Mutex<BTreeMap<u32, IdentifyWait>>,
    at_reserve_logged: AtomicBool,
    local_logged: AtomicBool,
    takes: AtomicU64,
}

impl fmt::Debug for IdentifyQueue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentifyQueue")
            .field("instance", &self.inner.instance)
            .field("policy", &self.inner.policy)
            .finish_non_exhaustive()
    }
}

impl IdentifyQueue {
    /// The queue on `cluster`'s Redis connection. `max_concurrency` is Discord's (1 until
    /// [`seed`](Self::seed) says otherwise).
    pub fn new(
        cluster: &Cluster,
        policy: IdentifyPolicy,
        restart: RestartPolicy,
        source: Arc<dyn BudgetSource>,
    ) -> IdentifyQueue {
        IdentifyQueue {
            inner: Arc::new(Inner {
                redis: cluster.redis(),
                cluster_name: cluster.config().cluster_name.clone(),
                instance: cluster.instance_id(),
                policy,
                restart,
                max_concurrency: AtomicU32::new(1),
                source,
                backoff_until: Mutex::new(None),
                epoch: Instant::now(),
                last_local: Mutex::new(None),
                waits: Mutex::new(BTreeMap::new()),
                at_reserve_logged: AtomicBool::new(false),
                local_logged: AtomicBool::new(false),
                takes: AtomicU64::new(0),
            }),
        }
    }

    pub fn policy(&self) -> IdentifyPolicy {
        self.inner.policy
    }

    /// Stores a reading of Discord's session start limit (see the module doc) and takes its
    /// `max_concurrency`. Returns the count now stored.
    pub async fn seed(&self, budget: SessionBudget) -> Result<u32, ClusterError> {
        self.inner
            .max_concurrency
            .store(budget.max_concurrency.max(1), Ordering::Relaxed);
        let key = keys::identify_budget(&self.inner.cluster_name);
        // A key needs a positive TTL; a day that resets "now" lasts a millisecond.
        let ttl_ms = (budget.reset_after.as_millis() as u64).max(1);
        let stored: i64 = self
            .inner
            .redis
            .run("seed identify budget", CALL_BUDGET, |mut c| async move {
                SEED.key(&key)
                    .arg(budget.remaining)
                    .arg(ttl_ms)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(stored.clamp(0, i64::from(u32::MAX)) as u32)
    }

    /// Counts this start in `{c}:gw:restarts:{id}` and sets the backoff every IDENTIFY of
    /// this process waits out first. Returns the number of starts in a row and the backoff.
    /// Without Redis there is no count and no backoff (local spacing still applies).
    pub async fn register_start(&self) -> Result<(u32, Duration), ClusterError> {
        let key = keys::restarts(&self.inner.cluster_name, self.inner.instance);
        let ttl = RESTARTS_TTL.as_millis() as u64;
        let (n,): (i64,) = self
            .inner
            .redis
            .run("count start", CALL_BUDGET, |mut c| async move {
                redis::pipe()
                    .cmd("INCR")
                    .arg(&key)
                    .cmd("PEXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await?;
        let n = n.clamp(1, i64::from(u32::MAX)) as u32;
        let delay = restart_delay(n, &self.inner.restart);
        *self
            .inner
            .backoff_until
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now() + delay);
        Ok((n, delay))
    }

    /// Forgets this instance's restarts: called on a clean stop and once a start ran stable,
    /// so the next start is a normal one.
    pub async fn clear_restarts(&self) -> Result<(), ClusterError> {
        let key = keys::restarts(&self.inner.cluster_name, self.inner.instance);
        self.inner
            .redis
            .run("clear restarts", CALL_BUDGET, |mut c| async move {
                redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await
            })
            .await
    }

    /// What each shard's IDENTIFY waits for now (shards not waiting are absent).
    pub fn waits(&self) -> BTreeMap<u32, IdentifyWait> {
        self.inner
            .waits
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The day's session starts left as the cluster counts them, and when they reset;
    /// `None` when nobody has read them yet today.
    pub async fn remaining(&self) -> Result<Option<(u32, Option<Duration>)>, ClusterError> {
        let key = keys::identify_budget(&self.inner.cluster_name);
        let (count, ttl): (Option<i64>, i64) = self
            .inner
            .redis
            .run("read identify budget", CALL_BUDGET, |mut c| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(&key)
                    .cmd("PTTL")
                    .arg(&key)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(count.map(|n| (n.clamp(0, i64::from(u32::MAX)) as u32, ttl_of(ttl))))
    }

    /// Waits until shard `shard` may IDENTIFY (see the module doc) and returns the grant.
    /// Dropping the future gives up the turn (nothing is spent before the grant).
    pub async fn acquire(&self, shard: u32) -> Grant {
        let b = bucket(shard, self.inner.max_concurrency.load(Ordering::Relaxed));
        let policy = self.inner.policy;
        let mut fetch_retry = FETCH_RETRY_FIRST;
        loop {
            let backoff_left = self.backoff_left();
            let view = match self.read_view(b).await {
                Ok(v) => IdentifyView { backoff_left, ..v },
                Err(e) => return self.acquire_locally(shard, backoff_left, &e).await,
            };
            self.inner.local_logged.store(false, Ordering::Relaxed);
            match identify_turn(&view, &policy) {
                IdentifyTurn::Now => match self.take(b, shard).await {
                    Ok(Take::Taken { after, .. }) if keeps_reserve(after, policy.reserve) => {
                        self.set_wait(shard, None);
                        self.inner.at_reserve_logged.store(false, Ordering::Relaxed);
                        return Grant {
                            shard,
                            remaining: Some(after.clamp(0, i64::from(u32::MAX)) as u32),
                            local: false,
                        };
                    }
                    // Another instance took the last unit above the reserve first: give this
                    // one back; the next view shows the reserve.
                    Ok(Take::Taken { holder, .. }) => {
                        if let Err(e) = self.refund(b, &holder).await {
                            tracing::debug!(shard, error = %e, "could not give an IDENTIFY unit back");
                        }
                    }
                    Ok(Take::Busy(wait)) => {
                        self.set_wait(shard, Some(IdentifyWait::Bucket { bucket: b }));
                        tokio::time::sleep(wait).await;
                    }
                    Ok(Take::BudgetUnknown) => {
                        self.refresh_budget(shard, &mut fetch_retry).await;
                    }
                    Err(e) => return self.acquire_locally(shard, backoff_left, &e).await,
                },
                IdentifyTurn::Wait { delay, why } => {
                    let wait = match why {
                        WaitReason::Backoff => IdentifyWait::Backoff { left: delay },
                        WaitReason::Bucket => IdentifyWait::Bucket { bucket: b },
                    };
                    self.set_wait(shard, Some(wait));
                    tokio::time::sleep(delay).await;
                }
                IdentifyTurn::AtReserve {
                    remaining,
                    reserve,
                    retry_in,
                } => {
                    let wait = IdentifyWait::Reserve {
                        remaining,
                        reserve,
                        resets_in: view.resets_in,
                    };
                    if !self.inner.at_reserve_logged.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            instance = self.inner.instance,
                            shard,
                            remaining,
                            reserve,
                            "{wait}"
                        );
                    }
                    self.set_wait(shard, Some(wait));
                    tokio::time::sleep(retry_in).await;
                    self.refresh_budget(shard, &mut fetch_retry).await;
                }
                IdentifyTurn::RefreshBudget => {
                    self.refresh_budget(shard, &mut fetch_retry).await;
                }
            }
        }
    }

    fn backoff_left(&self) -> Duration {
        self.inner
            .backoff_until
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map_or(Duration::ZERO, |until| {
                until.saturating_duration_since(Instant::now())
            })
    }

    fn set_wait(&self, shard: u32, wait: Option<IdentifyWait>) {
        let mut waits = self.inner.waits.lock().unwrap_or_else(|e| e.into_inner());
        match wait {
            Some(w) => waits.insert(shard, w),
            None => waits.remove(&shard),
        };
    }

    /// The bucket's slot, the day's count and its reset, in one round trip.
    async fn read_view(&self, b: u32) -> Result<IdentifyView, ClusterError> {
        let slot = keys::identify_slot(&self.inner.cluster_name, b);
        let budget = keys::identify_budget(&self.inner.cluster_name);
        let (slot_ttl, count, budget_ttl): (i64, Option<i64>, i64) = self
            .inner
            .redis
            .run("read identify view", CALL_BUDGET, |mut c| async move {
                redis::pipe()
                    .cmd("PTTL")
                    .arg(&slot)
                    .cmd("GET")
                    .arg(&budget)
                    .cmd("PTTL")
                    .arg(&budget)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(IdentifyView {
            bucket_busy_for: ttl_of(slot_ttl),
            remaining: count.map(|n| n.clamp(0, i64::from(u32::MAX)) as u32),
            resets_in: ttl_of(budget_ttl),
            backoff_left: Duration::ZERO,
        })
    }

    /// Who holds a slot: the instance and shard, plus a counter so two takes of one shard
    /// never look alike to the refund's compare-and-delete.
    fn holder(&self, shard: u32) -> String {
        let n = self.inner.takes.fetch_add(1, Ordering::Relaxed);
        format!("{}:{shard}:{n}", self.inner.instance)
    }

    async fn take(&self, b: u32, shard: u32) -> Result<Take, ClusterError> {
        let slot = keys::identify_slot(&self.inner.cluster_name, b);
        let budget = keys::identify_budget(&self.inner.cluster_name);
        let holder = self.holder(shard);
        let hold = (self.inner.policy.slot_hold().as_millis() as u64).max(1);
        let answer: Vec<i64> = self
            .inner
            .redis
            .run("take identify slot", CALL_BUDGET, |mut c| {
                let holder = holder.clone();
                async move {
                    TAKE.key(&slot)
                        .key(&budget)
                        .arg(&holder)
                        .arg(hold)
                        .invoke_async(&mut c)
                        .await
                }
            })
            .await?;
        Ok(match answer.as_slice() {
            [0, pttl] => Take::Busy(ttl_of(*pttl).unwrap_or(Duration::from_millis(1))),
            [2, after] => Take::Taken {
                after: *after,
                holder,
            },
            _ => Take::BudgetUnknown,
        })
    }

    async fn refund(&self, b: u32, holder: &str) -> Result<(), ClusterError> {
        let slot = keys::identify_slot(&self.inner.cluster_name, b);
        let budget = keys::identify_budget(&self.inner.cluster_name);
        self.inner
            .redis
            .run("give back identify unit", CALL_BUDGET, |mut c| async move {
                REFUND
                    .key(&slot)
                    .key(&budget)
                    .arg(holder)
                    .invoke_async::<i64>(&mut c)
                    .await
            })
            .await?;
        Ok(())
    }

    /// Reads the day's count from Discord and stores it; on failure waits a growing while
    /// (the caller's loop asks again).
    async fn refresh_budget(&self, shard: u32, retry: &mut Duration) {
        self.set_wait(shard, Some(IdentifyWait::Budget));
        let result = match self.inner.source.fetch().await {
            Ok(b) => self.seed(b).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        match result {
            Ok(_) => *retry = FETCH_RETRY_FIRST,
            Err(e) => {
                tracing::warn!(
                    instance = self.inner.instance,
                    error = %e,
                    "could not read the session start limit; trying again in {:?}",
                    *retry
                );
                tokio::time::sleep(*retry).await;
                *retry = (*retry * 2).min(FETCH_RETRY_MAX);
            }
        }
    }

    /// Redis is unreachable: the backoff, then one IDENTIFY per window from this process.
    async fn acquire_locally(&self, shard: u32, backoff_left: Duration, e: &ClusterError) -> Grant {
        if !self.inner.local_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                instance = self.inner.instance,
                error = %e,
                "Redis unreachable: IDENTIFYs spaced by this instance alone (one per window)"
            );
        }
        self.set_wait(shard, Some(IdentifyWait::Local));
        tokio::time::sleep(backoff_left).await;
        loop {
            let now = self.inner.epoch.elapsed().as_millis() as u64;
            let delay = {
                let mut last = self
                    .inner
                    .last_local
                    .lock()
                    .unwrap_or_else(|e| e.into_inner());
                let delay = local_delay(*last, now, self.inner.policy.slot_hold());
                if delay.is_zero() {
                    *last = Some(now);
                }
                delay
            };
            if delay.is_zero() {
                self.set_wait(shard, None);
                return Grant {
                    shard,
                    remaining: None,
                    local: true,
                };
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// A Redis PTTL as a duration: `None` for a missing key (-2) or one without expiry (-1).
fn ttl_of(pttl: i64) -> Option<Duration> {
    (pttl > 0).then(|| Duration::from_millis(pttl as u64))
}

#[cfg(test)]
mod tests;

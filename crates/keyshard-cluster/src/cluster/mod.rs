//! The [`Cluster`] handle: heartbeat and membership loops, load publication, and degraded
//! mode while Redis is unreachable. The claim is in `claim` ([`Cluster::claim`],
//! [`ClaimOutcome`]); noticing a Redis restart (empty or with its data) in `restart`.

mod claim;
mod claim_batch;
mod confirm;
mod restart;

pub use claim::{ClaimOutcome, Receipt, CLAIM_BUDGET};
pub use confirm::Confirmed;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use keyshard_routing::{InstanceId, Membership};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{ClusterConfig, Load};
use crate::conn::Redis;
use crate::error::{redact_url, ClusterError};
use crate::heartbeat::{Heartbeat, VERSION};
use crate::keys;
use crate::metrics::ClusterMetrics;
use crate::status::{read_status, ClusterStatus};
use crate::task::run_every;

/// The time budget of a background call (heartbeat write, snapshot read, ping, leave). Long
/// enough for a busy Redis, short enough that a loop notices an outage well within the
/// default 3 s `DEAD_AFTER_MS` and the next tick is not delayed much.
pub const BACKGROUND_BUDGET: Duration = Duration::from_millis(500);

/// Connection state, for degraded mode and its once-per-transition logs.
const LINK_CONNECTING: u8 = 0;
const LINK_UP: u8 = 1;
const LINK_DOWN: u8 = 2;

/// One instance's handle on the cluster. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: ClusterConfig,
    redis: Arc<Redis>,
    hb_key: String,
    membership: RwLock<Arc<Membership>>,
    status: RwLock<Option<(Instant, Arc<ClusterStatus>)>>,
    load: Mutex<Load>,
    draining: AtomicBool,
    /// Set by `leave`: the heartbeat loop must not bring the key back.
    left: AtomicBool,
    link: AtomicU8,
    /// Counts returns of Redis after an outage. A fallback compares it across its delay: a
    /// Redis that went away meanwhile may have come back without the owner's claim key.
    link_epoch: AtomicU64,
    /// The Redis server this instance last saw: `{c}:gen` and `INFO server`'s `run_id`.
    server: Mutex<Option<restart::ServerIdentity>>,
    /// When this instance last saw Redis come back: restarted (empty or with its data) or
    /// after an outage. For one heartbeat lifetime after it, a peer missing from Redis is not
    /// dead.
    restarted_at: Mutex<Option<Instant>>,
    /// Counts the Redis restarts without data this instance has seen (the job shelter queues
    /// its copies again after each).
    empty_restarts: AtomicU64,
    wake_heartbeat: Arc<Notify>,
    wake_snapshot: Arc<Notify>,
    metrics: ClusterMetrics,
    /// Fallback claims go to Redis in batches (`claim_batch.rs`); started on first use.
    claim_batcher: std::sync::OnceLock<claim_batch::ClaimBatcher>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("config", &self.inner.cfg)
            .field("degraded", &self.is_degraded())
            .finish_non_exhaustive()
    }
}

impl Cluster {
    /// Validates the settings and the URL. Does not connect: the handle starts degraded and
    /// [`spawn`](Self::spawn)'s loops connect in the background (and keep retrying).
    pub fn new(cfg: ClusterConfig) -> Result<Cluster, ClusterError> {
        cfg.validate()?;
        let redis = Arc::new(Redis::open(&cfg.redis_url)?);
        Ok(Cluster {
            inner: Arc::new(Inner {
                hb_key: keys::heartbeat(&cfg.cluster_name, cfg.instance_id),
                membership: RwLock::new(Arc::new(Membership::new(cfg.instance_count))),
                status: RwLock::new(None),
                load: Mutex::new(Load::default()),
                draining: AtomicBool::new(false),
                left: AtomicBool::new(false),
                link: AtomicU8::new(LINK_CONNECTING),
                link_epoch: AtomicU64::new(0),
                server: Mutex::new(None),
                restarted_at: Mutex::new(None),
                empty_restarts: AtomicU64::new(0),
                wake_heartbeat: Arc::new(Notify::new()),
                wake_snapshot: Arc::new(Notify::new()),
                metrics: ClusterMetrics::default(),
                claim_batcher: std::sync::OnceLock::new(),
                redis,
                cfg,
            }),
        })
    }

    /// Starts the heartbeat loop and the membership loop; both stop when `shutdown` is
    /// cancelled (aborting the handle stops them too, without a goodbye: like a crash).
    /// Reconnecting is done by the connection manager, driven by these loops' calls.
    pub fn spawn(&self, shutdown: CancellationToken) -> JoinHandle<()> {
        let cfg = &self.inner.cfg;
        tracing::info!(
            instance = cfg.instance_id,
            count = cfg.instance_count,
            cluster = %cfg.cluster_name,
            redis = %redact_url(&cfg.redis_url),
            "cluster membership starting"
        );
        let hb = {
            let me = self.clone();
            run_every(
                "heartbeat",
                cfg.heartbeat,
                shutdown.clone(),
                Some(self.inner.wake_heartbeat.clone()),
                move || {
                    let me = me.clone();
                    async move { me.publish_heartbeat().await }
                },
            )
        };
        let snap = {
            let me = self.clone();
            run_every(
                "membership",
                cfg.snapshot_every,
                shutdown,
                Some(self.inner.wake_snapshot.clone()),
                move || {
                    let me = me.clone();
                    async move { me.refresh_membership().await }
                },
            )
        };
        tokio::spawn(async move {
            tokio::join!(hb, snap);
        })
    }

    /// The shared, self-reconnecting Redis handle (for the job and statistics modules).
    pub(crate) fn redis(&self) -> Arc<Redis> {
        self.inner.redis.clone()
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.inner.cfg
    }

    pub fn instance_id(&self) -> InstanceId {
        self.inner.cfg.instance_id
    }

    /// The latest membership snapshot (all dead until the first one is read).
    pub fn membership(&self) -> Arc<Membership> {
        self.inner
            .membership
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The latest full status (heartbeat ages, load, versions), if one was read yet.
    pub fn status(&self) -> Option<Arc<ClusterStatus>> {
        self.inner
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(_, s)| s.clone())
    }

    /// How old the membership snapshot is; `None` before the first one.
    pub fn snapshot_age(&self) -> Option<Duration> {
        self.inner
            .status
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|(at, _)| at.elapsed())
    }

    /// Redis answered the last call and a snapshot has been read: routing decisions are
    /// informed (for `/readyz`).
    pub fn is_ready(&self) -> bool {
        !self.is_degraded() && self.snapshot_age().is_some()
    }

    /// Redis is unreachable right now (or has not been reached yet): claims use the static rule.
    pub fn is_degraded(&self) -> bool {
        self.inner.link.load(Ordering::Relaxed) != LINK_UP
    }

    /// Sets the load published with the next heartbeat.
    pub fn set_load(&self, load: Load) {
        *self.inner.load.lock().unwrap_or_else(|e| e.into_inner()) = load;
    }

    /// Marks this instance draining (it takes no new users) and publishes it at once.
    pub fn set_draining(&self, draining: bool) {
        if self.inner.draining.swap(draining, Ordering::Relaxed) != draining {
            self.inner.wake_heartbeat.notify_one();
        }
    }

    pub fn metrics(&self) -> &ClusterMetrics {
        &self.inner.metrics
    }

    /// One round trip to Redis (`PING`), for health checks.
    pub async fn redis_ping(&self) -> Result<Duration, ClusterError> {
        let start = Instant::now();
        let result = self
            .inner
            .redis
            .run("ping", BACKGROUND_BUDGET, |mut c| async move {
                redis::cmd("PING").query_async::<()>(&mut c).await
            })
            .await;
        self.observe(&result);
        result.map(|()| start.elapsed())
    }

    /// Deletes this instance's heartbeat so peers take over its users at once instead of
    /// after `DEAD_AFTER_MS` (graceful shutdown). The heartbeat loop writes no more after it.
    pub async fn leave(&self) {
        self.inner.left.store(true, Ordering::Relaxed);
        let key = self.inner.hb_key.clone();
        let result = self
            .inner
            .redis
            .run_retrying("leave", BACKGROUND_BUDGET, |mut c| {
                let key = key.clone();
                async move { redis::cmd("DEL").arg(&key).query_async::<()>(&mut c).await }
            })
            .await;
        match result {
            Ok(()) => tracing::info!(instance = self.instance_id(), "left the cluster"),
            // Not fatal: the key expires by itself after DEAD_AFTER_MS.
            Err(e) => tracing::warn!(
                instance = self.instance_id(),
                error = %e,
                "could not delete the heartbeat; it expires by itself"
            ),
        }
    }

    /// Heartbeat tick: `SET {c}:hb:{me} <json> PX dead_after`.
    async fn publish_heartbeat(&self) -> Result<(), ClusterError> {
        if self.inner.left.load(Ordering::Relaxed) {
            return Ok(());
        }
        let cfg = &self.inner.cfg;
        let load = self
            .inner
            .load
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let hb = Heartbeat {
            id: cfg.instance_id,
            draining: self.inner.draining.load(Ordering::Relaxed),
            queue_depth: load.queue_depth,
            in_flight: load.in_flight,
            // JSON has no NaN/inf; an unmeasurable rate is published as "unknown".
            service_rate: if load.service_rate.is_finite() {
                load.service_rate.max(0.0)
            } else {
                0.0
            },
            waiting: load.waiting,
            dead_after_ms: u64::try_from(cfg.dead_after.as_millis()).unwrap_or(u64::MAX),
            version: VERSION.to_owned(),
        };
        let json = serde_json::to_string(&hb).expect("a Heartbeat always serializes");
        let key = self.inner.hb_key.clone();
        let ttl = hb.dead_after_ms;
        let result = self
            .inner
            .redis
            .run_retrying("heartbeat", BACKGROUND_BUDGET, |mut c| {
                let (key, json) = (key.clone(), json.clone());
                async move {
                    redis::cmd("SET")
                        .arg(&key)
                        .arg(json)
                        .arg("PX")
                        .arg(ttl)
                        .query_async::<()>(&mut c)
                        .await
                }
            })
            .await;
        self.observe(&result);
        if result.is_ok() {
            self.inner.metrics.heartbeat();
        }
        result
    }

    /// Membership tick: one pipelined read of every heartbeat.
    async fn refresh_membership(&self) -> Result<(), ClusterError> {
        let cfg = &self.inner.cfg;
        let (name, count, policy) = (cfg.cluster_name.clone(), cfg.instance_count, cfg.overload);
        // The restart check first: a Redis that restarted has lost every heartbeat (empty) or
        // those that lapsed while it was away (data kept), and the snapshot read right after
        // must not take that for the death of those peers.
        self.check_restart().await?;
        let result = self
            .inner
            .redis
            .run_retrying("snapshot", BACKGROUND_BUDGET, |mut c| {
                let name = name.clone();
                async move { read_status(&mut c, &name, count, &policy).await }
            })
            .await;
        self.observe(&result);
        let status = Arc::new(result?);
        let mut membership = status.membership();
        let restarted = *self
            .inner
            .restarted_at
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if restarted.is_some_and(|t| t.elapsed() < cfg.dead_after) {
            // Within one heartbeat lifetime of Redis coming back, a peer missing from it has
            // most likely not re-announced itself yet: keep what the last snapshot knew.
            let previous = self.membership();
            for old in previous.iter() {
                if old.alive && membership.get(old.id).is_some_and(|s| !s.alive) {
                    membership.set(old.clone());
                }
            }
        }
        *self
            .inner
            .membership
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Arc::new(membership);
        *self.inner.status.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), status));
        self.inner.metrics.snapshot_taken();
        Ok(())
    }

    /// Whether Redis came back (restarted, or after an outage) less than one heartbeat
    /// lifetime ago: peers may not have noticed yet (see `claim`).
    pub(super) fn recovering(&self) -> bool {
        self.inner
            .restarted_at
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some_and(|t| t.elapsed() < self.inner.cfg.dead_after)
    }

    /// Tracks whether Redis answers, logging each transition once.
    fn observe<T>(&self, result: &Result<T, ClusterError>) {
        let inner = &self.inner;
        match result {
            Ok(_) => {
                let before = inner.link.swap(LINK_UP, Ordering::Relaxed);
                if before != LINK_UP {
                    if before == LINK_DOWN {
                        inner.link_epoch.fetch_add(1, Ordering::Relaxed);
                        // Heartbeats may have lapsed while Redis was away (a restart that kept
                        // its data still loses the seconds it was down): until peers have had
                        // one heartbeat lifetime to re-announce, a missing one is not a death,
                        // as after an empty restart. Otherwise a peer still answering its own
                        // users by the static rule would be taken over at once, and both would
                        // acknowledge.
                        *inner.restarted_at.lock().unwrap_or_else(|e| e.into_inner()) =
                            Some(Instant::now());
                        tracing::info!(
                            instance = inner.cfg.instance_id,
                            "Redis reachable again; leaving degraded mode"
                        );
                    } else {
                        tracing::info!(instance = inner.cfg.instance_id, "connected to Redis");
                    }
                    // Re-announce ourselves and re-read the cluster at once rather than at
                    // the next tick: a restarted Redis has lost every heartbeat.
                    inner.wake_heartbeat.notify_one();
                    inner.wake_snapshot.notify_one();
                }
            }
            Err(e) => {
                inner.metrics.redis_error();
                let before = inner.link.swap(LINK_DOWN, Ordering::Relaxed);
                if before != LINK_DOWN {
                    tracing::warn!(
                        instance = inner.cfg.instance_id,
                        redis = %redact_url(&inner.cfg.redis_url),
                        error = %e,
                        "Redis unreachable; degraded mode: answering by the static rule (primary == me) until it returns"
                    );
                } else {
                    tracing::debug!(instance = inner.cfg.instance_id, error = %e, "Redis call failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_rejects_a_bad_url_without_showing_the_password() {
        let cfg = ClusterConfig::new("http://:hunter2@host:6379", "ks", 1, 4);
        let err = Cluster::new(cfg).unwrap_err();
        assert!(matches!(err, ClusterError::InvalidUrl { .. }), "{err:?}");
        let text = format!("{err} {err:?}");
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn new_needs_no_redis_and_starts_degraded() {
        // Port 1 on loopback: nothing listens there, and `new` must not try.
        let cluster = Cluster::new(ClusterConfig::new("redis://127.0.0.1:1", "ks", 2, 4)).unwrap();
        assert!(cluster.is_degraded());
        assert!(!cluster.is_ready());
        assert_eq!(cluster.membership().alive_count(), 0);
    }

    #[tokio::test]
    async fn unreachable_redis_means_the_static_rule() {
        let cluster = Cluster::new(ClusterConfig::new("redis://127.0.0.1:1", "ks", 2, 4)).unwrap();
        // 5 % 4 + 1 = 2: this instance is the primary and answers; user 6 belongs to 3.
        let mine = cluster.claim(1, 5, 0).await;
        assert!(
            matches!(mine, ClaimOutcome::Degraded { answer: true, .. }),
            "{mine:?}"
        );
        let theirs = cluster.claim(2, 6, 0).await;
        assert!(
            matches!(theirs, ClaimOutcome::Degraded { answer: false, .. }),
            "{theirs:?}"
        );
        let m = cluster.metrics().snapshot();
        assert_eq!((m.degraded_decisions, m.degraded_answers), (2, 1));
        assert!(cluster.redis_ping().await.is_err());
    }
}

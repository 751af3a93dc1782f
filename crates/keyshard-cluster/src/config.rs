//! The cluster handle's settings and the load an instance publishes.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use keyshard_routing::{ClaimTiming, InstanceId, OverloadPolicy};
use serde::{Deserialize, Serialize};

use crate::error::{redact_url, ClusterError};

/// Settings of one instance's [`Cluster`](crate::Cluster) handle.
#[derive(Clone)]
pub struct ClusterConfig {
    /// `REDIS_URL`; may hold a password, so `Debug` redacts it.
    pub redis_url: String,
    /// `CLUSTER_NAME`: the prefix of every key, so several clusters can share one Redis.
    pub cluster_name: String,
    /// This instance, `1..=instance_count`.
    pub instance_id: InstanceId,
    /// `N`.
    pub instance_count: u32,
    /// `HEARTBEAT_MS`: how often the heartbeat key is rewritten.
    pub heartbeat: Duration,
    /// `DEAD_AFTER_MS`: the heartbeat key's TTL; an instance that stops writing is dead this
    /// long after its last heartbeat.
    pub dead_after: Duration,
    /// How often the membership snapshot is re-read from Redis.
    pub snapshot_every: Duration,
    pub overload: OverloadPolicy,
    pub claim: ClaimTiming,
    /// `TAKEOVER`: when off, only a user's primary answers (the static `user_id % N + 1` rule,
    /// still through the claim), so a down or overloaded primary's users wait. For comparing
    /// against the takeover policy in benchmarks, not for production.
    pub takeover: bool,
}

impl ClusterConfig {
    /// Defaults for everything but the identity: heartbeat 1 s, dead after 3 s, snapshot every
    /// 250 ms, default overload policy and claim timing.
    pub fn new(
        redis_url: impl Into<String>,
        cluster_name: impl Into<String>,
        instance_id: InstanceId,
        instance_count: u32,
    ) -> Self {
        Self {
            redis_url: redis_url.into(),
            cluster_name: cluster_name.into(),
            instance_id,
            instance_count,
            heartbeat: DEFAULT_HEARTBEAT,
            dead_after: DEFAULT_DEAD_AFTER,
            snapshot_every: DEFAULT_SNAPSHOT_EVERY,
            overload: OverloadPolicy::default(),
            claim: ClaimTiming::default(),
            takeover: true,
        }
    }

    /// Every problem with the settings, or `Ok`.
    pub(crate) fn validate(&self) -> Result<(), ClusterError> {
        let mut problems = Vec::new();
        if self.instance_count == 0 {
            problems.push("instance_count must be at least 1".to_owned());
        } else if !(1..=self.instance_count).contains(&self.instance_id) {
            problems.push(format!(
                "instance_id {} is outside 1..={}",
                self.instance_id, self.instance_count
            ));
        }
        if self.cluster_name.is_empty() {
            problems.push("cluster_name must not be empty".to_owned());
        }
        if self.heartbeat.is_zero() || self.snapshot_every.is_zero() {
            problems.push("heartbeat and snapshot_every must be positive".to_owned());
        }
        // A key that expires before the next refresh would make a healthy instance flicker
        // dead between two heartbeats.
        if self.dead_after <= self.heartbeat {
            problems.push(format!(
                "dead_after ({:?}) must be longer than heartbeat ({:?})",
                self.dead_after, self.heartbeat
            ));
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ClusterError::InvalidConfig(problems.join("; ")))
        }
    }
}

/// Every instance rewrites its heartbeat once a second...
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_millis(1000);
/// ...and counts as dead after three missed ones, so one slow write is not a death.
pub const DEFAULT_DEAD_AFTER: Duration = Duration::from_millis(3000);
/// A quarter second keeps routing close to the truth for one pipelined round trip per refresh.
pub const DEFAULT_SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

impl fmt::Debug for ClusterConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterConfig")
            .field("redis_url", &redact_url(&self.redis_url))
            .field("cluster_name", &self.cluster_name)
            .field("instance_id", &self.instance_id)
            .field("instance_count", &self.instance_count)
            .field("heartbeat", &self.heartbeat)
            .field("dead_after", &self.dead_after)
            .field("snapshot_every", &self.snapshot_every)
            .field("overload", &self.overload)
            .field("claim", &self.claim)
            .field("takeover", &self.takeover)
            .finish()
    }
}

/// The load an instance publishes with its heartbeat.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Load {
    /// Jobs waiting, not yet taken by a worker.
    pub queue_depth: u64,
    /// Jobs a worker runs right now.
    pub in_flight: u64,
    /// Jobs finished per second over a recent window; 0 when not measured yet.
    pub service_rate: f64,
    /// Jobs waiting per job kind, by the kind's name (`chat`, `image`, `video`).
    #[serde(default)]
    pub waiting: BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_lists_every_problem() {
        let mut c = ClusterConfig::new("redis://127.0.0.1", "", 5, 4);
        c.dead_after = c.heartbeat;
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("instance_id 5 is outside 1..=4"), "{msg}");
        assert!(msg.contains("cluster_name"), "{msg}");
        assert!(msg.contains("dead_after"), "{msg}");
        assert!(ClusterConfig::new("redis://x", "ks", 4, 4)
            .validate()
            .is_ok());
    }

    #[test]
    fn debug_hides_the_password() {
        let c = ClusterConfig::new("redis://:hunter2@host:6379", "ks", 1, 4);
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("redis://:***@host:6379"), "{text}");
    }
}

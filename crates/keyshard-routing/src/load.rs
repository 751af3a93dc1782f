//! One instance's published load, its estimated queue wait, and the overload rule.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

use crate::InstanceId;

/// What the cluster knows about one instance at one moment.
///
/// `alive` comes from the existence of the instance's heartbeat key in Redis; the load fields
/// come from the value the instance publishes with that heartbeat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InstanceState {
    pub id: InstanceId,
    pub alive: bool,
    /// A draining instance finishes its work but takes no new users (SIGTERM, rolling restart).
    pub draining: bool,
    /// Jobs waiting in the instance's queue, not yet taken by a worker.
    pub queue_depth: u64,
    /// Jobs a worker is running right now.
    pub in_flight: u64,
    /// Jobs finished per second, measured by the instance over a recent window; 0 when unknown.
    pub service_rate: f64,
    /// Jobs waiting per job kind, by the kind's name (`chat`, `image`, …): whom to take a
    /// waiting job of one kind from. Routing treats kinds as opaque names; see
    /// [`waiting_of`](Self::waiting_of) for an instance that publishes none.
    #[serde(default)]
    pub waiting: BTreeMap<String, u64>,
}

impl InstanceState {
    /// A dead instance with no load: the state of every instance before anything is known.
    pub fn unknown(id: InstanceId) -> Self {
        Self {
            id,
            alive: false,
            draining: false,
            queue_depth: 0,
            in_flight: 0,
            service_rate: 0.0,
            waiting: BTreeMap::new(),
        }
    }

    /// A live, idle, not draining instance.
    pub fn idle(id: InstanceId) -> Self {
        Self {
            alive: true,
            ..Self::unknown(id)
        }
    }

    /// Jobs of kind `kind` waiting on this instance. An instance that publishes no per-kind
    /// figures (a version older than them, during a rolling restart) is credited with its whole
    /// `queue_depth` for every kind, so it is still tried as before; an instance with nothing
    /// waiting has a `queue_depth` of 0 as well, so the stand-in never invents work.
    pub fn waiting_of(&self, kind: &str) -> u64 {
        if self.waiting.is_empty() {
            self.queue_depth
        } else {
            self.waiting.get(kind).copied().unwrap_or(0)
        }
    }

    /// How long a job queued now would wait before a worker takes it: jobs waiting divided by
    /// the measured service rate. While no rate has been measured yet, the policy's assumed
    /// rate stands in, so a fresh instance with a queue is not taken for an infinitely slow one.
    pub fn estimated_wait(&self, policy: &OverloadPolicy) -> Duration {
        if self.queue_depth == 0 {
            return Duration::ZERO;
        }
        let rate = if self.service_rate > 0.0 {
            self.service_rate
        } else {
            policy.assumed_rate
        };
        if rate <= 0.0 || !rate.is_finite() {
            return Duration::MAX;
        }
        Duration::try_from_secs_f64(self.queue_depth as f64 / rate).unwrap_or(Duration::MAX)
    }

    /// Overloaded: draining, or the estimated wait is over the policy's limit.
    pub fn is_overloaded(&self, policy: &OverloadPolicy) -> bool {
        self.draining || self.estimated_wait(policy) > policy.max_wait
    }

    /// Alive and not overloaded: may take new users.
    pub fn is_available(&self, policy: &OverloadPolicy) -> bool {
        self.alive && !self.is_overloaded(policy)
    }
}

/// When an instance counts as overloaded (`OVERLOAD_WAIT_SECS`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverloadPolicy {
    /// The longest estimated queue wait an instance may have and still take new users.
    pub max_wait: Duration,
    /// Jobs per second assumed for an instance that has not measured its rate yet.
    pub assumed_rate: f64,
}

impl Default for OverloadPolicy {
    fn default() -> Self {
        Self {
            max_wait: Duration::from_secs(20),
            // One job a second: a deliberately modest guess for a fresh instance.
            assumed_rate: 1.0,
        }
    }
}

/// A snapshot of every instance of an `N`-instance cluster, indexed by instance id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Membership {
    instances: Vec<InstanceState>,
}

impl Membership {
    /// A snapshot of `count` instances about which nothing is known yet (all dead).
    ///
    /// # Panics
    /// If `count` is 0: a cluster has at least one instance (config validation ensures it).
    pub fn new(count: u32) -> Self {
        assert!(count > 0, "a cluster has at least one instance");
        Self {
            instances: (1..=count).map(InstanceState::unknown).collect(),
        }
    }

    /// A snapshot where every one of `count` instances is alive and idle.
    pub fn all_idle(count: u32) -> Self {
        let mut m = Self::new(count);
        for s in &mut m.instances {
            s.alive = true;
        }
        m
    }

    /// `N`, the number of instances in the cluster.
    pub fn count(&self) -> u32 {
        self.instances.len() as u32
    }

    /// The state of instance `id`; `None` when `id` is outside `1..=N`.
    pub fn get(&self, id: InstanceId) -> Option<&InstanceState> {
        self.instances.get((id as usize).checked_sub(1)?)
    }

    /// Replaces the state of `state.id`; ids outside `1..=N` are ignored.
    pub fn set(&mut self, state: InstanceState) {
        if let Some(slot) = (state.id as usize)
            .checked_sub(1)
            .and_then(|i| self.instances.get_mut(i))
        {
            *slot = state;
        }
    }

    /// Every instance in id order.
    pub fn iter(&self) -> impl Iterator<Item = &InstanceState> {
        self.instances.iter()
    }

    /// Number of live instances.
    pub fn alive_count(&self) -> usize {
        self.instances.iter().filter(|s| s.alive).count()
    }

    /// Number of live instances that take new users (alive and not draining).
    pub fn serving_count(&self) -> usize {
        self.instances
            .iter()
            .filter(|s| s.alive && !s.draining)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> OverloadPolicy {
        OverloadPolicy {
            max_wait: Duration::from_secs(10),
            assumed_rate: 2.0,
        }
    }

    #[test]
    fn wait_is_queue_over_rate() {
        let s = InstanceState {
            queue_depth: 30,
            service_rate: 2.0,
            ..InstanceState::idle(1)
        };
        assert_eq!(s.estimated_wait(&policy()), Duration::from_secs(15));
        assert!(s.is_overloaded(&policy()));
    }

    #[test]
    fn unmeasured_rate_uses_the_assumed_rate() {
        let s = InstanceState {
            queue_depth: 10,
            ..InstanceState::idle(1)
        };
        assert_eq!(s.estimated_wait(&policy()), Duration::from_secs(5));
        assert!(!s.is_overloaded(&policy()));
    }

    #[test]
    fn draining_is_overloaded_even_when_idle() {
        let s = InstanceState {
            draining: true,
            ..InstanceState::idle(1)
        };
        assert!(s.is_overloaded(&policy()));
        assert!(!s.is_available(&policy()));
    }

    #[test]
    fn waiting_of_a_kind_falls_back_to_the_total_for_an_older_writer() {
        let old = InstanceState {
            queue_depth: 7,
            ..InstanceState::idle(1)
        };
        assert_eq!(old.waiting_of("chat"), 7);
        let new = InstanceState {
            queue_depth: 7,
            waiting: [("chat".to_owned(), 0), ("video".to_owned(), 7)].into(),
            ..InstanceState::idle(1)
        };
        assert_eq!(
            (
                new.waiting_of("chat"),
                new.waiting_of("video"),
                new.waiting_of("image")
            ),
            (0, 7, 0)
        );
    }

    #[test]
    fn a_state_without_waiting_figures_still_parses() {
        let s: InstanceState = serde_json::from_str(
            r#"{"id":2,"alive":true,"draining":false,"queue_depth":3,"in_flight":1,"service_rate":0.5}"#,
        )
        .unwrap();
        assert!(s.waiting.is_empty());
        assert_eq!(s.waiting_of("image"), 3);
    }

    #[test]
    fn membership_ignores_out_of_range_ids() {
        let mut m = Membership::new(2);
        m.set(InstanceState::idle(3));
        m.set(InstanceState::idle(0));
        assert_eq!(m.alive_count(), 0);
        assert!(m.get(0).is_none());
        assert!(m.get(3).is_none());
        m.set(InstanceState::idle(2));
        assert_eq!(m.alive_count(), 1);
    }
}

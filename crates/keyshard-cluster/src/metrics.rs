//! Counters of the cluster mechanism, read by `/metrics` and the simulator.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

/// Monotonic counters, updated with relaxed atomics (each is independent; readers only need
/// eventually consistent totals).
#[derive(Debug, Default)]
pub struct ClusterMetrics {
    claims_won: AtomicU64,
    claims_lost: AtomicU64,
    takeovers_down: AtomicU64,
    takeovers_overload: AtomicU64,
    fallback_wins: AtomicU64,
    degraded_decisions: AtomicU64,
    degraded_answers: AtomicU64,
    redis_errors: AtomicU64,
    heartbeats: AtomicU64,
    snapshots: AtomicU64,
}

/// A copy of [`ClusterMetrics`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct MetricsSnapshot {
    /// Claims this instance won (`SET NX` succeeded), as owner or as fallback.
    pub claims_won: u64,
    /// Claims another instance had already won.
    pub claims_lost: u64,
    /// Won claims of users whose primary was down (`Reason::PrimaryDown`).
    pub takeovers_down: u64,
    /// Won claims of users whose primary was overloaded or draining.
    pub takeovers_overload: u64,
    /// Won claims taken as a fallback after the grace delay (the owner did not claim).
    pub fallback_wins: u64,
    /// Decisions made by the static rule because Redis was unreachable.
    pub degraded_decisions: u64,
    /// Of those, the ones where this instance answered (it is the user's primary).
    pub degraded_answers: u64,
    /// Redis operations that failed or timed out.
    pub redis_errors: u64,
    /// Heartbeats written.
    pub heartbeats: u64,
    /// Membership snapshots read.
    pub snapshots: u64,
}

fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl ClusterMetrics {
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            claims_won: get(&self.claims_won),
            claims_lost: get(&self.claims_lost),
            takeovers_down: get(&self.takeovers_down),
            takeovers_overload: get(&self.takeovers_overload),
            fallback_wins: get(&self.fallback_wins),
            degraded_decisions: get(&self.degraded_decisions),
            degraded_answers: get(&self.degraded_answers),
            redis_errors: get(&self.redis_errors),
            heartbeats: get(&self.heartbeats),
            snapshots: get(&self.snapshots),
        }
    }

    pub(crate) fn won(&self, reason: keyshard_routing::Reason, fallback: bool) {
        use keyshard_routing::Reason;
        inc(&self.claims_won);
        match reason {
            Reason::PrimaryDown => inc(&self.takeovers_down),
            Reason::PrimaryOverloaded | Reason::AllOverloaded => inc(&self.takeovers_overload),
            Reason::Primary | Reason::NoneAlive => {}
        }
        if fallback {
            inc(&self.fallback_wins);
        }
    }

    pub(crate) fn lost(&self) {
        inc(&self.claims_lost);
    }

    pub(crate) fn degraded(&self, answer: bool) {
        inc(&self.degraded_decisions);
        if answer {
            inc(&self.degraded_answers);
        }
    }

    pub(crate) fn redis_error(&self) {
        inc(&self.redis_errors);
    }

    pub(crate) fn heartbeat(&self) {
        inc(&self.heartbeats);
    }

    pub(crate) fn snapshot_taken(&self) {
        inc(&self.snapshots);
    }
}

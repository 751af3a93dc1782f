//! The scenario report: what happened to every interaction, judged by the simulator alone.
//!
//! - [`model`]: the serde data `--json` writes ([`Report`] and its parts); field names are a
//!   contract (DESIGN.md §6).
//! - [`compute`]: [`Report::compute`], a pure function of the fake Discord's records and what
//!   the simulator observed ([`ReportInput`]); routing is judged by [`crate::judge`].
//! - [`render`]: [`Report::render`], the text a person reads.
//!
//! Routing of each acknowledged interaction, against `primary(user) = user % N + 1`:
//! - `primary`: answered by the primary;
//! - `takeover_down`: the primary was down — killed or terminated by the simulator and not yet
//!   ready again, or without a heartbeat in a sample around the acknowledgement;
//! - `takeover_overload`: the primary was alive but overloaded or draining in such a sample;
//! - `misrouted`: anything else — a non-primary answered while the primary was alive and not
//!   overloaded.
//!
//! Samples count from a lag before the acknowledgement (the instances decide on snapshots that
//! are up to a heartbeat old) to one sample period after it.

pub mod compute;
pub mod model;
pub mod plot;
mod render;

use std::time::{Duration, Instant};

pub use compute::ReportInput;
pub use model::{
    AckLatency, CommandReport, CompletionLatency, Fairness, GatewayReport, InstanceMetrics,
    InstanceReport, Interactions, LaneUse, LedgerReport, LostExample, MemoryReport, MemorySample,
    Report, RevokedKey, RouteExample, Routing, ScenarioSummary,
};

/// The steady state of a load of `load` that started at `start`: from the end of a warm-up
/// (a sixth of the load, at most 10 s) to the end of the load. The warm-up leaves out the
/// cluster's start (empty queues, keys with their whole window free).
pub fn steady_window(start: Instant, load: Duration) -> (Instant, Instant) {
    (
        start + (load / 6).min(Duration::from_secs(10)),
        start + load,
    )
}

/// The `q` quantile (nearest rank) of sorted values; 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Rounds to 0.01 so the JSON stays readable.
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
    }

    #[test]
    fn the_steady_window_skips_a_sixth_at_most_ten_seconds() {
        let t = Instant::now();
        let (from, to) = steady_window(t, Duration::from_secs(30));
        assert_eq!(
            (from - t, to - t),
            (Duration::from_secs(5), Duration::from_secs(30))
        );
        let (from, _) = steady_window(t, Duration::from_secs(120));
        assert_eq!(from - t, Duration::from_secs(10));
    }
}

//! The service-rate estimate an instance publishes with its heartbeat: jobs finished per
//! second over a recent window. It is the divisor of the overload rule's estimated wait
//! (`queue ÷ rate`, see [`InstanceState::estimated_wait`](crate::InstanceState::estimated_wait)).
//!
//! Time is a parameter: a [`Duration`] since any fixed origin the caller keeps (the cluster
//! uses its job engine's start), so the estimate is tested without a clock.

use std::collections::VecDeque;
use std::time::Duration;

/// Completions within a sliding window, and the rate they make.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceRate {
    window: Duration,
    min_span: Duration,
    started: Duration,
    /// Completion times, oldest first, none older than `window` after the latest `record`.
    completions: VecDeque<Duration>,
}

impl ServiceRate {
    /// The rate is measured over the last 30 s: long enough to smooth out a burst of short
    /// chat answers between two slow videos, short enough that a stalled provider shows in
    /// the published load within half a minute.
    pub const WINDOW: Duration = Duration::from_secs(30);

    /// A young instance divides by at least 5 s, so one early completion does not look like a
    /// fast rate (a single job done 100 ms after start is not "10 jobs a second").
    pub const MIN_SPAN: Duration = Duration::from_secs(5);

    /// An estimate started at `started`, with the default window and minimum span.
    pub fn new(started: Duration) -> Self {
        Self::with_window(started, Self::WINDOW, Self::MIN_SPAN)
    }

    /// An estimate over `window`, dividing by at least `min_span` (capped at `window`).
    ///
    /// # Panics
    /// If `window` is zero: a rate over no time is undefined.
    pub fn with_window(started: Duration, window: Duration, min_span: Duration) -> Self {
        assert!(!window.is_zero(), "a rate needs a window longer than zero");
        Self {
            window,
            min_span: min_span.min(window),
            started,
            completions: VecDeque::new(),
        }
    }

    /// A job finished at `now`. Times must not run backwards; one that does counts as the
    /// latest time seen, so the record stays ordered.
    pub fn record(&mut self, now: Duration) {
        let now = self.completions.back().map_or(now, |last| now.max(*last));
        self.completions.push_back(now);
        while self
            .completions
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > self.window)
        {
            self.completions.pop_front();
        }
    }

    /// Jobs finished per second at `now`: the completions of the last `window`, divided by the
    /// time since start clamped to `min_span ..= window`. 0 when none.
    pub fn rate(&self, now: Duration) -> f64 {
        let recent = self.recent(now);
        if recent == 0 {
            return 0.0;
        }
        let span = now
            .saturating_sub(self.started)
            .clamp(self.min_span, self.window);
        recent as f64 / span.as_secs_f64()
    }

    /// Completions no older than `window` at `now`.
    pub fn recent(&self, now: Duration) -> usize {
        let too_old = self
            .completions
            .partition_point(|t| now.saturating_sub(*t) > self.window);
        self.completions.len() - too_old
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    #[test]
    fn rate_table() {
        // (completion times in s, now in s, expected rate)
        let cases: &[(&[u64], u64, f64)] = &[
            (&[], 100, 0.0),
            // One job 1 s after start: divided by the 5 s minimum, not by 1 s.
            (&[1], 1, 0.2),
            // Ten jobs in the first 10 s.
            (&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 10, 1.0),
            // Long after start: the 30 s window; the job at 10 s is 35 s old and forgotten.
            (&[10, 50, 60, 70], 75, 0.1),
            // Exactly one window old still counts.
            (&[45], 75, 1.0 / 30.0),
        ];
        for (times, now, want) in cases {
            let mut r = ServiceRate::new(Duration::ZERO);
            for t in *times {
                r.record(s(*t));
            }
            let got = r.rate(s(*now));
            assert!(
                (got - want).abs() < 1e-9,
                "{times:?} at {now}: {got} != {want}"
            );
        }
    }

    #[test]
    fn a_clock_running_backwards_keeps_the_record_ordered() {
        let mut r = ServiceRate::new(Duration::ZERO);
        r.record(s(40));
        r.record(s(5));
        // Counted at 40 s, not at 5 s: at 60 s both are still within the window.
        assert_eq!(r.recent(s(60)), 2);
    }
}

//! When to look at a rendering video task, and how many video jobs a key needs in flight to
//! use its creation limit. Pure: ages and durations are passed in.
//!
//! A video job holds its worker slot from the task's creation until the file is delivered,
//! so a slow look at a finished task costs twice: the lookup itself, on the lane of polls,
//! and the time the slot stays taken. By Little's law a key that may create `rate` videos
//! per second, each holding a slot for `render + lag`, needs `rate × (render + lag)` slots
//! to use its creation limit; with fewer, creations wait for slots and the creation limit
//! goes unused (four slots and six-second renders left the simulator's video lane at 32 %).
//!
//! So a task is polled first at 90 % of the render time expected from the last renders
//! ([`RenderClock`]), then every tenth of it (between [`MIN_GAP`] and the configured
//! longest gap): a few polls per video instead of one every few seconds, and a lag of
//! about 5 % of the render time.

use std::time::Duration;

/// The shortest gap between two polls of one task.
pub const MIN_GAP: Duration = Duration::from_millis(100);

/// How much of a new observation moves the estimate: a quarter follows a slower model or a
/// busier provider within a few videos without jumping on one outlier.
const WEIGHT: f64 = 0.25;

/// The render time to expect, learned from the tasks this client saw finish.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderClock {
    configured: Duration,
    expected: Duration,
}

impl RenderClock {
    /// Starts from the configured render time.
    pub fn new(configured: Duration) -> Self {
        let configured = configured.max(MIN_GAP);
        RenderClock {
            configured,
            expected: configured,
        }
    }

    pub fn expected(&self) -> Duration {
        self.expected
    }

    pub fn configured(&self) -> Duration {
        self.configured
    }

    /// How long to wait before polling a task `age` old. `polled` says whether it was
    /// already polled (and found rendering); `max_gap` is the longest gap allowed.
    pub fn next_poll(&self, age: Duration, polled: bool, max_gap: Duration) -> Duration {
        let first = self.expected.mul_f64(0.9);
        if !polled && age < first {
            return first - age;
        }
        (self.expected / 10).clamp(MIN_GAP, max_gap.max(MIN_GAP))
    }

    /// A task seen finished at `done_age`; `pending_age` is the age at which it was last
    /// seen still rendering (none when the first poll found it done). Its render time lies
    /// between the two: the estimate moves towards their middle, or towards `done_age` when
    /// only that bound is known (so an estimate that is too long shrinks until a poll comes
    /// early enough to see a task still rendering).
    pub fn observe(&mut self, pending_age: Option<Duration>, done_age: Duration) {
        let sample = match pending_age {
            Some(p) if p < done_age => (p + done_age) / 2,
            _ => done_age,
        };
        let next = self.expected.as_secs_f64() * (1.0 - WEIGHT) + sample.as_secs_f64() * WEIGHT;
        self.expected = Duration::from_secs_f64(next).max(MIN_GAP);
    }
}

/// How many video jobs a key should run at once: `rate` creations per `window`, each holding
/// its slot for the render time (+20 %: the polling lag of about 5 % and the create, file and
/// download calls), plus `concurrency` for jobs in their creation or delivery.
pub fn video_slots(rate: u32, window: Duration, render: Duration, concurrency: u32) -> usize {
    let per_sec = f64::from(rate) / window.as_secs_f64().max(1e-3);
    let rendering = (per_sec * render.as_secs_f64() * 1.2).ceil();
    rendering as usize + concurrency.max(1) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn the_first_poll_comes_near_the_expected_end_then_every_tenth() {
        let c = RenderClock::new(s(120.0));
        assert_eq!(c.next_poll(s(0.0), false, s(10.0)), s(108.0));
        assert_eq!(c.next_poll(s(100.0), false, s(10.0)), s(8.0));
        // Past the first poll: a tenth of the render time, capped by the longest gap.
        assert_eq!(c.next_poll(s(108.0), true, s(10.0)), s(10.0));
        assert_eq!(c.next_poll(s(108.0), true, s(5.0)), s(5.0));
        let short = RenderClock::new(s(6.0));
        assert_eq!(short.next_poll(s(5.4), true, s(10.0)), s(0.6));
        // Never below the shortest gap.
        assert_eq!(
            RenderClock::new(s(0.2)).next_poll(s(1.0), true, s(10.0)),
            MIN_GAP
        );
    }

    #[test]
    fn the_estimate_follows_the_renders_seen() {
        // Configured 6 s; the tasks really take 4 s: every first poll (at 90 %) finds them
        // done, and the estimate shrinks until a poll sees one still rendering.
        let mut c = RenderClock::new(s(6.0));
        let truth = 4.0;
        for _ in 0..40 {
            let mut age = c.next_poll(s(0.0), false, s(10.0));
            let mut pending = None;
            while age.as_secs_f64() < truth {
                pending = Some(age);
                age += c.next_poll(age, true, s(10.0));
            }
            c.observe(pending, age);
        }
        // Within a poll gap (a tenth) of the truth.
        let e = c.expected().as_secs_f64();
        assert!((truth * 0.9..truth * 1.1).contains(&e), "{e}");
        // And it grows when renders get slower.
        for _ in 0..40 {
            c.observe(Some(s(9.0)), s(9.5));
        }
        assert!((c.expected().as_secs_f64() - 9.25).abs() < 0.05);
        assert_eq!(c.configured(), s(6.0));
    }

    #[test]
    fn slots_follow_littles_law() {
        // The simulator: 120 a minute, 6 s renders: 2/s × 7.2 s = 15 rendering, + 4.
        assert_eq!(video_slots(120, s(60.0), s(6.0), 4), 19);
        // Hailuo's published 5 a minute with two-minute renders: 12 rendering, + 4.
        assert_eq!(video_slots(5, s(60.0), s(120.0), 4), 16);
        assert_eq!(video_slots(0, s(60.0), s(120.0), 0), 1);
    }
}

//! Unit tests of `limits::policy`, beside it (moved out of the file to keep it readable).

use super::*;

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn limits(requests: u32, window_ms: u64, burst: u32) -> LaneLimits {
    LaneLimits {
        requests,
        tokens: None,
        window: ms(window_ms),
        max_guard: ms(window_ms / 60),
        burst,
    }
}

fn hints(limit: u64, remaining: u64, reset_ms: u64) -> RateHints {
    RateHints {
        limit_requests: Some(limit),
        remaining_requests: Some(remaining),
        reset_requests: Some(ms(reset_ms)),
        ..RateHints::default()
    }
}

fn go(p: &mut LanePolicy, now: Instant) -> u64 {
    match p.try_admit(now, 0) {
        Decision::Go(id) => id,
        other => panic!("expected to go at once: {other:?}"),
    }
}

fn wait(p: &mut LanePolicy, now: Instant) -> (Instant, Option<Pause>) {
    match p.try_admit(now, 0) {
        Decision::Wait { until, pause } => (until, pause),
        other => panic!("expected to wait: {other:?}"),
    }
}

#[test]
fn without_headers_the_own_window_and_pace_rule_with_the_measured_guard() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(120, 60_000, 3));
    // Before any answer: the fixed guard (1 s per minute).
    let before = ms(61_000) / 120;
    assert_eq!(p.interval(), before);
    let ids: Vec<u64> = (0..3).map(|_| go(&mut p, t0)).collect();
    for id in ids {
        assert_eq!(p.answered(id, t0 + ms(25), &RateHints::default()), None);
    }
    // Answers 25 ms after their start: the pace is 120 per 60.025 s, from the first
    // request on.
    let after = ms(60_025) / 120;
    assert_eq!(p.interval(), after);
    // The burst is paid back at once: the next request is on the pace.
    let (next, pause) = wait(&mut p, t0 + ms(25));
    assert_eq!(pause, None);
    assert_eq!(next, t0 + after * 3);
}

#[test]
fn a_key_at_its_limit_reporting_remaining_zero_keeps_its_pace() {
    // The common case: remaining 0 in every answer because the lane uses the whole limit;
    // the own count agrees, so nothing pauses beyond the pace.
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(3, 3_000, 3));
    let ids: Vec<u64> = (0..3).map(|_| go(&mut p, t0)).collect();
    for (i, id) in ids.into_iter().enumerate() {
        let pause = p.answered(id, t0 + ms(10), &hints(3, 2 - i as u64, 3_000));
        assert_eq!(pause, None, "request {i}");
    }
    let now = t0 + ms(10);
    // The window and the pace (3 s + 10 ms for three) decide, and the provider holds
    // nothing.
    let (next, pause) = wait(&mut p, now);
    assert_eq!((next, pause), (t0 + ms(3_010), None));
    assert_eq!(p.usage(now).paused_until, None);
}

#[test]
fn a_window_that_resets_early_ends_the_pause_early() {
    // The limits say 6,000 per minute; the provider has a fixed window of 5 per 2 s.
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(6_000, 60_000, 5));
    let mut pause = None;
    for i in 0..5u64 {
        let start = t0 + ms(30 * i);
        let id = go(&mut p, start);
        let answer = p.answered(id, start + ms(20), &hints(5, 4 - i, 2_000 - 30 * i));
        assert!(answer.is_none() || i == 4, "request {i}");
        pause = answer;
    }
    let pause = pause.expect("the provider ran out: a pause starts");
    let back = t0 + ms(140 + 1_880);
    assert_eq!(
        pause,
        Pause {
            until: back,
            reason: PauseReason::Requests
        }
    );
    // Paused until the provider's reset, not until the own window (a minute) frees a
    // slot, and announced once.
    assert_eq!(wait(&mut p, t0 + ms(140)), (back, None));
    // At the reset the provider is back to its limit: the lane goes at its pace again,
    // with a burst of 3 (the allowance of 5, less 2).
    let mut n = 0;
    let (next, pause) = loop {
        match p.try_admit(back, 0) {
            Decision::Go(_) => n += 1,
            Decision::Wait { until, pause } => break (until, pause),
        }
    };
    assert_eq!((n, pause), (3, None));
    assert!(next < back + ms(100), "{:?}", next - back);
}

#[test]
fn a_fresher_answer_with_room_lifts_the_pause() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(100, 60_000, 5));
    let a = go(&mut p, t0);
    let b = go(&mut p, t0 + ms(1));
    // `a`'s answer: nothing left for 30 s.
    assert!(p.answered(a, t0 + ms(20), &hints(10, 0, 30_000)).is_some());
    assert_eq!(wait(&mut p, t0 + ms(20)).0, t0 + ms(30_020));
    // `b` started later and its answer says the window reset meanwhile.
    assert_eq!(p.answered(b, t0 + ms(40), &hints(10, 9, 1_000)), None);
    go(&mut p, t0 + ms(40));
}

#[test]
fn a_window_that_resets_late_pauses_again() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(100, 60_000, 5));
    let a = go(&mut p, t0);
    assert!(p.answered(a, t0 + ms(10), &hints(10, 0, 1_000)).is_some());
    // After the announced reset the lane tries again…
    let b = go(&mut p, t0 + ms(1_010));
    // …and the provider still has nothing: a new pause, announced again.
    let pause = p.answered(b, t0 + ms(1_020), &hints(10, 0, 2_000)).unwrap();
    assert_eq!(pause.until, t0 + ms(3_020));
    assert_eq!(wait(&mut p, t0 + ms(1_020)).0, t0 + ms(3_020));
}

#[test]
fn requests_in_flight_use_up_the_reported_room() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(100, 60_000, 10));
    let a = go(&mut p, t0);
    // Three more leave before `a`'s answer is back.
    for i in 1..=3 {
        go(&mut p, t0 + ms(i));
    }
    // `a`'s answer: 3 left, but the three in flight may not be counted yet.
    assert!(p.answered(a, t0 + ms(30), &hints(10, 3, 5_000)).is_some());
    assert_eq!(wait(&mut p, t0 + ms(30)).0, t0 + ms(5_030));
    // With 5 left, two more may go, then the lane pauses.
    let mut p = LanePolicy::new(limits(100, 60_000, 10));
    let a = go(&mut p, t0);
    for i in 1..=3 {
        go(&mut p, t0 + ms(i));
    }
    assert_eq!(p.answered(a, t0 + ms(30), &hints(10, 5, 5_000)), None);
    go(&mut p, t0 + ms(30));
    go(&mut p, t0 + ms(30));
    let (until, pause) = wait(&mut p, t0 + ms(30));
    assert_eq!(until, t0 + ms(5_030));
    assert_eq!(pause.unwrap().reason, PauseReason::Requests);
}

#[test]
fn absent_or_nonsense_headers_leave_the_own_window_in_charge() {
    let t0 = Instant::now();
    for h in [
        RateHints::default(),
        // remaining above the limit
        hints(5, 9, 5_000),
        // a limit of 0
        hints(0, 0, 5_000),
        // no remaining at all (a negative or unparsable value parses to none)
        RateHints {
            limit_requests: Some(5),
            reset_requests: Some(ms(5_000)),
            ..RateHints::default()
        },
    ] {
        let mut p = LanePolicy::new(limits(2, 1_000, 2));
        let a = go(&mut p, t0);
        go(&mut p, t0);
        assert_eq!(p.answered(a, t0 + ms(5), &h), None, "{h:?}");
        // The own window of 2 per second decides (a slot frees 1 s after `a`'s answer,
        // on the pace of 2 per 1.005 s), not a pause of 5 s.
        assert_eq!(wait(&mut p, t0 + ms(5)), (t0 + ms(1_005), None), "{h:?}");
    }
    // A huge reset is dropped: the window's length stands in for it.
    let mut p = LanePolicy::new(limits(100, 1_000, 2));
    let a = go(&mut p, t0);
    let huge = RateHints {
        reset_requests: Some(Duration::from_secs(30 * 86_400)),
        ..hints(5, 0, 0)
    };
    assert!(p.answered(a, t0 + ms(5), &huge).is_some());
    assert_eq!(wait(&mut p, t0 + ms(5)).0, t0 + ms(5 + 1_000 + 16));
}

#[test]
fn a_small_burst_allowance_shrinks_the_burst_instead_of_pausing() {
    // A proxy that reports its burst allowance (3, refilled at the key's rate) rather
    // than the per-minute remaining.
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(120, 60_000, 3));
    assert_eq!(p.burst(), 3);
    let a = go(&mut p, t0);
    assert_eq!(p.answered(a, t0 + ms(20), &hints(3, 2, 500)), None);
    assert_eq!(p.burst(), 1, "an allowance of 3 leaves a burst of 1");
    // The next request waits for the pace, not for a pause.
    let (next, pause) = wait(&mut p, t0 + ms(20));
    assert_eq!(pause, None);
    assert_eq!(next, t0 + ms(60_020) / 120);
}

#[test]
fn retry_after_pauses_once_and_a_429_without_it_too() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(100, 60_000, 5));
    let a = go(&mut p, t0);
    let h = RateHints {
        retry_after: Some(ms(2_000)),
        ..RateHints::default()
    };
    let pause = p.answered(a, t0 + ms(10), &h).unwrap();
    assert_eq!(
        pause,
        Pause {
            until: t0 + ms(2_010),
            reason: PauseReason::RetryAfter
        }
    );
    // The retry loop confirms it: the same pause, not a second one.
    assert_eq!(p.cool_down(t0 + ms(10), ms(2_000), true), None);
    assert_eq!(wait(&mut p, t0 + ms(10)), (t0 + ms(2_010), None));
    // The lane's own cooldown is not the provider's: nothing to announce.
    let mut p = LanePolicy::new(limits(100, 60_000, 5));
    assert_eq!(p.cool_down(t0, ms(500), false), None);
    assert_eq!(wait(&mut p, t0), (t0 + ms(500), None));
    assert_eq!(p.usage(t0).paused_until, Some(t0 + ms(500)));
}

/// The limiters a provider may run, each answering with headers as OpenAI defines them
/// (remaining now; reset = until back to the whole limit).
#[derive(Debug, Clone, Copy)]
enum Provider {
    Sliding {
        limit: u32,
        window: Duration,
    },
    Fixed {
        limit: u32,
        window: Duration,
    },
    Bucket {
        capacity: u32,
        interval: Duration,
    },
    /// A bucket of `capacity` in front of a sliding window; headers describe the bucket.
    BurstProxy {
        capacity: u32,
        limit: u32,
        window: Duration,
    },
}

struct Limiter {
    kind: Provider,
    t0: Instant,
    starts: std::collections::VecDeque<Instant>,
    /// Bucket: theoretical arrival time (GCRA).
    tat: Instant,
    headers: bool,
}

impl Limiter {
    fn new(kind: Provider, t0: Instant, headers: bool) -> Self {
        Limiter {
            kind,
            t0,
            starts: Default::default(),
            tat: t0,
            headers,
        }
    }

    fn sliding(&mut self, at: Instant, limit: u32, window: Duration) -> Option<(u32, Duration)> {
        while self.starts.front().is_some_and(|s| *s + window <= at) {
            self.starts.pop_front();
        }
        if self.starts.len() >= limit as usize {
            return None;
        }
        self.starts.push_back(at);
        Some((limit - self.starts.len() as u32, window))
    }

    fn bucket(
        &mut self,
        at: Instant,
        capacity: u32,
        interval: Duration,
    ) -> Option<(u32, Duration)> {
        let tolerance = interval * (capacity - 1);
        let tat = self.tat.max(at);
        if tat > at + tolerance {
            return None;
        }
        self.tat = tat + interval;
        let full_in = self.tat - at;
        let remaining = capacity - (full_in.as_nanos().div_ceil(interval.as_nanos())) as u32;
        Some((remaining, full_in))
    }

    /// Admits or refuses a request arriving at `at`; the hints of the answer.
    fn arrive(&mut self, at: Instant) -> Option<RateHints> {
        let (limit, remaining, reset) = match self.kind {
            Provider::Sliding { limit, window } => {
                let (rem, window) = self.sliding(at, limit, window)?;
                (limit, rem, window)
            }
            Provider::Fixed { limit, window } => {
                let n = ((at - self.t0).as_nanos() / window.as_nanos()) as u32;
                let end = self.t0 + window * (n + 1);
                self.starts.retain(|s| *s >= end - window);
                if self.starts.len() >= limit as usize {
                    return None;
                }
                self.starts.push_back(at);
                (limit, limit - self.starts.len() as u32, end - at)
            }
            Provider::Bucket { capacity, interval } => {
                let (rem, reset) = self.bucket(at, capacity, interval)?;
                (capacity, rem, reset)
            }
            Provider::BurstProxy {
                capacity,
                limit,
                window,
            } => {
                // Both must admit; the window is checked first without counting.
                while self.starts.front().is_some_and(|s| *s + window <= at) {
                    self.starts.pop_front();
                }
                if self.starts.len() >= limit as usize {
                    return None;
                }
                let (rem, reset) = self.bucket(at, capacity, window / limit)?;
                self.starts.push_back(at);
                (capacity, rem, reset)
            }
        };
        Some(if self.headers {
            hints(
                u64::from(limit),
                u64::from(remaining),
                reset.as_millis() as u64,
            )
        } else {
            RateHints::default()
        })
    }
}

/// Drives a lane configured at 120 per minute with greedy callers (at most 16 in flight)
/// against `provider` for `secs`: requests reach the provider 0–`up_ms` ms after they
/// start, answers come back 10–`rtt_ms` ms later. Returns (admitted, refused). Long because
/// it is a small discrete-event simulation (callers, the lane, the provider's window) whose
/// state is shared by every step of its loop.
fn drive(provider: Provider, headers: bool, up_ms: u64, rtt_ms: u64, secs: u64) -> (u64, u64) {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(secs);
    let mut p = LanePolicy::new(LaneLimits {
        requests: 120,
        tokens: None,
        window: Duration::from_secs(60),
        max_guard: Duration::from_secs(1),
        burst: 3,
    });
    let mut provider = Limiter::new(provider, t0, headers);
    // Requests on their way to the provider: (arrival, id, time to answer), and answers
    // on their way back: (arrival of the answer, id, hints).
    let mut arrivals: Vec<(Instant, u64, Duration)> = Vec::new();
    let mut answers: Vec<(Instant, u64, RateHints)> = Vec::new();
    let (mut admitted, mut refused) = (0, 0);
    let mut now = t0;
    while now < end {
        // Every event due by now, in time order: the provider sees arrivals as they
        // come, the lane answers as they come back.
        loop {
            arrivals.sort_by_key(|a| a.0);
            answers.sort_by_key(|a| a.0);
            let arrival = arrivals.first().map(|a| a.0).filter(|t| *t <= now);
            let answer = answers.first().map(|a| a.0).filter(|t| *t <= now);
            let first_arrival = match (arrival, answer) {
                (Some(a), b) => b.is_none_or(|b| a <= b),
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if first_arrival {
                let (at, id, rtt) = arrivals.remove(0);
                let h = match provider.arrive(at) {
                    Some(h) => {
                        admitted += 1;
                        h
                    }
                    None => {
                        refused += 1;
                        RateHints {
                            retry_after: Some(Duration::from_secs(1)),
                            ..RateHints::default()
                        }
                    }
                };
                answers.push((at + rtt, id, h));
            } else {
                let (at, id, h) = answers.remove(0);
                p.answered(id, at, &h);
            }
        }
        let next_event = arrivals
            .iter()
            .map(|a| a.0)
            .chain(answers.iter().map(|a| a.0))
            .min();
        if arrivals.len() + answers.len() >= 16 {
            now = next_event.expect("16 in flight");
            continue;
        }
        match p.try_admit(now, 0) {
            Decision::Go(id) => {
                let up = ms(rng.random_range(0..=up_ms));
                let back = ms(rng.random_range(10..=rtt_ms.max(10)));
                arrivals.push((now + up, id, back));
            }
            Decision::Wait { until, .. } => {
                now = next_event.map_or(until, |e| e.min(until));
            }
        }
    }
    (admitted, refused)
}

const MINUTE: Duration = Duration::from_secs(60);

#[test]
fn simulated_providers_of_every_kind_are_used_fully_without_a_refusal() {
    // Ten minutes at 120 per minute: at most 1,200 plus the first window's burst
    // allowance of the provider.
    let cases = [
        (
            "sliding window",
            Provider::Sliding {
                limit: 120,
                window: MINUTE,
            },
        ),
        (
            "fixed window",
            Provider::Fixed {
                limit: 120,
                window: MINUTE,
            },
        ),
        (
            "token bucket",
            Provider::Bucket {
                capacity: 120,
                interval: ms(500),
            },
        ),
        (
            "burst proxy",
            Provider::BurstProxy {
                capacity: 3,
                limit: 120,
                window: MINUTE,
            },
        ),
    ];
    for (name, provider) in cases {
        for headers in [true, false] {
            if matches!(provider, Provider::BurstProxy { .. }) && !headers {
                // Without its headers nothing tells the lane about the allowance: the
                // configured burst of 3 meets an allowance of 3 exactly, and any jitter
                // is a 429. That is what the headers are for.
                continue;
            }
            let (admitted, refused) = drive(provider, headers, 5, 100, 600);
            assert_eq!(
                refused, 0,
                "{name} (headers: {headers}): {admitted} admitted"
            );
            // 99.5 % of the limit over ten minutes.
            assert!(
                admitted >= 1_194,
                "{name} (headers: {headers}): {admitted} admitted"
            );
        }
    }
}

#[test]
fn a_provider_stricter_than_the_limits_is_followed_without_a_refusal() {
    // The limits say 120 a minute; the provider allows 60.
    for provider in [
        Provider::Sliding {
            limit: 60,
            window: MINUTE,
        },
        Provider::Fixed {
            limit: 60,
            window: MINUTE,
        },
        Provider::Bucket {
            capacity: 60,
            interval: Duration::from_secs(1),
        },
    ] {
        let (admitted, refused) = drive(provider, true, 5, 100, 600);
        assert_eq!(refused, 0, "{provider:?}: {admitted} admitted");
        // It keeps going: a sliding window whose reset says "empty again" is used in
        // bursts of its limit and pauses of its window (two thirds of it); the others
        // more.
        assert!(admitted >= 390, "{provider:?}: {admitted} admitted");
    }
}

//! When may a lane's next request start: the lane's own count ([`Ledger`], [`Pacer`]), what
//! the provider reported ([`ProviderView`] for requests and for tokens), and the pauses it
//! asked for (`Retry-After`, a 429), composed as plain data. Pure: times are passed in; the
//! lane in [`super`] does the waiting and the logging.
//!
//! **The pace.** Requests go `(window + guard) / limit` apart after a small burst, and a slot
//! is reused a window after its answer arrived ([`super::window`]). `guard` is the longest
//! round trip of the last window (capped at the fixed guard), so the pace matches the slots
//! the window frees and the lane uses all but `guard / window` of the limit.
//!
//! **The provider's word** only ever holds a lane back, never pushes it past its configured
//! limits: headers may describe one limiter of several (a proxy's, in front of the real one),
//! and OpenAI enforces its per-minute limits over shorter slices that no header shows.
//! - A provider stricter than the configured limits pauses the lane ([`ProviderView::hold`]).
//! - A provider that reports a limit smaller than the lane's burst (a small burst allowance
//!   rather than a per-window limit) gets bursts of at most `limit - 2`: its allowance never
//!   runs dry in steady state (one request of margin for one in flight, one for the rounding
//!   of `remaining`), so the lane keeps its pace instead of hitting `remaining: 0` and
//!   pausing after every burst.
//! - `Retry-After` (and the backoff after a 429 without one) pauses the lane.
//!
//! Each pause the provider imposes is returned once ([`Pause`]), when it starts, for the
//! lane to log and count.

use std::time::Duration;

use tokio::time::Instant;

use super::reported::{Hold, ProviderView, Report};
use super::window::{Ledger, Pacer};
use crate::headers::RateHints;

/// Why the provider paused a lane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PauseReason {
    /// `Retry-After`, or a 429.
    RetryAfter,
    /// `x-ratelimit-remaining-requests` ran out on a provider stricter than the limits.
    Requests,
    /// `x-ratelimit-remaining-tokens` ran out likewise.
    Tokens,
}

impl PauseReason {
    pub fn as_str(self) -> &'static str {
        match self {
            PauseReason::RetryAfter => "retry_after",
            PauseReason::Requests => "requests",
            PauseReason::Tokens => "tokens",
        }
    }
}

/// A pause the provider imposed, reported once, when it starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pause {
    pub until: Instant,
    pub reason: PauseReason,
}

/// The answer to "may a request start now?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Yes: the slot is taken; the id names the request in [`LanePolicy::answered`].
    Go(u64),
    /// Not before `until`. `pause` is set when a provider pause starts with this decision.
    Wait {
        until: Instant,
        pause: Option<Pause>,
    },
}

/// A lane's limits as configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneLimits {
    pub requests: u32,
    pub tokens: Option<u32>,
    pub window: Duration,
    /// The guard a request keeps until its answer comes back (`KeyLimits::guard`).
    pub max_guard: Duration,
    pub burst: u32,
}

/// What a lane has used, for its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub requests: u32,
    pub requests_limit: u32,
    pub tokens: Option<u64>,
    pub tokens_limit: Option<u64>,
    /// The end of the pause in force (the provider's or the lane's own), if any.
    pub paused_until: Option<Instant>,
}

#[derive(Debug)]
pub struct LanePolicy {
    limits: LaneLimits,
    ledger: Ledger,
    pacer: Pacer,
    reported_requests: ProviderView,
    reported_tokens: ProviderView,
    /// The lane's own cooldown (a call that could not get capacity in time, the day's limit).
    cooldown: Option<Instant>,
    /// A pause the provider asked for.
    provider_cooldown: Option<Instant>,
    /// The end of the provider pause announced last: each pause is announced once.
    announced: Option<Instant>,
}

impl LanePolicy {
    pub fn new(limits: LaneLimits) -> Self {
        LanePolicy {
            ledger: Ledger::new(
                limits.requests,
                limits.tokens,
                limits.window,
                limits.max_guard,
            ),
            limits,
            pacer: Pacer::default(),
            reported_requests: ProviderView::default(),
            reported_tokens: ProviderView::default(),
            cooldown: None,
            provider_cooldown: None,
            announced: None,
        }
    }

    /// The spacing of requests: the window plus the measured guard, over the limit.
    pub fn interval(&self) -> Duration {
        (self.limits.window + self.ledger.guard_estimate()) / self.limits.requests.max(1)
    }

    /// The guard the pace plans with ([`Ledger::guard_estimate`]).
    pub fn guard(&self) -> Duration {
        self.ledger.guard_estimate()
    }

    /// The burst: the configured one, or less when the provider reports an allowance below
    /// both the lane's limit and its burst + 2 (a burst allowance, not the window's limit).
    pub fn burst(&self) -> u32 {
        let configured = self.limits.burst.max(1);
        match self.reported_requests.limit() {
            Some(l) if l < u64::from(self.limits.requests) && l < u64::from(configured) + 2 => {
                l.saturating_sub(2).max(1) as u32
            }
            _ => configured,
        }
    }

    /// The window's length plus the fixed guard: what an absent reset stands for.
    fn fallback_reset(&self) -> Duration {
        self.limits.window + self.limits.max_guard
    }

    /// The latest end of a provider hold in force at `now` for a request of `tokens`, and
    /// why; the reason is `None` for a hold that only waits for answers ([`Hold::reported`]
    /// false), which is no pause the provider imposed.
    fn provider_hold(&self, now: Instant, tokens: u64) -> Option<(Instant, Option<PauseReason>)> {
        let fallback = self.fallback_reset();
        let ledger = &self.ledger;
        let reason = |h: Hold, r| (h.until, h.reported.then_some(r));
        let holds = [
            self.provider_cooldown
                .map(|until| (until, Some(PauseReason::RetryAfter))),
            self.reported_requests
                .hold(
                    now,
                    1,
                    |id, sent| ledger.uncertain(id, sent).requests,
                    fallback,
                )
                .map(|h| reason(h, PauseReason::Requests)),
            self.reported_tokens
                .hold(
                    now,
                    tokens,
                    |id, sent| ledger.uncertain(id, sent).tokens,
                    fallback,
                )
                .map(|h| reason(h, PauseReason::Tokens)),
        ];
        holds
            .into_iter()
            .flatten()
            .filter(|(until, _)| *until > now)
            .max_by_key(|(until, _)| *until)
    }

    /// A provider pause until `until`: announced if no announced pause is still running.
    fn announce(&mut self, now: Instant, until: Instant, reason: PauseReason) -> Option<Pause> {
        let running = self.announced.filter(|a| *a > now);
        self.announced = Some(running.map_or(until, |a| a.max(until)));
        running.is_none().then_some(Pause { until, reason })
    }

    /// Takes a slot for a request estimated at `tokens` if one is free at `now`.
    pub fn try_admit(&mut self, now: Instant, tokens: u64) -> Decision {
        let (interval, burst) = (self.interval(), self.burst());
        let pace = self.pacer.ready_at(now, interval, burst);
        let mut blocked = self.ledger.ready_at(now, tokens);
        if let Some(c) = self.cooldown {
            blocked = blocked.max(c);
        }
        let provider = self.provider_hold(now, tokens);
        if let Some((until, _)) = provider {
            blocked = blocked.max(until);
        }
        let ready = pace.max(blocked);
        if ready <= now {
            self.pacer.record(now, interval, burst);
            return Decision::Go(self.ledger.record(now, tokens));
        }
        if blocked > pace {
            // Waiting for the window or a pause is no idleness: it earns no burst.
            self.pacer.hold(blocked);
        }
        let pause = provider
            .and_then(|(until, reason)| Some((until, reason?)))
            .and_then(|(until, reason)| self.announce(now, until, reason));
        Decision::Wait {
            until: ready,
            pause,
        }
    }

    /// Takes the answer to request `id`, which arrived at `at` with `hints`. Returns the
    /// provider pause that starts with it, if one does.
    pub fn answered(&mut self, id: u64, at: Instant, hints: &RateHints) -> Option<Pause> {
        if let Some((start, room)) = self.ledger.answered(id, at) {
            let uncertain = self.ledger.uncertain(id, start);
            if let Some(r) = Report::new(
                hints.limit_requests,
                hints.remaining_requests,
                hints.reset_requests,
            ) {
                self.reported_requests
                    .observe(id, start, at, r, uncertain.requests, room.requests);
            }
            if let Some(r) = Report::new(
                hints.limit_tokens,
                hints.remaining_tokens,
                hints.reset_tokens,
            ) {
                self.reported_tokens
                    .observe(id, start, at, r, uncertain.tokens, room.tokens);
            }
        }
        if let Some(d) = hints.retry_after {
            let until = at + d;
            self.provider_cooldown = Some(self.provider_cooldown.map_or(until, |c| c.max(until)));
        }
        let (until, reason) = self.provider_hold(at, 1)?;
        self.announce(at, until, reason?)
    }

    /// Nobody starts a request for `d` from `now`. `by_provider`: the provider asked for it
    /// (a 429), so it is a pause to announce; otherwise it is the lane's own.
    pub fn cool_down(&mut self, now: Instant, d: Duration, by_provider: bool) -> Option<Pause> {
        let until = now + d;
        let slot = if by_provider {
            &mut self.provider_cooldown
        } else {
            &mut self.cooldown
        };
        *slot = Some(slot.map_or(until, |c| c.max(until)));
        by_provider
            .then(|| self.announce(now, until, PauseReason::RetryAfter))
            .flatten()
    }

    /// Corrects the token estimate of request `id` with the reported usage.
    pub fn reconcile(&mut self, id: u64, tokens: u64) {
        self.ledger.reconcile(id, tokens);
    }

    pub fn usage(&mut self, now: Instant) -> Usage {
        let provider = self.provider_hold(now, 1).map(|(until, _)| until);
        let own = self.cooldown.filter(|c| *c > now);
        Usage {
            requests: self.ledger.used(now),
            requests_limit: self.ledger.limit(),
            tokens: self
                .ledger
                .token_limit()
                .map(|_| self.ledger.tokens_used(now)),
            tokens_limit: self.ledger.token_limit(),
            paused_until: provider.max(own),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn limits(requests: u32, window_ms: u64, burst: u32) -> LaneLimits {
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

        fn sliding(
            &mut self,
            at: Instant,
            limit: u32,
            window: Duration,
        ) -> Option<(u32, Duration)> {
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
    /// start, answers come back 10–`rtt_ms` ms later. Returns (admitted, refused).
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
                    if std::env::var("DBG").is_ok() && now - t0 < Duration::from_secs(8) {
                        eprintln!(
                            "go {:?} burst {} interval {:?}",
                            now - t0,
                            p.burst(),
                            p.interval()
                        );
                    }
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
}

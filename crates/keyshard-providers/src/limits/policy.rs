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
mod tests;

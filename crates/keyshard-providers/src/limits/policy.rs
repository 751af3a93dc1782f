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
//!
//! **Reserved sends.** A job's worker asks a lane for room *before* it picks the job
//! ([`LanePolicy::room`], [`LanePolicy::reserve`]), so the fair pick chooses among jobs only
//! when one can be sent at once, and the picked job does not queue inside the pacing behind
//! earlier picks. A reservation takes no slot: the send that follows takes it like any other
//! ([`LanePolicy::try_admit`] uses up the oldest reservation), so a reservation can never
//! push the lane past its limits. While one is outstanding the lane offers no second one;
//! [`choose`] says which of several lanes (a job kind's providers) gets the next job.

use std::collections::VecDeque;
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

/// How long a reservation holds a lane's next send for the job picked with it. The picked
/// job reaches the lane within milliseconds (a done-marker check, a progress edit); one
/// that does not use it within this (already answered, moved to a peer, its user chose
/// another provider, and dropped without saying so) must not keep the lane from the next job
/// for longer: 2 s is a second of a 60/min lane's pace, and far above the path's latency.
pub const RESERVATION_TTL: Duration = Duration::from_secs(2);

/// Whether a lane can take one more reserved send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// Yes, now.
    Now,
    /// Not before this instant (the pace, the window, a pause, or an outstanding
    /// reservation's expiry); a change (an answer, a reservation used) may bring it forward.
    At(Instant),
    /// Not until something changes (every concurrency slot is in use).
    Busy,
    /// Not within the lane's longest wait (a pause of minutes, the day's requests used up):
    /// a call now would give up at once, so nobody waits for this lane's room.
    Beyond,
}

/// Where the next send of a job kind goes, over its lanes in order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice {
    /// Lane `i` can send now (the first such in the given order).
    Now(usize),
    /// None can: look again at this instant, or on a change (`None`: only a change).
    Wait(Option<Instant>),
    /// No lane is usable at all (none configured, every key out of service, every lane
    /// [`Room::Beyond`]): nothing to wait for here; the job's own path decides (it moves the
    /// job to a peer, or tells the user, as a call that finds no capacity in time does).
    NoLane,
}

/// Chooses among a kind's lanes (`None`: not usable): the first that can send now, else the
/// earliest instant one may. Work-conserving: a job goes to whichever lane has room, so no
/// lane of the kind idles while a job it can serve waits.
pub fn choose(rooms: &[Option<Room>]) -> Choice {
    if let Some(i) = rooms.iter().position(|r| *r == Some(Room::Now)) {
        return Choice::Now(i);
    }
    if rooms.iter().all(|r| matches!(r, None | Some(Room::Beyond))) {
        return Choice::NoLane;
    }
    let at = rooms
        .iter()
        .filter_map(|r| match r {
            Some(Room::At(t)) => Some(*t),
            _ => None,
        })
        .min();
    Choice::Wait(at)
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
    /// Reservations not used yet, oldest first: id and when it was taken.
    reserved: VecDeque<(u64, Instant)>,
    next_reservation: u64,
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
            reserved: VecDeque::new(),
            next_reservation: 0,
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

    /// What holds a request of `tokens` back at `now`: the pace's time, and apart from it
    /// the window, the lane's cooldown and the provider's hold (`blocked`), with the hold.
    #[allow(clippy::type_complexity)] // three named parts, used by two callers right below
    fn holds(
        &mut self,
        now: Instant,
        tokens: u64,
    ) -> (Instant, Instant, Option<(Instant, Option<PauseReason>)>) {
        let pace = self.pacer.ready_at(now, self.interval(), self.burst());
        let mut blocked = self.ledger.ready_at(now, tokens);
        if let Some(c) = self.cooldown {
            blocked = blocked.max(c);
        }
        let provider = self.provider_hold(now, tokens);
        if let Some((until, _)) = provider {
            blocked = blocked.max(until);
        }
        (pace, blocked, provider)
    }

    /// The earliest instant a request estimated at `tokens` may start, as
    /// [`try_admit`](Self::try_admit) would decide it, taking nothing.
    pub fn ready_at(&mut self, now: Instant, tokens: u64) -> Instant {
        let (pace, blocked, _) = self.holds(now, tokens);
        pace.max(blocked)
    }

    /// Whether one more send can be reserved at `now` (concurrency is the lane's, not here);
    /// `max_wait`: the longest a call waits for the lane, past which its room is
    /// [`Room::Beyond`].
    pub fn room(&mut self, now: Instant, max_wait: Duration) -> Room {
        self.reserved.retain(|(_, at)| now < *at + RESERVATION_TTL);
        if let Some((_, at)) = self.reserved.front() {
            return Room::At(*at + RESERVATION_TTL);
        }
        let (pace, blocked, _) = self.holds(now, 1);
        let ready = pace.max(blocked);
        if ready <= now {
            return Room::Now;
        }
        if ready > now + max_wait {
            return Room::Beyond;
        }
        if blocked > pace {
            // As in `try_admit`: a lane blocked by its window or a pause is not idle, and
            // earns no burst while its worker waits here rather than in the admission.
            self.pacer.hold(blocked);
        }
        Room::At(ready)
    }

    /// Reserves the next send if the lane has [`Room::Now`]; the id releases it.
    pub fn reserve(&mut self, now: Instant) -> Option<u64> {
        if self.room(now, Duration::ZERO) != Room::Now {
            return None;
        }
        let id = self.next_reservation;
        self.next_reservation += 1;
        self.reserved.push_back((id, now));
        Some(id)
    }

    /// Gives back reservation `id` if it is still outstanding (unused, not expired).
    pub fn release(&mut self, id: u64) {
        self.reserved.retain(|(r, _)| *r != id);
    }

    /// Takes a slot for a request estimated at `tokens` if one is free at `now`. A request
    /// that starts uses up the oldest reservation: it is the send that was reserved (or, if
    /// another caller came first, the lane's room went to it, and the reserved job waits for
    /// the next like any caller).
    pub fn try_admit(&mut self, now: Instant, tokens: u64) -> Decision {
        let (interval, burst) = (self.interval(), self.burst());
        let (pace, blocked, provider) = self.holds(now, tokens);
        let ready = pace.max(blocked);
        if ready <= now {
            if burst < self.limits.burst.max(1) {
                // The provider reports a burst allowance (see `burst`).
                self.pacer.record_from_start(now, interval, burst);
            } else {
                self.pacer.record(now, interval, burst);
            }
            self.reserved.pop_front();
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
mod room_tests;
#[cfg(test)]
mod tests;

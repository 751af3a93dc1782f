//! What a provider reports about one limit of a key in each answer
//! (`x-ratelimit-limit-*`, `x-ratelimit-remaining-*`, `x-ratelimit-reset-*`), and what a lane
//! may conclude from it. Pure: times are passed in.
//!
//! **What "remaining N, reset in T" guarantees**, for any limiter behind it:
//! - When the provider counted this request, it would have admitted N more. Requests of ours
//!   that it may not have counted yet (sent after this one, or sent shortly before it and not
//!   answered when it left: they may arrive later) come off those N
//!   ([`super::window::Ledger::uncertain`]).
//! - T after that moment it is back to its whole limit: OpenAI defines the reset as "the
//!   time until the rate limit resets to its initial state" — a fixed window at its boundary,
//!   a token bucket once refilled, a sliding window once its newest request aged out.
//! - Nothing about the time in between. A fixed window gives nothing back before T; a bucket
//!   gives back evenly (the next request after `T / (limit - N)`); a sliding window gives a
//!   slot back whenever one of its old requests ages out, which after a burst can be just
//!   before T. "The next request after `T / limit`" is right for a bucket only: against a
//!   sliding window that was filled in a burst it is a 429.
//!
//! The moment the provider counted the request lies between its start and the arrival of
//! its answer; the arrival is used (it is the later one: the pause then ends no earlier
//! than the provider's).
//!
//! **How a lane reads it** ([`ProviderView::hold`]):
//! 1. A provider that reports at least the room the lane's own count predicted after the
//!    request (`remaining + uncertain ≥ own room`) is no stricter than the lane's own window
//!    and pacer, which already say when the next request may go. That is the common case: a
//!    key driven at its limit reports `remaining: 0` in every answer, and so does the lane's
//!    own count; pausing on it would only lose time.
//! 2. A provider that reports less is stricter than the configured limits (a lower tier, a
//!    proxy with a small burst allowance, another client on the same key). Requests go while
//!    its remaining room, less what it may not have counted, covers them; then the lane waits
//!    until the provider is surely back: the answer's arrival + T (the window's length when
//!    the reset is absent). After that it counts the provider's whole limit down by the
//!    requests it sent since the report, until a fresher answer says more.
//! 3. Only the freshest report counts: the answer to the request that started last. An
//!    answer that arrives after a fresher one (out of order) describes an older state.
//!
//! Reports that are absent or nonsense (no remaining, a limit of 0, remaining above the
//! limit, a reset over a day) are ignored: the lane keeps its own window.

use std::time::Duration;

use tokio::time::Instant;

/// One limit's state as an answer reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    pub limit: Option<u64>,
    pub remaining: u64,
    pub reset: Option<Duration>,
}

impl Report {
    /// A reset longer than this is not a rate window anyone uses (the longest, requests per
    /// day, resets within a day): treated as absent.
    pub const MAX_RESET: Duration = Duration::from_secs(24 * 3600);

    /// The report, or `None` when it is absent or nonsense.
    pub fn new(
        limit: Option<u64>,
        remaining: Option<u64>,
        reset: Option<Duration>,
    ) -> Option<Report> {
        let remaining = remaining?;
        match limit {
            Some(0) => return None,
            Some(l) if remaining > l => return None,
            _ => {}
        }
        Some(Report {
            limit,
            remaining,
            reset: reset.filter(|r| *r <= Self::MAX_RESET),
        })
    }
}

/// A provider's state holding a lane back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Until then at the latest; a fresher answer may end it sooner.
    pub until: Instant,
    /// The provider said so (its remaining ran out until its reset): a pause it imposed.
    /// Otherwise the lane is waiting for the answers to requests it sent after the reset.
    pub reported: bool,
}

/// The freshest report, with where it came from.
#[derive(Debug, Clone, Copy)]
struct Seen {
    /// The request it answered, and when that request started.
    id: u64,
    sent: Instant,
    /// When the answer arrived.
    at: Instant,
    report: Report,
    /// The provider reported less room than the lane's own count predicted.
    stricter: bool,
}

/// What the provider last said about one limit (requests, or tokens) of a key.
#[derive(Debug, Default)]
pub struct ProviderView {
    last: Option<Seen>,
}

impl ProviderView {
    /// Takes the report of the answer to request `id` (started at `sent`, answered at `at`).
    /// `uncertain` is what the report may not reflect and `own_room` what the lane's own
    /// count had left right after the request. Returns `false` when a fresher report is
    /// already held (the answer came out of order) and this one was dropped.
    pub fn observe(
        &mut self,
        id: u64,
        sent: Instant,
        at: Instant,
        report: Report,
        uncertain: u64,
        own_room: u64,
    ) -> bool {
        if self.last.is_some_and(|l| (l.sent, l.id) > (sent, id)) {
            return false;
        }
        self.last = Some(Seen {
            id,
            sent,
            at,
            report,
            stricter: report.remaining.saturating_add(uncertain) < own_room,
        });
        true
    }

    /// Until when the provider's state holds back a request of `need` units at `now`, if it
    /// does. `uncertain(id, sent)` counts the units the report may not reflect (called with
    /// the reported request); `fallback_reset` stands for an absent reset.
    pub fn hold(
        &self,
        now: Instant,
        need: u64,
        uncertain: impl FnOnce(u64, Instant) -> u64,
        fallback_reset: Duration,
    ) -> Option<Hold> {
        let s = self.last.as_ref().filter(|s| s.stricter)?;
        let reset = s.report.reset.unwrap_or(fallback_reset);
        let back = s.at + reset;
        let need = need.max(1);
        let taken = uncertain(s.id, s.sent);
        if now < back {
            return (s.report.remaining.saturating_sub(taken) < need).then_some(Hold {
                until: back,
                reported: true,
            });
        }
        // Back to the whole limit at `back`, less whatever we sent since the report (some of
        // it may still be counted): until a fresher answer says more, and one more period at
        // most (answers that never come).
        let limit = s.report.limit?;
        let again = back + reset.max(fallback_reset);
        (limit.saturating_sub(taken) < need && now < again).then_some(Hold {
            until: again,
            reported: false,
        })
    }

    /// The limit the freshest report gave, if any.
    pub fn limit(&self) -> Option<u64> {
        self.last.and_then(|s| s.report.limit)
    }

    /// Whether the freshest report showed the provider stricter than the lane's own count.
    pub fn stricter(&self) -> bool {
        self.last.is_some_and(|s| s.stricter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn report(limit: u64, remaining: u64, reset_ms: u64) -> Report {
        Report::new(Some(limit), Some(remaining), Some(ms(reset_ms))).unwrap()
    }

    #[test]
    fn nonsense_and_absent_reports_are_ignored() {
        assert_eq!(Report::new(Some(10), None, Some(ms(5))), None);
        assert_eq!(Report::new(Some(0), Some(0), Some(ms(5))), None);
        assert_eq!(Report::new(Some(10), Some(11), Some(ms(5))), None);
        // A reset beyond a day is dropped; the rest of the report stands.
        let r = Report::new(Some(10), Some(0), Some(Duration::from_secs(3 * 86_400))).unwrap();
        assert_eq!(r.reset, None);
        assert_eq!(
            Report::new(None, Some(3), None),
            Some(Report {
                limit: None,
                remaining: 3,
                reset: None
            })
        );
    }

    #[test]
    fn a_provider_no_stricter_than_the_own_count_never_holds() {
        let t0 = Instant::now();
        let mut v = ProviderView::default();
        // Driven at its limit: remaining 0, and the own count had no room left either.
        assert!(v.observe(1, t0, t0 + ms(20), report(120, 0, 60_000), 0, 0));
        assert!(!v.stricter());
        assert_eq!(v.hold(t0 + ms(20), 1, |_, _| 5, ms(61_000)), None);
    }

    #[test]
    fn a_stricter_provider_pauses_the_lane_until_its_reset() {
        let t0 = Instant::now();
        let at = t0 + ms(30);
        let mut v = ProviderView::default();
        // The own count thought 100 were left; the provider says 2, back in 1.5 s.
        v.observe(1, t0, at, report(3, 2, 1_500), 0, 100);
        assert!(v.stricter());
        let none = |_: u64, _: Instant| 0;
        let one = |_: u64, _: Instant| 1;
        let two = |_: u64, _: Instant| 2;
        assert_eq!(v.hold(at, 1, none, ms(61_000)), None);
        assert_eq!(v.hold(at, 1, one, ms(61_000)), None);
        // Two requests sent since may have used both: wait for the reset.
        assert_eq!(
            v.hold(at, 1, two, ms(61_000)),
            Some(Hold {
                until: at + ms(1_500),
                reported: true
            })
        );
        // After the reset the whole limit (3), less what was sent since, is the room.
        let later = at + ms(1_500);
        assert_eq!(v.hold(later, 1, two, ms(61_000)), None);
        let three = |_: u64, _: Instant| 3;
        assert_eq!(
            v.hold(later, 1, three, ms(61_000)),
            Some(Hold {
                until: at + ms(1_500) + ms(61_000),
                reported: false
            })
        );
    }

    #[test]
    fn an_absent_reset_falls_back_to_the_window() {
        let t0 = Instant::now();
        let mut v = ProviderView::default();
        v.observe(1, t0, t0, Report::new(None, Some(0), None).unwrap(), 0, 10);
        assert_eq!(
            v.hold(t0, 1, |_, _| 0, ms(61_000)).map(|h| h.until),
            Some(t0 + ms(61_000))
        );
        // Without a limit nothing is known after the reset: the own window decides.
        assert_eq!(v.hold(t0 + ms(61_000), 1, |_, _| 50, ms(61_000)), None);
    }

    #[test]
    fn answers_out_of_order_keep_the_freshest_report() {
        let t0 = Instant::now();
        let mut v = ProviderView::default();
        // The answer to the later request (id 2, room) arrives first…
        assert!(v.observe(2, t0 + ms(10), t0 + ms(40), report(5, 3, 900), 0, 10));
        // …then the older one (id 1, nothing left at the time): dropped.
        assert!(!v.observe(1, t0, t0 + ms(60), report(5, 0, 1_000), 0, 10));
        assert_eq!(
            v.hold(t0 + ms(60), 1, |id, _| u64::from(id == 1), ms(1)),
            None
        );
    }

    #[test]
    fn the_uncertain_count_is_asked_for_the_reported_request() {
        let t0 = Instant::now();
        let mut v = ProviderView::default();
        v.observe(7, t0 + ms(5), t0 + ms(9), report(5, 1, 900), 0, 10);
        let mut asked = None;
        v.hold(
            t0 + ms(9),
            1,
            |id, sent| {
                asked = Some((id, sent));
                0
            },
            ms(1),
        );
        assert_eq!(asked, Some((7, t0 + ms(5))));
    }
}

//! Pacing: the spacing between a lane's starts ([`Pacer`], GCRA), beside the
//! [`Ledger`](super::window::Ledger) that counts them per window. No I/O and no clock: every
//! method takes `now`.

use std::time::Duration;

use tokio::time::Instant;

/// Pacing: requests spaced `interval` apart on average, with bursts of up to `burst` back to
/// back. It never admits more than the sliding window does over a whole window; it spreads
/// the window's requests out, so a provider that enforces a per-minute limit over shorter
/// slices (OpenAI documents this) sees a smooth flow, not the whole minute's budget in the
/// first second. The interval and burst are passed in at each call (the lane derives them
/// from the measured guard and from what the provider reports) and apply from the last
/// request on: a pace planned before any answer came back is corrected by the first ones.
///
/// A burst is *credit* a lane earns while it has nothing to send (one request per interval of
/// idleness, up to `burst - 1`), and a burst spends it: the request after a burst waits for
/// the pace's own time, so a saturated lane runs on the pace, never ahead of it. (Plain GCRA
/// lets a saturated lane run `burst - 1` intervals ahead for good; a sliding window then
/// takes the advance back as a stall before the burst's slots free, once per window: at 120
/// a minute a 1.5 s gap, 1.5 % of any minute that contains it.) Time the lane spends blocked
/// by something else (its window, a pause) earns no credit ([`Pacer::hold`]).
///
/// A request that starts late, but less than an interval late, still takes its slot: the
/// pace goes on from the slot, not from the start, so a saturated lane does not lose the
/// moment its worker needs to pick a job at every request. Later than that, the slot went
/// unused: the lane was idle, and the pace starts again from the request.
#[derive(Debug, Default)]
pub struct Pacer {
    /// The start of the last request that went on the pace (not on credit).
    anchor: Option<Instant>,
    /// Requests since then that went ahead of the pace, on credit.
    ahead: u32,
    /// Requests the lane may still send ahead of the pace.
    credit: f64,
    /// The lane was blocked by something else (its window, a pause) until this, at least:
    /// no credit is earned before it.
    held: Option<Instant>,
}

impl Pacer {
    /// The pace's next time and the credit (in requests) at `now`: idle time since the pace's
    /// next time turns into credit, up to `burst - 1`.
    fn at(&self, now: Instant, interval: Duration, burst: u32) -> (Instant, f64) {
        let most = f64::from(burst.max(1) - 1);
        let Some(anchor) = self.anchor else {
            return (now, most);
        };
        let due = anchor + interval * (self.ahead + 1);
        if now < due {
            return (due, self.credit.min(most));
        }
        // Idle since the pace was due, except while the lane was blocked by something else.
        let idle_from = self.held.map_or(due, |h| due.max(h));
        let idle = now.saturating_duration_since(idle_from).as_secs_f64()
            / interval.as_secs_f64().max(1e-9);
        (now, (self.credit + idle).min(most))
    }

    pub fn ready_at(&self, now: Instant, interval: Duration, burst: u32) -> Instant {
        let (due, credit) = self.at(now, interval, burst);
        if now >= due || credit >= 1.0 {
            now
        } else {
            due
        }
    }

    pub fn record(&mut self, now: Instant, interval: Duration, burst: u32) {
        self.record_with(now, interval, burst, true);
    }

    /// [`record`](Self::record) for a lane whose provider reports a small burst allowance (a
    /// token bucket refilled at the pace): there a late request keeps no slot, since the next
    /// one would then start sooner after it than the bucket refills, and find it empty.
    pub fn record_from_start(&mut self, now: Instant, interval: Duration, burst: u32) {
        self.record_with(now, interval, burst, false);
    }

    fn record_with(&mut self, now: Instant, interval: Duration, burst: u32, keep_slot: bool) {
        let (due, credit) = self.at(now, interval, burst);
        let slot = self.anchor.map(|a| a + interval * (self.ahead + 1));
        // Only lateness of the lane's own making: a request held back past its slot by
        // something else (its window, the provider's reported state) starts the pace again from
        // now, or the next one would follow it closely into a provider's small burst allowance.
        let own = |s: &Instant| self.held.is_none_or(|h| h <= *s);
        if let Some(slot) = slot.filter(|s| keep_slot && now >= *s && now < *s + interval && own(s))
        {
            // Late by less than an interval (the worker took a moment to pick its job, or the
            // window let the slot go a little after the pace): the request still takes its
            // slot, and the pace goes on from the slot's time, not from now. Moving the pace to
            // now would lose the lateness at every request of a saturated lane (1.5 % at 8 ms
            // late per 500 ms), and the credit that idle time earns cannot give it back: a
            // request on credit only goes ahead of the pace, it does not move the pace.
            self.anchor = Some(slot);
            self.ahead = 0;
            self.credit = self.credit.min(f64::from(burst.max(1) - 1));
        } else if now >= due {
            self.anchor = Some(now);
            self.ahead = 0;
            self.credit = credit;
        } else {
            // Ahead of the pace: spends credit; the pace goes on from its own time.
            self.ahead += 1;
            self.credit = credit - 1.0;
        }
        self.held = None;
    }

    /// The lane cannot start anything before `until` as far as it knows now (its window is
    /// full, it is paused): that wait is not idleness and earns no credit. It does not hold
    /// the pace itself back: the block may end sooner.
    pub fn hold(&mut self, until: Instant) {
        self.held = Some(self.held.map_or(until, |h| h.max(until)));
    }
}

//! Pure bookkeeping of a lane's own view of a key's limits: the requests it started, with
//! the tokens charged to each ([`Ledger`], requests and tokens per sliding window), and the
//! spacing between starts ([`Pacer`], GCRA).
//!
//! No I/O and no clock: every method takes `now`. The composition with what the provider
//! reports is [`super::policy`]; the mechanism that waits lives in [`super`].
//!
//! **The guard, per request.** The provider counts a request when it *arrives*, some time
//! after the lane took its slot; a slot may be reused only once the provider's window has let
//! go of it, `window` after that arrival. The arrival is never later than the answer's
//! headers (the provider counts before it answers), so a request answered `rtt` after it
//! started frees its slot at `start + window + rtt`: exact, whatever the network does next.
//! Until its answer is back (and for answers slower than `max_guard`) the slot keeps the
//! fixed guard (`KeyLimits::guard`, 1 s per minute), the assumption that a request reaches
//! the provider within it. So the lane loses `rtt / window` of its rate (0.04 % for 25 ms on
//! a minute) instead of `max_guard / window` (1.6 %), and is never less careful than before.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Room left in a window, in requests and tokens.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Room {
    pub requests: u64,
    pub tokens: u64,
}

/// One request the lane started.
#[derive(Debug, Clone)]
struct Entry {
    id: u64,
    start: Instant,
    /// When its answer (status and headers) arrived: the latest the provider can have
    /// counted it.
    answered: Option<Instant>,
    tokens: u64,
    /// What our own count had left right after this request: what a provider that counted
    /// exactly as this ledger does would report as remaining in its answer.
    room_after: Room,
}

/// The requests (and tokens) a lane started within its window plus guard.
#[derive(Debug)]
pub struct Ledger {
    requests: u64,
    /// Token limit per window, if the lane has one.
    tokens: Option<u64>,
    window: Duration,
    max_guard: Duration,
    entries: VecDeque<Entry>,
    next_id: u64,
}

impl Ledger {
    /// `requests` (and `tokens`) per sliding `window`; `max_guard` is the guard a request
    /// keeps until its answer bounds when the provider counted it.
    pub fn new(requests: u32, tokens: Option<u32>, window: Duration, max_guard: Duration) -> Self {
        Ledger {
            requests: u64::from(requests.max(1)),
            tokens: tokens.map(|t| u64::from(t.max(1))),
            window,
            max_guard,
            entries: VecDeque::new(),
            next_id: 0,
        }
    }

    fn guard_of(&self, e: &Entry) -> Duration {
        e.answered.map_or(self.max_guard, |a| {
            a.saturating_duration_since(e.start).min(self.max_guard)
        })
    }

    /// When the provider's window surely let go of `e`.
    fn frees_at(&self, e: &Entry) -> Instant {
        e.start + self.window + self.guard_of(e)
    }

    /// Drops the entries every guard has released (the deque is ordered by start; entries
    /// with a shorter guard stay until then but no longer count, see [`Self::live`]).
    fn prune(&mut self, now: Instant) {
        let horizon = self.window + self.max_guard;
        while self
            .entries
            .front()
            .is_some_and(|e| e.start + horizon <= now)
        {
            self.entries.pop_front();
        }
    }

    fn live(&self, now: Instant) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| self.frees_at(e) > now)
    }

    /// A request bigger than the whole token limit is charged as exactly the limit: it can
    /// only ever run in an empty window, and must not wait forever.
    fn clamp(&self, tokens: u64) -> u64 {
        self.tokens.map_or(tokens, |limit| tokens.min(limit))
    }

    /// The earliest instant a request estimated at `tokens` may start (`now` when it fits).
    pub fn ready_at(&mut self, now: Instant, tokens: u64) -> Instant {
        self.prune(now);
        let mut live: Vec<(Instant, u64)> = self
            .live(now)
            .map(|e| (self.frees_at(e), e.tokens))
            .collect();
        let mut ready = now;
        let count = live.len() as u64;
        if count >= self.requests {
            // The slot of the `count - limit + 1`-th request to leave frees first.
            let k = (count - self.requests) as usize;
            let (_, nth, _) = live.select_nth_unstable_by_key(k, |(at, _)| *at);
            ready = ready.max(nth.0);
        }
        if let Some(limit) = self.tokens {
            let total: u64 = live.iter().map(|(_, t)| t).sum();
            let need = self.clamp(tokens);
            if total + need > limit {
                let mut missing = total + need - limit;
                live.sort_unstable_by_key(|(at, _)| *at);
                let mut at = now + self.window + self.max_guard;
                for (frees, t) in &live {
                    if *t >= missing {
                        at = *frees;
                        break;
                    }
                    missing -= t;
                }
                ready = ready.max(at);
            }
        }
        ready
    }

    /// Takes a slot now for a request charged `tokens`; the id names it in
    /// [`answered`](Self::answered) and [`reconcile`](Self::reconcile).
    pub fn record(&mut self, now: Instant, tokens: u64) -> u64 {
        self.prune(now);
        let tokens = self.clamp(tokens);
        let (count, total) = self
            .live(now)
            .fold((0u64, 0u64), |(n, t), e| (n + 1, t + e.tokens));
        let room_after = Room {
            requests: self.requests.saturating_sub(count + 1),
            tokens: self
                .tokens
                .map_or(u64::MAX, |limit| limit.saturating_sub(total + tokens)),
        };
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(Entry {
            id,
            start: now,
            answered: None,
            tokens,
            room_after,
        });
        id
    }

    /// Notes that request `id` was answered at `at` (the first answer counts). Returns its
    /// start and the room our count had left after it, while the entry is still known.
    pub fn answered(&mut self, id: u64, at: Instant) -> Option<(Instant, Room)> {
        let e = self.entries.iter_mut().find(|e| e.id == id)?;
        if e.answered.is_none() {
            e.answered = Some(at.max(e.start));
        }
        Some((e.start, e.room_after))
    }

    /// Replaces the token estimate of request `id` with the usage the provider reported.
    /// Nothing happens when the request already left the window.
    pub fn reconcile(&mut self, id: u64, actual: u64) {
        let actual = self.clamp(actual);
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.tokens = actual;
        }
    }

    /// What the provider may not have counted yet when it answered request `id` (started at
    /// `start`): every other request started after it, and those started shortly before it
    /// (within `max_guard`) whose answers had not come back when it started, since they may
    /// have arrived after it. A request answered before `id` started was surely counted.
    pub fn uncertain(&self, id: u64, start: Instant) -> Room {
        let since = start.checked_sub(self.max_guard);
        self.entries
            .iter()
            .filter(|e| e.id != id)
            .filter(|e| {
                e.start > start
                    || (since.is_none_or(|s| e.start > s) && e.answered.is_none_or(|a| a >= start))
            })
            .fold(Room::default(), |r, e| Room {
                requests: r.requests + 1,
                tokens: r.tokens + e.tokens,
            })
    }

    /// Requests that still hold a slot.
    pub fn used(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.live(now).count() as u32
    }

    /// Tokens still charged.
    pub fn tokens_used(&mut self, now: Instant) -> u64 {
        self.prune(now);
        self.live(now).map(|e| e.tokens).sum()
    }

    pub fn limit(&self) -> u32 {
        self.requests.min(u64::from(u32::MAX)) as u32
    }

    pub fn token_limit(&self) -> Option<u64> {
        self.tokens
    }

    pub fn window(&self) -> Duration {
        self.window
    }

    pub fn max_guard(&self) -> Duration {
        self.max_guard
    }

    /// The guard the pacer should plan with: the longest one among the answered requests of
    /// the last window (the slots it will reuse), or `max_guard` before any answer.
    pub fn guard_estimate(&self) -> Duration {
        self.entries
            .iter()
            .filter(|e| e.answered.is_some())
            .map(|e| self.guard_of(e))
            .max()
            .unwrap_or(self.max_guard)
    }
}

pub use super::pacer::Pacer;

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    fn ledger(limit: u32, window: f64, guard: f64) -> Ledger {
        Ledger::new(limit, None, secs(window), secs(guard))
    }

    #[test]
    fn requests_never_exceed_limit_in_any_window() {
        // Greedy callers take every slot as soon as it frees; check every window afterwards.
        let t0 = Instant::now();
        let span = secs(10.0);
        let mut w = ledger(5, 10.0, 0.0);
        let mut starts = Vec::new();
        let mut now = t0;
        loop {
            now = w.ready_at(now, 0);
            if now >= t0 + secs(60.0) {
                break;
            }
            w.record(now, 0);
            starts.push(now);
        }
        for (i, &s) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().filter(|&&x| x < s + span).count();
            assert!(in_window <= 5, "window starting at {i} holds {in_window}");
        }
        // And it is greedy: 6 full windows of 5 in 60 s.
        assert_eq!(starts.len(), 30);
    }

    #[test]
    fn a_slot_frees_a_window_after_its_answer_at_most_max_guard_late() {
        let t0 = Instant::now();
        let mut w = ledger(2, 10.0, 1.0);
        let a = w.record(t0, 0);
        let b = w.record(t0, 0);
        // Unanswered: the fixed guard.
        assert_eq!(w.ready_at(t0, 0), t0 + secs(11.0));
        // `a` was answered 30 ms later: the provider counted it by then.
        w.answered(a, t0 + secs(0.03));
        assert_eq!(w.ready_at(t0, 0), t0 + secs(10.03));
        // A slow answer never makes a slot later than the fixed guard did.
        w.answered(b, t0 + secs(5.0));
        assert_eq!(w.used(t0 + secs(10.03)), 1);
        assert_eq!(w.used(t0 + secs(11.0)), 0);
        // Only the first answer counts (a retry's echo cannot move a slot).
        w.answered(a, t0 + secs(0.5));
        assert_eq!(w.guard_estimate(), secs(1.0));
    }

    #[test]
    fn the_guard_estimate_is_the_longest_answered_one() {
        let t0 = Instant::now();
        let mut w = ledger(10, 60.0, 1.0);
        assert_eq!(w.guard_estimate(), secs(1.0), "no answer yet");
        let a = w.record(t0, 0);
        let b = w.record(t0, 0);
        w.record(t0, 0); // never answered: not part of the estimate
        w.answered(a, t0 + secs(0.02));
        w.answered(b, t0 + secs(0.08));
        assert_eq!(w.guard_estimate(), secs(0.08));
    }

    #[test]
    fn uncertain_counts_what_an_answer_may_not_reflect() {
        let t0 = Instant::now();
        let mut w = Ledger::new(100, Some(1000), secs(60.0), secs(1.0));
        let old = w.record(t0, 5); // answered before `i` started: counted
        w.answered(old, t0 + secs(0.1));
        let slow = w.record(t0 + secs(0.2), 7); // still in flight when `i` started
        let i = w.record(t0 + secs(0.5), 11);
        let after = w.record(t0 + secs(0.6), 13); // started after `i`
        w.answered(after, t0 + secs(0.65));
        let ancient = t0 + secs(0.5);
        assert_eq!(
            w.uncertain(i, ancient),
            Room {
                requests: 2,
                tokens: 20
            }
        );
        // `slow` answered after `i` started: it may still have arrived after `i`.
        w.answered(slow, t0 + secs(0.7));
        assert_eq!(w.uncertain(i, ancient).requests, 2);
        // A request started more than `max_guard` before `i` reached the provider before it.
        let late = w.record(t0 + secs(2.0), 1);
        assert_eq!(w.uncertain(late, t0 + secs(2.0)).requests, 0);
    }

    #[test]
    fn room_after_is_what_an_exact_provider_would_report() {
        let t0 = Instant::now();
        let mut w = Ledger::new(3, Some(100), secs(10.0), secs(0.1));
        let a = w.record(t0, 40);
        let b = w.record(t0, 50);
        assert_eq!(
            w.answered(a, t0).unwrap().1,
            Room {
                requests: 2,
                tokens: 60
            }
        );
        assert_eq!(
            w.answered(b, t0).unwrap().1,
            Room {
                requests: 1,
                tokens: 10
            }
        );
    }

    fn greedy(p: &mut Pacer, from: Instant, n: usize, interval: Duration, burst: u32) -> Vec<f64> {
        let mut now = from;
        (0..n)
            .map(|_| {
                now = p.ready_at(now, interval, burst);
                p.record(now, interval, burst);
                (now - from).as_secs_f64()
            })
            .collect()
    }

    #[test]
    fn pacer_allows_a_burst_then_keeps_the_pace() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let (interval, burst) = (secs(0.5), 3);
        // The burst goes at once; the request after it waits for the pace's own time, so a
        // saturated lane is never ahead of the pace.
        assert_eq!(
            greedy(&mut p, t0, 7, interval, burst),
            [0.0, 0.0, 0.0, 1.5, 2.0, 2.5, 3.0]
        );
        // Idle time earns the burst back, but never beyond it.
        let later = t0 + secs(100.0);
        assert_eq!(
            greedy(&mut p, later, 4, interval, burst),
            [0.0, 0.0, 0.0, 1.5]
        );
        // Half a second idle (the pace was due at 2 s): one request of credit, paid back by
        // the one after it.
        let t = later + secs(2.5);
        assert_eq!(greedy(&mut p, t, 3, interval, burst), [0.0, 0.0, 1.0]);
        // A smaller burst (the provider's allowance) takes effect at once.
        let t = t + secs(100.0);
        assert_eq!(greedy(&mut p, t, 3, interval, 1), [0.0, 0.5, 1.0]);
    }

    #[test]
    fn a_saturated_lane_under_a_window_has_no_stall_at_the_window_end() {
        // 120 a minute, a burst of 3, and the window as a hard cap: the burst is paid back
        // at once, so the 121st request goes on the pace, not after a gap.
        let t0 = Instant::now();
        let (interval, burst) = (secs(0.5), 3);
        let mut w = ledger(120, 60.0, 0.0);
        let mut p = Pacer::default();
        let mut now = t0;
        let mut starts = Vec::new();
        while starts.len() < 240 {
            let window = w.ready_at(now, 0);
            let pace = p.ready_at(now, interval, burst);
            if window > pace {
                p.hold(window);
            }
            now = window.max(pace).max(now);
            if w.ready_at(now, 0) > now || p.ready_at(now, interval, burst) > now {
                continue;
            }
            p.record(now, interval, burst);
            w.record(now, 0);
            starts.push(now);
        }
        // The burst of 3 at the start, paid back by the next request: on the pace from then
        // on, through the end of the first window (request 121) and the second.
        assert_eq!(starts[3] - starts[0], interval * 3);
        let gaps: Vec<(usize, Duration)> = starts
            .windows(2)
            .enumerate()
            .skip(3)
            .map(|(i, g)| (i, g[1] - g[0]))
            .filter(|(_, d)| *d != interval)
            .collect();
        assert_eq!(gaps, []);
    }

    #[test]
    fn a_saturated_lane_whose_requests_start_late_keeps_its_rate() {
        // Every request starts 10 ms after the lane could send it (its worker picks a job
        // first). Each takes its slot, so the lane keeps 120 a minute; were the pace to go on
        // from each start, it would lose 10 ms a request (1,176 in ten minutes).
        let t0 = Instant::now();
        let (interval, burst, late) = (secs(0.5), 3, secs(0.01));
        let mut w = ledger(120, 60.0, 0.0);
        let mut p = Pacer::default();
        let mut now = t0;
        let mut starts = Vec::new();
        loop {
            let window = w.ready_at(now, 0);
            let pace = p.ready_at(now, interval, burst);
            if window > pace {
                p.hold(window);
            }
            now = window.max(pace).max(now) + late;
            if now >= t0 + secs(600.0) {
                break;
            }
            assert!(w.ready_at(now, 0) <= now && p.ready_at(now, interval, burst) <= now);
            p.record(now, interval, burst);
            w.record(now, 0);
            starts.push(now);
        }
        assert!(starts.len() >= 1_195, "{} in ten minutes", starts.len());
        // Still smooth: after the first burst, no two requests closer than the interval less
        // the lateness.
        let closest = starts[3..].windows(2).map(|g| g[1] - g[0]).min().unwrap();
        assert!(closest >= interval - late, "{closest:?}");
    }

    #[test]
    fn waiting_on_something_else_earns_no_credit() {
        let t0 = Instant::now();
        let mut p = Pacer::default();
        let (interval, burst) = (secs(0.5), 3);
        greedy(&mut p, t0, 4, interval, burst);
        // Blocked (a full window) until 10 s: no burst afterwards.
        p.hold(t0 + secs(10.0));
        assert_eq!(
            greedy(&mut p, t0 + secs(10.0), 3, interval, burst),
            [0.0, 0.5, 1.0]
        );
    }

    #[test]
    fn ready_at_is_when_the_oldest_slot_frees() {
        let t0 = Instant::now();
        let mut w = ledger(2, 1.0, 0.0);
        w.record(t0, 0);
        w.record(t0 + secs(0.3), 0);
        assert_eq!(w.ready_at(t0 + secs(0.5), 0), t0 + secs(1.0));
        assert_eq!(w.ready_at(t0 + secs(1.0), 0), t0 + secs(1.0));
        assert_eq!(w.used(t0 + secs(1.0)), 1);
        assert_eq!(w.used(t0 + secs(1.3)), 0);
    }

    #[test]
    fn tokens_wait_for_enough_to_expire_and_reconcile_frees_room() {
        let t0 = Instant::now();
        let mut w = Ledger::new(100, Some(100), secs(10.0), Duration::ZERO);
        let a = w.record(t0, 60);
        w.record(t0 + secs(1.0), 30);
        assert_eq!(w.ready_at(t0 + secs(2.0), 10), t0 + secs(2.0));
        // 50 more need the first charge (60) to leave the window.
        assert_eq!(w.ready_at(t0 + secs(2.0), 50), t0 + secs(10.0));
        // The first request really used 20: now 50 fit at once.
        w.reconcile(a, 20);
        assert_eq!(w.tokens_used(t0 + secs(2.0)), 50);
        assert_eq!(w.ready_at(t0 + secs(2.0), 50), t0 + secs(2.0));
    }

    #[test]
    fn oversized_requests_are_clamped_not_starved() {
        let t0 = Instant::now();
        let mut w = Ledger::new(100, Some(100), secs(10.0), Duration::ZERO);
        assert_eq!(w.ready_at(t0, 1_000), t0);
        w.record(t0, 1_000);
        assert_eq!(w.tokens_used(t0), 100);
        assert_eq!(w.ready_at(t0, 1), t0 + secs(10.0));
    }
}

//! Pure sliding-window bookkeeping: when may the next request (or the next N tokens) start?
//!
//! No I/O and no clock: every method takes `now`. The mechanism that waits lives in
//! [`super::lane`].

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Start times of the requests of the last `span`; at most `limit` of them at any moment.
#[derive(Debug)]
pub struct RequestWindow {
    limit: u32,
    span: Duration,
    starts: VecDeque<Instant>,
}

impl RequestWindow {
    /// `span` is the provider's window plus the client's guard.
    pub fn new(limit: u32, span: Duration) -> Self {
        RequestWindow {
            limit: limit.max(1),
            span,
            starts: VecDeque::with_capacity(limit as usize),
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(&oldest) = self.starts.front() {
            if oldest + self.span <= now {
                self.starts.pop_front();
            } else {
                break;
            }
        }
    }

    /// The earliest instant a new request may start (`now` when there is room).
    pub fn ready_at(&mut self, now: Instant) -> Instant {
        self.prune(now);
        if self.starts.len() < self.limit as usize {
            now
        } else {
            // The slot of the request that started `limit` starts ago frees first.
            let idx = self.starts.len() - self.limit as usize;
            self.starts[idx] + self.span
        }
    }

    pub fn record(&mut self, now: Instant) {
        self.starts.push_back(now);
    }

    pub fn used(&mut self, now: Instant) -> u32 {
        self.prune(now);
        self.starts.len() as u32
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }
}

/// GCRA pacing: requests spaced `window / limit` apart on average, with bursts of up to
/// `burst` back to back. It never admits more than the sliding window does over a whole
/// window; it spreads the window's requests out, so a provider that enforces a per-minute
/// limit over shorter slices (OpenAI documents this) sees a smooth flow, not the whole
/// minute's budget in the first second.
#[derive(Debug)]
pub struct Pacer {
    interval: Duration,
    tolerance: Duration,
    /// Theoretical arrival time of the next request.
    tat: Option<Instant>,
}

impl Pacer {
    pub fn new(limit: u32, window: Duration, burst: u32) -> Self {
        let interval = window / limit.max(1);
        Pacer {
            interval,
            tolerance: interval * burst.max(1).saturating_sub(1),
            tat: None,
        }
    }

    pub fn ready_at(&self, now: Instant) -> Instant {
        match self.tat {
            Some(tat) => now.max(tat.checked_sub(self.tolerance).unwrap_or(now)),
            None => now,
        }
    }

    pub fn record(&mut self, now: Instant) {
        let base = self.tat.map_or(now, |tat| tat.max(now));
        self.tat = Some(base + self.interval);
    }
}

/// Token charges of the last `span`, each one correctable once the real usage is known.
#[derive(Debug)]
pub struct TokenWindow {
    limit: u64,
    span: Duration,
    entries: VecDeque<TokenEntry>,
    total: u64,
    next_id: u64,
}

#[derive(Debug)]
struct TokenEntry {
    id: u64,
    at: Instant,
    tokens: u64,
}

impl TokenWindow {
    pub fn new(limit: u32, span: Duration) -> Self {
        TokenWindow {
            limit: u64::from(limit.max(1)),
            span,
            entries: VecDeque::new(),
            total: 0,
            next_id: 0,
        }
    }

    fn prune(&mut self, now: Instant) {
        while let Some(e) = self.entries.front() {
            if e.at + self.span <= now {
                self.total -= e.tokens;
                self.entries.pop_front();
            } else {
                break;
            }
        }
    }

    /// A request bigger than the whole limit is charged as exactly the limit: it can only
    /// ever run in an empty window, and must not wait forever.
    fn clamp(&self, tokens: u64) -> u64 {
        tokens.min(self.limit)
    }

    /// The earliest instant a request estimated at `tokens` may start.
    pub fn ready_at(&mut self, now: Instant, tokens: u64) -> Instant {
        self.prune(now);
        let tokens = self.clamp(tokens);
        if self.total + tokens <= self.limit {
            return now;
        }
        let mut need = self.total + tokens - self.limit;
        for e in &self.entries {
            if e.tokens >= need {
                return e.at + self.span;
            }
            need -= e.tokens;
        }
        // Unreachable while the entries add up to `total`; be safe anyway.
        now + self.span
    }

    /// Charges `tokens` now; the id lets [`reconcile`](Self::reconcile) correct it later.
    pub fn record(&mut self, now: Instant, tokens: u64) -> u64 {
        let tokens = self.clamp(tokens);
        let id = self.next_id;
        self.next_id += 1;
        self.entries.push_back(TokenEntry {
            id,
            at: now,
            tokens,
        });
        self.total += tokens;
        id
    }

    /// Replaces the estimate of charge `id` with the usage the provider reported. Nothing
    /// happens when the charge already left the window.
    pub fn reconcile(&mut self, id: u64, actual: u64) {
        let actual = self.clamp(actual);
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            self.total = self.total - e.tokens + actual;
            e.tokens = actual;
        }
    }

    pub fn used(&mut self, now: Instant) -> u64 {
        self.prune(now);
        self.total
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: f64) -> Duration {
        Duration::from_secs_f64(s)
    }

    #[test]
    fn requests_never_exceed_limit_in_any_window() {
        // Greedy callers take every slot as soon as it frees; check every window afterwards.
        let t0 = Instant::now();
        let span = secs(10.0);
        let mut w = RequestWindow::new(5, span);
        let mut starts = Vec::new();
        let mut now = t0;
        loop {
            now = w.ready_at(now);
            if now >= t0 + secs(60.0) {
                break;
            }
            w.record(now);
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
    fn pacer_allows_a_burst_then_spaces_requests() {
        let t0 = Instant::now();
        let mut p = Pacer::new(120, secs(60.0), 3);
        let mut now = t0;
        let mut starts = Vec::new();
        for _ in 0..7 {
            now = p.ready_at(now);
            p.record(now);
            starts.push((now - t0).as_secs_f64());
        }
        assert_eq!(starts, [0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0]);
        // Idle time refills the burst, but never beyond it.
        let later = t0 + secs(100.0);
        for _ in 0..3 {
            assert_eq!(p.ready_at(later), later);
            p.record(later);
        }
        assert_eq!(p.ready_at(later), later + secs(0.5));
    }

    #[test]
    fn ready_at_is_when_the_oldest_slot_frees() {
        let t0 = Instant::now();
        let mut w = RequestWindow::new(2, secs(1.0));
        w.record(t0);
        w.record(t0 + secs(0.3));
        assert_eq!(w.ready_at(t0 + secs(0.5)), t0 + secs(1.0));
        assert_eq!(w.ready_at(t0 + secs(1.0)), t0 + secs(1.0));
        assert_eq!(w.used(t0 + secs(1.0)), 1);
        assert_eq!(w.used(t0 + secs(1.3)), 0);
    }

    #[test]
    fn tokens_wait_for_enough_to_expire_and_reconcile_frees_room() {
        let t0 = Instant::now();
        let mut w = TokenWindow::new(100, secs(10.0));
        let a = w.record(t0, 60);
        w.record(t0 + secs(1.0), 30);
        assert_eq!(w.ready_at(t0 + secs(2.0), 10), t0 + secs(2.0));
        // 50 more need the first charge (60) to leave the window.
        assert_eq!(w.ready_at(t0 + secs(2.0), 50), t0 + secs(10.0));
        // The first request really used 20: now 50 fit at once.
        w.reconcile(a, 20);
        assert_eq!(w.used(t0 + secs(2.0)), 50);
        assert_eq!(w.ready_at(t0 + secs(2.0), 50), t0 + secs(2.0));
    }

    #[test]
    fn oversized_requests_are_clamped_not_starved() {
        let t0 = Instant::now();
        let mut w = TokenWindow::new(100, secs(10.0));
        assert_eq!(w.ready_at(t0, 1_000), t0);
        w.record(t0, 1_000);
        assert_eq!(w.used(t0), 100);
        assert_eq!(w.ready_at(t0, 1), t0 + secs(10.0));
    }
}

//! Per-key limits: a [`Lane`] is one rate-limited stream of calls of one key (OpenAI chat,
//! OpenAI images, MiniMax images, MiniMax video creation and polling, Stability images),
//! named by its [`LaneKind`]. It combines
//!
//! - concurrency (a fair semaphore),
//! - requests and tokens per window: the lane's own count, a hard sliding-window cap whose
//!   slots free a window after each request's answer, plus GCRA pacing with a small burst
//!   ([`window`]), and what the provider reports in its answers ([`reported`]), composed in
//!   [`policy`] (pure: the time is passed in),
//! - pauses the provider imposes (`Retry-After`, a 429, `remaining` run out on a provider
//!   stricter than the limits), each logged once and counted in [`ProviderStats`],
//! - requests per UTC day ([`daily`], shared by the generating lanes of one key; polling
//!   lanes are not counted), counted in a [`DailyStore`] ([`day_store`]) so a restart does
//!   not reset them,
//!
//! and makes callers *wait* for capacity (up to `max_wait`) instead of failing.

pub mod daily;
pub mod day_store;
pub mod pacer;
pub mod policy;
pub mod reported;
pub(crate) mod ticket;
pub mod window;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::config::KeyLimits;
use crate::error::{ErrorClass, ProviderError, ProviderKind};
use crate::headers::RateHints;
use daily::DailyCounter;
pub use day_store::{DailyStore, KeyDay, MemoryStore, StoreError, UtcDay};
use policy::{Decision, LaneLimits, LanePolicy, Pause};
pub use ticket::LaneTicket;

/// Counters of one provider, shared by its lanes, and the key's health.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    /// The key's health ([`crate::health`]), gated and fed by the retry loop; `None` only in
    /// lane tests, which run without one.
    pub health: Option<crate::health::KeyHealth>,
    pub ok: AtomicU64,
    pub by_class: [AtomicU64; 5],
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub provider_429: AtomicU64,
    pub wait_micros: AtomicU64,
    pub provider_pauses: AtomicU64,
}

impl StatsCell {
    /// The key's health: every client's key has one (only lane tests run without).
    pub fn key_health(&self) -> crate::health::KeyHealth {
        self.health
            .clone()
            .expect("a client's key always has its health")
    }

    pub fn record_error(&self, class: ErrorClass) {
        let idx = ErrorClass::ALL
            .iter()
            .position(|c| *c == class)
            .expect("class in ALL");
        self.by_class[idx].fetch_add(1, Ordering::Relaxed);
    }
}

/// Counters of one provider since start.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProviderStats {
    pub provider: ProviderKind,
    /// Calls that succeeded (after retries, if any).
    pub ok: u64,
    /// Calls that finally failed, by class.
    pub failed: Vec<(ErrorClass, u64)>,
    /// HTTP attempts made (a call with two retries is three attempts).
    pub attempts: u64,
    pub retries: u64,
    /// 429 answers (or MiniMax 1002) received from the provider. Stays 0 while the limiter
    /// and the provider agree on the limits.
    pub provider_429: u64,
    /// Total time calls spent waiting for capacity.
    pub rate_limit_wait: Duration,
    /// Pauses the provider imposed on a lane (`Retry-After`, a 429, `remaining` run out on a
    /// provider stricter than the configured limits), each counted once when it starts.
    pub provider_pauses: u64,
}

impl ProviderStats {
    pub(crate) fn from_cell(provider: ProviderKind, c: &StatsCell) -> Self {
        ProviderStats {
            provider,
            ok: c.ok.load(Ordering::Relaxed),
            failed: ErrorClass::ALL
                .iter()
                .zip(&c.by_class)
                .map(|(class, n)| (*class, n.load(Ordering::Relaxed)))
                .collect(),
            attempts: c.attempts.load(Ordering::Relaxed),
            retries: c.retries.load(Ordering::Relaxed),
            provider_429: c.provider_429.load(Ordering::Relaxed),
            rate_limit_wait: Duration::from_micros(c.wait_micros.load(Ordering::Relaxed)),
            provider_pauses: c.provider_pauses.load(Ordering::Relaxed),
        }
    }

    /// Calls that failed with `class`.
    pub fn failed_with(&self, class: ErrorClass) -> u64 {
        self.failed
            .iter()
            .find(|(c, _)| *c == class)
            .map_or(0, |(_, n)| *n)
    }
}

/// Which stream of calls of a key a lane is. Its name ([`LaneKind::as_str`], also its serde
/// name) is an external contract: the `/metrics` labels, the budget JSON each instance
/// publishes to `{c}:info:{id}` for the admin views, and the simulator's lane names.
///
/// `LaneKind` rather than `Lane`: [`Lane`] is the limiter itself, and the name follows
/// `ProviderKind` and `JobKind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LaneKind {
    /// OpenAI chat completions.
    Chat,
    /// Image generations, one lane per image provider.
    Images,
    /// MiniMax video task creation.
    Video,
    /// MiniMax video task polls, file lookups and downloads (not counted per day).
    VideoQuery,
}

impl LaneKind {
    pub const ALL: [LaneKind; 4] = [
        LaneKind::Chat,
        LaneKind::Images,
        LaneKind::Video,
        LaneKind::VideoQuery,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            LaneKind::Chat => "chat",
            LaneKind::Images => "images",
            LaneKind::Video => "video",
            LaneKind::VideoQuery => "video_query",
        }
    }
}

impl std::fmt::Display for LaneKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one lane has left, for `/metrics` and the load-balancer command.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LaneBudget {
    pub provider: ProviderKind,
    pub lane: LaneKind,
    pub window_secs: f64,
    pub requests_limit: u32,
    pub requests_used: u32,
    pub requests_remaining: u32,
    pub tokens_limit: Option<u64>,
    pub tokens_used: Option<u64>,
    pub day_limit: Option<u32>,
    /// Last count known for today (from the daily store, or memory while it fails).
    pub day_used: u64,
    pub in_flight: u32,
    pub concurrency: u32,
    /// How long the lane is paused from now: by the provider (`Retry-After`, a 429, its
    /// remaining run out) or by itself (a call that found no capacity in time).
    pub cooldown_ms: u64,
}

/// One rate-limited stream of calls of one key.
pub(crate) struct Lane {
    pub provider: ProviderKind,
    pub kind: LaneKind,
    window: Duration,
    concurrency: u32,
    max_wait: Duration,
    // A std mutex: it guards a few comparisons and a VecDeque push, never an await.
    policy: Mutex<LanePolicy>,
    /// Woken when room may have appeared earlier than a waiter computed (an answer shortened
    /// a slot's guard or lifted a pause, a token reconcile); waiters otherwise sleep until
    /// the instant they computed.
    changed: Notify,
    /// Woken when a reserved send may have become possible (a slot freed, a send went, a
    /// reservation given back); only `ticket` waits on it, so admissions wake as before.
    room_changed: Notify,
    permits: Arc<Semaphore>,
    /// `None` for lanes whose calls do not count as requests per day (video polling).
    pub daily: Option<Arc<DailyCounter>>,
    pub stats: Arc<StatsCell>,
}

/// Permission to send one request: holds a concurrency permit (released on drop), the
/// request's slot in the lane's count, and its token charge to reconcile with the real usage.
pub(crate) struct Admission {
    lane: Arc<Lane>,
    id: u64,
    has_tokens: bool,
    /// Released on drop, before the lane tells its waiters (a reservation waits for it).
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.lane.room_changed.notify_waiters();
    }
}

impl Admission {
    /// Corrects the token estimate of this request with the usage the provider reported.
    pub fn reconcile_tokens(&self, actual: u64) {
        if self.has_tokens {
            self.lane.lock().reconcile(self.id, actual);
            self.lane.changed.notify_waiters();
        }
    }

    /// Where the attempt reports its answer: owned, so an attempt's future can keep it.
    pub fn receipt(&self) -> Receipt {
        Receipt {
            lane: self.lane.clone(),
            id: self.id,
        }
    }
}

/// Tells the lane that one request was answered, and what the answer's headers said.
#[derive(Clone)]
pub(crate) struct Receipt {
    lane: Arc<Lane>,
    id: u64,
}

impl Receipt {
    /// The answer (status line and headers) arrived at `at`; call it once per attempt that
    /// got an answer, error answers (429s) included.
    pub fn answered(&self, at: Instant, hints: &RateHints) {
        let mut policy = self.lane.lock();
        let pause = policy.answered(self.id, at, hints);
        tracing::trace!(lane = self.lane.kind.as_str(), provider = %self.lane.provider, guard_ms = policy.guard().as_millis() as u64, "answered");
        drop(policy);
        self.lane.paused(pause);
        self.lane.changed.notify_waiters();
    }
}

impl Lane {
    pub fn new(
        provider: ProviderKind,
        kind: LaneKind,
        limits: &KeyLimits,
        rpm: u32,
        max_wait: Duration,
        daily: Option<Arc<DailyCounter>>,
        stats: Arc<StatsCell>,
    ) -> Arc<Self> {
        Arc::new(Lane {
            provider,
            kind,
            window: limits.window,
            concurrency: limits.concurrency.max(1),
            max_wait,
            policy: Mutex::new(LanePolicy::new(LaneLimits {
                requests: rpm,
                tokens: limits.tpm,
                window: limits.window,
                max_guard: limits.guard(),
                burst: KeyLimits::burst(rpm),
            })),
            changed: Notify::new(),
            room_changed: Notify::new(),
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1) as usize)),
            daily,
            stats,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LanePolicy> {
        self.policy.lock().expect("lane lock")
    }

    /// Logs and counts a pause the provider imposed (the policy reports each one once).
    fn paused(&self, pause: Option<Pause>) {
        let Some(p) = pause else { return };
        self.stats.provider_pauses.fetch_add(1, Ordering::Relaxed);
        let ms = p
            .until
            .saturating_duration_since(Instant::now())
            .as_millis() as u64;
        tracing::info!(
            provider = %self.provider,
            lane = self.kind.as_str(),
            reason = p.reason.as_str(),
            pause_ms = ms,
            "the provider paused this key"
        );
    }

    /// Waits until a request estimated at `tokens` may start, then takes its slot.
    pub async fn admit(self: &Arc<Self>, tokens: u64) -> Result<Admission, ProviderError> {
        let start = Instant::now();
        let deadline = start + self.max_wait;
        let permit =
            match tokio::time::timeout_at(deadline, self.permits.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                Ok(Err(_)) => unreachable!("lane semaphores are never closed"),
                Err(_) => return Err(self.no_capacity(Some(self.window))),
            };
        let id = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let decision = self.lock().try_admit(now, tokens);
            let ready = match decision {
                Decision::Go(id) => break id,
                Decision::Wait { until, pause } => {
                    self.paused(pause);
                    until
                }
            };
            if ready > deadline {
                self.add_wait(start);
                return Err(self.no_capacity(Some(ready - now)));
            }
            tokio::select! {
                _ = tokio::time::sleep_until(ready) => {}
                _ = notified => {}
            }
        };
        let admission = Admission {
            lane: self.clone(),
            id,
            has_tokens: tokens > 0,
            permit: Some(permit),
        };
        // The send may have used up a reservation: its holder's worker looks again.
        self.room_changed.notify_waiters();
        let daily = match &self.daily {
            Some(d) => d.take().await,
            None => Ok(0),
        };
        if let Err(exhausted) = daily {
            self.add_wait(start);
            return Err(ProviderError::new(
                self.provider,
                ErrorClass::RateLimited,
                format!("daily request limit reached ({} today)", exhausted.used),
            )
            .with_retry_after(Some(exhausted.until_next_day)));
        }
        self.add_wait(start);
        Ok(admission)
    }

    fn add_wait(&self, start: Instant) {
        self.stats
            .wait_micros
            .fetch_add(start.elapsed().as_micros() as u64, Ordering::Relaxed);
    }

    fn no_capacity(&self, retry_after: Option<Duration>) -> ProviderError {
        ProviderError::new(
            self.provider,
            ErrorClass::RateLimited,
            format!(
                "no {} capacity within {:?} (key limits)",
                self.kind, self.max_wait
            ),
        )
        .with_retry_after(retry_after)
    }

    pub fn max_wait(&self) -> Duration {
        self.max_wait
    }

    /// Nobody on this lane starts a request for `d`. `by_provider`: the provider asked for
    /// it (a 429), which is a pause to log and count; otherwise the lane's own decision.
    pub fn cool_down(&self, d: Duration, by_provider: bool) {
        let pause = self.lock().cool_down(Instant::now(), d, by_provider);
        self.paused(pause);
    }

    pub fn budget(&self) -> LaneBudget {
        let now = Instant::now();
        let usage = self.lock().usage(now);
        LaneBudget {
            provider: self.provider,
            lane: self.kind,
            window_secs: self.window.as_secs_f64(),
            requests_limit: usage.requests_limit,
            requests_used: usage.requests,
            requests_remaining: usage.requests_limit.saturating_sub(usage.requests),
            tokens_limit: usage.tokens_limit,
            tokens_used: usage.tokens,
            day_limit: self.daily.as_ref().and_then(|d| d.limit()),
            day_used: self.daily.as_ref().map_or(0, |d| d.used()),
            in_flight: self.concurrency - self.permits.available_permits() as u32,
            concurrency: self.concurrency,
            cooldown_ms: usage
                .paused_until
                .map_or(0, |u| u.saturating_duration_since(now).as_millis() as u64),
        }
    }
}

/// The daily counter and statistics of one provider key, shared by the key's lanes. The
/// counter names the key by its fingerprint only.
pub(crate) fn key_parts(
    provider: ProviderKind,
    common: &crate::config::ProviderConfig,
    store: Option<Arc<dyn DailyStore>>,
) -> (Arc<DailyCounter>, Arc<StatsCell>) {
    let counter = DailyCounter::new(
        provider,
        common.api_key.fingerprint(),
        common.limits.rpd,
        store,
    );
    let health =
        crate::health::KeyHealth::new(provider, common.api_key.fingerprint(), common.health);
    let stats = StatsCell {
        health: Some(health),
        ..StatsCell::default()
    };
    (Arc::new(counter), Arc::new(stats))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lane(rpm: u32, concurrency: u32, tpm: Option<u32>) -> Arc<Lane> {
        let limits = KeyLimits {
            rpm,
            tpm,
            rpd: None,
            concurrency,
            window: Duration::from_secs(60),
        };
        Lane::new(
            ProviderKind::OpenAi,
            LaneKind::Chat,
            &limits,
            rpm,
            Duration::from_secs(600),
            Some(Arc::new(DailyCounter::new(
                ProviderKind::OpenAi,
                "t".into(),
                None,
                None,
            ))),
            Arc::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn waits_for_the_window_instead_of_failing() {
        let l = lane(3, 10, None);
        let t0 = Instant::now();
        for _ in 0..3 {
            drop(l.admit(1).await.unwrap());
        }
        assert_eq!(t0.elapsed(), Duration::ZERO);
        drop(l.admit(1).await.unwrap());
        // 60 s window + 1 s guard.
        assert_eq!(t0.elapsed(), Duration::from_secs(61));
        assert_eq!(l.budget().requests_used, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrency_is_bounded_and_released_on_drop() {
        let l = lane(100, 2, None);
        let a = l.admit(1).await.unwrap();
        let _b = l.admit(1).await.unwrap();
        assert_eq!(l.budget().in_flight, 2);
        let l2 = l.clone();
        let third = tokio::spawn(async move { l2.admit(1).await.map(|_| ()) });
        tokio::task::yield_now().await;
        assert!(!third.is_finished());
        drop(a);
        third.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_provider_pause_delays_everyone_and_is_counted_once() {
        let l = lane(100, 10, None);
        let first = l.admit(1).await.unwrap();
        let hints = RateHints {
            retry_after: Some(Duration::from_secs(5)),
            ..RateHints::default()
        };
        let t0 = Instant::now();
        first.receipt().answered(t0, &hints);
        drop(first);
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.admit(1).await.map(drop) })
            })
            .collect();
        for w in waiters {
            w.await.unwrap().unwrap();
        }
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        assert_eq!(l.stats.provider_pauses.load(Ordering::Relaxed), 1);
        // The lane's own cooldown is no provider pause.
        l.cool_down(Duration::from_secs(1), false);
        assert_eq!(l.budget().cooldown_ms, 1_000);
        assert_eq!(l.stats.provider_pauses.load(Ordering::Relaxed), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_frees_its_slot_a_window_after_it_arrived() {
        let l = lane(2, 10, None);
        let t0 = Instant::now();
        let a = l.admit(0).await.unwrap();
        tokio::time::advance(Duration::from_millis(30)).await;
        a.receipt().answered(Instant::now(), &RateHints::default());
        drop(a);
        tokio::time::advance(Duration::from_secs(30)).await;
        let b = l.admit(0).await.unwrap();
        b.receipt().answered(Instant::now(), &RateHints::default());
        drop(b);
        drop(l.admit(0).await.unwrap());
        // 60 s window + the 30 ms the answer took, not the fixed 1 s guard.
        assert_eq!(t0.elapsed(), Duration::from_millis(60_030));
    }

    #[tokio::test(start_paused = true)]
    async fn token_reconcile_wakes_waiters_early() {
        let l = lane(100, 10, Some(1000));
        let first = l.admit(900).await.unwrap();
        let l2 = l.clone();
        let t0 = Instant::now();
        let waiter = tokio::spawn(async move {
            l2.admit(500).await.unwrap();
            Instant::now()
        });
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!waiter.is_finished());
        first.reconcile_tokens(100);
        let admitted_at = waiter.await.unwrap();
        assert_eq!(admitted_at - t0, Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_with_rate_limited_after_max_wait() {
        let limits = KeyLimits::per_minute(1, 1);
        let l = Lane::new(
            ProviderKind::MiniMax,
            LaneKind::Video,
            &limits,
            1,
            Duration::from_secs(10),
            Some(Arc::new(DailyCounter::new(
                ProviderKind::OpenAi,
                "t".into(),
                None,
                None,
            ))),
            Arc::default(),
        );
        drop(l.admit(0).await.unwrap());
        let err = l.admit(0).await.err().unwrap();
        assert_eq!(err.class, ErrorClass::RateLimited);
        assert!(err.retry_after.unwrap() > Duration::from_secs(10));
    }

    #[test]
    fn lane_names_are_the_published_ones() {
        let names: Vec<String> = LaneKind::ALL
            .iter()
            .map(|l| serde_json::to_string(l).unwrap())
            .collect();
        assert_eq!(
            names,
            [r#""chat""#, r#""images""#, r#""video""#, r#""video_query""#]
        );
        for l in LaneKind::ALL {
            assert_eq!(format!("\"{l}\""), serde_json::to_string(&l).unwrap());
        }
    }
}

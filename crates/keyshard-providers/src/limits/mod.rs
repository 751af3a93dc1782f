//! Per-key limits: a [`Lane`] is one rate-limited stream of calls of one key (OpenAI chat,
//! OpenAI images, MiniMax images, MiniMax video creation and polling, Stability images),
//! named by its [`LaneKind`]. It combines
//!
//! - concurrency (a fair semaphore),
//! - requests per window (a hard sliding-window cap plus GCRA pacing with a small burst) and
//!   tokens per window ([`window`], pure bookkeeping),
//! - cooldowns the provider asked for (`Retry-After`, `x-ratelimit-remaining-*: 0`),
//! - requests per UTC day ([`daily`], shared by the generating lanes of one key; polling
//!   lanes are not counted), counted in a [`DailyStore`] ([`day_store`]) so a restart does
//!   not reset them,
//!
//! and makes callers *wait* for capacity (up to `max_wait`) instead of failing.

pub mod daily;
pub mod day_store;
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
use window::{Pacer, RequestWindow, TokenWindow};

/// Counters of one provider, shared by its lanes.
#[derive(Debug, Default)]
pub(crate) struct StatsCell {
    pub ok: AtomicU64,
    pub by_class: [AtomicU64; 5],
    pub attempts: AtomicU64,
    pub retries: AtomicU64,
    pub provider_429: AtomicU64,
    pub wait_micros: AtomicU64,
}

impl StatsCell {
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
    /// How long the provider told us to stay away, from now.
    pub cooldown_ms: u64,
}

struct LaneState {
    requests: RequestWindow,
    pacer: Pacer,
    tokens: Option<TokenWindow>,
    cooldown_until: Option<Instant>,
}

/// One rate-limited stream of calls of one key.
pub(crate) struct Lane {
    pub provider: ProviderKind,
    pub kind: LaneKind,
    window: Duration,
    concurrency: u32,
    max_wait: Duration,
    // A std mutex: it guards a few comparisons and a VecDeque push, never an await.
    state: Mutex<LaneState>,
    /// Woken when room appears earlier than a waiter computed (token reconcile, cooldown end
    /// moved); waiters otherwise sleep until the instant they computed.
    changed: Notify,
    permits: Arc<Semaphore>,
    /// `None` for lanes whose calls do not count as requests per day (video polling).
    pub daily: Option<Arc<DailyCounter>>,
    pub stats: Arc<StatsCell>,
}

/// Permission to send one request: holds a concurrency permit (released on drop) and the
/// token charge to reconcile with the real usage.
pub(crate) struct Admission {
    lane: Arc<Lane>,
    token_charge: Option<u64>,
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// Corrects the token estimate of this request with the usage the provider reported.
    pub fn reconcile_tokens(&self, actual: u64) {
        if let Some(id) = self.token_charge {
            let mut st = self.lane.state.lock().expect("lane lock");
            if let Some(tokens) = st.tokens.as_mut() {
                tokens.reconcile(id, actual);
            }
            drop(st);
            self.lane.changed.notify_waiters();
        }
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
        let span = limits.window + limits.guard();
        Arc::new(Lane {
            provider,
            kind,
            window: limits.window,
            concurrency: limits.concurrency.max(1),
            max_wait,
            state: Mutex::new(LaneState {
                requests: RequestWindow::new(rpm, span),
                // Paced over the same span the window counts (window + guard): pacing over the
                // bare window would run ahead of the cap by the guard each window, and after a
                // burst the cap would then stall the lane for seconds once a window.
                pacer: Pacer::new(rpm, span, KeyLimits::burst(rpm)),
                tokens: limits.tpm.map(|t| TokenWindow::new(t, span)),
                cooldown_until: None,
            }),
            changed: Notify::new(),
            permits: Arc::new(Semaphore::new(limits.concurrency.max(1) as usize)),
            daily,
            stats,
        })
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
        let token_charge = loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let now = Instant::now();
            let ready = {
                let mut st = self.state.lock().expect("lane lock");
                let mut ready = st.requests.ready_at(now).max(st.pacer.ready_at(now));
                if let Some(until) = st.cooldown_until {
                    ready = ready.max(until);
                }
                if let Some(t) = st.tokens.as_mut() {
                    ready = ready.max(t.ready_at(now, tokens));
                }
                if ready <= now {
                    st.requests.record(now);
                    st.pacer.record(now);
                    break st.tokens.as_mut().map(|t| t.record(now, tokens));
                }
                ready
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
            token_charge,
            _permit: permit,
        };
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

    /// Nobody on this lane starts a request for `d` (the provider asked for it).
    pub fn cool_down(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut st = self.state.lock().expect("lane lock");
        st.cooldown_until = Some(st.cooldown_until.map_or(until, |u| u.max(until)));
    }

    /// Applies what a response said about the key's limits.
    pub fn observe(&self, hints: &RateHints) {
        if let Some(d) = hints.blocked_for() {
            self.cool_down(d);
        }
        if let (Some(0), Some(reset)) = (hints.remaining_tokens, hints.reset_tokens) {
            self.cool_down(reset);
        }
    }

    pub fn budget(&self) -> LaneBudget {
        let now = Instant::now();
        let mut st = self.state.lock().expect("lane lock");
        let used = st.requests.used(now);
        let limit = st.requests.limit();
        LaneBudget {
            provider: self.provider,
            lane: self.kind,
            window_secs: self.window.as_secs_f64(),
            requests_limit: limit,
            requests_used: used,
            requests_remaining: limit.saturating_sub(used),
            tokens_limit: st.tokens.as_ref().map(|t| t.limit()),
            tokens_used: st.tokens.as_mut().map(|t| t.used(now)),
            day_limit: self.daily.as_ref().and_then(|d| d.limit()),
            day_used: self.daily.as_ref().map_or(0, |d| d.used()),
            in_flight: self.concurrency - self.permits.available_permits() as u32,
            concurrency: self.concurrency,
            cooldown_ms: st
                .cooldown_until
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
    (Arc::new(counter), Arc::default())
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
    async fn cooldown_from_headers_delays_everyone() {
        let l = lane(100, 10, None);
        let hints = RateHints {
            retry_after: Some(Duration::from_secs(5)),
            ..RateHints::default()
        };
        l.observe(&hints);
        let t0 = Instant::now();
        drop(l.admit(1).await.unwrap());
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
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

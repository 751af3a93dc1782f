//! Fake AI providers (OpenAI, MiniMax, Stability) with the real request and response shapes,
//! served in-process by one axum server under three prefixes:
//!
//! | provider | base URL given to clients | endpoints |
//! |---|---|---|
//! | OpenAI | `{root}/openai/v1` | `POST /chat/completions` (JSON or SSE with a usage chunk), `POST /images/generations` (b64_json) |
//! | MiniMax | `{root}/minimax` | `POST /v1/image_generation`, `POST /v1/video_generation`, `GET /v1/query/video_generation`, `GET /v1/files/retrieve`, downloads under `/download/` |
//! | Stability | `{root}/stability` | `POST /v2beta/stable-image/generate/core` (multipart in; `image/*` or JSON out) |
//!
//! **Limits.** Each key has its own sliding windows, one per [`FakeLane`]: a request is
//! admitted when fewer than `limit` requests of that key were admitted in the last `window`,
//! measured when the request reaches the handler. Otherwise it gets the provider's 429 (MiniMax:
//! HTTP 200 with `base_resp.status_code` 1002) with `Retry-After` (whole seconds, rounded up:
//! when the oldest admitted request leaves the window) and is not counted. These are the
//! semantics `keyshard-providers`' `KeyLimits` documents.
//!
//! **Headers.** Every OpenAI answer past the key check, 429s included, carries
//! `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` from the limiter's state after the
//! request, as OpenAI defines them: `remaining` is what the window would still admit, `reset`
//! the time until it is back to its initial state (its newest request has left it; OpenAI:
//! "the time until the rate limit resets to its initial state"). With
//! [`FakeProvidersConfig::burst_allowance`] the OpenAI lanes also enforce, and their request
//! headers report, a small burst allowance instead: a token bucket of that many requests
//! refilled at the lane's rate, as a proxy in front of the key may run. MiniMax and
//! Stability send `Retry-After` on their refusals and no rate headers, like the real ones.
//!
//! **Failures.** [`FailurePlan`]: random 500s, hangs (client timeouts) and content rejections
//! at seeded rates, keys that are bad or out of quota, and deterministic triggers: a prompt (or
//! last chat message) containing `fake:<what>` fails that way (see [`Failure::from_marker`]).
//!
//! - `config`: limits, failures, latency and counters ([`FakeProvidersConfig`], [`FakeStats`]).
//! - [`media`]: real PNG and MP4 bytes. [`bench`]: the provider-level benchmark harness.

pub mod bench;
mod config;
pub mod media;
mod minimax;
mod openai;
mod stability;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use config::{
    Failure, FailurePlan, FakeLane, FakeLimits, FakeProvidersConfig, FakeStats, KeyCounts,
    LatencyDist, WindowLimit,
};

/// A video task's life.
#[derive(Debug, Clone)]
pub(crate) struct VideoTask {
    created: Instant,
    fail: bool,
    file_id: u64,
    /// The key that created it: tasks and their files belong to that key's account.
    owner: String,
}

/// Outcome of the rate-limit check.
pub(crate) enum Gate {
    Admitted(LimitView),
    Limited {
        view: LimitView,
        retry_after: Duration,
        /// `requests` or `tokens`, as OpenAI's error `type`.
        kind: &'static str,
    },
}

/// What the x-ratelimit headers say after this request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LimitView {
    limit: u32,
    remaining: u32,
    reset: Duration,
    tokens: Option<(u32, u32, Duration)>,
}

pub(crate) struct Shared {
    cfg: FakeProvidersConfig,
    root: String,
    rng: Mutex<StdRng>,
    windows: Mutex<HashMap<(FakeLane, String), VecDeque<Instant>>>,
    /// Burst allowances (GCRA: the theoretical arrival time of the next request).
    buckets: Mutex<HashMap<(FakeLane, String), Instant>>,
    /// Admitted requests' lanes and starts, in order, the latest [`ADMISSION_LOG`] of them
    /// (for the report's lane use; bounded for a long `keyshard-sim serve`).
    admitted: Mutex<VecDeque<(FakeLane, Instant)>>,
    tokens: Mutex<HashMap<String, VecDeque<(Instant, u64)>>>,
    stats: Mutex<FakeStats>,
    videos: Mutex<HashMap<String, VideoTask>>,
    downloads: Mutex<HashMap<String, (Vec<u8>, &'static str)>>,
    next_id: AtomicU64,
    cancel: CancellationToken,
    /// Keys revoked at run time ([`FakeProviders::set_revoked`]): answered as invalid (401)
    /// until restored, like a key an operator revoked and then replaced.
    revoked: Mutex<HashSet<String>>,
    /// What happened to each key revoked at run time.
    revocations: Mutex<HashMap<String, Revocation>>,
}

/// One run-time revocation of a key, as the fake saw it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Revocation {
    pub revoked_at: Instant,
    pub restored_at: Option<Instant>,
    /// The first request the key had answered after its restoration.
    pub back_in_use_at: Option<Instant>,
    /// Requests refused with 401 while revoked.
    pub refused: u64,
}

impl Shared {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn latency(&self) -> Duration {
        self.cfg
            .latency
            .sample(&mut self.rng.lock().expect("rng lock"))
    }

    /// Sleeps for the sampled latency (cut short by shutdown).
    async fn delay(&self) {
        let d = self.latency();
        if !d.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(d) => {}
                _ = self.cancel.cancelled() => {}
            }
        }
    }

    /// Hangs like an overloaded upstream: until `hang` passes or the fake shuts down.
    async fn hang(&self) {
        tokio::select! {
            _ = tokio::time::sleep(self.cfg.failures.hang) => {}
            _ = self.cancel.cancelled() => {}
        }
    }

    fn count(&self, provider: &str, key: &str, f: impl FnOnce(&mut KeyCounts)) {
        let mut stats = self.stats.lock().expect("stats lock");
        f(stats
            .per_key
            .entry(format!("{provider}:{key}"))
            .or_default());
    }

    fn ok(&self, provider: &str, key: &str) {
        self.count(provider, key, |c| c.ok += 1);
        if let Some(r) = self.revocations.lock().expect("revoked lock").get_mut(key) {
            if r.restored_at.is_some() && r.back_in_use_at.is_none() {
                r.back_in_use_at = Some(Instant::now());
            }
        }
        self.stats.lock().expect("stats lock").total_ok += 1;
    }

    fn error(&self, provider: &str, key: &str) {
        self.count(provider, key, |c| c.errors += 1);
    }

    /// Whether `key` is revoked now (counted as a refusal when it is).
    fn revoked_now(&self, key: &str) -> bool {
        let revoked = self.revoked.lock().expect("revoked lock").contains(key);
        if revoked {
            if let Some(r) = self.revocations.lock().expect("revoked lock").get_mut(key) {
                r.refused += 1;
            }
        }
        revoked
    }

    /// Auth check: the key's fixed failure, if it has one.
    fn key_failure(&self, key: &str) -> Option<Failure> {
        if key.is_empty() || self.cfg.failures.bad_keys.contains(key) || self.revoked_now(key) {
            Some(Failure::BadKey)
        } else if self.cfg.failures.no_quota_keys.contains(key) {
            Some(Failure::Quota)
        } else {
            None
        }
    }

    /// An admitted request's injected failure: a marker in `text` first, then the random rates.
    fn failure(&self, text: &str) -> Option<Failure> {
        if let Some(f) = Failure::from_marker(text) {
            return Some(f);
        }
        let plan = &self.cfg.failures;
        if plan.error_rate <= 0.0 && plan.timeout_rate <= 0.0 && plan.content_reject_rate <= 0.0 {
            return None;
        }
        let x: f64 = self.rng.lock().expect("rng lock").random();
        if x < plan.error_rate {
            Some(Failure::ServerError)
        } else if x < plan.error_rate + plan.timeout_rate {
            Some(Failure::Hang)
        } else if x < plan.error_rate + plan.timeout_rate + plan.content_reject_rate {
            Some(Failure::Content)
        } else {
            None
        }
    }

    /// The sliding-window check (and the burst allowance, when configured); an admitted
    /// request is counted at once.
    fn admit(&self, lane: FakeLane, key: &str, tokens: u64) -> Gate {
        let now = Instant::now();
        let lim = self.cfg.limits.lane(lane);
        let mut windows = self.windows.lock().expect("windows lock");
        let starts = windows.entry((lane, key.to_owned())).or_default();
        while starts.front().is_some_and(|t| *t + lim.window <= now) {
            starts.pop_front();
        }
        // When the oldest admitted request leaves (the next slot frees: Retry-After), and
        // when the newest does (the window is back to its initial state: the reset header).
        let next_slot = |starts: &VecDeque<Instant>| {
            starts.front().map_or(Duration::ZERO, |t| {
                (*t + lim.window).saturating_duration_since(now)
            })
        };
        let reset_of = |starts: &VecDeque<Instant>| {
            starts.back().map_or(Duration::ZERO, |t| {
                (*t + lim.window).saturating_duration_since(now)
            })
        };
        // Tokens (OpenAI chat only).
        let mut token_view = None;
        let mut token_wait = None;
        if let (FakeLane::OpenAiChat, Some(tl)) = (lane, self.cfg.limits.openai_chat_tokens) {
            let mut all = self.tokens.lock().expect("tokens lock");
            let used = all.entry(key.to_owned()).or_default();
            while used.front().is_some_and(|(t, _)| *t + tl.window <= now) {
                used.pop_front();
            }
            let total: u64 = used.iter().map(|(_, n)| n).sum();
            let tokens = tokens.min(u64::from(tl.limit));
            let newest = |used: &VecDeque<(Instant, u64)>| {
                used.back().map_or(Duration::ZERO, |(t, _)| {
                    (*t + tl.window).saturating_duration_since(now)
                })
            };
            if total + tokens > u64::from(tl.limit) {
                let mut need = total + tokens - u64::from(tl.limit);
                let mut wait = tl.window;
                for (t, n) in used.iter() {
                    if *n >= need {
                        wait = (*t + tl.window).saturating_duration_since(now);
                        break;
                    }
                    need -= n;
                }
                token_wait = Some(wait);
                token_view = Some((
                    tl.limit,
                    tl.limit.saturating_sub(total as u32),
                    newest(used),
                ));
            } else if starts.len() < lim.limit as usize {
                used.push_back((now, tokens));
                token_view = Some((
                    tl.limit,
                    (u64::from(tl.limit) - total - tokens) as u32,
                    newest(used),
                ));
            }
        }
        let view_of = |starts: &VecDeque<Instant>| LimitView {
            limit: lim.limit,
            remaining: lim.limit.saturating_sub(starts.len() as u32),
            reset: reset_of(starts),
            tokens: token_view,
        };
        if starts.len() >= lim.limit as usize {
            let view = view_of(starts);
            let retry_after = next_slot(starts);
            drop(windows);
            self.count_429(lane, key);
            return Gate::Limited {
                view,
                retry_after,
                kind: "requests",
            };
        }
        if let Some(wait) = token_wait {
            let view = view_of(starts);
            drop(windows);
            self.count_429(lane, key);
            return Gate::Limited {
                view,
                retry_after: wait,
                kind: "tokens",
            };
        }
        let burst = self
            .cfg
            .burst_allowance
            .filter(|_| matches!(lane, FakeLane::OpenAiChat | FakeLane::OpenAiImages));
        let mut view = None;
        if let Some(allowance) = burst {
            let allowance = allowance.max(1);
            let interval = lim.window / lim.limit.max(1);
            let tolerance = interval * (allowance - 1);
            let mut buckets = self.buckets.lock().expect("buckets lock");
            let tat = buckets.entry((lane, key.to_owned())).or_insert(now);
            let start = (*tat).max(now);
            if start > now + tolerance {
                let full_in = start - now;
                let view = bucket_view(allowance, interval, full_in, token_view);
                drop(buckets);
                drop(windows);
                self.count_429(lane, key);
                return Gate::Limited {
                    view,
                    retry_after: start - tolerance - now,
                    kind: "requests",
                };
            }
            *tat = start + interval;
            view = Some(bucket_view(allowance, interval, *tat - now, token_view));
        }
        starts.push_back(now);
        let view = view.unwrap_or_else(|| view_of(starts));
        // Logged under the windows lock, so the log is in admission order.
        let mut log = self.admitted.lock().expect("admitted lock");
        if log.len() == ADMISSION_LOG {
            log.pop_front();
        }
        log.push_back((lane, now));
        Gate::Admitted(view)
    }

    fn count_429(&self, lane: FakeLane, key: &str) {
        self.count(lane.provider(), key, |c| c.rate_limited += 1);
        self.stats.lock().expect("stats lock").total_429 += 1;
    }
}

/// The request headers of a burst allowance of `allowance` requests refilled one per
/// `interval`, full again in `full_in`: what is left now (whole requests) and that time.
fn bucket_view(
    allowance: u32,
    interval: Duration,
    full_in: Duration,
    tokens: Option<(u32, u32, Duration)>,
) -> LimitView {
    let used = full_in.as_nanos().div_ceil(interval.as_nanos().max(1)) as u32;
    LimitView {
        limit: allowance,
        remaining: allowance.saturating_sub(used),
        reset: full_in,
        tokens,
    }
}

/// How many admissions the fake remembers for [`FakeProviders::admitted_between`]: a million
/// (about 24 MB), hours of a busy scenario.
const ADMISSION_LOG: usize = 1_000_000;

/// `Retry-After` in whole seconds, rounded up (never 0 for a real wait).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// The bearer token of a request (empty when missing).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> String {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The running fake providers.
pub struct FakeProviders {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl FakeProviders {
    /// Binds `127.0.0.1:0` and serves until [`shutdown`](Self::shutdown) (or drop).
    pub async fn start(cfg: FakeProvidersConfig) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            cfg,
            root: format!("http://{addr}"),
            windows: Mutex::default(),
            buckets: Mutex::default(),
            admitted: Mutex::default(),
            tokens: Mutex::default(),
            stats: Mutex::default(),
            videos: Mutex::default(),
            downloads: Mutex::default(),
            next_id: AtomicU64::new(1),
            cancel: CancellationToken::new(),
            revoked: Mutex::default(),
            revocations: Mutex::default(),
        });
        let app = Router::new()
            .nest("/openai/v1", openai::routes())
            .nest("/minimax", minimax::routes())
            .nest("/stability", stability::routes())
            .with_state(shared.clone());
        let cancel = shared.cancel.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned());
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "fake providers server stopped");
            }
        });
        tracing::debug!(%addr, "fake providers listening");
        Ok(FakeProviders {
            shared,
            addr,
            task: Some(task),
        })
    }

    /// Revokes `key` (every provider answers it as invalid, 401 / MiniMax 1004) or, with
    /// `false`, restores it.
    pub fn set_revoked(&self, key: &str, revoked: bool) {
        let mut set = self.shared.revoked.lock().expect("revoked lock");
        let mut log = self.shared.revocations.lock().expect("revoked lock");
        let now = Instant::now();
        if revoked {
            set.insert(key.to_owned());
            log.insert(
                key.to_owned(),
                Revocation {
                    revoked_at: now,
                    restored_at: None,
                    back_in_use_at: None,
                    refused: 0,
                },
            );
        } else {
            set.remove(key);
            if let Some(r) = log.get_mut(key) {
                r.restored_at = Some(now);
            }
        }
    }

    /// What happened to `key`'s last run-time revocation, if it had one.
    pub fn revocation(&self, key: &str) -> Option<Revocation> {
        self.shared
            .revocations
            .lock()
            .expect("revoked lock")
            .get(key)
            .copied()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/openai/v1` (async-openai style, `/v1` included).
    pub fn openai_base(&self) -> String {
        format!("{}/openai/v1", self.shared.root)
    }

    /// `http://127.0.0.1:PORT/minimax` (clients append `/v1/...`).
    pub fn minimax_base(&self) -> String {
        format!("{}/minimax", self.shared.root)
    }

    /// `http://127.0.0.1:PORT/stability` (clients append `/v2beta/...`).
    pub fn stability_base(&self) -> String {
        format!("{}/stability", self.shared.root)
    }

    pub fn limits(&self) -> &FakeLimits {
        &self.shared.cfg.limits
    }

    /// How long a video task takes from creation to `Success`: its three steps.
    pub fn video_render(&self) -> Duration {
        self.shared.cfg.video_step * 3
    }

    /// What `keys` keys can do per minute on `lane` (for the report's `capacity_per_min`).
    pub fn capacity_per_min(&self, lane: FakeLane, keys: usize) -> f64 {
        self.shared.cfg.limits.lane(lane).per_min() * keys as f64
    }

    /// Requests admitted on `lane` (all keys) that started in `[from, to)`.
    pub fn admitted_between(&self, lane: FakeLane, from: Instant, to: Instant) -> u64 {
        self.shared
            .admitted
            .lock()
            .expect("admitted lock")
            .iter()
            .filter(|(l, t)| *l == lane && *t >= from && *t < to)
            .count() as u64
    }

    pub fn stats(&self) -> FakeStats {
        self.shared.stats.lock().expect("stats lock").clone()
    }

    /// Stops serving; hanging requests end at once.
    pub async fn shutdown(mut self) {
        self.shared.cancel.cancel();
        let Some(task) = self.task.take() else { return };
        // Idle keep-alive connections would hold graceful shutdown open; the handlers already
        // returned, so stop waiting after a moment.
        let abort = task.abort_handle();
        if tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

impl Drop for FakeProviders {
    fn drop(&mut self) {
        self.shared.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn window_admits_limit_then_429_until_the_oldest_leaves() {
        let cfg = FakeProvidersConfig {
            limits: FakeLimits::uniform(3, Duration::from_secs(10)),
            ..FakeProvidersConfig::default()
        };
        let fake = FakeProviders::start(cfg).await.unwrap();
        let s = &fake.shared;
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(matches!(
                s.admit(FakeLane::MiniMaxVideo, "k", 0),
                Gate::Admitted(_)
            ));
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        match s.admit(FakeLane::MiniMaxVideo, "k", 0) {
            Gate::Limited { retry_after, .. } => assert_eq!(retry_after, Duration::from_secs(7)),
            Gate::Admitted(_) => panic!("4th request in the window admitted"),
        }
        // Another key and another lane are separate.
        assert!(matches!(
            s.admit(FakeLane::MiniMaxVideo, "other", 0),
            Gate::Admitted(_)
        ));
        assert!(matches!(
            s.admit(FakeLane::MiniMaxImages, "k", 0),
            Gate::Admitted(_)
        ));
        tokio::time::advance(Duration::from_secs(7)).await;
        assert!(matches!(
            s.admit(FakeLane::MiniMaxVideo, "k", 0),
            Gate::Admitted(_)
        ));
        assert_eq!(fake.stats().total_429, 1);
        assert_eq!(fake.stats().key("minimax", "k").rate_limited, 1);
        // Admissions are logged by lane and start, refusals are not.
        let video = |from: u64, to: u64| {
            fake.admitted_between(
                FakeLane::MiniMaxVideo,
                t0 + Duration::from_secs(from),
                t0 + Duration::from_secs(to),
            )
        };
        assert_eq!((video(0, 3), video(3, 10), video(0, 11)), (3, 1, 5));
        assert_eq!(
            fake.admitted_between(FakeLane::MiniMaxImages, t0, Instant::now()),
            1
        );
        fake.shutdown().await;
    }

    fn view(g: Gate) -> (bool, LimitView, Option<Duration>) {
        match g {
            Gate::Admitted(v) => (true, v, None),
            Gate::Limited {
                view, retry_after, ..
            } => (false, view, Some(retry_after)),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn headers_say_what_is_left_and_when_the_window_is_empty_again() {
        let cfg = FakeProvidersConfig {
            limits: FakeLimits::uniform(3, Duration::from_secs(10)),
            ..FakeProvidersConfig::default()
        };
        let fake = FakeProviders::start(cfg).await.unwrap();
        let s = &fake.shared;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (ok, v, _) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
            assert!(ok);
            seen.push((v.remaining, v.reset.as_secs()));
            tokio::time::advance(Duration::from_secs(2)).await;
        }
        // Reset: until the newest admitted request leaves (the window is empty again).
        assert_eq!(seen, [(2, 10), (1, 10), (0, 10)]);
        // Refused at 6 s: nothing left, empty again at 14 s, the next slot at 10 s.
        let (ok, v, retry) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
        assert!(!ok);
        assert_eq!((v.remaining, v.reset), (0, Duration::from_secs(8)));
        assert_eq!(retry, Some(Duration::from_secs(4)));
        fake.shutdown().await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_allowance_is_enforced_and_reported_instead_of_the_window() {
        let cfg = FakeProvidersConfig {
            limits: FakeLimits::uniform(120, Duration::from_secs(60)),
            burst_allowance: Some(3),
            ..FakeProvidersConfig::default()
        };
        let fake = FakeProviders::start(cfg).await.unwrap();
        let s = &fake.shared;
        let ms = Duration::from_millis;
        let mut seen = Vec::new();
        for _ in 0..3 {
            let (ok, v, _) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
            assert!(ok);
            seen.push((v.limit, v.remaining, v.reset));
        }
        assert_eq!(
            seen,
            [(3, 2, ms(500)), (3, 1, ms(1_000)), (3, 0, ms(1_500))]
        );
        // The fourth at once: refused, back in one interval (120 a minute: 500 ms).
        let (ok, v, retry) = view(s.admit(FakeLane::OpenAiChat, "k", 0));
        assert!(!ok);
        assert_eq!((v.remaining, retry), (0, Some(ms(500))));
        tokio::time::advance(ms(500)).await;
        assert!(view(s.admit(FakeLane::OpenAiChat, "k", 0)).0);
        // Only OpenAI's lanes have the allowance.
        for _ in 0..5 {
            assert!(view(s.admit(FakeLane::MiniMaxImages, "k", 0)).0);
        }
        fake.shutdown().await;
    }

    #[tokio::test]
    async fn openai_answers_carry_the_headers_and_429s_retry_after() {
        let cfg = FakeProvidersConfig {
            limits: FakeLimits::uniform(2, Duration::from_secs(60)),
            latency: LatencyDist::None,
            ..FakeProvidersConfig::default()
        };
        let fake = FakeProviders::start(cfg).await.unwrap();
        let http = crate::http_client();
        let url = format!("{}/chat/completions", fake.openai_base());
        let mut answers = Vec::new();
        for _ in 0..3 {
            let r = http
                .post(&url)
                .bearer_auth("sk-fake-key-123456")
                .json(&serde_json::json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap();
            let h = |k: &str| {
                r.headers()
                    .get(k)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            answers.push((
                r.status().as_u16(),
                h("x-ratelimit-limit-requests"),
                h("x-ratelimit-remaining-requests"),
                h("x-ratelimit-reset-requests").is_some(),
                h("retry-after"),
            ));
        }
        let some = |v: &str| Some(v.to_owned());
        assert_eq!(
            answers,
            [
                (200, some("2"), some("1"), true, None),
                (200, some("2"), some("0"), true, None),
                (429, some("2"), some("0"), true, some("60")),
            ]
        );
        fake.shutdown().await;
    }
}

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
    /// request is counted at once. Long (one function over ~120 lines) because requests,
    /// tokens and the burst allowance are decided together under the windows lock (an OpenAI
    /// request is refused for either), and splitting it would hand the guard around.
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
        Self::start_on(cfg, SocketAddr::from(([127, 0, 0, 1], 0)), None).await
    }

    /// [`Self::start`] on `bind`, with `advertise` (host or host:port) in the base and download
    /// URLs it gives out (see [`crate::discord::Advertised`]).
    pub async fn start_on(
        cfg: FakeProvidersConfig,
        bind: SocketAddr,
        advertise: Option<&str>,
    ) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let public = crate::discord::Advertised::new(addr, advertise);
        let shared = Arc::new(Shared {
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            cfg,
            root: format!("http://{public}"),
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
mod tests;

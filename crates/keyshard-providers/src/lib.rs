//! keyshard-providers: the OpenAI, MiniMax and Stability clients of one instance, which use
//! every bit of their keys' limits without going over.
//!
//! - [`openai`]: streamed chat through async-openai (with usage), gpt-image-1 images.
//! - [`minimax`]: `image-01` images; Hailuo video create → poll → retrieve → download,
//!   resumable from a stored [`VideoTaskId`].
//! - [`stability`]: Stability `core` images.
//! - [`image`]: [`AspectRatio`], [`GeneratedImage`], [`ImageProvider`] to try providers in order.
//! - [`limits`]: per-key limits. A `Lane` waits for capacity: requests and tokens per sliding
//!   window ([`limits::window`], pure), concurrency, provider cooldowns, and requests per UTC
//!   day in Redis ([`limits::daily`], degrading to memory when Redis is down).
//! - [`retry`]: the one retry loop (capped, jittered backoff; only `Retryable`/`RateLimited`);
//!   no library underneath retries on its own.
//! - [`error`]: [`ProviderError`] and the pure rules that map each provider's error answers
//!   to an [`ErrorClass`].
//! - [`headers`]: `Retry-After` and OpenAI `x-ratelimit-*` (Go durations).
//! - [`config`]: [`ProviderConfig`], [`KeyLimits`] (window semantics documented there),
//!   [`RetryPolicy`] and the per-provider configs; [`secret`]: [`Secret`].
//!
//! [`Providers`] bundles the three clients of one instance and reports their remaining
//! [`budget`](Providers::budget) and [`stats`](Providers::stats).

pub mod config;
pub mod error;
pub mod headers;
mod http;
pub mod image;
pub mod limits;
pub mod minimax;
pub mod openai;
pub mod retry;
pub mod secret;
pub mod stability;

use std::sync::atomic::Ordering;
use std::time::Duration;

pub use config::{
    KeyLimits, MiniMaxConfig, OpenAiConfig, ProviderConfig, RetryPolicy, StabilityConfig,
};
pub use error::{ErrorClass, ProviderError, ProviderKind};
pub use image::{try_next_provider, AspectRatio, GeneratedImage, ImageProvider};
pub use limits::daily::RedisTarget;
pub use limits::LaneBudget;
pub use minimax::{MiniMax, VideoFile, VideoStatus, VideoTaskId};
pub use openai::{ChatEvent, ChatMessage, ChatRole, ChatStream, OpenAi};
pub use secret::Secret;
pub use stability::Stability;

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
    pub(crate) fn from_cell(provider: ProviderKind, c: &limits::StatsCell) -> Self {
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

/// The provider clients of one instance; a provider without a key is `None`.
#[derive(Clone, Debug, Default)]
pub struct Providers {
    pub openai: Option<OpenAi>,
    pub minimax: Option<MiniMax>,
    pub stability: Option<Stability>,
}

impl Providers {
    /// Builds the configured clients. `key_namespace` prefixes the daily counters' Redis keys
    /// (the cluster name); `redis: None` keeps them in memory only.
    pub fn new(
        openai: Option<OpenAiConfig>,
        minimax: Option<MiniMaxConfig>,
        stability: Option<StabilityConfig>,
        redis: Option<RedisTarget>,
        key_namespace: &str,
    ) -> Result<Self, ProviderError> {
        for (kind, common) in [
            (ProviderKind::OpenAi, openai.as_ref().map(|c| &c.common)),
            (ProviderKind::MiniMax, minimax.as_ref().map(|c| &c.common)),
            (
                ProviderKind::Stability,
                stability.as_ref().map(|c| &c.common),
            ),
        ] {
            if let Some(c) = common {
                validate(kind, c)?;
            }
        }
        Ok(Providers {
            openai: openai
                .map(|c| OpenAi::new(c, redis.clone(), key_namespace))
                .transpose()?,
            minimax: minimax
                .map(|c| MiniMax::new(c, redis.clone(), key_namespace))
                .transpose()?,
            stability: stability
                .map(|c| Stability::new(c, redis, key_namespace))
                .transpose()?,
        })
    }

    /// The configured image providers in `order` (providers without a key are skipped).
    pub fn image_providers(&self, order: &[ProviderKind]) -> Vec<ImageProvider> {
        order
            .iter()
            .filter_map(|kind| match kind {
                ProviderKind::OpenAi => self.openai.clone().map(ImageProvider::OpenAi),
                ProviderKind::MiniMax => self.minimax.clone().map(ImageProvider::MiniMax),
                ProviderKind::Stability => self.stability.clone().map(ImageProvider::Stability),
            })
            .collect()
    }

    /// Tries the image providers in `order`, moving on only when one cannot serve now
    /// ([`try_next_provider`]); returns the first image or the last error.
    pub async fn image(
        &self,
        prompt: &str,
        ratio: AspectRatio,
        order: &[ProviderKind],
    ) -> Result<GeneratedImage, ProviderError> {
        let mut last = None;
        for provider in self.image_providers(order) {
            match provider.image(prompt, ratio).await {
                Ok(img) => return Ok(img),
                Err(e) if try_next_provider(&e) => {
                    tracing::info!(provider = %e.provider, class = %e.class, "image provider failed; trying the next one");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            ProviderError::new(
                order.first().copied().unwrap_or(ProviderKind::OpenAi),
                ErrorClass::KeyProblem,
                "no image provider is configured",
            )
        }))
    }

    /// Remaining budget of every lane of every configured provider.
    pub fn budget(&self) -> Vec<LaneBudget> {
        let mut out = Vec::new();
        if let Some(p) = &self.openai {
            out.extend(p.budget());
        }
        if let Some(p) = &self.minimax {
            out.extend(p.budget());
        }
        if let Some(p) = &self.stability {
            out.extend(p.budget());
        }
        out
    }

    /// Counters of every configured provider.
    pub fn stats(&self) -> Vec<ProviderStats> {
        let mut out = Vec::new();
        if let Some(p) = &self.openai {
            out.push(p.stats());
        }
        if let Some(p) = &self.minimax {
            out.push(p.stats());
        }
        if let Some(p) = &self.stability {
            out.push(p.stats());
        }
        out
    }
}

/// Checks one provider's config; every client constructor calls it.
pub(crate) fn validate(kind: ProviderKind, c: &ProviderConfig) -> Result<(), ProviderError> {
    let bad = |msg: String| Err(ProviderError::new(kind, ErrorClass::BadRequest, msg));
    if c.api_key.looks_like_placeholder() {
        return bad("the API key is empty or a placeholder".into());
    }
    // The key goes into an `Authorization` header (async-openai even panics on an invalid
    // one): a stray newline or space from an env file must fail here, at start.
    if !c.api_key.expose().chars().all(|ch| ch.is_ascii_graphic()) {
        return bad("the API key contains spaces, newlines or non-ASCII characters".into());
    }
    if !(c.base_url.starts_with("http://") || c.base_url.starts_with("https://")) {
        return bad(format!("base URL {:?} is not http(s)", c.base_url));
    }
    if c.limits.rpm == 0 || c.limits.concurrency == 0 || c.limits.window.is_zero() {
        return bad("rpm, concurrency and window must be above zero".into());
    }
    if c.max_wait <= c.limits.window {
        return bad(format!(
            "max_wait ({:?}) must exceed the rate window ({:?}), or a busy key fails calls instead of queueing them",
            c.max_wait, c.limits.window
        ));
    }
    if c.timeout.is_zero() || c.retry.max_attempts == 0 {
        return bad("timeout and retry.max_attempts must be above zero".into());
    }
    Ok(())
}

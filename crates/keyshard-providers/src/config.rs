//! Per-provider configuration: key, base URL, timeouts, per-key limits and retry policy.
//!
//! The bot builds these from its env; the simulator and tests build them directly.

use std::time::Duration;

use crate::error::{ErrorClass, ProviderError, ProviderKind};
use crate::health::HealthPolicy;
use crate::secret::Secret;

/// The limits of one key, as the provider publishes them for the account's tier.
///
/// **Window semantics** (shared with the fake providers in `keyshard-sim`): a key may *start*
/// at most `rpm` requests within any sliding `window` (60 s in production; tests scale it down
/// to keep runs short without changing the rule). The client counts its own start times and
/// adds a small guard to the window (see [`KeyLimits::guard`]) so that network delay between
/// its clock and the provider's never squeezes `rpm + 1` arrivals into one provider window.
/// Within that cap requests are paced `(window + guard) / rpm` apart after a burst of
/// [`KeyLimits::burst`], so the window's budget is spread over the window.
/// `tpm` works the same way with token counts, `rpd` counts requests per UTC day.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyLimits {
    /// Requests per `window`.
    pub rpm: u32,
    /// Tokens per `window` (OpenAI chat only).
    pub tpm: Option<u32>,
    /// Requests per UTC day, counted in the daily store (Redis in the bot, so a restart does
    /// not reset them).
    pub rpd: Option<u32>,
    /// Requests in flight at once.
    pub concurrency: u32,
    /// The rate window; 60 s in production.
    pub window: Duration,
}

impl KeyLimits {
    /// `rpm` requests per minute, no token or daily limit, at most `concurrency` in flight.
    pub fn per_minute(rpm: u32, concurrency: u32) -> Self {
        KeyLimits {
            rpm,
            tpm: None,
            rpd: None,
            concurrency,
            window: Duration::from_secs(60),
        }
    }

    /// How many requests of a lane limited to `rpm` per window may start back to back before
    /// the lane paces them `(window + guard) / rpm` apart.
    ///
    /// A burst is borrowed from the window: a lane that stays saturated after one runs into
    /// the sliding-window cap before the burst's slots free, and stalls for the burst's length
    /// (`(burst - 1)` pacing intervals) once per window. So:
    /// - up to 10 per window, the whole limit (a handful of users asking at once is served at
    ///   once; spacing them a window / rpm apart would keep each waiting 6 s or more, and the
    ///   window itself is the pace anyway);
    /// - above that, the larger of 100 / rpm (a few users at once while the spacing is still
    ///   seconds: 9 at 11, 5 at 20, 2 at 50) and 1 + rpm / 50 (about 1.2 s ahead of the pace,
    ///   2 % of the window, once the spacing is well under a second). Between 11 and 49 per
    ///   window a saturated key still stalls for long (about 44 s a window at 11, 12 s at 20):
    ///   there the window, not the pace, shapes the flow, and users waiting a pacing interval
    ///   of several seconds each would fare worse.
    ///
    /// At 120 per minute that is 3: a saturated key stalls ~1 s per window instead of the
    /// 5.6 s a burst of 12 cost, so any stretch of a busy minute sees the key's pace. The
    /// sliding window stays the hard cap; pacing changes the shape, not the long-run rate.
    pub fn burst(rpm: u32) -> u32 {
        let rpm = rpm.max(1);
        if rpm <= 10 {
            return rpm;
        }
        (1 + rpm / 50).max(100 / rpm).min(rpm)
    }

    /// Extra time the client adds to `window` before it reuses a slot: it absorbs the spread
    /// of delays between the client taking a slot and the provider seeing the request (queueing
    /// in the connection pool, a TLS handshake, scheduling). 1/60 of the window, between
    /// 50 ms and 1 s: 1 s at 60 s (costs 1.6 % of the rate in steady state, covers a slow TLS
    /// handshake), 50 ms for a 3 s test window (loopback jitter on a loaded CI box).
    pub fn guard(&self) -> Duration {
        (self.window / 60).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

impl Default for KeyLimits {
    /// Conservative tier-1-like defaults: 60 requests per minute, 4 in flight.
    fn default() -> Self {
        KeyLimits::per_minute(60, 4)
    }
}

/// How keyshard retries a failed attempt (only `Retryable` and `RateLimited` errors).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. 4 rides out a provider blip of a few seconds
    /// without holding a Discord user for long.
    pub max_attempts: u32,
    /// First backoff; doubled each attempt ("full jitter": a random delay up to the value).
    pub base_delay: Duration,
    /// Backoff cap, so a long outage does not turn into minute-long sleeps.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(8),
        }
    }
}

/// What every provider needs.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub api_key: Secret,
    /// OpenAI: including `/v1` (`https://api.openai.com/v1`); MiniMax: the host root
    /// (`https://api.minimax.io`); Stability: the host root (`https://api.stability.ai`).
    pub base_url: String,
    /// Time limit of one attempt (request sent → whole answer read; for a chat stream, the
    /// first byte and then each gap between events).
    pub timeout: Duration,
    pub limits: KeyLimits,
    /// Longest a call waits for capacity (rate window, cooldown, concurrency) before it gives
    /// up with `RateLimited`. It must exceed `limits.window`, or a saturated key would fail
    /// calls instead of queueing them.
    pub max_wait: Duration,
    pub retry: RetryPolicy,
    /// When a key out of service is probed and when the provider's circuit opens.
    pub health: HealthPolicy,
}

impl ProviderConfig {
    /// A config with the default limits, a 60 s attempt timeout, 3 min `max_wait` (three
    /// windows) and the default retry policy.
    pub fn new(api_key: impl Into<Secret>, base_url: impl Into<String>) -> Self {
        ProviderConfig {
            api_key: api_key.into(),
            base_url: base_url.into(),
            timeout: Duration::from_secs(60),
            limits: KeyLimits::default(),
            max_wait: Duration::from_secs(180),
            retry: RetryPolicy::default(),
            health: HealthPolicy::default(),
        }
    }

    pub fn with_limits(mut self, limits: KeyLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }
}

/// OpenAI: chat (`chat_model`) and images (`image_model`).
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// `limits` apply to chat.
    pub common: ProviderConfig,
    pub chat_model: String,
    pub image_model: String,
    /// Image requests per `common.limits.window`; image models have their own, much lower,
    /// limit (gpt-image-1 tier 1: 5 per minute).
    pub image_rpm: u32,
    /// Sent as `max_completion_tokens` and counted in the token estimate before the call,
    /// as OpenAI's own limiter does.
    pub max_completion_tokens: u32,
}

impl OpenAiConfig {
    pub fn new(common: ProviderConfig) -> Self {
        OpenAiConfig {
            common,
            chat_model: "gpt-4o-mini".into(),
            image_model: "gpt-image-1".into(),
            image_rpm: 5,
            max_completion_tokens: 1024,
        }
    }
}

/// MiniMax: `image-01` and Hailuo video.
#[derive(Debug, Clone)]
pub struct MiniMaxConfig {
    /// `limits` apply to image generation (image-01: 10 per minute).
    pub common: ProviderConfig,
    pub image_model: String,
    pub video_model: String,
    /// Video task creations per `common.limits.window` (Hailuo: 5, 20 on some paid plans).
    /// Polling and file retrieval are not counted: MiniMax publishes no limit for them.
    pub video_rpm: u32,
    /// How long a video task takes to render. It sizes how many video jobs run at once
    /// ([`crate::MiniMax::video_slots`]) and is where polling starts until the client has
    /// seen tasks finish ([`crate::render::RenderClock`]).
    pub video_render: Duration,
}

impl MiniMaxConfig {
    pub fn new(common: ProviderConfig) -> Self {
        MiniMaxConfig {
            common,
            image_model: "image-01".into(),
            video_model: "MiniMax-Hailuo-02".into(),
            video_rpm: 5,
            // Hailuo renders a 6 s clip in minutes; two is a middle the poll plan corrects.
            video_render: Duration::from_secs(120),
        }
    }
}

/// Stability: `stable-image/generate/core`.
#[derive(Debug, Clone)]
pub struct StabilityConfig {
    /// Stability publishes 150 requests per 10 s: set `limits.window` to 10 s and `rpm` to 150.
    pub common: ProviderConfig,
}

impl StabilityConfig {
    pub fn new(common: ProviderConfig) -> Self {
        StabilityConfig { common }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guard_scales_with_the_window_within_bounds() {
        let mut l = KeyLimits::per_minute(120, 16);
        assert_eq!(l.guard(), Duration::from_secs(1));
        l.window = Duration::from_secs(3);
        assert_eq!(l.guard(), Duration::from_millis(50));
        l.window = Duration::from_secs(6);
        assert_eq!(l.guard(), Duration::from_millis(100));
        l.window = Duration::from_secs(3600);
        assert_eq!(l.guard(), Duration::from_secs(1));
    }

    #[test]
    fn bursts() {
        // Small limits: the window alone.
        assert_eq!(KeyLimits::burst(0), 1);
        assert_eq!(KeyLimits::burst(1), 1);
        assert_eq!(KeyLimits::burst(5), 5);
        assert_eq!(KeyLimits::burst(10), 10);
        // Then a few users at once while the spacing is seconds…
        assert_eq!(KeyLimits::burst(11), 9);
        assert_eq!(KeyLimits::burst(30), 3);
        assert_eq!(KeyLimits::burst(60), 2);
        // …and about 2 % of the window ahead of the pace for large limits.
        assert_eq!(KeyLimits::burst(120), 3);
        assert_eq!(KeyLimits::burst(500), 11);
        let stall = |rpm: u32| {
            let limits = KeyLimits::per_minute(rpm, 1);
            let span = limits.window + limits.guard();
            span.as_secs_f64() * f64::from(KeyLimits::burst(rpm) - 1) / f64::from(rpm)
        };
        for rpm in 1..=10_000 {
            let b = KeyLimits::burst(rpm);
            assert!((1..=rpm).contains(&b), "{rpm}: {b}");
            // From 50 a minute up, a saturated key stalls at most ~1.25 s per 61 s.
            if rpm >= 50 {
                assert!(stall(rpm) <= 1.25, "{rpm}: {b} stalls {:.2} s", stall(rpm));
            }
            // Between the two regimes the burst only shrinks as the limit grows.
            if (11..=50).contains(&rpm) {
                assert!(b <= KeyLimits::burst(rpm - 1), "{rpm}: {b}");
            }
        }
        // The stall a burst of 12 caused at 120 a minute, against the one left now.
        assert!((stall(120) - 1.02).abs() < 0.01, "{}", stall(120));
    }

    #[test]
    fn config_debug_hides_the_key() {
        let c = ProviderConfig::new("sk-very-secret", "http://x/v1");
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("very-secret"), "{dbg}");
        assert!(dbg.contains("***"));
    }
}

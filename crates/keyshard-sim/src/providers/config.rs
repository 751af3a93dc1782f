//! What the fake providers are told to be: each lane's per-key limits ([`FakeLimits`]), the
//! failures to inject ([`FailurePlan`], [`Failure`] markers in prompts), latency, video pace;
//! and the counters they keep ([`FakeStats`]).

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::Rng;

/// How long the fake takes to answer (sampled per request from a seeded RNG).
#[derive(Debug, Clone, PartialEq)]
pub enum LatencyDist {
    None,
    Fixed(Duration),
    Uniform { min: Duration, max: Duration },
}

impl LatencyDist {
    pub(crate) fn sample(&self, rng: &mut StdRng) -> Duration {
        match self {
            LatencyDist::None => Duration::ZERO,
            LatencyDist::Fixed(d) => *d,
            LatencyDist::Uniform { min, max } if max > min => {
                *min + (*max - *min).mul_f64(rng.random::<f64>())
            }
            LatencyDist::Uniform { min, .. } => *min,
        }
    }
}

/// `limit` requests (or tokens) per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowLimit {
    pub limit: u32,
    pub window: Duration,
}

impl WindowLimit {
    pub fn per_minute(limit: u32) -> Self {
        WindowLimit {
            limit,
            window: Duration::from_secs(60),
        }
    }

    /// The same limit per minute, whatever the window.
    pub fn per_min(&self) -> f64 {
        f64::from(self.limit) * 60.0 / self.window.as_secs_f64()
    }
}

/// A rate-limited stream of one key's requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FakeLane {
    OpenAiChat,
    OpenAiImages,
    MiniMaxImages,
    MiniMaxVideo,
    StabilityImages,
}

impl FakeLane {
    /// `openai_chat`, `openai_images`, `minimax_images`, `minimax_video`, `stability_images`.
    pub fn name(self) -> &'static str {
        match self {
            FakeLane::OpenAiChat => "openai_chat",
            FakeLane::OpenAiImages => "openai_images",
            FakeLane::MiniMaxImages => "minimax_images",
            FakeLane::MiniMaxVideo => "minimax_video",
            FakeLane::StabilityImages => "stability_images",
        }
    }

    pub fn provider(self) -> &'static str {
        match self {
            FakeLane::OpenAiChat | FakeLane::OpenAiImages => "openai",
            FakeLane::MiniMaxImages | FakeLane::MiniMaxVideo => "minimax",
            FakeLane::StabilityImages => "stability",
        }
    }
}

/// Per-key limits of every lane (the same for every key; each key is counted separately).
#[derive(Debug, Clone, PartialEq)]
pub struct FakeLimits {
    pub openai_chat: WindowLimit,
    pub openai_chat_tokens: Option<WindowLimit>,
    pub openai_images: WindowLimit,
    pub minimax_images: WindowLimit,
    pub minimax_video: WindowLimit,
    pub stability: WindowLimit,
}

impl FakeLimits {
    /// The published limits of a small paid tier: gpt-4o-mini 500 RPM / 200k TPM,
    /// gpt-image-1 5 images/min, MiniMax image-01 10 RPM and Hailuo 5 RPM, Stability 150 / 10 s.
    pub fn published() -> Self {
        FakeLimits {
            openai_chat: WindowLimit::per_minute(500),
            openai_chat_tokens: Some(WindowLimit::per_minute(200_000)),
            openai_images: WindowLimit::per_minute(5),
            minimax_images: WindowLimit::per_minute(10),
            minimax_video: WindowLimit::per_minute(5),
            stability: WindowLimit {
                limit: 150,
                window: Duration::from_secs(10),
            },
        }
    }

    /// Every lane at `limit` per `window`, no token limit (tests and benchmarks).
    pub fn uniform(limit: u32, window: Duration) -> Self {
        let w = WindowLimit { limit, window };
        FakeLimits {
            openai_chat: w,
            openai_chat_tokens: None,
            openai_images: w,
            minimax_images: w,
            minimax_video: w,
            stability: w,
        }
    }

    pub fn lane(&self, lane: FakeLane) -> WindowLimit {
        match lane {
            FakeLane::OpenAiChat => self.openai_chat,
            FakeLane::OpenAiImages => self.openai_images,
            FakeLane::MiniMaxImages => self.minimax_images,
            FakeLane::MiniMaxVideo => self.minimax_video,
            FakeLane::StabilityImages => self.stability,
        }
    }
}

impl Default for FakeLimits {
    fn default() -> Self {
        FakeLimits::published()
    }
}

/// Injected failures.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct FailurePlan {
    /// Share of admitted requests answered with a 500.
    pub error_rate: f64,
    /// Share of admitted requests that hang for `hang` (the client times out).
    pub timeout_rate: f64,
    /// Share of admitted requests rejected by "moderation".
    pub content_reject_rate: f64,
    /// Keys answered as invalid (401 / MiniMax 1004 / Stability 401).
    pub bad_keys: HashSet<String>,
    /// Keys out of money (OpenAI `insufficient_quota`, MiniMax 1008, Stability 402).
    pub no_quota_keys: HashSet<String>,
    /// How long a hanging request hangs before it gets a 504 (unless the fake shuts down).
    pub hang: Duration,
}

/// What the fake does to one request instead of answering it.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    ServerError,
    Hang,
    Content,
    Quota,
    RateLimit,
    BadRequest,
    BadKey,
    /// MiniMax only: HTTP 200 with this `base_resp.status_code`.
    MiniMaxCode(i64),
    /// Stability only: a 200 image with `finish-reason: CONTENT_FILTERED`.
    Filtered,
}

impl Failure {
    /// `fake:500`, `fake:timeout`, `fake:content`, `fake:quota`, `fake:429`, `fake:400`,
    /// `fake:badkey`, `fake:filtered`, `fake:minimax=<code>` anywhere in a prompt.
    pub fn from_marker(text: &str) -> Option<Failure> {
        let start = text.find("fake:")? + 5;
        let word: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '=' || *c == '_')
            .collect();
        Some(match word.as_str() {
            "500" => Failure::ServerError,
            "timeout" => Failure::Hang,
            "content" => Failure::Content,
            "quota" => Failure::Quota,
            "429" => Failure::RateLimit,
            "400" => Failure::BadRequest,
            "badkey" => Failure::BadKey,
            "filtered" => Failure::Filtered,
            w => Failure::MiniMaxCode(w.strip_prefix("minimax=")?.parse().ok()?),
        })
    }
}

#[derive(Debug, Clone)]
pub struct FakeProvidersConfig {
    pub latency: LatencyDist,
    pub limits: FakeLimits,
    pub failures: FailurePlan,
    /// Time a video task spends in each of Preparing, Queueing and Processing.
    pub video_step: Duration,
    /// Words in a chat answer (one SSE delta per word).
    pub chat_words: usize,
    /// Pause between two SSE chunks of a streamed chat answer.
    pub stream_gap: Duration,
    /// Seeds latency and random failures.
    pub seed: u64,
    /// OpenAI lanes: a burst allowance of this many requests (a token bucket refilled at the
    /// lane's limit per window) enforced on top of the window and reported in the request
    /// headers instead of the window's remaining (limit = the allowance, reset = until the
    /// bucket is full).
    pub burst_allowance: Option<u32>,
}

impl Default for FakeProvidersConfig {
    fn default() -> Self {
        FakeProvidersConfig {
            latency: LatencyDist::Fixed(Duration::from_millis(20)),
            limits: FakeLimits::published(),
            failures: FailurePlan {
                hang: Duration::from_secs(300),
                ..FailurePlan::default()
            },
            video_step: Duration::from_secs(2),
            chat_words: 12,
            stream_gap: Duration::from_millis(5),
            seed: 1,
            burst_allowance: None,
        }
    }
}

/// Counters of one key.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct KeyCounts {
    /// Answered successfully.
    pub ok: u64,
    /// Answered 429 (or MiniMax 1002) because the key was over its limit.
    pub rate_limited: u64,
    /// Answered with an injected failure (500, hang, moderation, scripted codes).
    pub errors: u64,
    /// Refused as a bad key or a key without quota (not counted against the limits).
    pub auth_failures: u64,
    /// Asked for a video task or file the key does not own (or that does not exist).
    pub not_found: u64,
}

/// Counters of the whole fake.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct FakeStats {
    /// Keyed by `provider:key` (fake keys only).
    pub per_key: BTreeMap<String, KeyCounts>,
    pub total_ok: u64,
    /// 429s from the limits (scripted `fake:429` answers are counted as errors, not here).
    pub total_429: u64,
}

impl FakeStats {
    pub fn key(&self, provider: &str, key: &str) -> KeyCounts {
        self.per_key
            .get(&format!("{provider}:{key}"))
            .cloned()
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn markers() {
        assert_eq!(
            Failure::from_marker("draw a cat fake:500"),
            Some(Failure::ServerError)
        );
        assert_eq!(
            Failure::from_marker("fake:minimax=1026 x"),
            Some(Failure::MiniMaxCode(1026))
        );
        assert_eq!(Failure::from_marker("fake:timeout"), Some(Failure::Hang));
        assert_eq!(Failure::from_marker("fake:nonsense"), None);
        assert_eq!(Failure::from_marker("a cat"), None);
    }

    #[test]
    fn latency_is_seeded() {
        let d = LatencyDist::Uniform {
            min: Duration::from_millis(10),
            max: Duration::from_millis(20),
        };
        let a: Vec<_> = {
            let mut r = StdRng::seed_from_u64(3);
            (0..5).map(|_| d.sample(&mut r)).collect()
        };
        let mut r = StdRng::seed_from_u64(3);
        let b: Vec<_> = (0..5).map(|_| d.sample(&mut r)).collect();
        assert_eq!(a, b);
        assert!(a
            .iter()
            .all(|x| *x >= Duration::from_millis(10) && *x <= Duration::from_millis(20)));
    }
}

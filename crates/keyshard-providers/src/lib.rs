//! keyshard-providers: the OpenAI, MiniMax and Stability clients of one instance, which use
//! every bit of their keys' limits without going over.
//!
//! - [`openai`]: streamed chat through async-openai (with usage), gpt-image-1 images.
//! - [`minimax`]: `image-01` images; Hailuo video create → poll → retrieve → download,
//!   resumable from a stored [`VideoTaskId`]; polls planned by [`render`] (pure: near the
//!   expected render time, and how many video jobs a key needs in flight).
//! - [`stability`]: Stability `core` images.
//! - [`image`]: what every image provider takes and gives ([`AspectRatio`],
//!   [`GeneratedImage`]). [`ProviderKind`] and [`AspectRatio`] are `keyshard-types`'s,
//!   re-exported: the bot's slash choices and its jobs name the same enums.
//! - [`clients`]: [`Providers`], the three clients of one instance with their remaining
//!   [`budget`](Providers::budget) and [`stats`](Providers::stats), and the image fallback
//!   over them ([`ImageProvider`], [`try_next_provider`]).
//! - [`limits`]: per-key limits. A `Lane` (named by its [`LaneKind`]) waits for capacity:
//!   requests and tokens per sliding window, each slot freed a window after its answer, and
//!   GCRA pacing ([`limits::window`]), what the provider reports (`x-ratelimit-*`,
//!   [`limits::reported`]) and its pauses (`Retry-After`), composed in [`limits::policy`]
//!   (all three pure); concurrency; and requests per UTC day ([`limits::daily`]: the limit
//!   check, degrading to memory while the store fails) in a [`DailyStore`]
//!   ([`limits::day_store`]: the trait and its in-memory [`MemoryStore`]).
//! - [`retry`]: the one retry loop (capped, jittered backoff; only `Retryable`/`RateLimited`);
//!   no library underneath retries on its own.
//! - [`health`]: a key out of service after an auth, quota or balance error (probed back in)
//!   and a circuit per provider on a storm of 5xx: pure state machines ([`health::KeyState`],
//!   [`health::Circuit`]) and the [`KeyHealth`] every lane of a key shares, gated and fed by
//!   [`retry`]; the cluster-wide mark is the caller's ([`KeyHealth::marked_elsewhere`]).
//! - [`error`]: [`ProviderError`] and the pure rules that map each provider's error answers
//!   to an [`ErrorClass`].
//! - [`headers`]: `Retry-After` and OpenAI `x-ratelimit-*` (Go durations).
//! - [`config`]: [`ProviderConfig`], [`KeyLimits`] (window semantics documented there),
//!   [`RetryPolicy`] and the per-provider configs; [`secret`]: [`Secret`].
//!
//! Imports run one way: `clients` → the provider modules → {`image`, `limits`, `render`,
//! `retry`, `http`, `headers`, `config`, `error`}. This crate does no storage I/O of its own: whatever
//! must outlive the process (the daily counts) goes through a trait the caller implements.

pub mod clients;
pub mod config;
pub mod error;
pub mod headers;
pub mod health;
mod http;
pub mod image;
pub mod limits;
pub mod minimax;
pub mod openai;
pub mod render;
pub mod retry;
pub mod secret;
pub mod stability;

pub use clients::{try_next_provider, ImageProvider, Providers};
pub use config::{
    KeyLimits, MiniMaxConfig, OpenAiConfig, ProviderConfig, RetryPolicy, StabilityConfig,
};
pub use error::{ErrorClass, ProviderError, ProviderKind};
pub use health::{HealthPolicy, HealthView, KeyHealth};
pub use image::{AspectRatio, GeneratedImage};
pub use limits::{
    DailyStore, KeyDay, LaneBudget, LaneKind, LaneTicket, MemoryStore, ProviderStats, StoreError,
    UtcDay,
};
pub use minimax::{MiniMax, VideoFile, VideoStatus, VideoTaskId};
pub use openai::{ChatEvent, ChatMessage, ChatRole, ChatStream, OpenAi};
pub use secret::Secret;
pub use stability::Stability;

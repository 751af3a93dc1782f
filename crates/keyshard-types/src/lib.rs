//! keyshard-types: the plain data every layer shares, so that a value is spelled once and
//! means the same in the slash command, the job on the Redis stream, and the provider call.
//!
//! - [`choices`]: the [`Choices`] trait of the enums a user picks from a slash option (the
//!   bot registers them as string choices; the strings are also their names on the wire).
//! - [`provider`]: [`ProviderKind`], which AI provider.
//! - [`ratio`]: [`AspectRatio`], the image shapes every image provider can draw.
//! - [`job`]: [`JobKind`] and the typed job arguments [`JobArgs`] ([`ChatArgs`],
//!   [`ImageArgs`], [`VideoArgs`]), decoded according to the kind with
//!   [`JobArgs::deserialize_for`].
//!
//! No I/O and no logic beyond naming and decoding: what a provider makes of a ratio
//! (gpt-image-1's sizes) is provider knowledge and stays in `keyshard-providers`; how a job is
//! queued stays in `keyshard-cluster`. Depends on serde only.

pub mod choices;
pub mod job;
pub mod provider;
pub mod ratio;

pub use choices::Choices;
pub use job::{ChatArgs, ImageArgs, JobArgs, JobKind, VideoArgs};
pub use provider::ProviderKind;
pub use ratio::AspectRatio;

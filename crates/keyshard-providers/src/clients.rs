//! The provider clients of one instance ([`Providers`]) and the image fallback over them:
//! [`ImageProvider`] and [`try_next_provider`] try the image providers in the bot's order.
//!
//! This module imports the provider modules, never the reverse: the types the providers share
//! ([`AspectRatio`], [`GeneratedImage`]) live in [`image`](crate::image).

use std::sync::Arc;

use crate::config::{self, MiniMaxConfig, OpenAiConfig, StabilityConfig};
use crate::error::{ErrorClass, ProviderError, ProviderKind};
use crate::image::{AspectRatio, GeneratedImage};
use crate::limits::ticket::reserve_first;
use crate::limits::{DailyStore, LaneBudget, LaneKind, LaneTicket, ProviderStats};
use crate::minimax::MiniMax;
use crate::openai::OpenAi;
use crate::stability::Stability;

/// The provider clients of one instance; a provider without a key is `None`.
#[derive(Clone, Debug, Default)]
pub struct Providers {
    pub openai: Option<OpenAi>,
    pub minimax: Option<MiniMax>,
    pub stability: Option<Stability>,
}

impl Providers {
    /// Builds the configured clients. Their requests per day are counted in `daily_store`
    /// (shared by all of them); `None` counts in this process only
    /// ([`MemoryStore`](crate::limits::MemoryStore)).
    pub fn new(
        openai: Option<OpenAiConfig>,
        minimax: Option<MiniMaxConfig>,
        stability: Option<StabilityConfig>,
        daily_store: Option<Arc<dyn DailyStore>>,
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
                config::validate(kind, c)?;
            }
        }
        Ok(Providers {
            openai: openai
                .map(|c| OpenAi::new(c, daily_store.clone()))
                .transpose()?,
            minimax: minimax
                .map(|c| MiniMax::new(c, daily_store.clone()))
                .transpose()?,
            stability: stability
                .map(|c| Stability::new(c, daily_store))
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

    /// Waits until one of the `wanted` lanes (in order of preference; lanes without a key
    /// are skipped) can send at once, and reserves that send for the job about to be picked
    /// ([`LaneTicket`]). `None` at once when none is usable (no key, or every key out of
    /// service): the job's own path then moves it or tells the user.
    pub async fn reserve(&self, wanted: &[(ProviderKind, LaneKind)]) -> Option<LaneTicket> {
        let lanes: Vec<_> = wanted
            .iter()
            .filter_map(|(provider, kind)| match provider {
                ProviderKind::OpenAi => self.openai.as_ref()?.lane(*kind),
                ProviderKind::MiniMax => self.minimax.as_ref()?.lane(*kind),
                ProviderKind::Stability => self.stability.as_ref()?.lane(*kind),
            })
            .collect();
        reserve_first(&lanes).await
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

    /// The health of every configured key (one key per provider).
    pub fn health(&self) -> Vec<crate::health::KeyHealth> {
        let mut out = Vec::new();
        out.extend(self.openai.as_ref().map(|p| p.health()));
        out.extend(self.minimax.as_ref().map(|p| p.health()));
        out.extend(self.stability.as_ref().map(|p| p.health()));
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

/// One of the image providers, for trying them in order.
#[derive(Clone, Debug)]
pub enum ImageProvider {
    OpenAi(OpenAi),
    MiniMax(MiniMax),
    Stability(Stability),
}

impl ImageProvider {
    pub fn kind(&self) -> ProviderKind {
        match self {
            ImageProvider::OpenAi(_) => ProviderKind::OpenAi,
            ImageProvider::MiniMax(_) => ProviderKind::MiniMax,
            ImageProvider::Stability(_) => ProviderKind::Stability,
        }
    }

    pub async fn image(
        &self,
        prompt: &str,
        ratio: AspectRatio,
    ) -> Result<GeneratedImage, ProviderError> {
        match self {
            ImageProvider::OpenAi(p) => p.image(prompt, ratio).await,
            ImageProvider::MiniMax(p) => p.image(prompt, ratio).await,
            ImageProvider::Stability(p) => p.image(prompt, ratio).await,
        }
    }
}

/// Whether, after `err` from one image provider, the next one should be tried: yes when this
/// provider or key cannot serve now; no when the prompt itself is the problem (asking another
/// provider to draw what one refused would be shopping for a laxer filter).
pub fn try_next_provider(err: &ProviderError) -> bool {
    matches!(
        err.class,
        ErrorClass::Retryable | ErrorClass::RateLimited | ErrorClass::KeyProblem
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallthrough_rule() {
        let e = |class| ProviderError::new(ProviderKind::MiniMax, class, "x");
        assert!(try_next_provider(&e(ErrorClass::KeyProblem)));
        assert!(try_next_provider(&e(ErrorClass::RateLimited)));
        assert!(!try_next_provider(&e(ErrorClass::ContentRejected)));
        assert!(!try_next_provider(&e(ErrorClass::BadRequest)));
    }
}

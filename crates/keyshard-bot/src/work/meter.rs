//! What a job's run spent, for its usage-ledger row: [`Meter`] (the provider and model that
//! served or failed, the key's fingerprint, tokens, images, video seconds, time in provider
//! calls, when the run started) and [`Catalog`] (this instance's models and key fingerprints,
//! from its configuration). Plain data; the row is built in `Worker::finish`.

use std::time::Duration;

use keyshard_providers::ProviderKind;

use crate::clock::unix_ms;
use crate::config::Config;

/// What a provider is used for, which picks the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    Chat,
    Image,
    Video,
}

/// The model Stability's `core` endpoint stands for in the price table (`stability/core`).
const STABILITY_MODEL: &str = "core";

/// One provider's key fingerprint and models on this instance.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Models {
    key_fp: String,
    chat: Option<String>,
    image: String,
    video: Option<String>,
}

/// This instance's providers as the ledger names them: the key by its fingerprint (never the
/// key), the model of each use.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    openai: Option<Models>,
    minimax: Option<Models>,
    stability: Option<Models>,
}

impl Catalog {
    pub fn from_config(c: &Config) -> Catalog {
        Catalog {
            openai: c.openai.as_ref().map(|o| Models {
                key_fp: o.common.api_key.fingerprint(),
                chat: Some(o.chat_model.clone()),
                image: o.image_model.clone(),
                video: None,
            }),
            minimax: c.minimax.as_ref().map(|m| Models {
                key_fp: m.common.api_key.fingerprint(),
                chat: None,
                image: m.image_model.clone(),
                video: Some(m.video_model.clone()),
            }),
            stability: c.stability.as_ref().map(|s| Models {
                key_fp: s.common.api_key.fingerprint(),
                chat: None,
                image: STABILITY_MODEL.into(),
                video: None,
            }),
        }
    }

    fn of(&self, kind: ProviderKind) -> Option<&Models> {
        match kind {
            ProviderKind::OpenAi => self.openai.as_ref(),
            ProviderKind::MiniMax => self.minimax.as_ref(),
            ProviderKind::Stability => self.stability.as_ref(),
        }
    }
}

/// What one run of a job spent; see the module docs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Meter {
    /// When this run started (Unix ms): a rescued job's is the rescuer's run.
    pub started_ms: u64,
    pub provider: Option<ProviderKind>,
    pub model: Option<String>,
    pub key_fp: Option<String>,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub images: u32,
    pub video_secs: u32,
    /// Time spent in provider calls (for a video, from the task's creation to its file).
    pub provider_ms: Option<u64>,
}

impl Meter {
    /// A run starting now.
    pub fn start() -> Meter {
        Meter {
            started_ms: unix_ms(),
            ..Meter::default()
        }
    }

    /// The provider this run called for `use_`, with this instance's model and key for it.
    pub fn called(&mut self, catalog: &Catalog, kind: ProviderKind, use_: Use) {
        self.provider = Some(kind);
        let models = catalog.of(kind);
        self.key_fp = models.map(|m| m.key_fp.clone());
        self.model = models.and_then(|m| match use_ {
            Use::Chat => m.chat.clone(),
            Use::Image => Some(m.image.clone()),
            Use::Video => m.video.clone(),
        });
    }

    /// Adds time spent waiting for the provider.
    pub fn spent(&mut self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.provider_ms = Some(self.provider_ms.unwrap_or(0).saturating_add(ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn the_catalog_names_models_and_key_fingerprints_never_keys() {
        let env: HashMap<String, String> = [
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("OPENAI_API_KEY", "sk-live-secret"),
            ("OPENAI_CHAT_MODEL", "gpt-4.1-mini"),
            ("STABILITY_API_KEY", "sk-stab-secret"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let catalog = Catalog::from_config(&Config::from_map(&env).unwrap());
        let mut m = Meter::start();
        m.called(&catalog, ProviderKind::OpenAi, Use::Chat);
        assert_eq!(m.model.as_deref(), Some("gpt-4.1-mini"));
        let fp = m.key_fp.clone().unwrap();
        assert_eq!(fp.len(), 12);
        assert_ne!(fp, "sk-live-secret");
        m.called(&catalog, ProviderKind::Stability, Use::Image);
        assert_eq!(m.model.as_deref(), Some("core"));
        // No key for MiniMax here: the row names the provider only.
        m.called(&catalog, ProviderKind::MiniMax, Use::Video);
        assert_eq!((m.model.as_deref(), m.key_fp.as_deref()), (None, None));
        m.spent(Duration::from_millis(30));
        m.spent(Duration::from_millis(12));
        assert_eq!(m.provider_ms, Some(42));
    }
}

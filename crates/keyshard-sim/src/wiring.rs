//! The fake providers plugged into a scenario: every instance gets the fakes' base URLs, its
//! own fake keys and the keys' limits; the report gets the capacity and the 429 count.
//!
//! Capacity is the largest total rate the keys sustain for the mix: with command shares
//! `w_c / W` (W the whole mix's weight, `/핑` included, since throughput counts every answer),
//! `capacity = min over provider commands c of N · cap_c · W / w_c`, where `cap_c` is one key
//! set's limit for that command per minute.

use std::sync::Arc;

use crate::providers::{FakeLane, FakeProviders, FakeProvidersConfig};
use crate::scenario::{CommandKind, Mix, ProviderFakes};

/// The fake providers as a scenario uses them.
pub struct ScenarioProviders {
    fakes: FakeProviders,
    /// The lanes `/이미지` spreads over. All three image providers by default (DESIGN.md §4);
    /// narrow it when the bot is configured to use fewer.
    pub image_lanes: Vec<FakeLane>,
}

impl ScenarioProviders {
    pub async fn start(cfg: FakeProvidersConfig) -> anyhow::Result<Self> {
        Ok(Self {
            fakes: FakeProviders::start(cfg).await?,
            image_lanes: vec![
                FakeLane::MiniMaxImages,
                FakeLane::StabilityImages,
                FakeLane::OpenAiImages,
            ],
        })
    }

    /// As a shareable [`ProviderFakes`] for [`crate::scenario::ScenarioConfig::providers`].
    pub fn shared(self) -> Arc<dyn ProviderFakes> {
        Arc::new(self)
    }

    pub fn fakes(&self) -> &FakeProviders {
        &self.fakes
    }

    /// Instance `instance`'s fake key for `provider`: distinct per instance, so the fakes
    /// count (and limit) each instance's key separately, as the real providers would.
    pub fn key(provider: &str, instance: u32) -> String {
        format!("sim-{provider}-key-{instance}")
    }

    /// One key set's limit for a command, per minute; `None` for commands with no provider.
    fn per_key_capacity(&self, kind: CommandKind) -> Option<f64> {
        let lane = |l| self.fakes.capacity_per_min(l, 1);
        match kind {
            CommandKind::Chat => Some(lane(FakeLane::OpenAiChat)),
            CommandKind::Image => Some(self.image_lanes.iter().map(|l| lane(*l)).sum()),
            CommandKind::Video => Some(lane(FakeLane::MiniMaxVideo)),
            _ => None,
        }
    }
}

impl ProviderFakes for ScenarioProviders {
    fn instance_env(&self, instance: u32) -> Vec<(String, String)> {
        let limits = self.fakes.limits();
        let rpm = |l: crate::providers::WindowLimit| (l.per_min().floor() as u64).to_string();
        let mut env = vec![
            ("OPENAI_BASE_URL".into(), self.fakes.openai_base()),
            ("OPENAI_API_KEY".into(), Self::key("openai", instance)),
            ("OPENAI_RPM".into(), rpm(limits.openai_chat)),
            ("MINIMAX_BASE_URL".into(), self.fakes.minimax_base()),
            ("MINIMAX_API_KEY".into(), Self::key("minimax", instance)),
            ("MINIMAX_RPM".into(), rpm(limits.minimax_images)),
            ("MINIMAX_VIDEO_RPM".into(), rpm(limits.minimax_video)),
            ("STABILITY_BASE_URL".into(), self.fakes.stability_base()),
            ("STABILITY_API_KEY".into(), Self::key("stability", instance)),
            ("STABILITY_RPM".into(), rpm(limits.stability)),
        ];
        if let Some(tpm) = limits.openai_chat_tokens {
            env.push(("OPENAI_TPM".into(), rpm(tpm)));
        }
        env
    }

    fn capacity_per_min(&self, mix: &Mix, instances: u32) -> Option<f64> {
        let total: f64 = mix.0.iter().map(|(_, w)| w).sum();
        mix.0
            .iter()
            .filter_map(|(k, w)| {
                let cap = self.per_key_capacity(*k)?;
                Some(f64::from(instances) * cap * total / w)
            })
            .min_by(f64::total_cmp)
            .map(f64::round)
    }

    fn provider_429(&self) -> u64 {
        self.fakes.stats().total_429
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::FakeLimits;
    use std::time::Duration;

    #[tokio::test]
    async fn capacity_is_the_tightest_command_scaled_by_its_share() {
        let p = ScenarioProviders::start(FakeProvidersConfig {
            limits: FakeLimits::uniform(120, Duration::from_secs(60)),
            ..FakeProvidersConfig::default()
        })
        .await
        .unwrap();
        // chat 120/key, image 3 × 120/key, video 120/key; 4 instances.
        let mix: Mix = "chat=1,image=1,video=2".parse().unwrap();
        // video: 4 · 120 · 4 / 2 = 960; chat: 4 · 120 · 4 = 1920; image: 4 · 360 · 4 = 5760.
        assert_eq!(p.capacity_per_min(&mix, 4), Some(960.0));
        assert_eq!(p.capacity_per_min(&"ping=1".parse().unwrap(), 4), None);
        let env = p.instance_env(3);
        assert!(env.contains(&("OPENAI_API_KEY".into(), "sim-openai-key-3".into())));
        assert!(env.contains(&("MINIMAX_VIDEO_RPM".into(), "120".into())));
        assert_eq!(p.provider_429(), 0);
    }
}

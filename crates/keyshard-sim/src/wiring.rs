//! The fake providers plugged into a scenario: every instance gets the fakes' base URLs, its
//! own fake keys and the keys' limits; the report gets the capacity and the 429 count.
//!
//! Capacity is the largest total rate the keys sustain for the mix: with command shares
//! `w_c / W` (W the whole mix's weight, `/핑` included, since throughput counts every answer),
//! `capacity = min over provider commands c of N · cap_c · W / w_c`, where `cap_c` is one key
//! set's limit for that command per minute.

use std::sync::Arc;

use crate::providers::{FakeLane, FakeProviders, FakeProvidersConfig};
use crate::report::LaneUse;
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
        Self::start_on(cfg, ([127, 0, 0, 1], 0).into(), None).await
    }

    /// [`Self::start`] on `bind`, giving out `advertise` in its URLs (see
    /// [`FakeProviders::start_on`]).
    pub async fn start_on(
        cfg: FakeProvidersConfig,
        bind: std::net::SocketAddr,
        advertise: Option<&str>,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            fakes: FakeProviders::start_on(cfg, bind, advertise).await?,
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

    /// The lanes a command's jobs use; empty for commands with no provider.
    fn lanes(&self, kind: CommandKind) -> Vec<FakeLane> {
        match kind {
            CommandKind::Chat => vec![FakeLane::OpenAiChat],
            CommandKind::Image => self.image_lanes.clone(),
            CommandKind::Video => vec![FakeLane::MiniMaxVideo],
            _ => Vec::new(),
        }
    }

    /// One key set's limit for a command, per minute; `None` for commands with no provider.
    fn per_key_capacity(&self, kind: CommandKind) -> Option<f64> {
        let lanes = self.lanes(kind);
        (!lanes.is_empty()).then(|| {
            lanes
                .iter()
                .map(|l| self.fakes.capacity_per_min(*l, 1))
                .sum()
        })
    }
}

impl ProviderFakes for ScenarioProviders {
    fn instance_env(&self, instance: u32) -> Vec<(String, String)> {
        let limits = self.fakes.limits();
        // Each provider's limits go over as "requests per window" with the window itself
        // (`*_WINDOW_SECS`), exactly as the fake counts them; a lane with another window than
        // its provider's main one is converted to that window, rounding down.
        let per = |l: crate::providers::WindowLimit, window: std::time::Duration| {
            ((f64::from(l.limit) * window.as_secs_f64() / l.window.as_secs_f64()).floor() as u64)
                .to_string()
        };
        let secs = |w: std::time::Duration| w.as_secs().max(1).to_string();
        let openai_window = limits.openai_chat.window;
        let minimax_window = limits.minimax_images.window;
        let mut env = vec![
            ("OPENAI_BASE_URL".into(), self.fakes.openai_base()),
            ("OPENAI_API_KEY".into(), Self::key("openai", instance)),
            ("OPENAI_RPM".into(), limits.openai_chat.limit.to_string()),
            (
                "OPENAI_IMAGE_RPM".into(),
                per(limits.openai_images, openai_window),
            ),
            ("OPENAI_WINDOW_SECS".into(), secs(openai_window)),
            ("MINIMAX_BASE_URL".into(), self.fakes.minimax_base()),
            ("MINIMAX_API_KEY".into(), Self::key("minimax", instance)),
            (
                "MINIMAX_RPM".into(),
                limits.minimax_images.limit.to_string(),
            ),
            (
                "MINIMAX_VIDEO_RPM".into(),
                per(limits.minimax_video, minimax_window),
            ),
            ("MINIMAX_WINDOW_SECS".into(), secs(minimax_window)),
            ("STABILITY_BASE_URL".into(), self.fakes.stability_base()),
            ("STABILITY_API_KEY".into(), Self::key("stability", instance)),
            ("STABILITY_RPM".into(), limits.stability.limit.to_string()),
            (
                "STABILITY_WINDOW_SECS".into(),
                secs(limits.stability.window),
            ),
            // The fake's videos render in seconds, not minutes: the instances size their video
            // jobs and start polling by it, as an operator sets it for the real model.
            (
                "MINIMAX_VIDEO_RENDER_SECS".into(),
                self.fakes.video_render().as_secs_f64().to_string(),
            ),
        ];
        match limits.openai_chat_tokens {
            Some(tpm) => env.push(("OPENAI_TPM".into(), per(tpm, openai_window))),
            // No token limit at the fake: lift the client's default (200k per minute) so
            // tokens never bind before requests do.
            None => env.push(("OPENAI_TPM".into(), u32::MAX.to_string())),
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

    fn set_revoked(&self, instance: u32, provider: &str, revoked: bool) {
        self.fakes
            .set_revoked(&ScenarioProviders::key(provider, instance), revoked);
    }

    fn revocations(
        &self,
        instances: u32,
        start: std::time::Instant,
    ) -> Vec<crate::report::RevokedKey> {
        let secs = |t: tokio::time::Instant| {
            let t = t.into_std();
            if t >= start {
                (t - start).as_secs_f64()
            } else {
                -(start - t).as_secs_f64()
            }
        };
        let mut out = Vec::new();
        for provider in ["openai", "minimax", "stability"] {
            for i in 1..=instances {
                let Some(r) = self.fakes.revocation(&ScenarioProviders::key(provider, i)) else {
                    continue;
                };
                out.push(crate::report::RevokedKey {
                    key: format!("{provider}:{i}"),
                    revoked_s: secs(r.revoked_at),
                    restored_s: r.restored_at.map(secs),
                    refused: r.refused,
                    back_in_use_after_s: r
                        .restored_at
                        .zip(r.back_in_use_at)
                        .map(|(from, to)| (to - from).as_secs_f64()),
                });
            }
        }
        out
    }

    fn lane_use(
        &self,
        mix: &Mix,
        instances: u32,
        from: std::time::Instant,
        to: std::time::Instant,
    ) -> Vec<LaneUse> {
        let mut lanes: Vec<FakeLane> = mix.0.iter().flat_map(|(k, _)| self.lanes(*k)).collect();
        lanes.sort();
        lanes.dedup();
        let secs = to.saturating_duration_since(from).as_secs_f64();
        lanes
            .into_iter()
            .map(|lane| {
                let requests = self.fakes.admitted_between(lane, from.into(), to.into());
                let capacity = self.fakes.capacity_per_min(lane, instances as usize) * secs / 60.0;
                // Any stretch of `secs` lies within ⌈secs ÷ window⌉ windows of a key, and a
                // sliding window admits at most its limit in each.
                let limit = self.fakes.limits().lane(lane);
                let window = limit.window.as_secs_f64();
                let windows = (secs / window).ceil().max(1.0);
                let ceiling = f64::from(instances) * f64::from(limit.limit) * windows;
                LaneUse {
                    lane: lane.name().to_owned(),
                    requests,
                    capacity: (capacity * 10.0).round() / 10.0,
                    utilization: if capacity > 0.0 {
                        (requests as f64 / capacity * 1000.0).round() / 1000.0
                    } else {
                        0.0
                    },
                    ceiling,
                    key_window_s: window,
                }
            })
            .collect()
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
        assert!(env.contains(&("OPENAI_IMAGE_RPM".into(), "120".into())));
        assert!(env.contains(&("STABILITY_WINDOW_SECS".into(), "60".into())));
        assert_eq!(p.provider_429(), 0);
    }

    #[tokio::test]
    async fn lane_use_covers_the_mix_lanes_against_the_keys_allowance() {
        let p = ScenarioProviders::start(FakeProvidersConfig {
            limits: FakeLimits::uniform(120, Duration::from_secs(60)),
            ..FakeProvidersConfig::default()
        })
        .await
        .unwrap();
        let from = std::time::Instant::now();
        let to = from + Duration::from_secs(30);
        let lanes = p.lane_use(&"chat=1,image=3".parse().unwrap(), 4, from, to);
        let names: Vec<&str> = lanes.iter().map(|l| l.lane.as_str()).collect();
        assert_eq!(
            names,
            [
                "openai_chat",
                "openai_images",
                "minimax_images",
                "stability_images"
            ]
        );
        // 4 keys at 120/min for 30 s; nothing was asked yet. Within one 60 s window each
        // key may admit its whole 120 at once.
        assert!(lanes
            .iter()
            .all(|l| l.capacity == 240.0 && l.requests == 0 && l.utilization == 0.0));
        assert!(lanes
            .iter()
            .all(|l| l.ceiling == 480.0 && l.key_window_s == 60.0));
        let long = p.lane_use(
            &"chat=1".parse().unwrap(),
            4,
            from,
            from + Duration::from_secs(90),
        );
        assert_eq!((long[0].capacity, long[0].ceiling), (720.0, 960.0));
    }

    #[tokio::test]
    async fn published_limits_keep_their_windows() {
        let p = ScenarioProviders::start(FakeProvidersConfig::default())
            .await
            .unwrap();
        let env = p.instance_env(1);
        let has = |k: &str, v: &str| env.contains(&(k.to_string(), v.to_string()));
        // Stability counts 150 per 10 s: passing 900 per minute would let a burst through.
        assert!(
            has("STABILITY_RPM", "150") && has("STABILITY_WINDOW_SECS", "10"),
            "{env:?}"
        );
        assert!(
            has("OPENAI_RPM", "500") && has("OPENAI_IMAGE_RPM", "5") && has("OPENAI_TPM", "200000")
        );
        assert!(
            has("MINIMAX_RPM", "10")
                && has("MINIMAX_VIDEO_RPM", "5")
                && has("MINIMAX_WINDOW_SECS", "60")
        );
    }
}

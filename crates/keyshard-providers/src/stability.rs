//! Stability AI: `POST /v2beta/stable-image/generate/core`, multipart in, raw image out
//! (`accept: image/*`); a JSON answer (`{"image": base64, "finish_reason"}`) is accepted too.

use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::Value;

use crate::config::{self, StabilityConfig};
use crate::error::{classify_stability, ErrorClass, ProviderError, ProviderKind};
use crate::headers::RateHints;
use crate::http;
use crate::image::{AspectRatio, GeneratedImage};
use crate::limits::{DailyStore, Lane, LaneBudget, LaneKind, ProviderStats, Receipt, StatsCell};
use crate::retry::{self, AttemptError};

const P: ProviderKind = ProviderKind::Stability;

/// The Stability client of one key. Cheap to clone.
#[derive(Clone)]
pub struct Stability {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: StabilityConfig,
    http: reqwest::Client,
    images: Arc<Lane>,
    stats: Arc<StatsCell>,
}

impl std::fmt::Debug for Stability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stability")
            .field("base_url", &self.inner.cfg.common.base_url)
            .finish_non_exhaustive()
    }
}

impl Stability {
    pub fn new(
        cfg: StabilityConfig,
        daily_store: Option<Arc<dyn DailyStore>>,
    ) -> Result<Self, ProviderError> {
        let common = &cfg.common;
        config::validate(P, common)?;
        let (daily, stats) = crate::limits::key_parts(P, common, daily_store);
        let images = Lane::new(
            P,
            LaneKind::Images,
            &common.limits,
            common.limits.rpm,
            common.max_wait,
            Some(daily),
            stats.clone(),
        );
        Ok(Stability {
            inner: Arc::new(Inner {
                http: http::client(P)?,
                images,
                stats,
                cfg,
            }),
        })
    }

    /// One `core` image as PNG.
    pub async fn image(
        &self,
        prompt: &str,
        ratio: AspectRatio,
    ) -> Result<GeneratedImage, ProviderError> {
        let inner = &self.inner;
        let common = &inner.cfg.common;
        let url = format!("{}/v2beta/stable-image/generate/core", common.base());
        let (bytes, _) = retry::run(&inner.images, 0, common.timeout, &common.retry, |adm| {
            // A multipart form is consumed by sending it: build a new one for every attempt.
            let form = reqwest::multipart::Form::new()
                .text("prompt", prompt.to_owned())
                .text("aspect_ratio", ratio.as_ratio())
                .text("output_format", "png");
            let request = inner
                .http
                .post(&url)
                .bearer_auth(common.api_key.expose())
                .header(reqwest::header::ACCEPT, "image/*")
                .multipart(form);
            inner.attempt(adm.receipt(), request)
        })
        .await?;
        GeneratedImage::new(bytes, P)
    }

    pub fn budget(&self) -> Vec<LaneBudget> {
        vec![self.inner.images.budget()]
    }

    /// The key's lane of `kind`, for a reserved send.
    pub(crate) fn lane(&self, kind: LaneKind) -> Option<Arc<Lane>> {
        (kind == LaneKind::Images).then(|| self.inner.images.clone())
    }

    pub fn stats(&self) -> ProviderStats {
        ProviderStats::from_cell(P, &self.inner.stats)
    }

    /// The key's health (out of service, circuit), shared by all its lanes.
    pub fn health(&self) -> crate::health::KeyHealth {
        self.inner.stats.key_health()
    }
}

impl Inner {
    async fn attempt(
        &self,
        receipt: Receipt,
        request: reqwest::RequestBuilder,
    ) -> Result<Bytes, AttemptError> {
        let answer = http::send(P, request).await?;
        let hints = RateHints::from_headers(&answer.headers);
        receipt.answered(answer.at, &hints);
        let status = answer.status.as_u16();
        let key = self.cfg.common.api_key.expose();
        let is_json = answer
            .headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| ct.starts_with("application/json"));
        if !answer.status.is_success() {
            let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
            let name = parsed.as_ref().and_then(|v| v["name"].as_str());
            let class = classify_stability(status, name);
            let detail = parsed
                .as_ref()
                .map(|v| v["errors"].to_string())
                .unwrap_or_else(|| http::body_text(&answer.body, key));
            return Err(AttemptError {
                from_provider_429: status == 429,
                error: ProviderError::new(
                    P,
                    class,
                    format!(
                        "HTTP {status} {}: {}",
                        name.unwrap_or("-"),
                        http::scrub(&detail, key)
                    ),
                )
                .with_retry_after(hints.blocked_for()),
            });
        }
        let (bytes, finish) = if is_json {
            let v: Value = serde_json::from_slice(&answer.body).map_err(|e| {
                ProviderError::new(P, ErrorClass::Retryable, format!("bad JSON answer: {e}"))
            })?;
            let finish = v["finish_reason"].as_str().map(str::to_owned);
            let b64 = v["image"].as_str().unwrap_or_default();
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    ProviderError::new(P, ErrorClass::Retryable, format!("bad base64: {e}"))
                })?;
            (Bytes::from(bytes), finish)
        } else {
            let finish = answer
                .headers
                .get("finish-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            (answer.body, finish)
        };
        if finish.as_deref() == Some("CONTENT_FILTERED") {
            return Err(ProviderError::new(
                P,
                ErrorClass::ContentRejected,
                "finish-reason CONTENT_FILTERED",
            )
            .into());
        }
        Ok(bytes)
    }
}

//! MiniMax: `image-01` images and Hailuo video (create → poll → retrieve → download).
//!
//! MiniMax reports most errors as HTTP 200 with `base_resp.status_code != 0`; both that and
//! plain HTTP errors are classified. Video tasks are identified by their task id alone, so a
//! task created by one process can be polled and finished by another ([`VideoTaskId`] is
//! what the bot stores in its job).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use serde_json::{json, Value};

use crate::config::{self, KeyLimits, MiniMaxConfig};
use crate::error::{classify_minimax, classify_status, ErrorClass, ProviderError, ProviderKind};
use crate::headers::RateHints;
use crate::http;
use crate::image::{AspectRatio, GeneratedImage};
use crate::limits::{DailyStore, Lane, LaneBudget, LaneKind, ProviderStats, Receipt, StatsCell};
use crate::render::{self, RenderClock};
use crate::retry::{self, AttemptError};

const P: ProviderKind = ProviderKind::MiniMax;

/// Polling and file lookups per window: MiniMax publishes no limit for them; 10 per second
/// keeps a busy bot polling many tasks from hammering the API.
const QUERY_RPM: u32 = 600;

/// Lookups budgeted per video created, when that is more than [`QUERY_RPM`]: the few polls
/// of [`RenderClock`]'s plan (two or three), the file lookup and the download, with room to
/// spare, so polls never queue behind each other and hold their jobs' slots longer.
const LOOKUPS_PER_VIDEO: u32 = 8;
/// The length of every video this client asks Hailuo for, in seconds (what a video is billed
/// by, and what the usage ledger records).
pub const VIDEO_SECONDS: u32 = 6;

/// A MiniMax video task, as stored in a job so that any instance can resume it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct VideoTaskId(pub String);

impl std::fmt::Display for VideoTaskId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a video task is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VideoStatus {
    Preparing,
    Queueing,
    Processing,
    Success { file_id: String },
    Failed(String),
}

impl VideoStatus {
    pub fn is_done(&self) -> bool {
        matches!(self, VideoStatus::Success { .. } | VideoStatus::Failed(_))
    }
}

/// A finished video file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VideoFile {
    pub file_id: String,
    /// A signed URL: treat it like a secret (it is never logged).
    pub download_url: String,
    pub bytes: Option<u64>,
    pub filename: String,
}

/// The MiniMax client of one key. Cheap to clone.
#[derive(Clone)]
pub struct MiniMax {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: MiniMaxConfig,
    http: reqwest::Client,
    images: Arc<Lane>,
    video: Arc<Lane>,
    query: Arc<Lane>,
    stats: Arc<StatsCell>,
    // A std mutex: a few float operations, never held across an await.
    render: Mutex<RenderClock>,
    /// Renders were seen to take much longer than configured (warned once).
    render_warned: AtomicBool,
}

impl std::fmt::Debug for MiniMax {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MiniMax")
            .field("base_url", &self.inner.cfg.common.base_url)
            .finish_non_exhaustive()
    }
}

impl MiniMax {
    pub fn new(
        cfg: MiniMaxConfig,
        daily_store: Option<Arc<dyn DailyStore>>,
    ) -> Result<Self, ProviderError> {
        let common = &cfg.common;
        config::validate(P, common)?;
        let (daily, stats) = crate::limits::key_parts(P, common, daily_store);
        let lane = |name, limits: &KeyLimits, rpm, daily| {
            Lane::new(P, name, limits, rpm, common.max_wait, daily, stats.clone())
        };
        let images = lane(
            LaneKind::Images,
            &common.limits,
            common.limits.rpm,
            Some(daily.clone()),
        );
        let video = lane(LaneKind::Video, &common.limits, cfg.video_rpm, Some(daily));
        // Polls and downloads are bookkeeping, not generations: they do not count per day,
        // and they have a budget of their own that grows with the creation limit.
        let query_rpm = QUERY_RPM.max(cfg.video_rpm.saturating_mul(LOOKUPS_PER_VIDEO));
        let query = lane(LaneKind::VideoQuery, &common.limits, query_rpm, None);
        Ok(MiniMax {
            inner: Arc::new(Inner {
                http: http::client(P)?,
                images,
                video,
                query,
                stats,
                render: Mutex::new(RenderClock::new(cfg.video_render)),
                render_warned: AtomicBool::new(false),
                cfg,
            }),
        })
    }

    /// One `image-01` image (asked for as base64; a URL answer is downloaded).
    pub async fn image(
        &self,
        prompt: &str,
        ratio: AspectRatio,
    ) -> Result<GeneratedImage, ProviderError> {
        let body = json!({
            "model": self.inner.cfg.image_model,
            "prompt": prompt,
            "aspect_ratio": ratio.as_ratio(),
            "response_format": "base64",
            "n": 1,
        });
        let v = self
            .inner
            .post(&self.inner.images, "/v1/image_generation", body)
            .await?;
        let data = &v["data"];
        if let Some(b64) = data["image_base64"].get(0).and_then(Value::as_str) {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|e| {
                    ProviderError::new(P, ErrorClass::Retryable, format!("bad base64: {e}"))
                })?;
            return GeneratedImage::new(Bytes::from(bytes), P);
        }
        if let Some(url) = data["image_urls"].get(0).and_then(Value::as_str) {
            return GeneratedImage::new(self.download(url).await?, P);
        }
        // success_count 0: MiniMax filtered every image without an error code.
        Err(ProviderError::new(
            P,
            ErrorClass::ContentRejected,
            format!("no image in the answer (metadata {})", v["metadata"]),
        ))
    }

    /// Starts a video task; store the id to resume it anywhere.
    pub async fn video_create(&self, prompt: &str) -> Result<VideoTaskId, ProviderError> {
        let body = json!({
            "model": self.inner.cfg.video_model,
            "prompt": prompt,
            "duration": VIDEO_SECONDS,
            "resolution": "768P",
        });
        let v = self
            .inner
            .post(&self.inner.video, "/v1/video_generation", body)
            .await?;
        id_field(&v["task_id"])
            .map(VideoTaskId)
            .ok_or_else(|| ProviderError::new(P, ErrorClass::Retryable, "answer without task_id"))
    }

    /// Where the task is now.
    pub async fn video_poll(&self, task: &VideoTaskId) -> Result<VideoStatus, ProviderError> {
        let v = self
            .inner
            .get(
                &self.inner.query,
                "/v1/query/video_generation",
                &[("task_id", &task.0)],
            )
            .await?;
        let status = v["status"].as_str().unwrap_or_default();
        Ok(match status {
            "Preparing" => VideoStatus::Preparing,
            "Queueing" => VideoStatus::Queueing,
            "Processing" => VideoStatus::Processing,
            "Success" => VideoStatus::Success {
                file_id: id_field(&v["file_id"]).ok_or_else(|| {
                    ProviderError::new(P, ErrorClass::Retryable, "Success without file_id")
                })?,
            },
            "Fail" | "Failed" => VideoStatus::Failed(
                v["base_resp"]["status_msg"]
                    .as_str()
                    .unwrap_or("video generation failed")
                    .to_owned(),
            ),
            other => {
                return Err(ProviderError::new(
                    P,
                    ErrorClass::Retryable,
                    format!("unknown video status {other:?}"),
                ))
            }
        })
    }

    /// The finished file's metadata and download URL.
    pub async fn video_file(&self, file_id: &str) -> Result<VideoFile, ProviderError> {
        let v = self
            .inner
            .get(
                &self.inner.query,
                "/v1/files/retrieve",
                &[("file_id", file_id)],
            )
            .await?;
        let file = &v["file"];
        let download_url = file["download_url"]
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                ProviderError::new(P, ErrorClass::Retryable, "file without download_url")
            })?
            .to_owned();
        Ok(VideoFile {
            file_id: id_field(&file["file_id"]).unwrap_or_else(|| file_id.to_owned()),
            download_url,
            bytes: file["bytes"]
                .as_u64()
                .or_else(|| file["bytes"].as_str().and_then(|s| s.parse().ok())),
            filename: file["filename"].as_str().unwrap_or("video.mp4").to_owned(),
        })
    }

    /// How long to wait before polling a task created `age` ago: near the render time the
    /// last tasks took, then every tenth of it, at most `max_gap` apart ([`RenderClock`]).
    /// `polled`: the task was polled before and was still rendering.
    pub fn video_poll_delay(&self, age: Duration, polled: bool, max_gap: Duration) -> Duration {
        self.render().next_poll(age, polled, max_gap)
    }

    /// A task this key created was seen finished `done_age` after its creation, and last
    /// seen rendering at `pending_age`: the render time to expect learns from it.
    pub fn video_rendered(&self, pending_age: Option<Duration>, done_age: Duration) {
        let (expected, configured) = {
            let mut clock = self.render();
            clock.observe(pending_age, done_age);
            (clock.expected(), clock.configured())
        };
        // Twice the configured time: the video slots were sized for the configured one, so
        // the creation limit can no longer be used in full. Said once; the plan adapts anyway.
        if expected > configured * 2 && !self.inner.render_warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                expected_secs = expected.as_secs(),
                configured_secs = configured.as_secs(),
                "video tasks take much longer to render than configured: too few video jobs run at once to use the creation limit; raise the render time setting"
            );
        }
    }

    /// The render time the poll plan expects now.
    pub fn video_render_expected(&self) -> Duration {
        self.render().expected()
    }

    /// How many video jobs this key should run at once to use its creation limit: the
    /// creations of one configured render time (+20 %), plus the lane's concurrency
    /// ([`render::video_slots`]).
    pub fn video_slots(&self) -> usize {
        let c = &self.inner.cfg;
        render::video_slots(
            c.video_rpm,
            c.common.limits.window,
            c.video_render,
            c.common.limits.concurrency,
        )
    }

    fn render(&self) -> std::sync::MutexGuard<'_, RenderClock> {
        self.inner.render.lock().expect("render lock")
    }

    /// Polls every `interval` until the task is done or `deadline` passes; returns the last
    /// status seen (not done when the deadline passed first).
    pub async fn video_wait(
        &self,
        task: &VideoTaskId,
        interval: Duration,
        deadline: Duration,
    ) -> Result<VideoStatus, ProviderError> {
        let until = tokio::time::Instant::now() + deadline;
        loop {
            let status = self.video_poll(task).await?;
            if status.is_done() || tokio::time::Instant::now() + interval > until {
                return Ok(status);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Downloads a file (the signed URL needs no key), bounded by the attempt timeout.
    pub async fn download(&self, url: &str) -> Result<Bytes, ProviderError> {
        let inner = self.inner.clone();
        let common = &inner.cfg.common;
        let (bytes, _) = retry::run(&inner.query, 0, common.timeout, &common.retry, |adm| {
            let request = inner.http.get(url);
            let receipt = adm.receipt();
            async move {
                let answer = http::send(P, request).await?;
                receipt.answered(answer.at, &RateHints::default());
                if answer.status.is_success() {
                    Ok(answer.body)
                } else {
                    Err(ProviderError::new(
                        P,
                        classify_status(answer.status.as_u16()),
                        format!("download: HTTP {}", answer.status.as_u16()),
                    )
                    .into())
                }
            }
        })
        .await?;
        Ok(bytes)
    }

    /// The key's fingerprint ([`crate::Secret::fingerprint`]): tells whether a saved video
    /// task was created with this key, without the key leaving the process.
    pub fn key_fingerprint(&self) -> String {
        self.inner.cfg.common.api_key.fingerprint()
    }

    /// The key's lane of `kind`, for a reserved send.
    pub(crate) fn lane(&self, kind: LaneKind) -> Option<Arc<Lane>> {
        match kind {
            LaneKind::Images => Some(self.inner.images.clone()),
            LaneKind::Video => Some(self.inner.video.clone()),
            LaneKind::VideoQuery => Some(self.inner.query.clone()),
            LaneKind::Chat => None,
        }
    }

    pub fn budget(&self) -> Vec<LaneBudget> {
        vec![
            self.inner.images.budget(),
            self.inner.video.budget(),
            self.inner.query.budget(),
        ]
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
    async fn post(
        &self,
        lane: &Arc<Lane>,
        path: &str,
        body: Value,
    ) -> Result<Value, ProviderError> {
        let url = format!("{}{path}", self.cfg.common.base());
        let common = &self.cfg.common;
        retry::run(lane, 0, common.timeout, &common.retry, |adm| {
            let request = self
                .http
                .post(&url)
                .bearer_auth(common.api_key.expose())
                .json(&body);
            self.exchange(adm.receipt(), request)
        })
        .await
        .map(|(v, _)| v)
    }

    async fn get(
        &self,
        lane: &Arc<Lane>,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Value, ProviderError> {
        let url = format!("{}{path}", self.cfg.common.base());
        let common = &self.cfg.common;
        retry::run(lane, 0, common.timeout, &common.retry, |adm| {
            let request = self
                .http
                .get(&url)
                .query(query)
                .bearer_auth(common.api_key.expose());
            self.exchange(adm.receipt(), request)
        })
        .await
        .map(|(v, _)| v)
    }

    /// One attempt: send, read, classify HTTP errors and `base_resp` errors.
    async fn exchange(
        &self,
        receipt: Receipt,
        request: reqwest::RequestBuilder,
    ) -> Result<Value, AttemptError> {
        let answer = http::send(P, request).await?;
        let hints = RateHints::from_headers(&answer.headers);
        receipt.answered(answer.at, &hints);
        let key = self.cfg.common.api_key.expose();
        let parsed: Option<Value> = serde_json::from_slice(&answer.body).ok();
        let base_code = parsed
            .as_ref()
            .and_then(|v| v["base_resp"]["status_code"].as_i64())
            .filter(|c| *c != 0);
        let status = answer.status.as_u16();
        if !answer.status.is_success() || base_code.is_some() {
            let class = match base_code {
                Some(code) => classify_minimax(code),
                None => classify_status(status),
            };
            let msg = parsed
                .as_ref()
                .and_then(|v| v["base_resp"]["status_msg"].as_str().map(str::to_owned))
                .unwrap_or_else(|| http::body_text(&answer.body, key));
            return Err(AttemptError {
                from_provider_429: class == ErrorClass::RateLimited
                    && (status == 429 || base_code == Some(1002)),
                error: ProviderError::new(
                    P,
                    class,
                    format!(
                        "HTTP {status} base_resp {}: {}",
                        base_code.unwrap_or(0),
                        http::scrub(&msg, key)
                    ),
                )
                .with_retry_after(hints.blocked_for()),
            });
        }
        parsed.ok_or_else(|| {
            ProviderError::new(P, ErrorClass::Retryable, "answer is not JSON").into()
        })
    }
}

/// Ids come as strings or numbers depending on the endpoint and API version.
fn id_field(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_strings_or_numbers() {
        assert_eq!(id_field(&json!("123")), Some("123".into()));
        assert_eq!(
            id_field(&json!(123456789012u64)),
            Some("123456789012".into())
        );
        assert_eq!(id_field(&json!("")), None);
        assert_eq!(id_field(&json!(null)), None);
    }
}

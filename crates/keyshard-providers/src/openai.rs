//! OpenAI: streamed chat through async-openai and gpt-image-1 images.
//!
//! async-openai is given a plain one-attempt HTTP service ([`OneAttempt`]) instead of its
//! default executor, whose retry layer would retry 429/5xx behind keyshard's back. The
//! service also copies each response's status and rate-limit headers into a task-local slot,
//! because async-openai's typed results drop headers.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    ChatCompletionStreamOptions, CreateChatCompletionRequest, CreateChatCompletionRequestArgs,
};
use async_openai::types::images::{CreateImageRequestArgs, Image, ImageModel, ImageSize};
use base64::Engine as _;
use bytes::Bytes;
use futures::stream::{self, BoxStream, StreamExt};

use crate::config::{self, OpenAiConfig};
use crate::error::{classify_openai, classify_status, ErrorClass, ProviderError, ProviderKind};
use crate::headers::RateHints;
use crate::http;
use crate::image::{AspectRatio, GeneratedImage};
use crate::limits::{
    Admission, DailyStore, Lane, LaneBudget, LaneKind, ProviderStats, Receipt, StatsCell,
};
use crate::retry::{self, AttemptError};

const P: ProviderKind = ProviderKind::OpenAi;

/// Who said a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        ChatMessage {
            role,
            content: content.into(),
        }
    }
}

/// One event of a streamed chat answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatEvent {
    /// The next piece of the answer.
    Delta(String),
    /// Token usage of the whole call; the last event when the provider reports it.
    Usage {
        prompt_tokens: u32,
        completion_tokens: u32,
    },
}

/// The stream [`OpenAi::chat_stream`] returns. It holds the key's concurrency slot until it
/// ends or is dropped.
pub type ChatStream = BoxStream<'static, Result<ChatEvent, ProviderError>>;

/// The gpt-image-1 size for `ratio`: it draws three sizes only, so each ratio maps to the
/// closest (3:2 and 16:9 to landscape, 2:3 and 9:16 to portrait).
pub fn size_for(ratio: AspectRatio) -> &'static str {
    match ratio {
        AspectRatio::Square => "1024x1024",
        AspectRatio::Landscape | AspectRatio::Photo => "1536x1024",
        AspectRatio::Portrait | AspectRatio::PhotoPortrait => "1024x1536",
    }
}

/// Token estimate before the call: UTF-8 bytes / 3 plus 4 per message. English runs about 4
/// bytes per token (so this overestimates, which is the safe side), Korean about 3 bytes per
/// token; the estimate is corrected with the reported usage afterwards.
pub fn estimate_prompt_tokens(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| (m.content.len() as u64).div_ceil(3) + 4)
        .sum::<u64>()
        + 3
}

/// Status and rate-limit headers of the response that is being handled in this task.
#[derive(Debug, Clone)]
struct ResponseMeta {
    status: u16,
    hints: RateHints,
    /// When the headers arrived (the lane frees the request's slot a window later).
    at: tokio::time::Instant,
}

type MetaSlot = Arc<Mutex<Option<ResponseMeta>>>;

tokio::task_local! {
    static META: MetaSlot;
}

/// One request, one attempt: builds the request from async-openai's factory, sends it, notes
/// the response's status and headers, and hands the response back untouched.
#[derive(Clone)]
struct OneAttempt {
    http: reqwest::Client,
}

impl tower_service::Service<HttpRequestFactory> for OneAttempt {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let http = self.http.clone();
        Box::pin(async move {
            let request = factory.build().await?;
            let response = http.execute(request).await.map_err(OpenAIError::Reqwest)?;
            let meta = ResponseMeta {
                status: response.status().as_u16(),
                hints: RateHints::from_headers(response.headers()),
                at: tokio::time::Instant::now(),
            };
            // Outside a keyshard call (no slot in scope) there is nobody to tell.
            let _ = META.try_with(|slot| *slot.lock().expect("meta lock") = Some(meta));
            Ok(response)
        })
    }
}

/// The OpenAI client of one key. Cheap to clone.
#[derive(Clone)]
pub struct OpenAi {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: OpenAiConfig,
    client: async_openai::Client<OpenAIConfig>,
    http: reqwest::Client,
    chat: Arc<Lane>,
    images: Arc<Lane>,
    stats: Arc<StatsCell>,
}

impl std::fmt::Debug for OpenAi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAi")
            .field("base_url", &self.inner.cfg.common.base_url)
            .field("chat_model", &self.inner.cfg.chat_model)
            .finish_non_exhaustive()
    }
}

impl OpenAi {
    pub fn new(
        cfg: OpenAiConfig,
        daily_store: Option<Arc<dyn DailyStore>>,
    ) -> Result<Self, ProviderError> {
        let common = &cfg.common;
        config::validate(P, common)?;
        let (daily, stats) = crate::limits::key_parts(P, common, daily_store);
        let http = http::client(P)?;
        let config = OpenAIConfig::new()
            .with_api_base(common.base())
            .with_api_key(common.api_key.expose())
            .with_org_id("")
            .with_project_id("");
        let client = async_openai::Client::build(http.clone(), config)
            .with_http_service(OneAttempt { http: http.clone() });
        let chat = Lane::new(
            P,
            LaneKind::Chat,
            &common.limits,
            common.limits.rpm,
            common.max_wait,
            Some(daily.clone()),
            stats.clone(),
        );
        let mut image_limits = common.limits.clone();
        // Images are charged no tokens: gpt-image limits are in images per minute.
        image_limits.tpm = None;
        let images = Lane::new(
            P,
            LaneKind::Images,
            &image_limits,
            cfg.image_rpm,
            common.max_wait,
            Some(daily),
            stats.clone(),
        );
        Ok(OpenAi {
            inner: Arc::new(Inner {
                cfg,
                client,
                http,
                chat,
                images,
                stats,
            }),
        })
    }

    /// Streams a chat answer: text deltas as they come, then the usage.
    ///
    /// Retries (and waiting for capacity) happen before the first event; an error after the
    /// stream started is yielded as the stream's last item.
    pub async fn chat_stream(
        &self,
        messages: Vec<ChatMessage>,
    ) -> Result<ChatStream, ProviderError> {
        let inner = self.inner.clone();
        let request = chat_request(&inner.cfg, &messages, true)?;
        let estimate =
            estimate_prompt_tokens(&messages) + u64::from(inner.cfg.max_completion_tokens);
        let common = &inner.cfg.common;
        let (stream, admission) = retry::run(
            &inner.chat,
            estimate,
            common.timeout,
            &common.retry,
            |adm| {
                let inner = inner.clone();
                let request = request.clone();
                let receipt = adm.receipt();
                async move {
                    inner
                        .call(receipt, async {
                            inner.client.chat().create_stream(request).await
                        })
                        .await
                }
            },
        )
        .await?;
        Ok(events(
            stream,
            admission,
            common.timeout,
            common.api_key.expose().to_owned(),
        ))
    }

    /// A whole chat answer at once (the stream, collected).
    pub async fn chat(
        &self,
        messages: Vec<ChatMessage>,
    ) -> Result<(String, Option<(u32, u32)>), ProviderError> {
        let mut stream = self.chat_stream(messages).await?;
        let mut text = String::new();
        let mut usage = None;
        while let Some(event) = stream.next().await {
            match event? {
                ChatEvent::Delta(d) => text.push_str(&d),
                ChatEvent::Usage {
                    prompt_tokens,
                    completion_tokens,
                } => usage = Some((prompt_tokens, completion_tokens)),
            }
        }
        Ok((text, usage))
    }

    /// One image from `image_model` (gpt-image models always answer base64).
    pub async fn image(
        &self,
        prompt: &str,
        ratio: AspectRatio,
    ) -> Result<GeneratedImage, ProviderError> {
        let inner = self.inner.clone();
        let request = CreateImageRequestArgs::default()
            .prompt(prompt)
            .model(ImageModel::Other(inner.cfg.image_model.clone()))
            .n(1u8)
            .size(ImageSize::Other(size_for(ratio).to_owned()))
            .build()
            .map_err(|e| ProviderError::new(P, ErrorClass::BadRequest, e.to_string()))?;
        let common = &inner.cfg.common;
        let (response, _admission) =
            retry::run(&inner.images, 0, common.timeout, &common.retry, |adm| {
                let inner = inner.clone();
                let request = request.clone();
                let receipt = adm.receipt();
                async move {
                    inner
                        .call(receipt, async {
                            inner.client.images().generate(request).await
                        })
                        .await
                }
            })
            .await?;
        let image = response.data.first().ok_or_else(|| {
            ProviderError::new(P, ErrorClass::Retryable, "images answer without data")
        })?;
        let bytes = match image.as_ref() {
            Image::B64Json { b64_json, .. } => base64::engine::general_purpose::STANDARD
                .decode(b64_json.as_bytes())
                .map(Bytes::from)
                .map_err(|e| {
                    ProviderError::new(P, ErrorClass::Retryable, format!("bad base64: {e}"))
                })?,
            Image::Url { url, .. } => self.download(url).await?,
        };
        GeneratedImage::new(bytes, P)
    }

    async fn download(&self, url: &str) -> Result<Bytes, ProviderError> {
        let timeout = self.inner.cfg.common.timeout;
        let answer = tokio::time::timeout(timeout, http::send(P, self.inner.http.get(url)))
            .await
            .map_err(|_| ProviderError::timeout(P, timeout))?
            .map_err(|e| e.error)?;
        if !answer.status.is_success() {
            return Err(ProviderError::new(
                P,
                classify_status(answer.status.as_u16()),
                format!("image download: HTTP {}", answer.status.as_u16()),
            ));
        }
        Ok(answer.body)
    }

    pub fn budget(&self) -> Vec<LaneBudget> {
        vec![self.inner.chat.budget(), self.inner.images.budget()]
    }

    /// The key's lane of `kind`, for a reserved send.
    pub(crate) fn lane(&self, kind: LaneKind) -> Option<Arc<Lane>> {
        match kind {
            LaneKind::Chat => Some(self.inner.chat.clone()),
            LaneKind::Images => Some(self.inner.images.clone()),
            LaneKind::Video | LaneKind::VideoQuery => None,
        }
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
    /// Runs one async-openai call with a fresh header slot, reports the answer and its
    /// rate-limit hints to the lane (`receipt`), and classifies a failure.
    async fn call<T>(
        &self,
        receipt: Receipt,
        fut: impl Future<Output = Result<T, OpenAIError>>,
    ) -> Result<T, AttemptError> {
        let slot: MetaSlot = Arc::default();
        let result = META.scope(slot.clone(), fut).await;
        let meta = slot.lock().expect("meta lock").take();
        if let Some(m) = &meta {
            receipt.answered(m.at, &m.hints);
        }
        result.map_err(|e| classify_error(e, meta.as_ref(), self.cfg.common.api_key.expose()))
    }
}

fn chat_request(
    cfg: &OpenAiConfig,
    messages: &[ChatMessage],
    stream: bool,
) -> Result<CreateChatCompletionRequest, ProviderError> {
    let msgs: Vec<ChatCompletionRequestMessage> = messages
        .iter()
        .map(|m| match m.role {
            ChatRole::System => ChatCompletionRequestSystemMessage::from(m.content.as_str()).into(),
            ChatRole::User => ChatCompletionRequestUserMessage::from(m.content.as_str()).into(),
            ChatRole::Assistant => {
                ChatCompletionRequestAssistantMessage::from(m.content.as_str()).into()
            }
        })
        .collect();
    let mut args = CreateChatCompletionRequestArgs::default();
    args.model(cfg.chat_model.clone())
        .messages(msgs)
        .max_completion_tokens(cfg.max_completion_tokens);
    if stream {
        args.stream(true)
            .stream_options(ChatCompletionStreamOptions {
                include_usage: Some(true),
                include_obfuscation: None,
            });
    }
    args.build()
        .map_err(|e| ProviderError::new(P, ErrorClass::BadRequest, e.to_string()))
}

/// Turns async-openai's chunk stream into [`ChatEvent`]s, with an idle timeout between chunks
/// and the token estimate reconciled when the usage chunk arrives.
fn events(
    chunks: async_openai::types::chat::ChatCompletionResponseStream,
    admission: Admission,
    idle: std::time::Duration,
    key: String,
) -> ChatStream {
    struct St {
        chunks: async_openai::types::chat::ChatCompletionResponseStream,
        admission: Option<Admission>,
        idle: std::time::Duration,
        key: String,
    }
    let st = St {
        chunks,
        admission: Some(admission),
        idle,
        key,
    };
    stream::unfold(st, |mut st| async move {
        st.admission.as_ref()?;
        let next = match tokio::time::timeout(st.idle, st.chunks.next()).await {
            Err(_) => Some(Err(ProviderError::new(
                P,
                ErrorClass::Retryable,
                format!("chat stream stalled for {:?}", st.idle),
            ))),
            Ok(None) => None,
            Ok(Some(Err(e))) => Some(Err(classify_error(e, None, &st.key).error)),
            Ok(Some(Ok(chunk))) => {
                let mut out = Vec::new();
                for choice in &chunk.choices {
                    if let Some(text) = &choice.delta.content {
                        if !text.is_empty() {
                            out.push(Ok(ChatEvent::Delta(text.clone())));
                        }
                    }
                }
                if let Some(u) = &chunk.usage {
                    if let Some(a) = &st.admission {
                        a.reconcile_tokens(
                            u64::from(u.prompt_tokens) + u64::from(u.completion_tokens),
                        );
                    }
                    out.push(Ok(ChatEvent::Usage {
                        prompt_tokens: u.prompt_tokens,
                        completion_tokens: u.completion_tokens,
                    }));
                }
                return Some((stream::iter(out), st));
            }
        };
        match next {
            // End: dropping `st` releases the slot.
            None => None,
            Some(err) => {
                // An error ends the stream: release the slot with the last item.
                st.admission = None;
                Some((stream::iter(vec![err]), st))
            }
        }
    })
    .flatten()
    .boxed()
}

fn classify_error(e: OpenAIError, meta: Option<&ResponseMeta>, key: &str) -> AttemptError {
    let retry_after = meta.and_then(|m| m.hints.retry_after.or(m.hints.blocked_for()));
    let (class, message, status) = match &e {
        OpenAIError::ApiError(resp) => {
            let status = resp.status_code.as_u16();
            let api = &resp.api_error;
            let class = classify_openai(status, api.r#type.as_deref(), api.code.as_deref());
            let message = if api.code.as_deref() == Some("invalid_api_key") {
                // The text quotes part of the key; the code says all there is to say.
                format!("HTTP {status} invalid_api_key")
            } else {
                format!(
                    "HTTP {status} {}/{}: {}",
                    api.r#type.as_deref().unwrap_or("-"),
                    api.code.as_deref().unwrap_or("-"),
                    http::scrub(&api.message, key)
                )
            };
            (class, message, Some(status))
        }
        OpenAIError::Reqwest(err) => {
            let e = ProviderError::transport(P, err);
            (e.class, e.message, None)
        }
        OpenAIError::InvalidArgument(m) => (ErrorClass::BadRequest, m.clone(), None),
        other => {
            // Unreadable bodies, broken streams, middleware errors: if the status was an
            // error, it decides; otherwise the answer was garbled in transit — retry.
            let class = meta
                .filter(|m| m.status >= 400)
                .map_or(ErrorClass::Retryable, |m| classify_status(m.status));
            (
                class,
                http::scrub(&other.to_string(), key),
                meta.map(|m| m.status),
            )
        }
    };
    AttemptError {
        from_provider_429: status == Some(429) && class == ErrorClass::RateLimited,
        error: ProviderError::new(P, class, message).with_retry_after(retry_after),
    }
}

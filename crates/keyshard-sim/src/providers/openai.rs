//! The fake OpenAI: chat completions (JSON, or SSE with a final usage chunk) and gpt-image
//! generations (b64_json), with OpenAI's error bodies and `x-ratelimit-*` headers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{bearer, media, retry_after_secs, Failure, FakeLane, Gate, LimitView, Shared};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/chat/completions", post(chat))
        .route("/images/generations", post(images))
}

const P: &str = "openai";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// Go-style duration as OpenAI writes it (`1s`, `6m0s`, `12ms`).
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let (m, rest) = (ms / 60_000, ms % 60_000);
    let s = if rest % 1000 == 0 {
        (rest / 1000).to_string()
    } else {
        let text = format!("{:.3}", rest as f64 / 1000.0);
        text.trim_end_matches('0').to_owned()
    };
    if m > 0 {
        format!("{m}m{s}s")
    } else {
        format!("{s}s")
    }
}

fn limit_headers(view: &LimitView) -> HeaderMap {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: String| {
        h.insert(k, HeaderValue::from_str(&v).expect("ascii header"));
    };
    put("x-ratelimit-limit-requests", view.limit.to_string());
    put("x-ratelimit-remaining-requests", view.remaining.to_string());
    put("x-ratelimit-reset-requests", go_duration(view.reset));
    if let Some((limit, remaining, reset)) = view.tokens {
        put("x-ratelimit-limit-tokens", limit.to_string());
        put("x-ratelimit-remaining-tokens", remaining.to_string());
        put("x-ratelimit-reset-tokens", go_duration(reset));
    }
    h
}

fn error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    (
        status,
        Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}})),
    )
        .into_response()
}

/// OpenAI's answer for a failure (`view` adds the rate-limit headers when known).
async fn failure(s: &Shared, key: &str, f: Failure, images: bool) -> Response {
    match f {
        Failure::BadKey => error(
            StatusCode::UNAUTHORIZED,
            &format!(
                "Incorrect API key provided: {}. You can find your API key at https://platform.openai.com/account/api-keys.",
                mask(key)
            ),
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        Failure::Quota => error(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details. For more information on this error, read the docs: https://platform.openai.com/docs/guides/error-codes/api-errors.",
            "insufficient_quota",
            Some("insufficient_quota"),
        ),
        Failure::ServerError | Failure::MiniMaxCode(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "The server had an error while processing your request. Sorry about that!",
            "server_error",
            None,
        ),
        Failure::Hang => {
            s.hang().await;
            (StatusCode::GATEWAY_TIMEOUT, "upstream timed out").into_response()
        }
        Failure::Content | Failure::Filtered if images => error(
            StatusCode::BAD_REQUEST,
            "Your request was rejected as a result of our safety system. Your request may contain content that is not allowed by our safety system.",
            "image_generation_user_error",
            Some("moderation_blocked"),
        ),
        Failure::Content | Failure::Filtered => error(
            StatusCode::BAD_REQUEST,
            "Invalid prompt: your prompt was flagged as potentially violating our usage policy.",
            "invalid_request_error",
            Some("content_policy_violation"),
        ),
        Failure::RateLimit => {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "Rate limit reached for requests (scripted). Please try again in 1s.",
                "requests",
                Some("rate_limit_exceeded"),
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            r
        }
        Failure::BadRequest => error(
            StatusCode::BAD_REQUEST,
            "Invalid value for 'messages': expected an array.",
            "invalid_request_error",
            None,
        ),
    }
}

/// `sk-ab***yz`: OpenAI quotes a masked key in its 401 text; so does the fake, so the
/// client's scrubbing is exercised.
fn mask(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 8 {
        return "***".into();
    }
    let head: String = chars[..3].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}***{tail}")
}

fn rate_limited(view: &LimitView, retry_after: Duration, kind: &'static str) -> Response {
    let mut r = error(
        StatusCode::TOO_MANY_REQUESTS,
        &format!(
            "Rate limit reached for {kind} on this key: Limit {}, Used {}. Please try again in {}.",
            view.limit,
            view.limit - view.remaining,
            go_duration(retry_after)
        ),
        kind,
        Some("rate_limit_exceeded"),
    );
    r.headers_mut().extend(limit_headers(view));
    r.headers_mut().insert(
        "retry-after",
        HeaderValue::from_str(&retry_after_secs(retry_after).to_string()).expect("digits"),
    );
    r
}

/// Prompt tokens as the fake counts them: UTF-8 bytes / 4, rounded up, plus 4 per message.
fn prompt_tokens(messages: &[Value]) -> u64 {
    messages
        .iter()
        .map(|m| {
            let content = match &m["content"] {
                Value::String(s) => s.len(),
                other => other.to_string().len(),
            };
            (content as u64).div_ceil(4) + 4
        })
        .sum()
}

fn answer_words(n: usize, last: &str) -> Vec<String> {
    let topic: Vec<&str> = last.split_whitespace().take(3).collect();
    let mut words = vec!["Fake".to_owned(), "answer".into(), "about".into()];
    words.extend(topic.iter().map(|w| (*w).to_owned()));
    let mut i = 0;
    while words.len() < n.max(2) {
        words.push(format!("word{i}"));
        i += 1;
    }
    words.truncate(n.max(2));
    words
        .into_iter()
        .enumerate()
        .map(|(i, w)| if i == 0 { w } else { format!(" {w}") })
        .collect()
}

/// `POST /chat/completions`. Long because it follows one request through the provider's own
/// order of checks (key, body, limits, injected failure, JSON or SSE answer); kept in one
/// piece so that order reads top to bottom as the provider applies it.
async fn chat(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = bearer(&headers);
    if let Some(f) = s.key_failure(&key) {
        s.count(P, &key, |c| c.auth_failures += 1);
        return failure(&s, &key, f, false).await;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        );
    };
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    if messages.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "[] is too short - 'messages'",
            "invalid_request_error",
            None,
        );
    }
    let last = messages
        .last()
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_owned();
    let words = answer_words(s.cfg.chat_words, &last);
    let prompt = prompt_tokens(&messages);
    let completion = words.len() as u64;
    let view = match s.admit(FakeLane::OpenAiChat, &key, prompt + completion) {
        Gate::Admitted(v) => v,
        Gate::Limited {
            view,
            retry_after,
            kind,
        } => return rate_limited(&view, retry_after, kind),
    };
    if let Some(f) = s.failure(&last) {
        s.error(P, &key);
        let mut r = failure(&s, &key, f, false).await;
        r.headers_mut().extend(limit_headers(&view));
        return r;
    }
    s.delay().await;
    let model = req["model"].as_str().unwrap_or("gpt-4o-mini").to_owned();
    let id = format!("chatcmpl-fake{}", s.id());
    let created = now_secs();
    let usage = json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    });
    s.ok(P, &key);
    if req["stream"].as_bool() != Some(true) {
        let mut r = Json(json!({
            "id": id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat(), "refusal": null}, "logprobs": null, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
        r.headers_mut().extend(limit_headers(&view));
        return r;
    }
    let include_usage = req["stream_options"]["include_usage"].as_bool() == Some(true);
    let chunk = |delta: Value, finish: Value| {
        let mut c = json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut frames = vec![chunk(
        json!({"role": "assistant", "content": ""}),
        Value::Null,
    )];
    frames.extend(
        words
            .iter()
            .map(|w| chunk(json!({"content": w}), Value::Null)),
    );
    frames.push(chunk(json!({}), json!("stop")));
    if include_usage {
        frames.push(json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage,
        }));
    }
    let gap = s.cfg.stream_gap;
    let cancel = s.cancel.clone();
    let stream = futures::stream::unfold(
        (frames.into_iter(), false, true),
        move |(mut it, done, first)| {
            let cancel = cancel.clone();
            async move {
                if done {
                    return None;
                }
                if !first && !gap.is_zero() {
                    tokio::select! {
                        _ = tokio::time::sleep(gap) => {}
                        _ = cancel.cancelled() => return None,
                    }
                }
                match it.next() {
                    Some(frame) => Some((
                        Ok::<_, std::convert::Infallible>(Bytes::from(format!(
                            "data: {frame}\n\n"
                        ))),
                        (it, false, false),
                    )),
                    None => Some((
                        Ok(Bytes::from_static(b"data: [DONE]\n\n")),
                        (it, true, false),
                    )),
                }
            }
        },
    );
    let mut r = Response::new(Body::from_stream(stream));
    let h = r.headers_mut();
    h.insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert("cache-control", HeaderValue::from_static("no-cache"));
    h.extend(limit_headers(&view));
    r
}

async fn images(State(s): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let key = bearer(&headers);
    if let Some(f) = s.key_failure(&key) {
        s.count(P, &key, |c| c.auth_failures += 1);
        return failure(&s, &key, f, true).await;
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "We could not parse the JSON body of your request.",
            "invalid_request_error",
            None,
        );
    };
    let prompt = req["prompt"].as_str().unwrap_or_default().to_owned();
    if prompt.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "Missing required parameter: 'prompt'.",
            "invalid_request_error",
            Some("missing_required_parameter"),
        );
    }
    let view = match s.admit(FakeLane::OpenAiImages, &key, 0) {
        Gate::Admitted(v) => v,
        Gate::Limited {
            view,
            retry_after,
            kind,
        } => return rate_limited(&view, retry_after, kind),
    };
    if let Some(f) = s.failure(&prompt) {
        s.error(P, &key);
        let mut r = failure(&s, &key, f, true).await;
        r.headers_mut().extend(limit_headers(&view));
        return r;
    }
    s.delay().await;
    let png = media::png(16, s.id());
    let text_tokens = (prompt.len() as u64).div_ceil(4);
    s.ok(P, &key);
    let mut r = Json(json!({
        "created": now_secs(),
        "data": [{"b64_json": base64::engine::general_purpose::STANDARD.encode(&png)}],
        "usage": {
            "total_tokens": text_tokens + 272,
            "input_tokens": text_tokens,
            "output_tokens": 272,
            "input_tokens_details": {"text_tokens": text_tokens, "image_tokens": 0},
        },
    }))
    .into_response();
    r.headers_mut().extend(limit_headers(&view));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_look_like_openai() {
        assert_eq!(go_duration(Duration::from_millis(12)), "12ms");
        assert_eq!(go_duration(Duration::from_secs(1)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn answers_have_the_requested_number_of_words() {
        let w = answer_words(12, "tell me about rust");
        assert_eq!(w.len(), 12);
        assert_eq!(w.concat().split_whitespace().count(), 12);
        assert_eq!(mask("sk-test-key-123456"), "sk-***3456");
    }
}

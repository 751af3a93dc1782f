//! The fake Stability AI: `POST /v2beta/stable-image/generate/core`, multipart in, raw PNG
//! (`accept: image/*`) or JSON (`accept: application/json`) out, with Stability's error
//! bodies `{"id","name","errors"}`.

use std::sync::Arc;

use axum::extract::{Multipart, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::json;

use super::{bearer, media, retry_after_secs, Failure, FakeLane, Gate, Shared};

const P: &str = "stability";

const RATIOS: [&str; 9] = [
    "16:9", "1:1", "21:9", "2:3", "3:2", "4:5", "5:4", "9:16", "9:21",
];

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new().route("/v2beta/stable-image/generate/core", post(core))
}

fn error(s: &Shared, status: StatusCode, name: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"id": format!("{:032x}", s.id()), "name": name, "errors": [message]})),
    )
        .into_response()
}

async fn failure(s: &Shared, f: Failure) -> Response {
    match f {
        Failure::BadKey => error(s, StatusCode::UNAUTHORIZED, "unauthorized", "authorization: invalid or missing header value"),
        Failure::Quota => error(s, StatusCode::PAYMENT_REQUIRED, "payment_required", "You lack sufficient credits to make this request. Please purchase more credits and try again."),
        Failure::Content => error(s, StatusCode::FORBIDDEN, "content_moderation", "Your request was flagged by our content moderation system, as a result your request was denied and you were not charged."),
        Failure::RateLimit => {
            let mut r = error(s, StatusCode::TOO_MANY_REQUESTS, "rate_limit_exceeded", "You have exceeded the rate limit of 150 requests within a 10 second period (scripted).");
            r.headers_mut().insert("retry-after", HeaderValue::from_static("1"));
            r
        }
        Failure::BadRequest | Failure::MiniMaxCode(_) => error(s, StatusCode::BAD_REQUEST, "bad_request", "prompt: cannot be empty"),
        Failure::ServerError => error(s, StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "An unexpected server error has occurred, please try again later."),
        Failure::Hang => {
            s.hang().await;
            (StatusCode::GATEWAY_TIMEOUT, "upstream timed out").into_response()
        }
        Failure::Filtered => unreachable!("handled as a successful answer"),
    }
}

/// `POST /v2beta/stable-image/generate/core`. Long because it follows one request through
/// Stability's order of checks (key, multipart form, limits, injected failure, image or JSON
/// answer); kept in one piece so that order reads top to bottom.
async fn core(State(s): State<Arc<Shared>>, headers: HeaderMap, mut form: Multipart) -> Response {
    let key = bearer(&headers);
    if let Some(f) = s.key_failure(&key) {
        s.count(P, &key, |c| c.auth_failures += 1);
        return failure(&s, f).await;
    }
    let (mut prompt, mut ratio, mut format) = (String::new(), "1:1".to_owned(), "png".to_owned());
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                let text = field.text().await.unwrap_or_default();
                match name.as_str() {
                    "prompt" => prompt = text,
                    "aspect_ratio" => ratio = text,
                    "output_format" => format = text,
                    _ => {}
                }
            }
            Ok(None) => break,
            Err(_) => {
                return error(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the request must be multipart/form-data",
                )
            }
        }
    }
    if prompt.is_empty() || prompt.chars().count() > 10_000 {
        return error(
            &s,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "prompt: must be 1..10000 characters",
        );
    }
    if !RATIOS.contains(&ratio.as_str()) {
        return error(
            &s,
            StatusCode::BAD_REQUEST,
            "bad_request",
            "aspect_ratio: invalid value",
        );
    }
    if format != "png" {
        // The fake only draws PNG; say so the way Stability refuses options.
        return error(
            &s,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_output_format",
            "the fake serves output_format=png only",
        );
    }
    if let Gate::Limited { retry_after, .. } = s.admit(FakeLane::StabilityImages, &key, 0) {
        let mut r = error(
            &s,
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_exceeded",
            "You have exceeded the rate limit for this key.",
        );
        r.headers_mut().insert(
            "retry-after",
            HeaderValue::from_str(&retry_after_secs(retry_after).to_string()).expect("digits"),
        );
        return r;
    }
    let filtered = match s.failure(&prompt) {
        Some(Failure::Filtered) => true,
        Some(f) => {
            s.error(P, &key);
            return failure(&s, f).await;
        }
        None => false,
    };
    s.delay().await;
    let seed = s.id();
    let png = media::png(16, seed);
    let finish = if filtered {
        "CONTENT_FILTERED"
    } else {
        "SUCCESS"
    };
    if filtered {
        s.error(P, &key);
    } else {
        s.ok(P, &key);
    }
    let wants_json = headers
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.starts_with("application/json"));
    if wants_json {
        return Json(json!({
            "image": base64::engine::general_purpose::STANDARD.encode(&png),
            "finish_reason": finish,
            "seed": seed,
        }))
        .into_response();
    }
    let mut r = png.into_response();
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("image/png"));
    h.insert("finish-reason", HeaderValue::from_static(finish));
    h.insert(
        "seed",
        HeaderValue::from_str(&seed.to_string()).expect("digits"),
    );
    r
}

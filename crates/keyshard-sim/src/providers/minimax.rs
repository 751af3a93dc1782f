//! The fake MiniMax: `image_generation`, `video_generation` → `query/video_generation` →
//! `files/retrieve` → download. Errors come the MiniMax way: HTTP 200 with a non-zero
//! `base_resp.status_code` (1002 rate limit, 1004 auth, 1008 balance, 1026 sensitive input…).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};

use super::{bearer, media, retry_after_secs, Failure, FakeLane, Gate, Shared, VideoTask};

const P: &str = "minimax";

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/v1/image_generation", post(image))
        .route("/v1/video_generation", post(video_create))
        .route("/v1/query/video_generation", get(video_query))
        .route("/v1/files/retrieve", get(file_retrieve))
        .route("/download/{name}", get(download))
}

fn base_error(code: i64, msg: &str) -> Response {
    Json(json!({"base_resp": {"status_code": code, "status_msg": msg}})).into_response()
}

fn ok_resp() -> Value {
    json!({"status_code": 0, "status_msg": "success"})
}

async fn failure(s: &Shared, f: Failure) -> Response {
    match f {
        Failure::BadKey => base_error(
            1004,
            "login fail: Please carry the API secret key in the 'Authorization' field of the request header",
        ),
        Failure::Quota => base_error(1008, "insufficient balance"),
        Failure::Content | Failure::Filtered => base_error(1026, "input new_sensitive"),
        Failure::RateLimit => base_error(1002, "rate limit exceeded(RPM)"),
        Failure::BadRequest => base_error(2013, "invalid params, prompt is required"),
        Failure::MiniMaxCode(code) => base_error(code, "scripted error"),
        Failure::ServerError => {
            (StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error").into_response()
        }
        Failure::Hang => {
            s.hang().await;
            (StatusCode::GATEWAY_TIMEOUT, "upstream timed out").into_response()
        }
    }
}

/// MiniMax reports a rate limit as HTTP 200 with code 1002; the fake adds `Retry-After` too,
/// which clients may use or ignore.
fn rate_limited(retry_after: std::time::Duration) -> Response {
    let mut r = base_error(1002, "rate limit exceeded(RPM)");
    r.headers_mut().insert(
        "retry-after",
        HeaderValue::from_str(&retry_after_secs(retry_after).to_string()).expect("digits"),
    );
    r
}

/// The common front of the POST endpoints: auth, JSON, prompt, limit, injected failure.
async fn gate(
    s: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    lane: FakeLane,
) -> Result<(String, Value, String), Response> {
    let key = bearer(headers);
    if let Some(f) = s.key_failure(&key) {
        s.count(P, &key, |c| c.auth_failures += 1);
        return Err(failure(s, f).await);
    }
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return Err(base_error(2013, "invalid params, body is not JSON"));
    };
    let prompt = req["prompt"].as_str().unwrap_or_default().to_owned();
    if prompt.is_empty() || prompt.chars().count() > 1500 {
        return Err(base_error(
            2013,
            "invalid params, prompt length must be 1..1500",
        ));
    }
    if let Gate::Limited { retry_after, .. } = s.admit(lane, &key, 0) {
        return Err(rate_limited(retry_after));
    }
    if let Some(f) = s.failure(&prompt) {
        s.error(P, &key);
        return Err(failure(s, f).await);
    }
    Ok((key, req, prompt))
}

async fn image(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (key, req, _prompt) = match gate(&s, &headers, &body, FakeLane::MiniMaxImages).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    s.delay().await;
    let id = s.id();
    let png = media::png(16, id);
    let data = if req["response_format"].as_str() == Some("base64") {
        json!({"image_base64": [base64::engine::general_purpose::STANDARD.encode(&png)]})
    } else {
        let name = format!("img-{id}.png");
        s.downloads
            .lock()
            .expect("downloads lock")
            .insert(name.clone(), (png, "image/png"));
        json!({"image_urls": [format!("{}/minimax/download/{name}", s.root)]})
    };
    s.ok(P, &key);
    // Counts as strings, as MiniMax sends them (clients must accept numbers too).
    Json(json!({
        "id": format!("{id:016x}"),
        "data": data,
        "metadata": {"failed_count": "0", "success_count": "1"},
        "base_resp": ok_resp(),
    }))
    .into_response()
}

async fn video_create(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (key, _req, prompt) = match gate(&s, &headers, &body, FakeLane::MiniMaxVideo).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    s.delay().await;
    let id = s.id();
    let task_id = format!("{}", 300_000_000_000u64 + id);
    s.videos.lock().expect("videos lock").insert(
        task_id.clone(),
        VideoTask {
            created: tokio::time::Instant::now(),
            fail: prompt.contains("fake:videofail"),
            file_id: 200_000_000_000u64 + id,
            owner: key.clone(),
        },
    );
    s.ok(P, &key);
    Json(json!({"task_id": task_id, "base_resp": ok_resp()})).into_response()
}

#[derive(serde::Deserialize)]
struct TaskQuery {
    task_id: String,
}

/// A task is known only to the key that created it: each instance's key stands for its own
/// MiniMax account (one account's keys share its limits, so N key sets at N times the rate
/// are N accounts). Another key asking gets the answer for an unknown task.
async fn video_query(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<TaskQuery>,
) -> Response {
    let key = bearer(&headers);
    if let Some(f) = s.key_failure(&key) {
        return failure(&s, f).await;
    }
    let Some(task) = s
        .videos
        .lock()
        .expect("videos lock")
        .get(&q.task_id)
        .filter(|t| t.owner == key)
        .cloned()
    else {
        s.count(P, &key, |c| c.not_found += 1);
        return base_error(2013, "invalid params, task not found");
    };
    let step = s.cfg.video_step;
    let age = task.created.elapsed();
    let status = if age < step {
        "Preparing"
    } else if age < step * 2 {
        "Queueing"
    } else if age < step * 3 {
        "Processing"
    } else if task.fail {
        "Fail"
    } else {
        "Success"
    };
    let mut v =
        json!({"task_id": q.task_id, "status": status, "file_id": "", "base_resp": ok_resp()});
    if status == "Success" {
        v["file_id"] = json!(task.file_id.to_string());
        v["video_width"] = json!(1366);
        v["video_height"] = json!(768);
    }
    if status == "Fail" {
        v["base_resp"] = json!({"status_code": 0, "status_msg": "video generation failed"});
    }
    Json(v).into_response()
}

#[derive(serde::Deserialize)]
struct FileQuery {
    file_id: String,
}

async fn file_retrieve(
    State(s): State<Arc<Shared>>,
    headers: HeaderMap,
    Query(q): Query<FileQuery>,
) -> Response {
    let key = bearer(&headers);
    if let Some(f) = s.key_failure(&key) {
        return failure(&s, f).await;
    }
    let Ok(file_id) = q.file_id.parse::<u64>() else {
        return base_error(2013, "invalid params, file_id");
    };
    let known = s
        .videos
        .lock()
        .expect("videos lock")
        .values()
        .any(|t| t.file_id == file_id && !t.fail && t.owner == key);
    if !known {
        s.count(P, &key, |c| c.not_found += 1);
        return base_error(1004, "file not found");
    }
    let name = format!("{file_id}.mp4");
    let bytes = media::mp4(6, format!("keyshard fake video {file_id}").as_bytes());
    let len = bytes.len();
    s.downloads
        .lock()
        .expect("downloads lock")
        .insert(name.clone(), (bytes, "video/mp4"));
    // `file_id` as a number here (a string in the query answer): clients must take both.
    Json(json!({
        "file": {
            "file_id": file_id,
            "bytes": len,
            "created_at": 1_700_000_000u64,
            "filename": "output.mp4",
            "purpose": "video_generation",
            "download_url": format!("{}/minimax/download/{name}?Expires=1700003600&Signature=fake", s.root),
        },
        "base_resp": ok_resp(),
    }))
    .into_response()
}

async fn download(State(s): State<Arc<Shared>>, Path(name): Path<String>) -> Response {
    match s
        .downloads
        .lock()
        .expect("downloads lock")
        .get(&name)
        .cloned()
    {
        Some((bytes, mime)) => ([("content-type", mime)], bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "NoSuchKey").into_response(),
    }
}

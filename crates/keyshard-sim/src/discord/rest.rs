//! The REST side of the fake: one fallback handler that strips the `/i/{instance}` prefix and
//! `/api/v10`, then matches the path segments.
//!
//! Matching segments by hand (rather than with axum routes) lets one table serve both the bare
//! and the per-instance prefix, and lets unknown calls be recorded instead of vanishing.
//! Serenity writes query strings as `?&k=v`; only the path is ever looked at.
//!
//! Channel messages are attributed to an interaction by their `nonce` (the interaction id, as
//! a string) when there is one; otherwise by a `<@user>` mention in the same channel, to the
//! oldest acknowledged, unfinished interaction of that user (the late-result path of
//! DESIGN.md §3 mentions the user).

use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

use super::record::{CallbackAttempt, FileRecord, MessageKind, MessageRecord, CALLBACK_DEFERRED};
use super::{
    gateway, payload, unix_ms, OriginalMessage, RegisteredCommand, Shared, ATTACHMENT_SIZE_LIMIT,
    REQUEST_SIZE_LIMIT,
};

/// Bodies above Discord's 25 MiB are read (up to this) so they can be refused the way Discord
/// refuses them (413 / 40005) instead of by a dropped connection.
const READ_LIMIT: usize = 64 * 1024 * 1024;

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/i/{instance}/gateway", get(ws_instance))
        .route("/gateway", get(ws_root))
        .fallback(rest)
        .layer(DefaultBodyLimit::max(READ_LIMIT))
        .with_state(shared)
}

/// The fake gateway's read buffer per connection. Tungstenite zeroes the whole buffer before
/// every read attempt, and a connection's read is polled each time the fake sends it a
/// dispatch: at the default 128 KiB that was 3,200 × 128 KiB of `memset` a second at 16
/// instances and 200 interactions/s, about a tenth of the simulator's CPU, taken from the
/// instances it measures. Clients send small frames (IDENTIFY, heartbeats); a larger one grows
/// the buffer as it needs.
const GATEWAY_READ_BUFFER: usize = 4 * 1024;

async fn ws_instance(
    State(shared): State<Arc<Shared>>,
    Path(instance): Path<u32>,
    ws: WebSocketUpgrade,
) -> Response {
    ws.read_buffer_size(GATEWAY_READ_BUFFER)
        .on_upgrade(move |socket| gateway::connection(shared, instance, socket))
}

async fn ws_root(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(GATEWAY_READ_BUFFER)
        .on_upgrade(move |socket| gateway::connection(shared, 0, socket))
}

/// A parsed request body: the JSON (`payload_json` in multipart) and the file parts.
struct Parsed {
    json: Value,
    files: Vec<FileRecord>,
    total: usize,
}

fn reply(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

fn discord_error(status: StatusCode, code: u32, message: &str) -> Response {
    reply(status, payload::error(code, message))
}

/// Splits `/i/{n}/api/v10/rest…` or `/api/v10/rest…` into the instance and the rest.
fn split_path(path: &str) -> Option<(u32, &str)> {
    if let Some(rest) = path.strip_prefix("/api/v10") {
        return Some((0, rest));
    }
    let rest = path.strip_prefix("/i/")?;
    let (n, rest) = rest.split_once('/')?;
    Some((n.parse().ok()?, rest.strip_prefix("api/v10")?))
}

async fn read_body(req: Request) -> Result<Parsed, Response> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    let bad = |e: String| discord_error(StatusCode::BAD_REQUEST, 50035, &e);
    if !multipart {
        let bytes = axum::body::to_bytes(req.into_body(), READ_LIMIT)
            .await
            .map_err(|e| bad(e.to_string()))?;
        let json = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).map_err(|e| bad(format!("invalid JSON body: {e}")))?
        };
        return Ok(Parsed {
            json,
            files: Vec::new(),
            total: bytes.len(),
        });
    }
    let mut form = Multipart::from_request(req, &())
        .await
        .map_err(|e| bad(e.to_string()))?;
    let mut parsed = Parsed {
        json: Value::Null,
        files: Vec::new(),
        total: 0,
    };
    while let Some(field) = form.next_field().await.map_err(|e| bad(e.to_string()))? {
        let name = field.name().unwrap_or_default().to_string();
        let filename = field.file_name().map(str::to_string);
        let content_type = field.content_type().map(str::to_string);
        let bytes = field.bytes().await.map_err(|e| bad(e.to_string()))?;
        parsed.total += bytes.len();
        if name == "payload_json" {
            parsed.json = serde_json::from_slice(&bytes)
                .map_err(|e| bad(format!("invalid payload_json: {e}")))?;
        } else {
            parsed.files.push(FileRecord {
                filename: filename.unwrap_or_else(|| name.clone()),
                field: name,
                size: bytes.len(),
                content_type,
            });
        }
    }
    Ok(parsed)
}

/// Every REST call: attribution to the calling instance, Discord's size limits, then the route
/// table. Long because the table is one `match` with a line per endpoint, the fastest way to
/// see which Discord routes the fake serves.
async fn rest(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().replace("%40", "@");
    let Some((instance, rest)) = split_path(&path) else {
        return discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found");
    };
    let rest = rest.trim_matches('/').to_string();
    let body = match read_body(req).await {
        Ok(b) => b,
        Err(resp) => return resp,
    };
    if body.total > REQUEST_SIZE_LIMIT || body.files.iter().any(|f| f.size > ATTACHMENT_SIZE_LIMIT)
    {
        return discord_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            40005,
            "Request entity too large",
        );
    }
    let segs: Vec<&str> = rest.split('/').collect();
    let label = match segs.as_slice() {
        ["interactions", ..] => "callback",
        ["webhooks", _, _] => "followup",
        ["webhooks", ..] => "webhook_message",
        ["channels", ..] => "channel_message",
        ["applications", ..] => "commands",
        ["oauth2", ..] | ["users", ..] => "application",
        ["gateway", ..] => "gateway",
        _ => "other",
    };
    *shared
        .lock()
        .rest_calls
        .entry((instance, label))
        .or_default() += 1;
    let app = shared.cfg.application_id;
    let resp = match (&method, segs.as_slice()) {
        (&Method::GET, ["gateway"]) => reply(
            StatusCode::OK,
            json!({"url": format!("ws://{}/i/{instance}/gateway", shared.addr)}),
        ),
        (&Method::GET, ["gateway", "bot"]) => {
            let rules = &shared.cfg.gateway;
            let limit = shared.lock().identify.limit(rules);
            reply(
                StatusCode::OK,
                json!({
                    "url": format!("ws://{}/i/{instance}/gateway", shared.addr),
                    "shards": rules.recommended_shards.max(1),
                    "session_start_limit": {
                        "total": limit.total,
                        "remaining": limit.remaining,
                        "reset_after": limit.reset_after.as_millis() as u64,
                        "max_concurrency": limit.max_concurrency,
                    },
                }),
            )
        }
        (&Method::GET, ["oauth2", "applications", "@me"] | ["applications", "@me"]) => {
            reply(StatusCode::OK, payload::application(app))
        }
        (&Method::GET, ["users", "@me"]) => {
            let mut u = payload::user(app, payload::BOT_NAME);
            u["bot"] = json!(true);
            reply(StatusCode::OK, u)
        }
        (&Method::PUT, ["applications", _, "commands"]) => {
            put_commands(&shared, instance, None, &body.json)
        }
        (&Method::PUT, ["applications", _, "guilds", guild, "commands"]) => {
            put_commands(&shared, instance, guild.parse().ok(), &body.json)
        }
        (&Method::GET, ["applications", _, "commands"]) => get_commands(&shared, None),
        (&Method::GET, ["applications", _, "guilds", guild, "commands"]) => {
            get_commands(&shared, guild.parse().ok())
        }
        (&Method::POST, ["interactions", id, token, "callback"]) => {
            let resp = callback(&shared, instance, id, token, body);
            if let Some((slow, delay)) = shared.cfg.callback_delay {
                if slow == instance {
                    tokio::time::sleep(delay).await;
                }
            }
            resp
        }
        (&Method::POST, ["webhooks", app_id, token]) => {
            webhook(&shared, instance, app_id, token, None, &method, body)
        }
        (_, ["webhooks", app_id, token, "messages", msg]) => {
            webhook(&shared, instance, app_id, token, Some(msg), &method, body)
        }
        (&Method::POST, ["channels", channel, "messages"]) => {
            channel_message(&shared, instance, channel, body)
        }
        _ => {
            tracing::warn!(instance, %method, path = %rest, "fake Discord: no such route");
            shared
                .lock()
                .unknown_routes
                .push((instance, method.to_string(), rest.clone()));
            discord_error(StatusCode::NOT_FOUND, 0, "404: Not Found")
        }
    };
    shared.changed.notify_waiters();
    resp
}

fn put_commands(shared: &Shared, instance: u32, guild: Option<u64>, body: &Value) -> Response {
    let Some(list) = body.as_array() else {
        return discord_error(
            StatusCode::BAD_REQUEST,
            50035,
            "Invalid Form Body: expected an array",
        );
    };
    let app = shared.cfg.application_id;
    let mut out = Vec::new();
    let mut st = shared.lock();
    *st.command_puts.entry(instance).or_default() += 1;
    for c in list {
        let name = c
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let existing = st
            .commands
            .iter()
            .position(|r| r.name == name && r.guild_id == guild);
        let id = match existing {
            Some(i) => st.commands[i].id,
            None => shared.snowflake(),
        };
        let registered = RegisteredCommand {
            id,
            name,
            guild_id: guild,
            instance,
            body: c.clone(),
        };
        match existing {
            Some(i) => st.commands[i] = registered,
            None => st.commands.push(registered),
        }
        out.push(payload::command(app, id, guild, c));
    }
    reply(StatusCode::OK, Value::Array(out))
}

fn get_commands(shared: &Shared, guild: Option<u64>) -> Response {
    let app = shared.cfg.application_id;
    let st = shared.lock();
    let list: Vec<Value> = st
        .commands
        .iter()
        .filter(|c| c.guild_id == guild)
        .map(|c| payload::command(app, c.id, guild, &c.body))
        .collect();
    reply(StatusCode::OK, Value::Array(list))
}

fn content_of(json: &Value) -> (Option<String>, Vec<Value>) {
    let content = json
        .get("content")
        .and_then(Value::as_str)
        .map(str::to_string);
    let embeds = json
        .get("embeds")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    (content, embeds)
}

fn callback(shared: &Shared, instance: u32, id: &str, token: &str, body: Parsed) -> Response {
    let kind = body.json.get("type").and_then(Value::as_u64).unwrap_or(0) as u8;
    let data = body.json.get("data").cloned().unwrap_or(Value::Null);
    let (content, embeds) = content_of(&data);
    let flags = data.get("flags").and_then(Value::as_u64).unwrap_or(0);
    let ack_window = shared.cfg.ack_window;
    let mut st = shared.lock();
    let idx = st
        .by_token
        .get(token)
        .copied()
        .filter(|&i| st.records[i].id.to_string() == id);
    let Some(idx) = idx else {
        return discord_error(StatusCode::NOT_FOUND, 10062, "Unknown interaction");
    };
    let rec = &st.records[idx];
    let elapsed = rec.sent_at.elapsed();
    let (status, code) = if rec.ack().is_some() {
        (StatusCode::BAD_REQUEST, Some(40060))
    } else if elapsed > ack_window {
        (StatusCode::NOT_FOUND, Some(10062))
    } else {
        (StatusCode::NO_CONTENT, None)
    };
    let interaction_id = rec.id;
    if status == StatusCode::NO_CONTENT {
        let original = OriginalMessage {
            message_id: shared.snowflake(),
            content: if kind == CALLBACK_DEFERRED {
                String::new()
            } else {
                content.clone().unwrap_or_default()
            },
            embeds: embeds.clone(),
            files: body.files.clone(),
        };
        st.originals.insert(interaction_id, original);
    }
    st.records[idx].callbacks.push(CallbackAttempt {
        instance,
        after_ms: elapsed.as_secs_f64() * 1000.0,
        status: status.as_u16(),
        error_code: code,
        kind,
        content,
        embeds,
        files: body.files,
        ephemeral: flags & 64 != 0,
    });
    drop(st);
    match code {
        None => StatusCode::NO_CONTENT.into_response(),
        Some(40060) => discord_error(status, 40060, "Interaction has already been acknowledged."),
        Some(c) => discord_error(status, c, "Unknown interaction"),
    }
}

/// Followups and edits through the interaction webhook. Long because it checks in Discord's
/// order (token, application, token age, the first response) and records every attempt, the
/// refused ones included, before it creates or edits a message; one piece keeps that order.
#[allow(clippy::too_many_arguments)]
fn webhook(
    shared: &Shared,
    instance: u32,
    app_id: &str,
    token: &str,
    msg: Option<&str>,
    method: &Method,
    body: Parsed,
) -> Response {
    let app = shared.cfg.application_id;
    let (content, embeds) = content_of(&body.json);
    let base = shared.base_url();
    let mut st = shared.lock();
    let Some(idx) = st.by_token.get(token).copied() else {
        return discord_error(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token");
    };
    let (rec_id, channel_id, elapsed, acked) = {
        let r = &st.records[idx];
        (r.id, r.channel_id, r.sent_at.elapsed(), r.ack().is_some())
    };
    let kind = match (method, msg) {
        (&Method::POST, None) => Some(MessageKind::Followup),
        (&Method::PATCH, Some("@original")) => Some(MessageKind::EditOriginal),
        (&Method::PATCH, Some(_)) => Some(MessageKind::EditFollowup),
        _ => None,
    };
    let refused = if app_id != app.to_string() {
        Some((StatusCode::NOT_FOUND, 10015, "Unknown Webhook"))
    } else if elapsed > shared.cfg.token_ttl {
        Some((StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token"))
    } else if !acked {
        // Discord creates the interaction webhook only with the first response.
        Some((StatusCode::NOT_FOUND, 10015, "Unknown Webhook"))
    } else {
        None
    };
    let after_ms = elapsed.as_secs_f64() * 1000.0;
    let record = |st: &mut super::State, status: StatusCode, code: Option<u32>| {
        if let Some(kind) = kind {
            st.records[idx].messages.push(MessageRecord {
                instance,
                after_ms,
                kind,
                status: status.as_u16(),
                error_code: code,
                content: content.clone(),
                embeds: embeds.clone(),
                files: body.files.clone(),
            });
        }
    };
    if let Some((status, code, message)) = refused {
        record(&mut st, status, Some(code));
        return discord_error(status, code, message);
    }
    let now = payload::timestamp(unix_ms());
    match (method, msg) {
        (&Method::POST, None) => {
            let id = shared.snowflake();
            st.followups.insert(
                id,
                (
                    rec_id,
                    OriginalMessage {
                        message_id: id,
                        content: content.clone().unwrap_or_default(),
                        embeds: embeds.clone(),
                        files: body.files.clone(),
                    },
                ),
            );
            record(&mut st, StatusCode::OK, None);
            let m = payload::message(
                &base,
                id,
                channel_id,
                app,
                content.as_deref().unwrap_or(""),
                &embeds,
                &body.files,
                true,
                &now,
            );
            reply(StatusCode::OK, m)
        }
        (_, Some(target)) => {
            let message = if target == "@original" {
                st.originals.get_mut(&rec_id)
            } else {
                target
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| st.followups.get_mut(&id))
                    .filter(|(owner, _)| *owner == rec_id)
                    .map(|(_, m)| m)
            };
            let Some(message) = message else {
                record(&mut st, StatusCode::NOT_FOUND, Some(10008));
                return discord_error(StatusCode::NOT_FOUND, 10008, "Unknown Message");
            };
            match *method {
                Method::PATCH => {
                    if let Some(c) = &content {
                        message.content = c.clone();
                    }
                    if body.json.get("embeds").is_some() {
                        message.embeds = embeds.clone();
                    }
                    if !body.files.is_empty() {
                        message.files = body.files.clone();
                    }
                }
                Method::DELETE => {
                    return StatusCode::NO_CONTENT.into_response();
                }
                _ => {}
            }
            let m = message.clone();
            if *method == Method::PATCH {
                record(&mut st, StatusCode::OK, None);
            }
            reply(
                StatusCode::OK,
                payload::message(
                    &base,
                    m.message_id,
                    channel_id,
                    app,
                    &m.content,
                    &m.embeds,
                    &m.files,
                    true,
                    &now,
                ),
            )
        }
        _ => discord_error(StatusCode::METHOD_NOT_ALLOWED, 0, "405: Method Not Allowed"),
    }
}

fn channel_message(shared: &Shared, instance: u32, channel: &str, body: Parsed) -> Response {
    let app = shared.cfg.application_id;
    let Ok(channel_id) = channel.parse::<u64>() else {
        return discord_error(StatusCode::NOT_FOUND, 10003, "Unknown Channel");
    };
    let (content, embeds) = content_of(&body.json);
    let nonce = body.json.get("nonce").and_then(|n| match n {
        Value::String(s) => s.parse::<u64>().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    });
    let mut st = shared.lock();
    let by_nonce = nonce.and_then(|n| st.by_id.get(&n).copied());
    let idx = by_nonce.or_else(|| {
        let text = content.as_deref().unwrap_or("");
        let candidates = || {
            st.records.iter().enumerate().filter(|(_, r)| {
                r.channel_id == channel_id && text.contains(&format!("<@{}>", r.user_id))
            })
        };
        candidates()
            .find(|(_, r)| r.ack().is_some() && !r.is_completed())
            .or_else(|| candidates().next_back())
            .map(|(i, _)| i)
    });
    let message = |after_ms| MessageRecord {
        instance,
        after_ms,
        kind: MessageKind::Channel,
        status: 200,
        error_code: None,
        content: content.clone(),
        embeds: embeds.clone(),
        files: body.files.clone(),
    };
    match idx {
        Some(i) => {
            let after = st.records[i].sent_at.elapsed().as_secs_f64() * 1000.0;
            st.records[i].messages.push(message(after));
        }
        None => st.unattributed.push(message(0.0)),
    }
    drop(st);
    let id = shared.snowflake();
    reply(
        StatusCode::OK,
        payload::message(
            &shared.base_url(),
            id,
            channel_id,
            app,
            content.as_deref().unwrap_or(""),
            &embeds,
            &body.files,
            false,
            &payload::timestamp(unix_ms()),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_both_prefixes() {
        assert_eq!(split_path("/api/v10/gateway"), Some((0, "/gateway")));
        assert_eq!(
            split_path("/i/3/api/v10/interactions/1/t/callback"),
            Some((3, "/interactions/1/t/callback"))
        );
        assert_eq!(split_path("/i/x/api/v10/gateway"), None);
        assert_eq!(split_path("/elsewhere"), None);
    }
}

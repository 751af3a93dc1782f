//! The JSON the fake Discord sends: gateway frames, interactions, messages, commands.
//!
//! Every object carries the fields serenity 0.12.5 requires to deserialize it (notes/discord.md):
//! serenity silently drops a dispatch it cannot parse, so a missing field shows up as an
//! interaction nobody answers rather than as an error.

use serde_json::{json, Value};

use super::record::FileRecord;
use super::{InteractionSpec, OptionValue};

/// The bot user's name, as READY and messages report it.
pub const BOT_NAME: &str = "keyshard";

/// `HELLO` (op 10).
pub fn hello(heartbeat_interval_ms: u64) -> String {
    json!({"op": 10, "d": {"heartbeat_interval": heartbeat_interval_ms}, "s": null, "t": null})
        .to_string()
}

/// `HEARTBEAT_ACK` (op 11).
pub fn heartbeat_ack() -> String {
    json!({"op": 11, "d": null}).to_string()
}

/// `INVALID_SESSION` (op 9); `resumable = false` makes the client identify again.
pub fn invalid_session(resumable: bool) -> String {
    json!({"op": 9, "d": resumable, "s": null, "t": null}).to_string()
}

/// A dispatch frame (op 0) around an already serialized `d`.
pub fn dispatch_frame(seq: u64, event: &str, d: &str) -> String {
    format!(r#"{{"op":0,"s":{seq},"t":"{event}","d":{d}}}"#)
}

/// The `d` of READY.
pub fn ready(app_id: u64, session_id: &str, resume_url: &str, shard: Option<&Value>) -> String {
    let mut d = json!({
        "v": 10,
        "user": {"id": app_id.to_string(), "username": BOT_NAME, "discriminator": "0",
                 "global_name": null, "avatar": null, "bot": true},
        "guilds": [],
        "session_id": session_id,
        "resume_gateway_url": resume_url,
        "application": {"id": app_id.to_string(), "flags": 0},
    });
    if let Some(shard) = shard {
        d["shard"] = shard.clone();
    }
    d.to_string()
}

/// A user object.
pub fn user(id: u64, username: &str) -> Value {
    json!({"id": id.to_string(), "username": username, "discriminator": "0",
           "global_name": username, "avatar": null})
}

/// The `d` of INTERACTION_CREATE for a chat-input command.
pub fn interaction(
    app_id: u64,
    id: u64,
    token: &str,
    command_id: u64,
    spec: &InteractionSpec,
) -> Value {
    let mut resolved_users = serde_json::Map::new();
    let options: Vec<Value> = spec
        .options
        .iter()
        .map(|o| match o {
            OptionValue::String(name, v) => json!({"name": name, "type": 3, "value": v}),
            OptionValue::Integer(name, v) => json!({"name": name, "type": 4, "value": v}),
            OptionValue::Bool(name, v) => json!({"name": name, "type": 5, "value": v}),
            OptionValue::User(name, uid) => {
                resolved_users.insert(uid.to_string(), user(*uid, &format!("user{uid}")));
                json!({"name": name, "type": 6, "value": uid.to_string()})
            }
        })
        .collect();
    let options = match &spec.subcommand {
        Some(sub) => vec![json!({"name": sub, "type": 1, "options": options})],
        None => options,
    };
    let mut data = json!({
        "id": command_id.to_string(),
        "name": spec.command,
        "type": 1,
        "options": options,
    });
    if !resolved_users.is_empty() {
        data["resolved"] = json!({"users": resolved_users});
    }
    let caller = user(spec.user_id, &spec.username);
    let mut d = json!({
        "id": id.to_string(),
        "application_id": app_id.to_string(),
        "type": 2,
        "token": token,
        "version": 1,
        "data": data,
        "channel_id": spec.channel_id.to_string(),
        "locale": "ko",
        "entitlements": [],
        "attachment_size_limit": super::ATTACHMENT_SIZE_LIMIT,
        "authorizing_integration_owners": {"0": "0"},
    });
    match spec.guild_id {
        Some(guild) => {
            d["guild_id"] = json!(guild.to_string());
            d["guild_locale"] = json!("ko");
            d["app_permissions"] = json!("2248473465835073");
            d["context"] = json!(0);
            d["member"] = json!({
                "user": caller,
                "roles": spec.roles.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
                "deaf": false,
                "mute": false,
                "flags": 0,
                "joined_at": "2024-01-01T00:00:00.000000+00:00",
                "permissions": "2248473465835073",
                "nick": null,
                "pending": false,
            });
        }
        None => {
            d["context"] = json!(1);
            d["app_permissions"] = json!("2248473465835073");
            d["user"] = caller;
        }
    }
    d
}

/// A Message object as webhook and channel endpoints return it.
#[allow(clippy::too_many_arguments)]
pub fn message(
    base: &str,
    id: u64,
    channel_id: u64,
    app_id: u64,
    content: &str,
    embeds: &[Value],
    files: &[FileRecord],
    interaction_reply: bool,
    timestamp: &str,
) -> Value {
    let attachments: Vec<Value> = files
        .iter()
        .enumerate()
        .map(|(n, f)| {
            let url = format!("{base}/attachments/{channel_id}/{id}/{}", f.filename);
            json!({
                "id": (id + n as u64 + 1).to_string(),
                "filename": f.filename,
                "size": f.size,
                "url": url,
                "proxy_url": url,
                "content_type": f.content_type,
            })
        })
        .collect();
    let mut m = json!({
        "id": id.to_string(),
        "channel_id": channel_id.to_string(),
        "author": {"id": app_id.to_string(), "username": BOT_NAME, "discriminator": "0",
                   "avatar": null, "bot": true},
        "content": content,
        "timestamp": timestamp,
        "edited_timestamp": null,
        "tts": false,
        "mention_everyone": false,
        "mentions": [],
        "mention_roles": [],
        "attachments": attachments,
        "embeds": embeds,
        "pinned": false,
        "type": if interaction_reply { 20 } else { 0 },
        "flags": 0,
    });
    if interaction_reply {
        m["webhook_id"] = json!(app_id.to_string());
        m["application_id"] = json!(app_id.to_string());
    }
    m
}

/// A registered application command as `PUT …/commands` returns it.
pub fn command(app_id: u64, id: u64, guild_id: Option<u64>, body: &Value) -> Value {
    let mut c = body.clone();
    if !c.is_object() {
        c = json!({});
    }
    c["id"] = json!(id.to_string());
    c["application_id"] = json!(app_id.to_string());
    c["version"] = json!(id.to_string());
    if c.get("type").is_none() {
        c["type"] = json!(1);
    }
    if c.get("description").is_none() {
        c["description"] = json!("");
    }
    c["guild_id"] = guild_id.map_or(Value::Null, |g| json!(g.to_string()));
    c
}

/// `GET /oauth2/applications/@me`.
pub fn application(app_id: u64) -> Value {
    json!({
        "id": app_id.to_string(),
        "name": BOT_NAME,
        "icon": null,
        "description": "keyshard (simulated)",
        "bot_public": true,
        "bot_require_code_grant": false,
        "verify_key": "0000000000000000000000000000000000000000000000000000000000000000",
        "flags": 0,
        "owner": {"id": "100000000000000042", "username": "owner", "discriminator": "0",
                  "avatar": null},
        "team": null,
        "summary": "",
    })
}

/// A Discord error body.
pub fn error(code: u32, message: &str) -> Value {
    json!({"code": code, "message": message})
}

/// RFC 3339 UTC timestamp for Unix milliseconds (Discord's message timestamp format).
pub fn timestamp(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let millis = unix_ms % 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{millis:03}000+00:00",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day); Howard Hinnant's `civil_from_days`.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000+00:00");
        assert_eq!(
            timestamp(1_462_015_105_796),
            "2016-04-30T11:18:25.796000+00:00"
        );
    }
}

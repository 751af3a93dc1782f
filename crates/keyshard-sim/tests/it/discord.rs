//! The fake Discord alone: gateway handshake, broadcast, callbacks, webhooks, resume, files.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use keyshard_sim::discord::{
    DiscordConfig, FakeDiscord, GatewayRules, InteractionSpec, MessageKind,
};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Generous bound for one loopback frame on a loaded CI box; only a broken fake waits it out.
pub(crate) const FRAME_DEADLINE: Duration = Duration::from_secs(5);

pub(crate) fn http() -> reqwest::Client {
    keyshard_sim::http_client()
}

/// The fake without the IDENTIFY rate rule (these tests open sessions back to back; the
/// session rules have their own tests in `gateway`).
async fn fake() -> FakeDiscord {
    FakeDiscord::start(DiscordConfig {
        gateway: GatewayRules {
            identify_window: Duration::ZERO,
            ..GatewayRules::default()
        },
        ..DiscordConfig::default()
    })
    .await
    .unwrap()
}

/// Opens instance `instance`'s gateway the way serenity finds it: `GET /gateway`, then `?v=10`.
pub(crate) async fn connect(fake: &FakeDiscord, instance: u32) -> Ws {
    let url: Value = http()
        .get(format!("{}/api/v10/gateway", fake.api_base(instance)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = url["url"].as_str().unwrap().to_string();
    assert_eq!(url, fake.gateway_url(instance));
    let (ws, _) = tokio_tungstenite::connect_async(format!("{url}?v=10"))
        .await
        .unwrap();
    ws
}

/// The next text frame as JSON (heartbeat ACKs included).
pub(crate) async fn recv(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(FRAME_DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("socket open")
            .expect("no websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Close(frame) => panic!("closed: {frame:?}"),
            _ => {}
        }
    }
}

pub(crate) async fn send(ws: &mut Ws, v: Value) {
    ws.send(Message::Text(v.to_string().into())).await.unwrap();
}

/// HELLO, IDENTIFY, READY; returns the READY frame.
async fn identify(ws: &mut Ws) -> Value {
    let hello = recv(ws).await;
    assert_eq!(hello["op"], 10);
    assert!(hello["d"]["heartbeat_interval"].as_u64().unwrap() > 0);
    send(
        ws,
        json!({"op": 2, "d": {"token": "sim-discord-token", "intents": 0, "compress": true,
                              "shard": [0, 1], "properties": {}}}),
    )
    .await;
    let ready = recv(ws).await;
    assert_eq!(
        (ready["op"].as_u64(), ready["t"].as_str()),
        (Some(0), Some("READY"))
    );
    ready
}

fn callback_url(fake: &FakeDiscord, instance: u32, id: u64, token: &str) -> String {
    // Serenity writes its query strings as `?&k=v`; the fake must ignore that.
    format!(
        "{}/api/v10/interactions/{id}/{token}/callback?&with_response=false",
        fake.api_base(instance)
    )
}

#[tokio::test]
async fn identify_gets_ready_and_heartbeats_are_acked() {
    let fake = fake().await;
    let mut ws = connect(&fake, 1).await;
    let ready = identify(&mut ws).await;
    assert_eq!(ready["s"], 1);
    let app = fake.config().application_id;
    let parsed: serenity::model::gateway::Ready =
        serde_json::from_value(ready["d"].clone()).expect("serenity parses READY");
    assert_eq!(parsed.application.id.get(), app);
    assert!(ready["d"]["resume_gateway_url"]
        .as_str()
        .unwrap()
        .ends_with("/i/1/gateway"));

    send(&mut ws, json!({"op": 1, "d": 1})).await;
    assert_eq!(recv(&mut ws).await["op"], 11);
    fake.wait_sessions(1, FRAME_DEADLINE).await.unwrap();
    assert_eq!(fake.gateway_stats(1).identifies, 1);
}

#[tokio::test]
async fn interactions_reach_every_session_and_parse_as_serenity_interactions() {
    let fake = fake().await;
    let mut a = connect(&fake, 1).await;
    let mut b = connect(&fake, 2).await;
    identify(&mut a).await;
    identify(&mut b).await;
    fake.wait_sessions(2, FRAME_DEADLINE).await.unwrap();

    let user = 287_346_512_981_229_568;
    let friend = 300_111_222_333_444_555;
    let sent = fake.send_interaction(
        InteractionSpec::guild("채팅", user)
            .string("메시지", "안녕")
            .bool("비공개", true)
            .user("대상", friend),
    );
    let mut delivered = sent.delivered_to.clone();
    delivered.sort();
    assert_eq!(delivered, vec![1, 2]);
    for ws in [&mut a, &mut b] {
        let frame = recv(ws).await;
        assert_eq!(
            (frame["t"].as_str(), frame["s"].as_u64()),
            (Some("INTERACTION_CREATE"), Some(2))
        );
        let it: serenity::model::application::Interaction =
            serde_json::from_value(frame["d"].clone()).expect("serenity parses the interaction");
        let cmd = it.command().expect("a chat-input command");
        assert_eq!(cmd.id.get(), sent.id);
        assert_eq!(cmd.data.name, "채팅");
        assert_eq!(cmd.user.id.get(), user);
        assert!(cmd.member.is_some());
        assert_eq!(cmd.data.options.len(), 3);
        assert!(cmd.data.resolved.users.contains_key(&friend.into()));
    }

    let dm = fake.send_interaction(InteractionSpec::dm("핑", user));
    let frame = recv(&mut a).await;
    assert_eq!(frame["s"], 3);
    let it: serenity::model::application::Interaction =
        serde_json::from_value(frame["d"].clone()).unwrap();
    let cmd = it.command().unwrap();
    assert_eq!(
        (cmd.id.get(), cmd.guild_id, cmd.member.is_none()),
        (dm.id, None, true)
    );
    assert_eq!(cmd.user.id.get(), user);
    // The snowflake is "now", read by serenity: its time matches the dispatch to the second.
    let created_s = cmd.id.created_at().unix_timestamp() as u64;
    let rec = fake.interaction(dm.id).unwrap();
    assert!((rec.sent_unix_ms / 1000).abs_diff(created_s) <= 1);
}

#[tokio::test]
async fn first_callback_wins_later_ones_get_40060_and_edits_are_recorded() {
    let fake = fake().await;
    let sent = fake.send_interaction(InteractionSpec::guild("핑", 42));
    let http = http();

    let first = http
        .post(callback_url(&fake, 3, sent.id, &sent.token))
        .json(&json!({"type": 4, "data": {"content": "퐁! instance 3"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), 204);
    let second = http
        .post(callback_url(&fake, 1, sent.id, &sent.token))
        .json(&json!({"type": 4, "data": {"content": "퐁! instance 1"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 400);
    let body: Value = second.json().await.unwrap();
    assert_eq!(body["code"], 40060);

    let unknown = http
        .post(callback_url(&fake, 1, sent.id, "not-a-token"))
        .json(&json!({"type": 4, "data": {"content": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], 10062);

    let calls = fake.rest_calls();
    assert_eq!(calls.get(&(3, "callback")), Some(&1));
    assert_eq!(calls.get(&(1, "callback")), Some(&2));
    let rec = fake.interaction(sent.id).unwrap();
    assert_eq!(rec.acked_by(), Some(3));
    assert_eq!(rec.duplicate_acks(), 1);
    assert_eq!(rec.callbacks[1].error_code, Some(40060));
    let done = rec.completion().unwrap();
    assert_eq!((done.instance, done.failed), (3, false));

    // The original response can be read back and edited; both return a full Message.
    let app = fake.config().application_id;
    let url = format!(
        "{}/api/v10/webhooks/{app}/{}/messages/@original",
        fake.api_base(3),
        sent.token
    );
    let edited = http
        .patch(&url)
        .json(&json!({"content": "⚠️ 수정됨"}))
        .send()
        .await
        .unwrap();
    assert_eq!(edited.status(), 200);
    let msg: serenity::model::channel::Message = edited.json().await.unwrap();
    assert_eq!(msg.content, "⚠️ 수정됨");
    let got: serenity::model::channel::Message =
        http.get(&url).send().await.unwrap().json().await.unwrap();
    assert_eq!(got.id, msg.id);
    let rec = fake.interaction(sent.id).unwrap();
    assert_eq!(rec.messages.len(), 1);
    assert_eq!(rec.messages[0].kind, MessageKind::EditOriginal);
}

#[tokio::test]
async fn a_callback_after_the_ack_window_gets_10062() {
    let window = Duration::from_millis(150);
    let fake = FakeDiscord::start(DiscordConfig {
        ack_window: window,
        ..DiscordConfig::default()
    })
    .await
    .unwrap();
    let sent = fake.send_interaction(InteractionSpec::guild("핑", 7));
    // The rule is about elapsed time itself, so the test waits for that time to pass.
    tokio::time::sleep_until((sent.sent_at + window + Duration::from_millis(50)).into()).await;
    let resp = http()
        .post(callback_url(&fake, 1, sent.id, &sent.token))
        .json(&json!({"type": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.json::<Value>().await.unwrap()["code"], 10062);
    let rec = fake.interaction(sent.id).unwrap();
    assert_eq!(rec.acked_by(), None);
    assert_eq!(rec.late_acks(window), 1);
}

#[tokio::test]
async fn webhooks_need_an_ack_and_die_with_the_token() {
    let ttl = Duration::from_millis(300);
    let fake = FakeDiscord::start(DiscordConfig {
        token_ttl: ttl,
        ..DiscordConfig::default()
    })
    .await
    .unwrap();
    let http = http();
    let app = fake.config().application_id;
    let sent = fake.send_interaction(InteractionSpec::guild("채팅", 9));
    let followup = format!("{}/api/v10/webhooks/{app}/{}", fake.api_base(2), sent.token);

    let early = http
        .post(&followup)
        .json(&json!({"content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(early.status(), 404, "no webhook before the first response");

    let ack = http
        .post(callback_url(&fake, 2, sent.id, &sent.token))
        .json(&json!({"type": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 204);
    assert!(fake.interaction(sent.id).unwrap().completion().is_none());
    let ok = http
        .post(&followup)
        .json(&json!({"content": "답"}))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let _: serenity::model::channel::Message = ok.json().await.unwrap();

    tokio::time::sleep_until((sent.sent_at + ttl + Duration::from_millis(50)).into()).await;
    let expired = http
        .post(&followup)
        .json(&json!({"content": "늦음"}))
        .send()
        .await
        .unwrap();
    assert_eq!(expired.status(), 401);
    assert_eq!(expired.json::<Value>().await.unwrap()["code"], 50027);

    let rec = fake.interaction(sent.id).unwrap();
    let statuses: Vec<u16> = rec.messages.iter().map(|m| m.status).collect();
    assert_eq!(statuses, vec![404, 200, 401]);
    assert_eq!(rec.completion().unwrap().instance, 2);
}

#[tokio::test]
async fn multipart_files_are_recorded() {
    let fake = fake().await;
    let http = http();
    let app = fake.config().application_id;
    let sent = fake.send_interaction(InteractionSpec::guild("이미지", 11));

    // A first response with a file goes as multipart too.
    let form = reqwest::multipart::Form::new()
        .text("payload_json", json!({"type": 4, "data": {"content": "그림", "attachments": [{"id": 0, "filename": "a.png"}]}}).to_string())
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(vec![7u8; 1234])
                .file_name("a.png")
                .mime_str("image/png")
                .unwrap(),
        );
    let resp = http
        .post(callback_url(&fake, 4, sent.id, &sent.token))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);

    let form = reqwest::multipart::Form::new()
        .text("payload_json", json!({"content": "영상"}).to_string())
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(vec![1u8; 4096])
                .file_name("clip.mp4")
                .mime_str("video/mp4")
                .unwrap(),
        );
    let resp = http
        .post(format!(
            "{}/api/v10/webhooks/{app}/{}",
            fake.api_base(4),
            sent.token
        ))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let msg: serenity::model::channel::Message = resp.json().await.unwrap();
    assert_eq!(msg.attachments.len(), 1);
    assert_eq!(msg.attachments[0].size, 4096);

    let rec = fake.interaction(sent.id).unwrap();
    let f = &rec.callbacks[0].files[0];
    assert_eq!(
        (f.field.as_str(), f.filename.as_str(), f.size),
        ("files[0]", "a.png", 1234)
    );
    assert_eq!(f.content_type.as_deref(), Some("image/png"));
    let f = &rec.messages[0].files[0];
    assert_eq!((f.filename.as_str(), f.size), ("clip.mp4", 4096));
    assert_eq!(f.content_type.as_deref(), Some("video/mp4"));

    // A file above the advertised limit is refused the way Discord refuses it.
    let form = reqwest::multipart::Form::new()
        .text("payload_json", json!({"content": "big"}).to_string())
        .part(
            "files[0]",
            reqwest::multipart::Part::bytes(vec![
                0u8;
                keyshard_sim::discord::ATTACHMENT_SIZE_LIMIT + 1
            ])
            .file_name("big.bin"),
        );
    let resp = http
        .post(format!(
            "{}/api/v10/webhooks/{app}/{}",
            fake.api_base(4),
            sent.token
        ))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn a_dropped_session_resumes_and_gets_what_it_missed() {
    let fake = fake().await;
    let mut ws = connect(&fake, 2).await;
    let ready = identify(&mut ws).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_string();
    let before = fake.send_interaction(InteractionSpec::guild("핑", 1));
    assert_eq!(recv(&mut ws).await["s"], 2);

    fake.drop_session(2);
    let closed = tokio::time::timeout(FRAME_DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(closed, Some(4000));
    let missed: Vec<u64> = (0..2)
        .map(|n| {
            fake.send_interaction(InteractionSpec::guild("핑", 100 + n))
                .id
        })
        .collect();

    let mut ws = connect(&fake, 2).await;
    assert_eq!(recv(&mut ws).await["op"], 10);
    send(
        &mut ws,
        json!({"op": 6, "d": {"token": "sim-discord-token", "session_id": session_id, "seq": 2}}),
    )
    .await;
    for (n, id) in missed.iter().enumerate() {
        let frame = recv(&mut ws).await;
        assert_eq!(frame["t"], "INTERACTION_CREATE");
        assert_eq!(frame["s"].as_u64(), Some(3 + n as u64));
        assert_eq!(frame["d"]["id"].as_str().unwrap(), id.to_string());
    }
    let resumed = recv(&mut ws).await;
    assert_eq!(
        (resumed["t"].as_str(), resumed["s"].as_u64()),
        (Some("RESUMED"), Some(5))
    );
    assert_eq!(fake.gateway_stats(2).resumes, 1);
    assert_ne!(before.id, missed[0]);

    // An unknown session cannot resume: the client is told to identify again.
    let mut other = connect(&fake, 3).await;
    assert_eq!(recv(&mut other).await["op"], 10);
    send(
        &mut other,
        json!({"op": 6, "d": {"token": "t", "session_id": "nope", "seq": 1}}),
    )
    .await;
    let invalid = recv(&mut other).await;
    assert_eq!(
        (invalid["op"].as_u64(), invalid["d"].as_bool()),
        (Some(9), Some(false))
    );
}

#[tokio::test]
async fn commands_are_registered_with_ids_and_used_in_interactions() {
    let fake = fake().await;
    let app = fake.config().application_id;
    let resp = http()
        .put(format!(
            "{}/api/v10/applications/{app}/commands",
            fake.api_base(1)
        ))
        .json(&json!([
            {"name": "핑", "description": "지연 시간", "type": 1, "options": []},
            {"name": "채팅", "description": "대화", "type": 1,
             "options": [{"type": 3, "name": "메시지", "description": "내용", "required": true}]},
        ]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cmds: Vec<serenity::model::application::Command> = resp.json().await.unwrap();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[1].options.len(), 1);
    let registered = fake.commands();
    assert_eq!(registered.len(), 2);
    assert_eq!(registered[0].instance, 1);

    let mut ws = connect(&fake, 1).await;
    identify(&mut ws).await;
    fake.send_interaction(InteractionSpec::guild("채팅", 5).string("메시지", "hi"));
    let frame = recv(&mut ws).await;
    assert_eq!(
        frame["d"]["data"]["id"].as_str().unwrap(),
        cmds[1].id.to_string()
    );
}

#[tokio::test]
async fn channel_messages_are_attributed_and_wait_for_wakes_on_change() {
    let fake = fake().await;
    let http = http();
    let sent = fake.send_interaction(InteractionSpec::guild("비디오", 77));
    let ack = http
        .post(callback_url(&fake, 1, sent.id, &sent.token))
        .json(&json!({"type": 5}))
        .send()
        .await
        .unwrap();
    assert_eq!(ack.status(), 204);

    let waiter = {
        let fake = fake.clone();
        let id = sent.id;
        tokio::spawn(async move {
            fake.wait_for(
                |recs| recs.iter().any(|r| r.id == id && r.is_completed()),
                FRAME_DEADLINE,
            )
            .await
        })
    };
    let resp = http
        .post(format!(
            "{}/api/v10/channels/{}/messages",
            fake.api_base(2),
            keyshard_sim::discord::SIM_CHANNEL_ID
        ))
        .json(&json!({"content": "<@77> 영상이 준비됐어요"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(waiter.await.unwrap(), "wait_for saw the completion");
    let rec = fake.interaction(sent.id).unwrap();
    assert_eq!(rec.messages[0].kind, MessageKind::Channel);
    assert_eq!(rec.completion().unwrap().instance, 2);

    // A message nobody can be attributed to is kept apart, and an unknown route is recorded.
    let resp = http
        .post(format!("{}/api/v10/channels/5/messages", fake.api_base(2)))
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(fake.unattributed_messages().len(), 1);
    let resp = http
        .get(format!("{}/api/v10/guilds/1/roles", fake.api_base(2)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(fake.unknown_routes().len(), 1);
}

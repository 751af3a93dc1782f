//! The fake Discord's session rules: `GET /gateway/bot`, one IDENTIFY per bucket per window,
//! the day's session starts and the token reset, 4011 for a bot that must shard, delivery by
//! shard, invalidations, the close handshake, and the count of command registrations.

use std::time::Duration;

use futures::StreamExt;
use keyshard_sim::discord::{
    DiscordConfig, FakeDiscord, GatewayRules, InteractionSpec, SIM_GUILD_ID,
};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::discord::{connect, http, recv, send, Ws, FRAME_DEADLINE};

async fn fake_with(rules: GatewayRules) -> FakeDiscord {
    FakeDiscord::start(DiscordConfig {
        gateway: rules,
        ..DiscordConfig::default()
    })
    .await
    .unwrap()
}

/// Rules without the rate rule, for tests about something else.
fn unlimited() -> GatewayRules {
    GatewayRules {
        identify_window: Duration::ZERO,
        ..GatewayRules::default()
    }
}

/// HELLO, then IDENTIFY as `shard` of `total`; returns the answer (READY or op 9).
async fn identify_as(ws: &mut Ws, shard: u32, total: u32) -> Value {
    assert_eq!(recv(ws).await["op"], 10, "HELLO first");
    send(
        ws,
        json!({"op": 2, "d": {"token": "sim-discord-token", "intents": 0,
                              "shard": [shard, total], "properties": {}}}),
    )
    .await;
    recv(ws).await
}

async fn session(fake: &FakeDiscord, instance: u32, shard: u32, total: u32) -> (Ws, Value) {
    let mut ws = connect(fake, instance).await;
    let ready = identify_as(&mut ws, shard, total).await;
    assert_eq!(ready["t"], "READY", "{ready}");
    (ws, ready)
}

/// The close code the server sends next (skipping other frames), or `None` if the socket
/// ends without one.
async fn close_code(ws: &mut Ws) -> Option<u16> {
    tokio::time::timeout(FRAME_DEADLINE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                _ => return None,
            }
        }
    })
    .await
    .expect("the socket closes within the deadline")
}

async fn gateway_bot(fake: &FakeDiscord, instance: u32) -> Value {
    http()
        .get(format!("{}/api/v10/gateway/bot", fake.api_base(instance)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn is_invalid_session(frame: &Value, resumable: bool) -> bool {
    frame["op"] == 9 && frame["d"] == resumable
}

#[tokio::test]
async fn gateway_bot_reports_the_scenarios_limits_and_each_identify_spends_one() {
    let fake = fake_with(GatewayRules {
        recommended_shards: 4,
        identify_remaining: 20,
        identify_reset_after: Duration::from_secs(3_600),
        max_concurrency: 2,
        ..unlimited()
    })
    .await;
    let bot = gateway_bot(&fake, 1).await;
    assert_eq!(bot["url"], fake.gateway_url(1));
    assert_eq!(bot["shards"], 4);
    let limit = &bot["session_start_limit"];
    assert_eq!(
        (
            &limit["total"],
            &limit["remaining"],
            &limit["max_concurrency"]
        ),
        (&json!(1000), &json!(20), &json!(2))
    );
    let reset = limit["reset_after"].as_u64().unwrap();
    assert!((3_500_000..=3_600_000).contains(&reset), "{reset}");
    // Serenity reads it with its own types.
    let parsed: serenity::model::gateway::BotGateway = serde_json::from_value(bot).unwrap();
    assert_eq!(parsed.session_start_limit.max_concurrency, 2);

    let _s = session(&fake, 1, 0, 4).await;
    assert_eq!(
        gateway_bot(&fake, 2).await["session_start_limit"]["remaining"],
        19
    );
    assert_eq!(fake.session_start_limit().remaining, 19);
}

#[tokio::test]
async fn one_identify_per_bucket_per_window_and_op_9_for_another() {
    let window = Duration::from_millis(300);
    let fake = fake_with(GatewayRules {
        max_concurrency: 2,
        identify_window: window,
        ..GatewayRules::default()
    })
    .await;
    let (_a, _) = session(&fake, 1, 0, 2).await;
    let first = tokio::time::Instant::now();
    // Shard 0 again (bucket 0) within the window: refused, not counted.
    let mut b = connect(&fake, 2).await;
    let refused = identify_as(&mut b, 0, 2).await;
    assert!(is_invalid_session(&refused, false), "{refused}");
    // Shard 1 is bucket 1: its own slot.
    let (_c, _) = session(&fake, 2, 1, 2).await;
    assert_eq!(fake.gateway_stats(2).invalid_sessions, 1);
    assert_eq!(fake.gateway_stats(2).identifies, 1);

    // The rule is about time: once the window since the first has passed, bucket 0 is free.
    tokio::time::sleep_until(first + window).await;
    let (_d, _) = session(&fake, 3, 0, 2).await;
    assert_eq!(fake.session_start_limit().remaining, 997);
}

#[tokio::test]
async fn when_the_days_starts_run_out_the_token_is_reset_and_every_session_ends() {
    let fake = fake_with(GatewayRules {
        identify_remaining: 1,
        ..unlimited()
    })
    .await;
    let (mut a, ready) = session(&fake, 1, 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_string();
    let mut b = connect(&fake, 2).await;
    assert_eq!(recv(&mut b).await["op"], 10);
    send(
        &mut b,
        json!({"op": 2, "d": {"token": "t", "intents": 0, "shard": [0, 1]}}),
    )
    .await;
    assert_eq!(close_code(&mut b).await, Some(4004));
    assert_eq!(close_code(&mut a).await, Some(4004), "every session ends");
    assert!(fake.token_reset());

    // The token stays dead: a RESUME fails authentication too.
    let mut c = connect(&fake, 1).await;
    assert_eq!(recv(&mut c).await["op"], 10);
    send(
        &mut c,
        json!({"op": 6, "d": {"token": "t", "session_id": session_id, "seq": 1}}),
    )
    .await;
    assert_eq!(close_code(&mut c).await, Some(4004));
}

#[tokio::test]
async fn a_bot_past_its_guild_count_must_shard() {
    let fake = fake_with(GatewayRules {
        bot_guilds: 3_000,
        ..unlimited()
    })
    .await;
    let mut unsharded = connect(&fake, 1).await;
    assert_eq!(recv(&mut unsharded).await["op"], 10);
    send(
        &mut unsharded,
        json!({"op": 2, "d": {"token": "t", "intents": 0, "shard": [0, 1]}}),
    )
    .await;
    assert_eq!(close_code(&mut unsharded).await, Some(4011));
    assert_eq!(fake.gateway_stats(1).sharding_required, 1);
    // Two shards hold 1,500 guilds each.
    let (_ok, _) = session(&fake, 1, 1, 2).await;
    // A shard outside 0..num_shards is refused.
    let mut bad = connect(&fake, 1).await;
    assert_eq!(recv(&mut bad).await["op"], 10);
    send(
        &mut bad,
        json!({"op": 2, "d": {"token": "t", "intents": 0, "shard": [2, 2]}}),
    )
    .await;
    assert_eq!(close_code(&mut bad).await, Some(4010));
}

#[tokio::test]
async fn a_guilds_interactions_go_to_its_shard_and_dms_to_shard_0() {
    let fake = fake_with(unlimited()).await;
    let (mut zero, _) = session(&fake, 1, 0, 2).await;
    let (mut one, _) = session(&fake, 1, 1, 2).await;
    // A guild on shard 1 ((id >> 22) % 2 == 1), and the simulated guild's own shard.
    let guild_on_one = (SIM_GUILD_ID >> 22 | 1) << 22;
    let mut on_one = InteractionSpec::guild("핑", 7);
    on_one.guild_id = Some(guild_on_one);
    let a = fake.send_interaction(on_one);
    let b = fake.send_interaction(InteractionSpec::dm("핑", 8));
    assert_eq!(
        a.delivered_to,
        vec![1],
        "one session of the instance gets it"
    );
    // Each socket's next dispatch is the one for its shard: shard 0 never saw the guild's.
    let first_on_one = recv(&mut one).await;
    assert_eq!(first_on_one["d"]["id"], a.id.to_string());
    let first_on_zero = recv(&mut zero).await;
    assert_eq!(first_on_zero["d"]["id"], b.id.to_string());
    assert!(first_on_zero["d"].get("guild_id").is_none());
}

#[tokio::test]
async fn an_invalidated_session_resumes_when_resumable_and_identifies_again_when_not() {
    let fake = fake_with(unlimited()).await;
    let (mut ws, ready) = session(&fake, 1, 0, 1).await;
    let session_id = ready["d"]["session_id"].as_str().unwrap().to_string();

    assert_eq!(fake.invalidate_sessions(1, true), 1);
    assert!(is_invalid_session(&recv(&mut ws).await, true));
    let missed = fake.send_interaction(InteractionSpec::guild("핑", 3));
    let mut again = connect(&fake, 1).await;
    assert_eq!(recv(&mut again).await["op"], 10);
    send(
        &mut again,
        json!({"op": 6, "d": {"token": "t", "session_id": session_id, "seq": 1}}),
    )
    .await;
    assert_eq!(recv(&mut again).await["d"]["id"], missed.id.to_string());
    assert_eq!(recv(&mut again).await["t"], "RESUMED");

    assert_eq!(fake.invalidate_sessions(1, false), 1);
    assert!(is_invalid_session(&recv(&mut again).await, false));
    let mut late = connect(&fake, 1).await;
    assert_eq!(recv(&mut late).await["op"], 10);
    send(
        &mut late,
        json!({"op": 6, "d": {"token": "t", "session_id": session_id, "seq": 2}}),
    )
    .await;
    assert!(is_invalid_session(&recv(&mut late).await, false));
    let stats = fake.gateway_stats(1);
    assert_eq!((stats.invalidated, stats.invalid_sessions), (2, 1));
}

#[tokio::test]
async fn a_close_frame_is_answered_and_only_1000_ends_the_session() {
    let fake = fake_with(unlimited()).await;
    let (mut bye, _) = session(&fake, 1, 0, 1).await;
    let (mut brb, ready) = session(&fake, 2, 0, 1).await;
    let brb_id = ready["d"]["session_id"].as_str().unwrap().to_string();

    bye.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    assert_eq!(close_code(&mut bye).await, Some(1000), "the fake echoes");
    brb.close(Some(CloseFrame {
        code: CloseCode::Library(4000),
        reason: "".into(),
    }))
    .await
    .unwrap();
    assert_eq!(close_code(&mut brb).await, Some(4000));
    // Counted before the echo went out.
    assert_eq!(fake.gateway_stats(1).clean_closes, 1);
    assert_eq!(fake.gateway_stats(2).clean_closes, 1);
    let sessions = fake.sessions();
    assert!(
        sessions.iter().all(|s| s.instance != 1),
        "1000 ends the session: {sessions:?}"
    );
    // 4000 leaves it resumable.
    let mut back = connect(&fake, 2).await;
    assert_eq!(recv(&mut back).await["op"], 10);
    send(
        &mut back,
        json!({"op": 6, "d": {"token": "t", "session_id": brb_id, "seq": 1}}),
    )
    .await;
    assert_eq!(recv(&mut back).await["t"], "RESUMED");
}

#[tokio::test]
async fn command_registrations_are_counted_per_instance() {
    let fake = fake_with(unlimited()).await;
    let app = fake.config().application_id;
    for instance in [1, 1, 3] {
        let resp = http()
            .put(format!(
                "{}/api/v10/applications/{app}/commands",
                fake.api_base(instance)
            ))
            .json(&json!([{"name": "핑", "description": "d", "type": 1}]))
            .send()
            .await
            .unwrap();
        assert!(resp.status().is_success());
    }
    assert_eq!(
        (
            fake.command_puts(1),
            fake.command_puts(2),
            fake.command_puts(3)
        ),
        (2, 0, 1)
    );
    assert_eq!(fake.command_puts_total(), 3);
}

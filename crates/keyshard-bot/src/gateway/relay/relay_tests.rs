//! The relay between a websocket client (standing in for serenity) and the fake Discord.

use super::*;
use keyshard_sim::discord::{DiscordConfig, FakeDiscord};
use tokio::sync::Semaphore;

/// A gate the test opens by hand, counting what asked it.
struct Hand {
    permits: Semaphore,
    asked: std::sync::Mutex<Vec<u32>>,
}

impl Gate for Arc<Hand> {
    fn acquire(&self, shard: u32) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        self.asked.lock().unwrap().push(shard);
        let me = self.clone();
        Box::pin(async move {
            me.permits.acquire().await.unwrap().forget();
        })
    }
}

type Client = gateway_ws::WebSocketStream<gateway_ws::MaybeTlsStream<TcpStream>>;

/// Generous for one loopback frame on a loaded CI box; only a broken relay waits it out.
const FRAME: Duration = Duration::from_secs(5);

struct Setup {
    fake: FakeDiscord,
    hand: Arc<Hand>,
    board: Arc<ShardBoard>,
    relay: Relay,
}

async fn setup(permits: usize) -> Setup {
    let fake = FakeDiscord::start(DiscordConfig::quick()).await.unwrap();
    let hand = Arc::new(Hand {
        permits: Semaphore::new(permits),
        asked: Default::default(),
    });
    let board = Arc::new(ShardBoard::default());
    board.plan(2);
    let relay = Relay::start(
        fake.gateway_url(1),
        Arc::new(hand.clone()),
        board.clone(),
        None,
    )
    .await
    .unwrap();
    Setup {
        fake,
        hand,
        board,
        relay,
    }
}

/// Connects the way serenity does (`ws_url` + `?v=10`) and reads HELLO.
async fn connect(relay: &Relay) -> Client {
    let (mut ws, _) = gateway_ws::connect_async(format!("{}?v=10", relay.url()))
        .await
        .unwrap();
    assert_eq!(recv(&mut ws).await["op"], 10, "HELLO passes at once");
    ws
}

async fn recv(ws: &mut Client) -> serde_json::Value {
    loop {
        let msg = tokio::time::timeout(FRAME, ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("no error");
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

async fn send(ws: &mut Client, v: serde_json::Value) {
    ws.send(Message::Text(v.to_string())).await.unwrap();
}

fn identify(shard: u32) -> serde_json::Value {
    serde_json::json!({"op": 2, "d": {"token": "t", "shard": [shard, 2], "intents": 0}})
}

async fn next_close(ws: &mut Client) -> Option<u16> {
    match tokio::time::timeout(FRAME, ws.next())
        .await
        .expect("in time")
    {
        Some(Ok(Message::Close(f))) => f.map(|f| u16::from(f.code)),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn heartbeats_flow_while_an_identify_is_held_and_other_frames_wait_behind_it() {
    let s = setup(0).await;
    let mut ws = connect(&s.relay).await;
    send(&mut ws, identify(1)).await;
    // Held: a heartbeat still gets its ACK from Discord, the IDENTIFY has not gone out.
    send(&mut ws, serde_json::json!({"op": 1, "d": null})).await;
    assert_eq!(recv(&mut ws).await["op"], 11);
    send(
        &mut ws,
        serde_json::json!({"op": 3, "d": {"status": "online"}}),
    )
    .await;
    assert_eq!(s.fake.gateway_stats(1).identifies, 0);
    assert_eq!(*s.hand.asked.lock().unwrap(), vec![1]);

    s.hand.permits.add_permits(1);
    let ready = recv(&mut ws).await;
    assert_eq!(ready["t"], "READY");
    assert_eq!(ready["d"]["shard"], serde_json::json!([1, 2]));
    assert_eq!(s.fake.gateway_stats(1).identifies, 1);
    assert_eq!(s.board.views().await[1].identifies, 1);
}

#[tokio::test]
async fn a_resume_is_not_held_and_a_dropped_socket_stays_resumable() {
    let s = setup(1).await;
    let mut ws = connect(&s.relay).await;
    send(&mut ws, identify(0)).await;
    let ready = recv(&mut ws).await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    s.board.session(&session, 0);
    // Serenity drops a socket without a close frame when it resumes on a new one: the
    // relay closes upstream with 4000, which keeps the session.
    drop(ws);
    let missed = s
        .fake
        .send_interaction(keyshard_sim::discord::InteractionSpec::dm("핑", 5));
    let mut again = connect(&s.relay).await;
    send(
        &mut again,
        serde_json::json!({"op": 6, "d": {"token": "t", "session_id": session, "seq": 1}}),
    )
    .await;
    assert_eq!(recv(&mut again).await["d"]["id"], missed.id.to_string());
    assert_eq!(recv(&mut again).await["t"], "RESUMED");
    assert_eq!(
        s.hand.asked.lock().unwrap().len(),
        1,
        "only the IDENTIFY asked"
    );
    assert_eq!(s.fake.gateway_stats(1).resumes, 1);
    assert_eq!(s.board.views().await[0].resumes, 1);
}

#[tokio::test]
async fn a_close_from_the_shard_is_answered_after_discords() {
    let s = setup(1).await;
    let mut ws = connect(&s.relay).await;
    send(&mut ws, identify(0)).await;
    recv(&mut ws).await;
    ws.close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
    .await
    .unwrap();
    assert_eq!(next_close(&mut ws).await, Some(1000));
    assert_eq!(s.fake.gateway_stats(1).clean_closes, 1);
    assert!(s.fake.sessions().is_empty(), "1000 ended the session");
}

#[tokio::test]
async fn close_all_ends_every_session_on_both_sides() {
    let s = setup(2).await;
    let mut a = connect(&s.relay).await;
    let mut b = connect(&s.relay).await;
    send(&mut a, identify(0)).await;
    send(&mut b, identify(1)).await;
    recv(&mut a).await;
    recv(&mut b).await;
    s.relay.close_all(Duration::from_secs(5)).await;
    assert_eq!(next_close(&mut a).await, Some(1000));
    assert_eq!(next_close(&mut b).await, Some(1000));
    assert_eq!(s.fake.gateway_stats(1).clean_closes, 2);
    assert!(s.fake.sessions().is_empty());
}

//! A job is picked only when its provider lane can send it: with more chat worker slots than
//! the key's rate serves, a heavy user's picked chats do not park inside the lane's pacing
//! ahead of a light user's, who is served by the next send.

use std::time::Duration;

use keyshard_sim::discord::InteractionSpec;

use crate::commands::user_on;
use crate::support::{Setup, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_users_chat_takes_the_next_send_not_the_place_after_picked_heavy_ones() {
    // Eight chat slots, but one request per two seconds: a slot frees long before the lane
    // can send again, and every interaction below arrives before it does.
    let mut setup = Setup::new(1).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        p.chat_words = 12;
        p.stream_gap = Duration::from_millis(10);
    }
    for (k, v) in [
        ("OPENAI_CONCURRENCY", "8"),
        ("OPENAI_RPM", "1"),
        ("OPENAI_WINDOW_SECS", "2"),
        ("MAX_WAIT_SECS_CHAT", "0"),
    ] {
        setup.env.push((k.to_owned(), v.to_owned()));
    }
    let mut c = TestCluster::setup(setup).await;
    let (heavy, light) = (user_on(1, 1), user_on(1, 2));
    let mut ids = Vec::new();
    for k in 0..7 {
        let spec = InteractionSpec::guild("채팅", heavy).string("질문", &format!("질문 {k}"));
        ids.push(c.discord.send_interaction(spec).id);
    }
    let light_id = c
        .discord
        .send_interaction(InteractionSpec::guild("채팅", light).string("질문", "나도"))
        .id;
    ids.push(light_id);
    let mut done = Vec::new();
    for id in &ids {
        let r = c.wait_final(*id, Duration::from_secs(60)).await;
        let at = r.sent_at + Duration::from_secs_f64(r.completion().unwrap().after_ms / 1000.0);
        done.push((at, *id));
    }
    done.sort();
    let rank = done.iter().position(|(_, id)| *id == light_id).unwrap();
    // Picking on a free slot alone took every heavy chat at once, to wait in the lane's
    // pacing, where the light one, picked when the first ended, joined six waiters and got a
    // send at random among them (rank 1 one run in seven). Picked once the lane can send, it
    // takes the send after the first: the heavy user has just been served.
    assert_eq!(
        rank, 1,
        "the light user's chat finished at rank {rank}: {done:?}"
    );
    c.procs.shutdown().await;
}

//! A job is picked only when its provider lane can send it: with more chat worker slots than
//! the key's rate serves, a heavy user's picked chats do not park inside the lane's pacing
//! ahead of a light user's, who is served by the next send.

use std::time::Duration;

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
    let (rank, done) = super::fair::light_chat_rank(&mut c, 7).await;
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

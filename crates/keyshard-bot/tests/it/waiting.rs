//! Honest waiting end to end, through a real instance, the fake Discord and the fake
//! providers: a job that waits behind others has its deferred reply edited with its place in
//! the queue, then answered, and no waiting edit follows the answer; a job that starts at
//! once is never edited as waiting.

use std::time::Duration;

use keyshard_bot::replies::progress::QUEUED_PREFIX;
use keyshard_sim::discord::{InteractionSpec, WAITING_PREFIX};

use crate::commands::user_on;
use crate::support::{Setup, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reply_shows_its_place_then_the_answer_and_nothing_after() {
    assert_eq!(
        QUEUED_PREFIX, WAITING_PREFIX,
        "the simulator reads the bot's mark"
    );
    // One chat worker, answers of ~300 words streamed 15 ms apart (about 4.5 s each), no
    // maximum wait: of four chats from four users, the first starts at once and the last
    // waits about three answers' time, long past the first edit's 3 s, with two or three
    // jobs ahead of it at first.
    let mut setup = Setup::new(1).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        p.chat_words = 300;
        p.stream_gap = Duration::from_millis(15);
    }
    setup.env.extend(
        [("OPENAI_CONCURRENCY", "1"), ("MAX_WAIT_SECS_CHAT", "0")]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
    );
    let mut c = TestCluster::setup(setup).await;
    // The first chat is running before the others are sent, and each of those is queued
    // (acknowledged) before the next: the queue's order is the sending order.
    let mut ids = Vec::new();
    for k in 1..=4 {
        let spec = InteractionSpec::guild("채팅", user_on(1, k)).string("질문", "기다려요");
        let id = c.discord.send_interaction(spec).id;
        let running = c
            .discord
            .wait_for(
                |records| {
                    records.iter().any(|r| {
                        r.id == id && r.ack().is_some() && (k > 1 || !r.messages.is_empty())
                    })
                },
                Duration::from_secs(20),
            )
            .await;
        assert!(
            running,
            "chat {k} not acknowledged (or, the first, not running)"
        );
        ids.push(id);
    }
    let last = ids[3];
    // The last chat's reply says where it stands while it waits …
    let placed = c
        .discord
        .wait_for(
            |records| {
                records.iter().any(|r| {
                    r.id == last
                        && r.waiting_edits()
                            .any(|m| m.content.as_deref().is_some_and(|t| t.contains("앞에")))
                })
            },
            Duration::from_secs(30),
        )
        .await;
    assert!(placed, "{:#?}", c.discord.interaction(last));
    // … and then gets its answer. Every chat is answered; by the time the last one is, each
    // earlier answer has stood through at least one pass of the waiting edits.
    let mut records = Vec::new();
    for id in &ids {
        records.push(c.wait_final(*id, Duration::from_secs(60)).await);
    }
    for r in &records {
        assert_eq!(r.waiting_edits_after_answer(), 0, "{r:#?}");
        let last_message = r.messages.iter().rfind(|m| m.accepted()).unwrap();
        assert!(
            !last_message
                .content
                .as_deref()
                .is_some_and(|t| t.starts_with('⏳')),
            "the answer is what the reply shows last: {r:#?}"
        );
        assert!(!r.has_duplicate_answer());
    }
    assert_eq!(
        records[0].waiting_edits().count(),
        0,
        "the first chat started at once: {:#?}",
        records[0]
    );
    assert!(records[3].waiting_edits().count() >= 1);
    c.procs.shutdown().await;
}

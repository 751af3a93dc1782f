//! Fair share and honest refusal end to end, through a real instance, the fake Discord and the
//! fake providers: a job whose expected wait is past `MAX_WAIT_SECS_CHAT` is refused at once
//! (an ephemeral 🚦 answer, no job, no provider call), and a heavy user's queued chats do not
//! hold back a light user's.

use std::time::Duration;

use keyshard_bot::replies::progress::WAIT_REFUSED_PREFIX;
use keyshard_sim::discord::InteractionSpec;

use crate::commands::user_on;
use crate::support::{Setup, TestCluster};

/// One instance with fake providers and the given extra env.
async fn one_instance(env: &[(&str, &str)], chat_words: usize) -> TestCluster {
    let mut setup = Setup::new(1).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        p.chat_words = chat_words;
        p.stream_gap = Duration::from_millis(10);
    }
    setup
        .env
        .extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    TestCluster::setup(setup).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_expected_to_wait_past_the_maximum_is_refused_at_once() {
    // One second of patience: once the instance has a measured chat rate (one answer within
    // the rate's 5 s minimum span is at most 0.2/s), a new chat is expected to take 5 s or
    // more, which is past it. The first chat, with no rate known yet, is queued.
    let mut c = one_instance(&[("MAX_WAIT_SECS_CHAT", "1")], 12).await;
    let user = user_on(1, 1);
    let first = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "첫 질문"))
        .await;
    assert_eq!(first.ack().unwrap().kind, 5, "queued: a deferred reply");
    assert!(!first.completion().unwrap().refused_wait);
    let chats_before = c.providers.as_ref().unwrap().fakes().stats().total_ok;

    let second = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "두 번째"))
        .await;
    let ack = second.ack().unwrap();
    assert_eq!(ack.kind, 4, "answered in the acknowledgement itself");
    assert!(ack.ephemeral, "only the user sees the refusal");
    let text = ack.content.clone().unwrap_or_default();
    assert!(text.starts_with(WAIT_REFUSED_PREFIX), "{text}");
    assert!(
        text.contains("예상 대기 시간 약"),
        "says the expected wait: {text}"
    );
    assert!(second.completion().unwrap().refused_wait);
    assert!(
        second.messages.is_empty(),
        "no job ran: {:?}",
        second.messages
    );
    assert!(ack.after_ms < 3_000.0, "told at once: {} ms", ack.after_ms);
    assert_eq!(
        c.providers.as_ref().unwrap().fakes().stats().total_ok,
        chats_before,
        "no provider call for a refused job"
    );
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_heavy_users_queue_does_not_hold_back_a_light_users_chat() {
    // One chat worker, answers of ~60 words streamed 10 ms apart (about a second each), and
    // no maximum wait: six chats of one user queue behind each other, then one of another.
    let mut c = one_instance(
        &[("OPENAI_CONCURRENCY", "1"), ("MAX_WAIT_SECS_CHAT", "0")],
        60,
    )
    .await;
    let (rank, done) = light_chat_rank(&mut c, 6).await;
    // First come, first served would answer the light user last (rank 6). With the fair pick
    // it runs as soon as the job running when it arrived is done (rank 1); rank 2 leaves room
    // for the light chat to be queued only after the heavy user's second job was picked, on a
    // slow machine: still within one job's service time.
    assert!(
        rank <= 2,
        "the light user's chat finished at rank {rank}: {done:?}"
    );
    c.procs.shutdown().await;
}

/// Sends `heavy_chats` chats of one user, then one of another (both on instance 1), waits for
/// every answer, and returns the light chat's place in the order they finished (0: first),
/// with that order for the failure message.
pub(crate) async fn light_chat_rank(c: &mut TestCluster, heavy_chats: usize) -> (usize, String) {
    let (heavy, light) = (user_on(1, 1), user_on(1, 2));
    let mut ids = Vec::new();
    for k in 0..heavy_chats {
        let spec = InteractionSpec::guild("채팅", heavy).string("질문", &format!("질문 {k}"));
        ids.push(c.discord.send_interaction(spec).id);
    }
    // The light user's chat comes after the heavy ones in the queue, not merely on the wire.
    c.wait_jobs_queued(1, "chat", heavy_chats as u64).await;
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
    (rank, format!("{done:?}"))
}

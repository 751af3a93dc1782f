//! Every command end to end through four real instances, the fake Discord and the fake
//! providers, checking the content, embeds and attachments Discord received; and a queued job
//! whose arguments cannot be read, which the user is told about.

use std::collections::HashSet;
use std::time::Duration;

use keyshard_bot::replies;
use keyshard_routing::primary;
use keyshard_sim::cluster::ADMIN_USER_ID;
use keyshard_sim::discord::{InteractionSpec, MessageKind, SIM_CHANNEL_ID};
use keyshard_sim::providers::FailurePlan;
use keyshard_sim::wiring::ScenarioProviders;

use crate::support::{final_messages, final_text, Setup, TestCluster};

/// A user whose primary is instance `p` of 4 (the base is a multiple of 4).
pub(crate) fn user_on(p: u32, k: u64) -> u64 {
    1_160_000_000_000_000_000 + k * 4 + u64::from(p - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_streams_splits_and_remembers_across_instances() {
    let mut setup = Setup::new(4).with_providers();
    // ~450 words: the answer streams for a few seconds (edits about once a second) and is
    // longer than one Discord message.
    if let Some(p) = setup.providers.as_mut() {
        p.chat_words = 450;
        p.stream_gap = std::time::Duration::from_millis(6);
    }
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(2, 1);
    assert_eq!(primary(user, 4), 2);

    let r = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "고양이에 대해 알려줘"))
        .await;
    assert_eq!(r.acked_by(), Some(2));
    assert_eq!(r.ack().unwrap().kind, 5, "a provider command defers");
    let streaming: Vec<_> = r
        .messages
        .iter()
        .filter(|m| m.content.as_deref().is_some_and(|c| c.ends_with('▌')))
        .collect();
    assert!(
        !streaming.is_empty(),
        "no streaming edit before the answer: {:#?}",
        r.messages
    );
    // Let the follow-ups land (they follow the final edit within milliseconds).
    let id = r.id;
    c.discord
        .wait_for(
            |rs| {
                rs.iter().any(|r| {
                    r.id == id
                        && r.messages
                            .iter()
                            .any(|m| m.kind == MessageKind::Followup && m.accepted())
                })
            },
            Duration::from_secs(5),
        )
        .await;
    let r = c.discord.interaction(id).unwrap();
    let parts: Vec<String> = final_messages(&r)
        .filter_map(|m| m.content.clone())
        .collect();
    assert!(
        parts.len() >= 2,
        "a long answer continues in follow-ups: {parts:?}"
    );
    assert!(parts.iter().all(|p| p.chars().count() <= 2000));
    assert!(
        parts[0].starts_with("Fake answer about 고양이에 대해 알려줘"),
        "{}",
        parts[0]
    );
    assert_eq!(c.conversation_len(user, SIM_CHANNEL_ID).await, 2);

    // The primary goes away; the next turn is served by instance 3 and continues the same
    // conversation from Redis. (Killed once its job is acknowledged: a job killed between its
    // answer and its acknowledgement is rescued and run again, which saves the turn twice.)
    c.wait_jobs_done(2).await;
    c.procs.kill(2).await.unwrap();
    let r = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "더 알려줘"))
        .await;
    assert_eq!(r.acked_by(), Some(3));
    assert!(final_text(&r).starts_with("Fake answer about 더 알려줘"));
    assert_eq!(
        c.conversation_len(user, SIM_CHANNEL_ID).await,
        4,
        "the second turn joined the first"
    );

    // 새대화 starts over.
    let _ = c
        .ask(
            InteractionSpec::guild("채팅", user)
                .string("질문", "처음부터")
                .bool("새대화", true),
        )
        .await;
    assert_eq!(c.conversation_len(user, SIM_CHANNEL_ID).await, 2);
    let fakes = c.providers.as_ref().unwrap().fakes().stats();
    assert_eq!(
        fakes.total_429, 0,
        "the client stays under the fake keys' limits"
    );
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_comes_as_attachment_with_embed_and_falls_back_past_a_bad_key() {
    let mut setup = Setup::new(4).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        // Every instance's OpenAI key is rejected: an OpenAI image must fall back to the next
        // image provider on the same instance.
        p.failures = FailurePlan {
            bad_keys: (1..=4)
                .map(|i| format!("sim-openai-key-{i}"))
                .collect::<HashSet<_>>(),
            ..p.failures.clone()
        };
    }
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(4, 2);

    let r = c
        .ask(
            InteractionSpec::guild("이미지", user)
                .string("설명", "노을 지는 바다")
                .string("모델", "stability")
                .string("비율", "16:9"),
        )
        .await;
    let answer = final_messages(&r)
        .next()
        .unwrap_or_else(|| panic!("no final message: {r:#?}"));
    assert_eq!(answer.instance, 4);
    assert_eq!(answer.files.len(), 1, "{answer:#?}");
    assert!(answer.files[0].filename.ends_with(".png"));
    assert!(answer.files[0].size > 0);
    let embed = &answer.embeds[0];
    assert_eq!(embed["description"], "노을 지는 바다");
    let fields = embed["fields"].to_string();
    assert!(
        fields.contains("Stability") || fields.contains("stability"),
        "{fields}"
    );
    assert!(
        fields.contains("#4") && fields.contains("16:9") && fields.contains("초"),
        "{fields}"
    );
    assert_eq!(
        embed["image"]["url"],
        format!("attachment://{}", answer.files[0].filename)
    );
    // The request was counted in the cluster's Redis (the providers' daily store), under
    // instance 4's Stability key named by its fingerprint only.
    let rpd_key = format!(
        "{}:rpd:stability:{}:{}",
        c.cluster_name,
        keyshard_providers::Secret::new("sim-stability-key-4").fingerprint(),
        keyshard_providers::UtcDay::of(std::time::SystemTime::now())
    );
    let mut conn = redis::Client::open(c.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let counted: Option<u64> = redis::cmd("GET")
        .arg(&rpd_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(counted, Some(1), "{rpd_key}");

    let r = c
        .ask(
            InteractionSpec::guild("이미지", user)
                .string("설명", "달빛 고양이")
                .string("모델", "openai"),
        )
        .await;
    let answer = final_messages(&r)
        .next()
        .unwrap_or_else(|| panic!("no final message: {r:#?}"));
    assert_eq!(
        answer.files.len(),
        1,
        "fell back to another provider: {answer:#?}"
    );
    let fields = answer.embeds[0]["fields"].to_string().to_lowercase();
    assert!(
        fields.contains("minimax"),
        "the next provider after openai is minimax: {fields}"
    );
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn video_shows_progress_then_comes_as_an_attachment() {
    let mut c = TestCluster::setup(Setup::new(4).with_providers()).await;
    let user = user_on(1, 3);
    let r = c
        .ask(InteractionSpec::guild("비디오", user).string("설명", "파도 타는 강아지"))
        .await;
    assert!(
        r.messages.iter().any(|m| m
            .content
            .as_deref()
            .is_some_and(|t| t.starts_with("⏳ 영상"))),
        "progress edits: {:#?}",
        r.messages
    );
    let answer = final_messages(&r)
        .next()
        .unwrap_or_else(|| panic!("no final message: {r:#?}"));
    assert_eq!(
        (answer.kind, answer.instance),
        (MessageKind::EditOriginal, 1)
    );
    assert_eq!(answer.files.len(), 1);
    assert!(answer.files[0].filename.ends_with(".mp4"));
    assert!(answer
        .content
        .as_deref()
        .unwrap()
        .contains("영상이 완성됐어요"));
    c.procs.shutdown().await;
}

/// Sends `/비디오` for `user` and waits until instance `owner` reports it rendering (the task
/// is created and its id saved).
pub(crate) async fn video_rendering_on(c: &TestCluster, user: u64, owner: u32) -> u64 {
    let id = c
        .discord
        .send_interaction(InteractionSpec::guild("비디오", user).string("설명", "구출되는 영상"))
        .id;
    let rendering = c
        .discord
        .wait_for(
            |records| {
                records.iter().any(|r| {
                    r.id == id
                        && r.messages.iter().any(|m| {
                            m.instance == owner
                                && m.content.as_deref().is_some_and(|t| {
                                    t.starts_with("⏳ 영상 대기 중")
                                        || t.starts_with("⏳ 영상 생성 중")
                                })
                        })
                })
            },
            Duration::from_secs(20),
        )
        .await;
    assert!(
        rendering,
        "instance {owner} never reported the video rendering"
    );
    id
}

/// Slow videos (three 2 s steps): time to kill the owner while its video renders.
pub(crate) fn slow_videos(instances: u32) -> Setup {
    let mut setup = Setup::new(instances).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        p.video_step = Duration::from_secs(2);
    }
    setup
}

/// The instance rendering a video dies. A peer rescues the job, its own MiniMax key (another
/// account) does not know the saved task, so it starts the video again: the user still gets
/// exactly one video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rescued_video_starts_again_with_the_rescuers_key() {
    let mut c = TestCluster::setup(slow_videos(4)).await;
    let id = video_rendering_on(&c, user_on(1, 5), 1).await;
    c.procs.kill(1).await.unwrap();

    let r = c.wait_final(id, Duration::from_secs(30)).await;
    let finals: Vec<_> = final_messages(&r).collect();
    assert_eq!(finals.len(), 1, "{:#?}", r.messages);
    assert_ne!(finals[0].instance, 1);
    assert_eq!(finals[0].files.len(), 1);
    assert!(finals[0].files[0].filename.ends_with(".mp4"));
    // The rescuer asked for the saved task once, was told it is unknown, and made its own:
    // two tasks, instance 1's (lost with its account) and the rescuer's.
    let stats = c.providers.as_ref().unwrap().fakes().stats();
    let key = |i: u32| stats.key("minimax", &ScenarioProviders::key("minimax", i));
    assert_eq!((key(1).ok, key(1).not_found), (1, 0));
    let rescuers = (2..=4).map(key);
    assert_eq!(
        rescuers.fold((0, 0), |(ok, nf), k| (ok + k.ok, nf + k.not_found)),
        (1, 1)
    );
    c.procs.shutdown().await;
}

/// The instance rendering a video dies and comes back with the same key before anyone else
/// could take it (it is alone): it resumes the saved task, and no second video is paid for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_resumes_its_video_task_without_a_second_one() {
    let mut c = TestCluster::setup(slow_videos(1)).await;
    let id = video_rendering_on(&c, user_on(1, 6), 1).await;
    c.procs.kill(1).await.unwrap();
    c.procs.restart(1).await.unwrap();

    let r = c.wait_final(id, Duration::from_secs(30)).await;
    let finals: Vec<_> = final_messages(&r).collect();
    assert_eq!(finals.len(), 1, "{:#?}", r.messages);
    assert_eq!(finals[0].files.len(), 1);
    let stats = c.providers.as_ref().unwrap().fakes().stats();
    let k = stats.key("minimax", &ScenarioProviders::key("minimax", 1));
    assert_eq!((k.ok, k.not_found), (1, 0), "one task, resumed");
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_after_the_token_died_goes_to_the_channel_mentioning_the_user() {
    let mut setup = Setup::new(4).with_providers();
    // Tokens die after 1 s here while the video takes about 1.8 s (three 600 ms steps).
    setup.discord.token_ttl = Duration::from_secs(1);
    if let Some(p) = setup.providers.as_mut() {
        p.video_step = Duration::from_millis(600);
    }
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(2, 3);
    let r = c
        .ask(InteractionSpec::guild("비디오", user).string("설명", "느린 영상"))
        .await;
    let answer = final_messages(&r)
        .next()
        .unwrap_or_else(|| panic!("no final message: {r:#?}"));
    assert_eq!(answer.kind, MessageKind::Channel, "{:#?}", r.messages);
    assert!(answer
        .content
        .as_deref()
        .unwrap()
        .starts_with(&format!("<@{user}>")));
    assert_eq!(answer.files.len(), 1);
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_short_korean_message_and_nothing_crashes() {
    let mut c = TestCluster::setup(Setup::new(4).with_providers()).await;
    let user = user_on(3, 4);

    let empty = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "   "))
        .await;
    let ack = empty.ack().unwrap();
    assert!(ack.ephemeral && ack.kind == 4);
    assert!(final_text(&empty).starts_with("⚠️ 내용을 입력해 주세요"));

    let long = c
        .ask(InteractionSpec::guild("이미지", user).string("설명", "가".repeat(1_501).as_str()))
        .await;
    assert!(long.ack().unwrap().ephemeral);
    assert!(
        final_text(&long).starts_with("⚠️ 입력이 너무 길어요. 1500자"),
        "{}",
        final_text(&long)
    );

    let rejected = c
        .ask(InteractionSpec::guild("채팅", user).string("질문", "fake:content 나쁜 말"))
        .await;
    assert!(
        final_text(&rejected).starts_with("⚠️ 요청하신 내용은 AI 제공사의 안전 정책"),
        "{}",
        final_text(&rejected)
    );

    let down = c
        .ask(InteractionSpec::guild("비디오", user).string("설명", "fake:500 서버 오류"))
        .await;
    assert!(
        final_text(&down).starts_with("⚠️ AI 서비스가 지금 응답하지 않아요"),
        "{}",
        final_text(&down)
    );

    // A user option Discord could not resolve (here: a raw string where a user belongs).
    let unknown = c
        .ask(InteractionSpec::guild("할당", ADMIN_USER_ID).string("사용자", "not-a-user"))
        .await;
    assert!(
        final_text(&unknown).starts_with("⚠️ 해당 사용자를 찾을 수 없어요"),
        "{}",
        final_text(&unknown)
    );

    // Every instance is still up and answering.
    for p in 1..=4 {
        let r = c.ask(InteractionSpec::guild("핑", user_on(p, 9))).await;
        assert_eq!(r.acked_by(), Some(p));
    }
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_show_the_cluster_and_refuse_non_admins() {
    let mut c = TestCluster::setup(Setup::new(4).with_providers()).await;
    // Some traffic for the statistics.
    for k in 0..8 {
        let _ = c
            .ask(
                InteractionSpec::guild("이미지", user_on((k % 4) as u32 + 1, k))
                    .string("설명", "통계용 그림"),
            )
            .await;
    }

    c.wait_stats("image", 8).await;

    let lb = c
        .ask(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID))
        .await;
    let embed = &lb.ack().unwrap().embeds[0];
    let fields = embed["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 4, "{embed}");
    for (i, f) in fields.iter().enumerate() {
        assert!(
            f["name"]
                .as_str()
                .unwrap()
                .starts_with(&format!("#{} 🟢 정상", i + 1)),
            "{f}"
        );
        assert!(f["value"].as_str().unwrap().contains("키 잔량"), "{f}");
    }

    let target = user_on(2, 77);
    let assign = c
        .ask(InteractionSpec::guild("할당", ADMIN_USER_ID).user("사용자", target))
        .await;
    let fields = assign.ack().unwrap().embeds[0]["fields"].to_string();
    assert!(
        fields.contains("기본 인스턴스") && fields.contains("#2"),
        "{fields}"
    );
    assert!(fields.contains("그대로 맡아요"), "{fields}");

    let perf = c.ask(InteractionSpec::guild("성능", ADMIN_USER_ID)).await;
    let embed = &perf.ack().unwrap().embeds[0];
    assert!(embed["title"].as_str().unwrap().starts_with("📈 성능"));
    let fields = embed["fields"].to_string();
    assert!(fields.contains("image: p50"), "{fields}");

    let denied = c
        .ask(InteractionSpec::guild("로드밸런서", user_on(1, 5)))
        .await;
    assert_eq!(
        final_text(&denied),
        "⚠️ 관리자만 사용할 수 있는 명령어예요."
    );
    assert!(denied.ack().unwrap().ephemeral);
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_view_still_answers_while_redis_is_down() {
    let mut c = TestCluster::start(2).await;
    c.wait_converged(2).await;
    c.redis.kill();

    // The admin's primary answers by the static rule, from its last membership snapshot.
    let lb = c
        .ask(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID))
        .await;
    let embed = &lb.ack().unwrap().embeds[0];
    let description = embed["description"].as_str().unwrap();
    assert!(
        description.starts_with("⚠️ Redis에 연결할 수 없어")
            && description.contains("전에 읽은 상태"),
        "{embed}"
    );
    let fields = embed["fields"].as_array().unwrap();
    assert_eq!(fields.len(), 2, "{embed}");
    assert!(
        fields[0]["name"]
            .as_str()
            .unwrap()
            .starts_with("#1 🟢 정상"),
        "{embed}"
    );

    c.redis.restart();
    c.wait_converged(2).await;
    let lb = c
        .ask(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID))
        .await;
    let description = lb.ack().unwrap().embeds[0]["description"].to_string();
    assert!(
        !description.contains("Redis에 연결할 수 없어"),
        "{description}"
    );
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_arguments_cannot_be_read_is_answered_with_an_error() {
    let c = TestCluster::start(1).await;
    // An interaction the instance has acknowledged, so its token can edit the reply: a /핑,
    // which queues no job and so leaves no done marker behind.
    let user = user_on(1, 7);
    let sent = c
        .discord
        .send_interaction(InteractionSpec::guild("핑", user));
    c.wait_final(sent.id, Duration::from_secs(10)).await;
    // The job of that interaction, as an instance of another version might have queued it:
    // a ratio this version does not know.
    let job = serde_json::json!({
        "id": sent.id, "kind": "image", "token": sent.token,
        "application_id": c.discord.config().application_id, "user_id": user,
        "channel_id": SIM_CHANNEL_ID, "guild_id": null,
        "args": {"model": null, "prompt": "고양이", "ratio": "7:3"},
        "created_ms": keyshard_routing::created_at_ms(sent.id), "attachment_limit": 8 << 20,
        "origin": 1, "tried": [], "attempt": 0
    });
    let client = redis::Client::open(c.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(format!("{}:jobs:1:image", c.cluster_name))
        .arg("*")
        .arg("job")
        .arg(job.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();

    let told = c
        .discord
        .wait_for(
            |rs| {
                rs.iter().any(|r| {
                    r.id == sent.id
                        && r.messages.iter().any(|m| {
                            m.kind == MessageKind::EditOriginal
                                && m.accepted()
                                && m.content.as_deref() == Some(replies::JOB_UNREADABLE)
                        })
                })
            },
            Duration::from_secs(10),
        )
        .await;
    assert!(
        told,
        "the user was not told: {:#?}",
        c.discord.interaction(sent.id)
    );
    c.wait_failed("image", 1).await;
    c.wait_jobs_done(1).await;
}

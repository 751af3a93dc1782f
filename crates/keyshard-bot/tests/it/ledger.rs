//! The usage ledger end to end: real instances against a private Redis, a private Postgres,
//! the fake Discord and the fake providers. Every kind of answer gets one row with its fields;
//! a job rescued from a killed instance gets one row; an instance killed between its answer
//! and its claim confirmation gets its row recorded by the fallback that swept its claim, and
//! one killed (or stalled) between its acknowledgement and its job's queueing gets its job
//! queued by that fallback;
//! `/사용량` for a user and for an admin, `/성능`'s ledger lines, and `keyshard usage` /
//! `keyshard migrate`. (Postgres restarted under load: `scenarios`.)

use std::process::Command;
use std::time::Duration;

use keyshard_routing::primary;
use keyshard_sim::cluster::ADMIN_USER_ID;
use keyshard_sim::discord::{InteractionRecord, InteractionSpec, SIM_GUILD_ID};

use crate::commands::{slow_videos, user_on, video_rendering_on};
use crate::support::{final_messages, final_text, Row, Setup, TestCluster};

fn row(rows: &[Row], id: u64) -> &Row {
    rows.iter()
        .find(|r| r.interaction_id == id)
        .unwrap_or_else(|| panic!("no row for {id}: {rows:#?}"))
}

/// Waits until Discord has taken instance 1's acknowledgement of interaction `id`.
async fn wait_acked_by_1(c: &TestCluster, id: u64) {
    let acked = c
        .discord
        .wait_for(
            |rs| rs.iter().any(|r| r.id == id && r.acked_by() == Some(1)),
            Duration::from_secs(5),
        )
        .await;
    assert!(acked, "instance 1 acknowledged");
}

/// The sweeper (instance 2) tried to acknowledge and Discord said "already acknowledged".
fn assert_instance_2_heard_40060(r: &InteractionRecord) {
    assert!(
        r.callbacks
            .iter()
            .any(|cb| cb.instance == 2 && cb.error_code == Some(40060)),
        "the sweeper tried and heard 40060: {:?}",
        r.callbacks
    );
}

/// The rollup counts each row once (no double counting between the two tables).
fn assert_rollup_counts_rows(c: &TestCluster) {
    let out = keyshard_testkit::psql(
        c.database_url(),
        "SELECT (SELECT count(*) FROM ledger), (SELECT sum(interactions) FROM ledger_daily)",
    )
    .unwrap();
    let (rows, rolled) = out.trim().split_once('|').unwrap();
    assert_eq!(rows, rolled, "rows vs rollup");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_answer_has_one_row_with_its_fields() {
    let mut c = TestCluster::setup(Setup::new(4).with_providers().with_ledger()).await;
    let ping = c.ask(InteractionSpec::guild("핑", user_on(2, 1))).await;
    let dm = c.ask(InteractionSpec::dm("핑", user_on(3, 2))).await;
    let chat = c
        .ask(InteractionSpec::guild("채팅", user_on(3, 3)).string("질문", "안녕하세요"))
        .await;
    let image = c
        .ask(
            InteractionSpec::guild("이미지", user_on(1, 4))
                .string("설명", "고양이")
                .string("모델", "minimax"),
        )
        .await;
    let video = c
        .ask(InteractionSpec::guild("비디오", user_on(4, 5)).string("설명", "바다"))
        .await;
    let refused = c
        .ask(InteractionSpec::guild("채팅", user_on(2, 6)).string("질문", "   "))
        .await;
    let not_admin = c
        .ask(InteractionSpec::guild("로드밸런서", user_on(1, 7)))
        .await;
    let admin = c
        .ask(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID))
        .await;
    let all = [
        &ping, &dm, &chat, &image, &video, &refused, &not_admin, &admin,
    ];
    let ids: Vec<u64> = all.iter().map(|r| r.id).collect();
    let rows = c.wait_rows(&ids).await;
    assert_eq!(rows.len(), ids.len(), "one row each");

    for r in all {
        let got = row(&rows, r.id);
        assert_eq!(got.served_by, r.completion().unwrap().instance, "{got:?}");
        assert_eq!(got.primary, primary(r.user_id, 4));
        assert_eq!(
            (got.reason, got.rescued, got.stolen, got.moved),
            (0, false, false, false)
        );
        assert!(
            got.ack_ms.is_some_and(|a| (0..3_000).contains(&a)),
            "{got:?}"
        );
        assert!(got.finish_ms >= got.ack_ms.unwrap(), "{got:?}");
    }

    let p = row(&rows, ping.id);
    assert_eq!((p.command.as_str(), p.status, p.served_by), ("ping", 0, 2));
    assert_eq!(p.guild_id, Some(SIM_GUILD_ID));
    assert_eq!((&p.provider, p.cost_micros, p.start_ms), (&None, 0, None));
    assert_eq!(row(&rows, dm.id).guild_id, None, "a DM has no guild");

    let ch = row(&rows, chat.id);
    assert_eq!(ch.command, "chat");
    assert_eq!(ch.provider.as_deref(), Some("openai"));
    assert_eq!(ch.model.as_deref(), Some("gpt-4o-mini"));
    assert!(ch.tokens_in > 0 && ch.tokens_out > 0, "{ch:?}");
    assert!(ch.cost_micros > 0, "{ch:?}");
    let fp = ch.key_fp.as_deref().unwrap();
    assert!(
        fp.len() == 12 && fp.chars().all(|c| c.is_ascii_hexdigit()),
        "{fp}"
    );
    assert!(ch.start_ms.unwrap() >= ch.ack_ms.unwrap(), "{ch:?}");
    assert!(ch.provider_ms.is_some(), "{ch:?}");

    let im = row(&rows, image.id);
    assert_eq!(
        (
            im.command.as_str(),
            im.provider.as_deref(),
            im.model.as_deref(),
            im.images
        ),
        ("image", Some("minimax"), Some("image-01"), 1)
    );
    assert_eq!(im.cost_micros, 3_500, "image-01 at $0.0035");

    let vi = row(&rows, video.id);
    assert_eq!(
        (vi.model.as_deref(), vi.video_secs, vi.cost_micros),
        (Some("MiniMax-Hailuo-02"), 6, 6 * 46_700)
    );
    assert_ne!(vi.key_fp, im.key_fp, "each instance names its own key");

    let re = row(&rows, refused.id);
    assert_eq!((re.status, re.error_class.as_deref()), (2, Some("input")));
    let na = row(&rows, not_admin.id);
    assert_eq!(
        (na.command.as_str(), na.status, na.error_class.as_deref()),
        ("loadbalancer", 2, Some("not_admin"))
    );
    assert_eq!(row(&rows, admin.id).status, 0);
    assert_rollup_counts_rows(&c);
    c.procs.shutdown().await;
}

/// A video job whose instance dies while it renders is rescued and answered by a peer: one
/// row, the rescuer's, marked rescued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_rescued_from_a_killed_instance_has_one_row() {
    let mut c = TestCluster::setup(slow_videos(4).with_ledger()).await;
    let id = video_rendering_on(&c, user_on(1, 5), 1).await;
    c.procs.kill(1).await.unwrap();
    let r = c.wait_final(id, Duration::from_secs(30)).await;
    let answered_by = final_messages(&r).next().unwrap().instance;
    let rows = c.wait_rows(&[id]).await;
    assert_eq!(rows.len(), 1);
    let got = &rows[0];
    assert_eq!(got.served_by, answered_by);
    assert_ne!(got.served_by, 1);
    assert!(got.rescued && !got.stolen, "{got:?}");
    assert_eq!((got.primary, got.reason, got.status), (1, 0, 0));
    assert_eq!(got.video_secs, 6);
    assert_rollup_counts_rows(&c);
    c.procs.shutdown().await;
}

/// Instance 1 answers a `/핑` and is killed before it can confirm its claim (Discord holds
/// its callback's answer): the claim lapses, instance 2 sweeps it, hears "already answered",
/// and records the row on instance 1's behalf.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_direct_answer_whose_instance_died_before_confirming_is_recovered_by_the_sweeper() {
    let mut setup = Setup::new(2).with_ledger();
    setup.discord.callback_delay = Some((1, Duration::from_secs(3)));
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(1, 11);
    let id = c
        .discord
        .send_interaction(InteractionSpec::guild("핑", user))
        .id;
    wait_acked_by_1(&c, id).await;
    c.procs.kill(1).await.unwrap();
    let rows = c.wait_rows(&[id]).await;
    assert_eq!(rows.len(), 1);
    let got = &rows[0];
    assert_eq!(
        (got.served_by, got.reason, got.command.as_str()),
        (1, 6, "ping"),
        "recorded by the sweeper for the instance that answered: {got:?}"
    );
    let r = c.discord.interaction(id).unwrap();
    assert_eq!(r.acked_by(), Some(1));
    assert_instance_2_heard_40060(&r);
    c.procs.shutdown().await;
}

/// A `/채팅` whose claim instance 1 holds and acknowledges, with Discord holding the answer
/// to its deferral for 3 s, longer than the claim's pending life (instance 1 cannot queue the
/// job before it hears that answer): instance 2 sweeps the lapsed claim and hears "already
/// acknowledged". Started with instance 1 killed or not.
async fn slow_deferral_of_a_chat(kill: bool) -> (TestCluster, u64) {
    let mut setup = Setup::new(2).with_providers().with_ledger();
    setup.discord.callback_delay = Some((1, Duration::from_secs(3)));
    let mut c = TestCluster::setup(setup).await;
    let spec = InteractionSpec::guild("채팅", user_on(1, 12)).string("질문", "안녕");
    let id = c.discord.send_interaction(spec).id;
    wait_acked_by_1(&c, id).await;
    if kill {
        c.procs.kill(1).await.unwrap();
    }
    (c, id)
}

/// The answer of [`slow_deferral_of_a_chat`]: once, by instance 2's job, with one row that
/// says the job was queued by the sweeper (`recovered`), after instance 2 heard 40060.
async fn assert_answered_once_by_the_sweeper(c: &TestCluster, id: u64) {
    let r = c.wait_final(id, Duration::from_secs(20)).await;
    let finals: Vec<u32> = final_messages(&r).map(|m| m.instance).collect();
    assert_eq!(finals, [2], "one answer, from the sweeper's job");
    assert_instance_2_heard_40060(&r);
    let rows = c.wait_rows(&[id]).await;
    assert_eq!(rows.len(), 1);
    let got = &rows[0];
    assert_eq!(
        (got.served_by, got.reason, got.command.as_str(), got.status),
        (2, 6, "chat", 0),
        "{got:?}"
    );
}

/// Instance 1 is killed between its acknowledgement and its job's queueing: the sweeper
/// queues the job itself, and the user gets the answer (before, the interaction stayed
/// "thinking" for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_instance_died_between_its_ack_and_its_queueing_is_queued_by_the_sweeper() {
    let (mut c, id) = slow_deferral_of_a_chat(true).await;
    assert_answered_once_by_the_sweeper(&c, id).await;
    c.procs.shutdown().await;
}

/// Instance 1 lives on: when it hears its deferral was accepted, the claim is the sweeper's,
/// and it queues nothing (the claim's confirmation and the job's queueing are one script).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_owner_whose_claim_was_swept_queues_no_second_job() {
    let (mut c, id) = slow_deferral_of_a_chat(false).await;
    assert_answered_once_by_the_sweeper(&c, id).await;
    c.wait_log(1, "the sweeper queues the job").await;
    let added = c.jobs_ever_queued(1, "chat").await;
    assert_eq!(added, 0, "instance 1 queued no job of its own");
    let r = c.discord.interaction(id).unwrap();
    assert_eq!(final_messages(&r).count(), 1, "{r:#?}");
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_for_a_user_an_admin_and_the_cli() {
    let mut c = TestCluster::setup(Setup::new(2).with_ledger()).await;
    let (a, b) = (user_on(1, 21), user_on(2, 22));
    let mut ids = Vec::new();
    for user in [a, a, a, b] {
        ids.push(c.ask(InteractionSpec::guild("핑", user)).await.id);
    }
    c.wait_rows(&ids).await;

    // A user: their own today and this month, in an embed only they see.
    let own = c.ask(InteractionSpec::guild("사용량", a)).await;
    assert_eq!(
        own.ack().unwrap().kind,
        5,
        "deferred while the ledger is read"
    );
    let embed = final_messages(&own).last().unwrap().embeds[0].to_string();
    assert!(embed.contains(&format!("user{a} 님의 사용량")), "{embed}");
    assert!(
        embed.contains("이번 달") && embed.contains("요청 3회"),
        "{embed}"
    );
    assert!(embed.contains("Asia/Seoul"), "{embed}");
    // Rankings are for admins.
    let denied = c
        .ask(InteractionSpec::guild("사용량", a).string("순위", "command"))
        .await;
    assert!(final_text(&denied).starts_with("⚠️ 다른 사용자나 서버의 사용량"));

    // An admin: the top commands over a week, and another user.
    let top = c
        .ask(
            InteractionSpec::guild("사용량", ADMIN_USER_ID)
                .string("순위", "command")
                .string("기간", "week"),
        )
        .await;
    let embed = final_messages(&top).last().unwrap().embeds[0].to_string();
    assert!(embed.contains("명령어 순위 — 최근 일주일"), "{embed}");
    assert!(embed.contains("`ping` — 요청 4회"), "{embed}");
    let theirs = c
        .ask(InteractionSpec::guild("사용량", ADMIN_USER_ID).user("사용자", b))
        .await;
    let embed = final_messages(&theirs).last().unwrap().embeds[0].to_string();
    assert!(
        embed.contains(&format!("user{b} 님의 사용량")) && embed.contains("요청 1회"),
        "{embed}"
    );
    let perf = c.ask(InteractionSpec::guild("성능", ADMIN_USER_ID)).await;
    let fields = perf.ack().unwrap().embeds[0]["fields"].to_string();
    assert!(fields.contains("최근 24시간 (사용량 원장)"), "{fields}");
    assert!(fields.contains("요청 "), "{fields}");

    // The CLI: usage by command as JSON, and the migrations (already applied: nothing to do).
    let keyshard = |args: &[&str], url: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyshard"));
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("KEYSHARD_ENV_FILE", "/nonexistent/.env.multi");
        if let Some(url) = url {
            cmd.env("DATABASE_URL", url);
        }
        cmd.output().unwrap()
    };
    let url = c.database_url().to_owned();
    let out = keyshard(
        &["usage", "--since", "1h", "--by", "command", "--json"],
        Some(&url),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["by"], "command");
    let ping = v["lines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["key"] == "ping")
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(ping["interactions"], 4, "{v}");
    assert!(v["totals"]["interactions"].as_u64().unwrap() >= 4);
    let table = keyshard(&["usage", "--by", "user"], Some(&url));
    assert!(String::from_utf8_lossy(&table.stdout).contains(&a.to_string()));

    let ok = keyshard(&["migrate"], Some(&url));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("ledger schema up to date"));
    let nowhere = keyshard(
        &["migrate"],
        Some("postgres://keyshard:pw-secret@127.0.0.1:1/x"),
    );
    let err = String::from_utf8_lossy(&nowhere.stderr);
    assert!(!nowhere.status.success());
    assert!(
        err.contains(
            "applying the ledger migrations to postgres://keyshard:***@127.0.0.1:1/x failed"
        ),
        "{err}"
    );
    assert!(!err.contains("pw-secret"), "{err}");
    let unset = keyshard(&["usage"], None);
    assert!(!unset.status.success());
    assert!(String::from_utf8_lossy(&unset.stderr).contains("DATABASE_URL is not set"));
    c.procs.shutdown().await;
}

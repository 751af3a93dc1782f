//! Quotas end to end through real instances, the fake Discord and the fake providers: each
//! rule refuses with its own Korean wording (ephemeral, before any deferral), admins and the
//! exempt role pass, a failed job gives its count back, an admin's `/한도` override applies
//! at once, and the daily count resets at midnight Asia/Seoul (a quota clock set two dozen
//! seconds before it through `QUOTA_CLOCK_OFFSET_MS`).

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyshard_routing::QuotaZone;
use keyshard_sim::cluster::ADMIN_USER_ID;
use keyshard_sim::discord::{InteractionRecord, InteractionSpec};
use keyshard_sim::providers::FailurePlan;

use crate::commands::user_on;
use crate::support::{final_text, Setup, TestCluster};

const EXEMPT_ROLE: u64 = 1_180_000_000_000_000_777;

fn image(user: u64) -> InteractionSpec {
    InteractionSpec::guild("이미지", user)
        .string("설명", "작은 등대")
        .string("모델", "stability")
}

fn env(setup: &mut Setup, pairs: &[(&str, &str)]) {
    setup
        .env
        .extend(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
}

/// A refusal: the acknowledgement itself, a type-4 message only the caller sees, with the mark.
fn assert_refused(r: &InteractionRecord, contains: &[&str]) {
    let ack = r
        .ack()
        .unwrap_or_else(|| panic!("not acknowledged: {r:#?}"));
    assert_eq!(
        ack.kind, 4,
        "a refusal is the answer, not a deferral: {r:#?}"
    );
    assert!(ack.ephemeral, "a refusal is ephemeral: {r:#?}");
    let text = ack.content.clone().unwrap_or_default();
    assert!(text.starts_with("🚫"), "{text}");
    for c in contains {
        assert!(text.contains(c), "{c:?} not in {text}");
    }
}

fn assert_served(r: &InteractionRecord) {
    let ack = r
        .ack()
        .unwrap_or_else(|| panic!("not acknowledged: {r:#?}"));
    assert_eq!(ack.kind, 5, "served through a deferred reply: {r:#?}");
    let text = final_text(r);
    assert!(
        !text.starts_with("🚫") && !text.starts_with("⚠️"),
        "expected an answer: {r:#?}"
    );
}

async fn redis_int(c: &TestCluster, key: &str) -> Option<i64> {
    let mut conn = redis::Client::open(c.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("GET")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap()
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rule_refuses_with_its_wording_and_admins_and_the_exempt_role_pass() {
    let mut setup = Setup::new(4).with_providers();
    env(
        &mut setup,
        &[
            ("QUOTA_IMAGE_USER_DAILY", "2"),
            ("QUOTA_IMAGE_GUILD_DAILY", "3"),
            ("QUOTA_CHAT_COOLDOWN_SECS", "60"),
            ("QUOTA_EXEMPT_ROLE_ID", &EXEMPT_ROLE.to_string()),
        ],
    );
    let mut c = TestCluster::setup(setup).await;
    let (a, b, d) = (user_on(1, 11), user_on(2, 12), user_on(3, 13));

    // The user's day: two images, then a refusal naming the limit and the reset.
    assert_served(&c.ask(image(a)).await);
    assert_served(&c.ask(image(a)).await);
    let r = c.ask(image(a)).await;
    assert_refused(&r, &["오늘의 /이미지", "2회", "Asia/Seoul 자정", ":R>"]);
    let zone = QuotaZone::new("Asia/Seoul").unwrap();
    let reset = zone.day(now_ms()).next_ms.div_ceil(1000);
    assert!(
        final_text(&r).contains(&format!("<t:{reset}:R>")),
        "{}",
        final_text(&r)
    );
    // Without a ledger, /사용량 still shows what is left (the counters live in Redis).
    let usage = final_text(&c.ask(InteractionSpec::guild("사용량", a)).await);
    assert!(usage.contains("/이미지: 오늘 0/2회 남음"), "{usage}");

    // The guild's day: a third image by another user fills it; the next one is refused.
    assert_served(&c.ask(image(b)).await);
    assert_refused(&c.ask(image(b)).await, &["이 서버의 오늘 /이미지", "3회"]);
    // The same user in a DM is not the guild's.
    assert_served(
        &c.ask(InteractionSpec::dm("이미지", b).string("설명", "등대"))
            .await,
    );

    // An admin and a member with the exempt role are never limited.
    for _ in 0..3 {
        assert_served(&c.ask(image(ADMIN_USER_ID)).await);
    }
    assert_served(&c.ask(image(d).role(EXEMPT_ROLE)).await);
    // Without the role the same user is refused by the full guild.
    assert_refused(&c.ask(image(d)).await, &["이 서버"]);

    // The cooldown: a second chat within a minute is refused with the seconds.
    let chat = || InteractionSpec::guild("채팅", d).string("질문", "안녕");
    assert_served(&c.ask(chat()).await);
    assert_refused(&c.ask(chat()).await, &["/채팅", "60초", ":R>"]);

    // Counted by rule: in the cluster statistics the admin views read.
    let day = zone.day(now_ms()).date;
    let key = format!("{}:quota:{day}:u:{a}:image", c.cluster_name);
    assert_eq!(
        redis_int(&c, &key).await,
        Some(2),
        "refusals reserve nothing"
    );
    let mut metrics = String::new();
    for id in 1..=4 {
        let addr = c.procs.http_addr(id).unwrap();
        metrics += &reqwest::get(format!("http://{addr}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
    }
    let refusals = |rule: &str| -> u64 {
        metrics
            .lines()
            .filter(|l| l.starts_with(&format!("keyshard_quota_refusals_total{{rule=\"{rule}\"}}")))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    assert_eq!(refusals("user_daily"), 1);
    assert_eq!(refusals("guild_daily"), 2);
    assert_eq!(refusals("cooldown"), 1);
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_job_gives_its_count_back() {
    let mut setup = Setup::new(2).with_providers();
    if let Some(p) = setup.providers.as_mut() {
        // Every image is refused by "moderation": the user reads an error, not an image.
        p.failures = FailurePlan {
            content_reject_rate: 1.0,
            ..p.failures.clone()
        };
    }
    env(&mut setup, &[("QUOTA_IMAGE_USER_DAILY", "1")]);
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(1, 21);
    let day = QuotaZone::new("Asia/Seoul").unwrap().day(now_ms()).date;
    let key = format!("{}:quota:{day}:u:{user}:image", c.cluster_name);
    for _ in 0..3 {
        let r = c.ask(image(user)).await;
        assert_eq!(r.ack().unwrap().kind, 5, "admitted every time: {r:#?}");
        assert!(final_text(&r).starts_with("⚠️"), "{r:#?}");
        // The refund follows the answer by one Redis call.
        let deadline = Instant::now() + Duration::from_secs(5);
        while redis_int(&c, &key).await != Some(0) {
            assert!(Instant::now() < deadline, "never refunded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daily_count_resets_at_midnight_in_seoul() {
    // The quota clock is set so that midnight in Seoul comes `LEAD` after the test starts:
    // long enough for the cluster to start, short enough to wait for.
    const LEAD: u64 = 25_000;
    let zone = QuotaZone::new("Asia/Seoul").unwrap();
    let real_start = now_ms();
    let midnight = zone.day(real_start).next_ms;
    let offset = midnight as i64 - (real_start + LEAD) as i64;
    let midnight_real = real_start + LEAD;
    let mut setup = Setup::new(2).with_providers();
    env(
        &mut setup,
        &[
            ("QUOTA_IMAGE_USER_DAILY", "1"),
            ("QUOTA_CLOCK_OFFSET_MS", &offset.to_string()),
        ],
    );
    let mut c = TestCluster::setup(setup).await;
    assert!(
        now_ms() + 5_000 < midnight_real,
        "the cluster took too long to start for this test's midnight"
    );
    let user = user_on(2, 31);
    assert_served(&c.ask(image(user)).await);
    let r = c.ask(image(user)).await;
    let reset = midnight.div_ceil(1000);
    assert_refused(&r, &[&format!("<t:{reset}:R>"), "Asia/Seoul 자정"]);

    // Ask until admitted: the first admission comes at midnight (quota clock), not before.
    let deadline = Instant::now() + Duration::from_millis(LEAD + 15_000);
    loop {
        let sent = now_ms();
        let r = c.ask(image(user)).await;
        if r.ack().is_some_and(|a| a.kind == 5) {
            assert!(
                sent + 500 >= midnight_real,
                "admitted {} ms before midnight",
                midnight_real - sent
            );
            assert_served(&r);
            break;
        }
        assert_refused(&r, &["오늘의 /이미지"]);
        assert!(Instant::now() < deadline, "never admitted after midnight");
        // One request a quarter second: a refusal is cheap, and midnight is seen within it.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The new day has its own counter, and yesterday's keeps its count.
    let today = zone.day(midnight).date;
    let yesterday = zone.day(midnight - 1).date;
    let key = |d: &str| format!("{}:quota:{d}:u:{user}:image", c.cluster_name);
    assert_eq!(redis_int(&c, &key(&today)).await, Some(1));
    assert_eq!(redis_int(&c, &key(&yesterday)).await, Some(1));
    c.procs.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admins_override_applies_at_once_survives_a_redis_restart_and_is_cleared() {
    let mut setup = Setup::new(2).with_providers().with_ledger();
    env(&mut setup, &[("QUOTA_IMAGE_USER_DAILY", "1")]);
    let mut c = TestCluster::setup(setup).await;
    let user = user_on(1, 41);
    assert_served(&c.ask(image(user)).await);
    assert_refused(&c.ask(image(user)).await, &["1회"]);

    // /사용량 shows what is left.
    let r = c.ask(InteractionSpec::guild("사용량", user)).await;
    let embed = r
        .final_messages()
        .next()
        .and_then(|m| m.embeds.first().cloned())
        .unwrap_or_else(|| panic!("no usage view: {r:#?}"));
    let fields = embed["fields"].to_string();
    assert!(fields.contains("남은 한도"), "{fields}");
    assert!(fields.contains("/이미지: 오늘 0/1회 남음"), "{fields}");
    assert!(fields.contains("/채팅: 하루 한도 없음"), "{fields}");

    // A non-admin is refused; an admin raises the user's limit to 3.
    let set = |who: u64| {
        InteractionSpec::guild("한도", who)
            .subcommand("설정")
            .string("명령", "image")
            .user("사용자", user)
            .integer("하루", 3)
    };
    let r = c.ask(set(user)).await;
    assert!(final_text(&r).starts_with("⚠️"), "{r:#?}");
    let r = c.ask(set(ADMIN_USER_ID)).await;
    assert!(final_text(&r).starts_with("✅"), "{r:#?}");
    assert!(final_text(&r).contains("하루 3회"), "{}", final_text(&r));
    assert_served(&c.ask(image(user)).await);
    assert_served(&c.ask(image(user)).await);
    assert_refused(&c.ask(image(user)).await, &["3회"]);

    // Redis restarts empty: the cache is reloaded from Postgres (within the reload interval),
    // so the override holds again once the counters start afresh.
    c.redis.restart();
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let mut conn = redis::Client::open(c.redis.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        let loaded: bool = redis::cmd("HEXISTS")
            .arg(format!("{}:quota:overrides", c.cluster_name))
            .arg("loaded")
            .query_async(&mut conn)
            .await
            .unwrap_or(false);
        if loaded {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the overrides were never reloaded"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.wait_converged(2).await;
    for _ in 0..3 {
        assert_served(&c.ask(image(user)).await);
    }
    assert_refused(&c.ask(image(user)).await, &["3회"]);

    // /한도 보기 lists it; /한도 해제 brings the default back.
    let r = c
        .ask(
            InteractionSpec::guild("한도", ADMIN_USER_ID)
                .subcommand("보기")
                .user("사용자", user),
        )
        .await;
    assert!(
        final_text(&r).contains("/이미지: 하루 3회"),
        "{}",
        final_text(&r)
    );
    let r = c
        .ask(
            InteractionSpec::guild("한도", ADMIN_USER_ID)
                .subcommand("해제")
                .user("사용자", user),
        )
        .await;
    assert!(final_text(&r).starts_with("✅"), "{r:#?}");
    assert_refused(&c.ask(image(user)).await, &["1회"]);
    c.procs.shutdown().await;
}

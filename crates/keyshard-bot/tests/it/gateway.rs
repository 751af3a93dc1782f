//! The gateway at scale through real instances and the fake Discord's session rules: a cold
//! start of sharded instances and a rolling restart through the cluster's IDENTIFY queue,
//! session drops and invalidations under load, a crash loop, the day's reserve, and a clean
//! goodbye. The IDENTIFY window is shortened (Discord: 5 s) so each test takes seconds; the
//! instances get the same window as the fake enforces.

use std::time::{Duration, Instant};

use keyshard_routing::{starts_within, RestartPolicy};
use keyshard_sim::cluster::{ProcessCluster, ProcessConfig, ADMIN_USER_ID};
use keyshard_sim::discord::{DiscordConfig, FakeDiscord, InteractionSpec};
use keyshard_sim::scenario::{run_scenario, ChaosAction};
use keyshard_testkit::RedisServer;

use crate::scenarios::{assert_exactly_once, chaos, scenario};
use crate::support::{Setup, TempDir, TestCluster};

/// Four instances of four shards with one IDENTIFY bucket: sixteen IDENTIFYs spaced by the
/// cluster's queue, none refused, every instance ready within (16 × window) + 10 s, the
/// commands registered once; then a rolling restart of the same version: sixteen more
/// IDENTIFYs, still none refused, and no registration. Interactions from eight guilds reach
/// every shard meanwhile, each answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_start_and_a_rolling_restart_of_four_instances_of_four_shards() {
    let window = Duration::from_millis(500);
    let mut cfg = scenario(200, 20.0, 10, "ping=1");
    cfg.discord.gateway.identify_window = window;
    cfg.shards = Some(4);
    cfg.guilds = 8;
    // One instance after the other: each restart waits until the instance is ready again.
    for (k, id) in (1..=4u32).enumerate() {
        let t = 1.0 + 2.0 * k as f64;
        cfg.chaos.push(chaos(t, ChaosAction::Terminate(id)));
        cfg.chaos.push(chaos(t + 0.5, ChaosAction::Restart(id)));
    }
    let r = run_scenario(cfg).await.unwrap();
    assert_exactly_once(&r);
    let g = &r.gateway;
    assert_eq!(
        g.identifies, 32,
        "16 at the cold start, 16 in the restart: {g:?}"
    );
    assert_eq!(g.invalid_sessions, 0, "{g:?}");
    assert!(
        g.ready_s <= (window * 16 + Duration::from_secs(10)).as_secs_f64(),
        "every instance ready within (16 × window) + 10 s: {g:?}"
    );
    assert_eq!(
        g.command_puts, 1,
        "registered once, not again on restart: {g:?}"
    );
    for p in &r.per_instance {
        assert_eq!(p.identifies, 8, "four shards, twice: {p:?}");
        assert!(p.acks_as_primary > 0, "{p:?}");
    }
}

/// Under load: a dropped socket and a resumable invalidation resume; two non-resumable ones
/// IDENTIFY again through the queue (peers answer the users of an instance with a shard down).
/// Nothing is lost or answered twice, and no IDENTIFY is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_and_invalidated_sessions_under_load_lose_nothing() {
    let mut cfg = scenario(300, 60.0, 10, "ping=1");
    cfg.shards = Some(2);
    cfg.guilds = 8;
    cfg.chaos.push(chaos(2.0, ChaosAction::DropSession(1)));
    let invalidate = |instance, resumable| ChaosAction::InvalidateSession {
        instance,
        resumable,
    };
    cfg.chaos.push(chaos(3.0, invalidate(2, true)));
    cfg.chaos.push(chaos(4.0, invalidate(3, false)));
    cfg.chaos.push(chaos(5.0, invalidate(4, false)));
    let r = run_scenario(cfg).await.unwrap();
    assert_exactly_once(&r);
    let g = &r.gateway;
    assert_eq!(
        g.invalidated, 6,
        "two shards each of three instances: {g:?}"
    );
    assert_eq!(g.invalid_sessions, 0, "{g:?}");
    assert!(
        g.resumes >= 4,
        "the dropped and the resumable sessions resumed: {g:?}"
    );
    let identifies: Vec<u32> = r.per_instance.iter().map(|p| p.identifies).collect();
    assert_eq!(
        identifies,
        [2, 2, 4, 4],
        "fresh IDENTIFYs only where not resumable"
    );
}

/// One instance crash-loops (killed as soon as it IDENTIFYs, started again at once) while the
/// others serve: its IDENTIFYs stay within what its restart backoff allows in that time, and
/// every interaction is still answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_stays_within_its_restart_policy_and_the_others_serve() {
    let policy = RestartPolicy {
        base: Duration::from_millis(300),
        max: Duration::from_secs(2),
    };
    let span = Duration::from_secs(8);
    let mut cfg = scenario(200, 40.0, 11, "ping=1");
    cfg.env.push((
        "RESTART_BACKOFF_MS".into(),
        policy.base.as_millis().to_string(),
    ));
    cfg.env.push((
        "RESTART_BACKOFF_MAX_MS".into(),
        policy.max.as_millis().to_string(),
    ));
    cfg.chaos
        .push(chaos(1.5, ChaosAction::CrashLoop { instance: 3, span }));
    let r = run_scenario(cfg).await.unwrap();
    assert_exactly_once(&r);
    let looping = &r.per_instance[2];
    // The cold start's IDENTIFY is the policy's first start; the loop's are the next ones.
    let bound = starts_within(span, &policy);
    assert!(
        looping.identifies <= bound,
        "{} IDENTIFYs, the policy allows {bound} in {span:?}",
        looping.identifies
    );
    // Without the backoff a loop of ~0.3 s starts would IDENTIFY about 25 times: make sure this
    // one did loop.
    assert!(looping.identifies >= 3, "{looping:?}");
    assert!(looping.killed);
    let g = &r.gateway;
    assert_eq!(g.session_starts_left, 1_000 - g.identifies);
    assert!(!g.token_reset);
}

/// At the reserve of the day's session starts an instance does not IDENTIFY: it waits, and
/// says why in its log, its `/readyz` and its peers' `/로드밸런서`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_the_reserve_an_instance_waits_and_says_why() {
    let redis = RedisServer::start();
    let mut discord_cfg = DiscordConfig::quick();
    // Two session starts left, one of them the reserve: only one instance gets to IDENTIFY.
    discord_cfg.gateway.identify_remaining = 2;
    let discord = FakeDiscord::start(discord_cfg).await.unwrap();
    let dir = TempDir(std::env::temp_dir().join(format!(
        "keyshard-it-reserve-{}-{}",
        std::process::id(),
        keyshard_testkit::free_port()
    )));
    std::fs::create_dir_all(&dir.0).unwrap();
    let mut pcfg = ProcessConfig::new(
        std::path::PathBuf::from(env!("CARGO_BIN_EXE_keyshard")),
        2,
        redis.url(),
        dir.0.clone(),
    );
    pcfg.rust_log = "warn,keyshard_bot=info".into();
    pcfg.env.push(("IDENTIFY_RESERVE".into(), "1".into()));
    let mut procs = ProcessCluster::launch(pcfg.clone(), &discord).unwrap();
    discord
        .wait_sessions(1, Duration::from_secs(30))
        .await
        .expect("one instance gets its session");

    let http = reqwest::Client::new();
    let readyz = |id: u32| {
        let url = format!("http://{}/readyz", procs.http_addr(id).unwrap());
        let http = http.clone();
        async move {
            let r = http.get(url).send().await.ok()?;
            r.json::<serde_json::Value>().await.ok()
        }
    };
    // Which one won the last start above the reserve is up to the race; the other waits.
    let deadline = Instant::now() + Duration::from_secs(20);
    let (ready, waiting) = loop {
        let a = readyz(1).await;
        let b = readyz(2).await;
        let is = |v: &Option<serde_json::Value>, f: &str, want: serde_json::Value| {
            v.as_ref().is_some_and(|v| v[f] == want)
        };
        if is(&a, "ready", true.into()) && is(&b, "waiting", "reserve".into()) {
            break (1, b.unwrap());
        }
        if is(&b, "ready", true.into()) && is(&a, "waiting", "reserve".into()) {
            break (2, a.unwrap());
        }
        assert!(
            Instant::now() < deadline,
            "one ready and one at the reserve: {a:?} {b:?}"
        );
        // /readyz is cheap; a quarter heartbeat keeps the wait short without spinning.
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let other = 3 - ready;
    assert_eq!(waiting["ready"], false);
    assert_eq!(waiting["shards_up"], 0);
    let detail = waiting["detail"].as_str().unwrap();
    assert!(
        detail.contains("1 session starts left") && detail.contains("IDENTIFY_RESERVE"),
        "{detail}"
    );
    let log = std::fs::read_to_string(procs.log_path(other).unwrap()).unwrap();
    assert!(log.contains("IDENTIFY paused"), "{log}");
    assert_eq!(
        discord.session_start_limit().remaining,
        1,
        "the reserve is kept"
    );
    assert!(!discord.token_reset());

    // The peer's admin view shows it, once the waiting instance has published its shards.
    let info_key = format!("{}:info:{other}", pcfg.cluster_name);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let info: Option<String> = redis::cmd("GET")
            .arg(&info_key)
            .query_async(&mut conn)
            .await
            .unwrap();
        if info.is_some_and(|i| i.contains("\"reserve\"")) {
            break;
        }
        assert!(Instant::now() < deadline, "the wait was never published");
        // The info is published every 5 s; polling Redis twice a second costs nothing.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let sent = discord.send_interaction(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID));
    let answered = discord
        .wait_for(
            |recs| recs.iter().any(|r| r.id == sent.id && r.is_completed()),
            Duration::from_secs(10),
        )
        .await;
    assert!(answered);
    let record = discord.interaction(sent.id).unwrap();
    let embed = serde_json::to_string(&record.ack().unwrap().embeds).unwrap();
    assert!(embed.contains("IDENTIFY 중지"), "{embed}");
    assert!(embed.contains("예약분 1"), "{embed}");
    procs.shutdown().await;
}

/// A SIGTERM'd instance of two shards closes both sessions with a close handshake (the fake
/// answers each close frame) and exits at once: no "Failed to cleanly shutdown" from serenity
/// (its 5 s timeout per shard), no reset instead of a close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_closes_every_shard_cleanly_and_quickly() {
    let mut setup = Setup::new(2);
    setup.env.push(("SHARD_COUNT".into(), "2".into()));
    // serenity's own lines about closing shards are at info and warn.
    setup.rust_log = "warn,keyshard_bot=info,serenity=info".into();
    let mut c = TestCluster::setup(setup).await;
    let started = Instant::now();
    let status = c.procs.terminate(2, Duration::from_secs(30)).await.unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status}");
    // Well under serenity's 5 s shutdown timeout, which a missing close answer would cost.
    assert!(took < Duration::from_secs(4), "stopping took {took:?}");
    let log = std::fs::read_to_string(c.procs.log_path(2).unwrap()).unwrap();
    for bad in [
        "Failed to cleanly shutdown",
        "Received an error awaiting close frame",
        "still closing",
    ] {
        assert!(!log.contains(bad), "{bad:?} in:\n{log}");
    }
    assert!(log.contains("stopped"), "{log}");
    let stats = c.discord.gateway_stats(2);
    assert_eq!(stats.clean_closes, 2, "both shards said goodbye: {stats:?}");
    assert!(
        c.discord.sessions().iter().all(|s| s.instance != 2),
        "1000 ended both sessions"
    );
    c.procs.shutdown().await;
}

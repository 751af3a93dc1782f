//! The orchestrator and the scenario driver against real `keyshard` processes.
//!
//! These need the `keyshard` binary next to the test binary's directory, so they are ignored
//! by default: `cargo build -p keyshard-bot && cargo test -p keyshard-sim -- --ignored`.
//! (The end-to-end acceptance tests live in keyshard-bot, which can name its own binary.)

use std::time::Duration;

use keyshard_sim::cluster::{
    default_keyshard_bin, ProcessCluster, ProcessConfig, ProcessEventKind,
};
use keyshard_sim::discord::{DiscordConfig, FakeDiscord, InteractionSpec};
use keyshard_sim::scenario::{run_scenario_with_records, ScenarioConfig};

fn run_dir(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("keyshard-sim-it-{name}-{}", std::process::id()))
}

#[tokio::test]
#[ignore = "needs the keyshard binary: cargo build -p keyshard-bot"]
async fn instances_start_answer_die_and_come_back() {
    let redis = keyshard_testkit::RedisServer::start();
    let discord = FakeDiscord::start(DiscordConfig::quick()).await.unwrap();
    let cfg = ProcessConfig::new(default_keyshard_bin(), 2, redis.url(), run_dir("cluster"));
    let mut cluster = ProcessCluster::start(cfg, &discord).await.unwrap();
    discord
        .wait_sessions(2, Duration::from_secs(10))
        .await
        .unwrap();
    assert!(discord.commands().iter().any(|c| c.name == "핑"));
    // Routing is only asserted once each instance's own view sees both.
    cluster
        .wait_converged(2, Duration::from_secs(10))
        .await
        .unwrap();

    // User 2 has primary 1 (2 % 2 + 1), user 3 primary 2.
    let a = discord.send_interaction(InteractionSpec::guild("핑", 2));
    let b = discord.send_interaction(InteractionSpec::dm("핑", 3));
    let all_done =
        |recs: &[keyshard_sim::discord::InteractionRecord]| recs.iter().all(|r| r.is_completed());
    let answered = discord.wait_for(all_done, Duration::from_secs(5)).await;
    assert!(answered, "{:?}", discord.records());
    assert_eq!(discord.interaction(a.id).unwrap().acked_by(), Some(1));
    assert_eq!(discord.interaction(b.id).unwrap().acked_by(), Some(2));

    cluster.kill(2).await.unwrap();
    assert!(!cluster.is_running(2));
    let c = discord.send_interaction(InteractionSpec::guild("핑", 3));
    assert!(discord.wait_for(all_done, Duration::from_secs(5)).await);
    let rec = discord.interaction(c.id).unwrap();
    assert_eq!(rec.acked_by(), Some(1), "the survivor takes over");
    assert!(rec.ack().unwrap().after_ms < 3000.0);

    let status = cluster.terminate(1, Duration::from_secs(20)).await.unwrap();
    assert!(status.success(), "graceful exit on SIGTERM: {status}");
    cluster.restart(2).await.unwrap();
    assert!(cluster.is_running(2));
    let kinds: Vec<ProcessEventKind> = cluster.events().iter().map(|e| e.kind).collect();
    assert_eq!(
        kinds
            .iter()
            .filter(|k| **k == ProcessEventKind::Ready)
            .count(),
        3
    );
}

#[tokio::test]
#[ignore = "needs the keyshard binary: cargo build -p keyshard-bot"]
async fn a_short_scenario_reports_takeovers_after_a_kill() {
    let mut cfg = ScenarioConfig::new(
        3,
        60,
        40.0,
        Duration::from_secs(4),
        "ping=1".parse().unwrap(),
    )
    .kill(2, Duration::from_secs(2));
    cfg.discord = DiscordConfig::quick();
    cfg.seed = 5;
    cfg.redis_url = None;
    cfg.run_dir = Some(run_dir("scenario"));
    cfg.drain_deadline = Duration::from_secs(20);
    let (report, records) = run_scenario_with_records(cfg).await.unwrap();
    let ix = &report.interactions;
    assert!(ix.sent > 100, "{ix:?}");
    assert_eq!(records.len() as u64, ix.sent);
    assert_eq!(ix.acked + ix.lost, ix.sent);
    assert_eq!(ix.duplicate_acks, 0);
    assert_eq!(
        report.routing.misrouted, 0,
        "{:?}",
        report.misrouted_examples
    );
    assert!(report.routing.takeover_down > 0, "{:?}", report.routing);
    assert!(report.per_instance[1].killed);
    assert!(report.per_instance[0].killed_at_s.is_none());
    let json = serde_json::to_value(&report).unwrap();
    for field in [
        "/interactions/sent",
        "/ack_latency_ms/p99",
        "/completion_latency_ms/p50",
        "/throughput_per_min",
        "/capacity_per_min",
        "/provider_429",
        "/routing/takeover_overload",
        "/per_instance/0/acks",
        "/elapsed_s",
    ] {
        assert!(json.pointer(field).is_some(), "{field} missing");
    }
}

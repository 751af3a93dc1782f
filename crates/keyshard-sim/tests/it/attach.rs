//! Attach mode against real `keyshard` processes the simulator did not start: the test starts
//! them from the service's env overlay, resolved the way docker compose resolves it (`X_n` for
//! instance n, else `X`), kills one during the load and tells the service with a note, the way
//! `deploy-multi.sh rehearse` does through the Docker engine.
//!
//! Needs the `keyshard` binary, so ignored by default like the other process tests:
//! `cargo build -p keyshard-bot && cargo test -p keyshard-sim --test it attach -- --ignored`.
//! CI runs attach mode for real in `deploy-multi.sh rehearse`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshard_sim::attach::control;
use keyshard_sim::attach::drive::{Event, RunRequest};
use keyshard_sim::attach::{Note, Service, ServiceConfig};
use keyshard_sim::cluster::default_keyshard_bin;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// Instance `n`'s variables from the overlay text, as compose hands them over.
fn resolve(overlay: &str, n: u32) -> HashMap<String, String> {
    let pairs: Vec<(&str, &str)> = overlay
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split_once('='))
        .collect();
    let mut env = HashMap::new();
    for (k, v) in &pairs {
        if k.rsplit_once('_')
            .is_none_or(|(_, s)| s.parse::<u32>().is_err())
        {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
    }
    let suffix = format!("_{n}");
    for (k, v) in &pairs {
        if let Some(base) = k.strip_suffix(&suffix) {
            env.insert(base.to_owned(), (*v).to_owned());
        }
    }
    env
}

fn spawn_instance(
    overlay: &str,
    n: u32,
    redis: &str,
    port: u16,
    log_dir: &std::path::Path,
) -> Child {
    let log = std::fs::File::create(log_dir.join(format!("instance-{n}.log"))).unwrap();
    let mut cmd = Command::new(default_keyshard_bin());
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(resolve(overlay, n))
        .env("INSTANCE_ID", n.to_string())
        .env("REDIS_URL", redis)
        // 127.0.0.n: one port for all, so one URL template names every instance.
        .env("HTTP_BIND", format!("127.0.0.{n}:{port}"))
        .env("KEYSHARD_ENV_FILE", log_dir.join("no-env-file"))
        .env("NO_COLOR", "1")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .kill_on_drop(true);
    cmd.spawn().expect("spawning keyshard")
}

#[tokio::test]
#[ignore = "needs the keyshard binary: cargo build -p keyshard-bot"]
async fn a_run_against_instances_it_did_not_start_judges_the_kill_it_is_told_of() {
    let redis = keyshard_testkit::RedisServer::start();
    let port = keyshard_testkit::free_port();
    let mut cfg = ServiceConfig::new(2, "127.0.0.1:0".parse().unwrap(), redis.url());
    cfg.instance_url = format!("http://127.0.0.{{n}}:{port}");
    cfg.cluster_name = format!("attach{}", std::process::id());
    // A scenario run's fast heartbeat, so the test is short.
    cfg.heartbeat_ms = 250;
    cfg.dead_after_ms = 1_000;
    let svc = Service::start(cfg).await.unwrap();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (addr, _server) = control::start(svc.clone(), "127.0.0.1:0".parse().unwrap(), stop)
        .await
        .unwrap();
    let url = format!("http://{addr}");
    let overlay = control::fetch_env(&url).await.unwrap();
    assert!(overlay.contains("DISCORD_API_BASE_2="), "{overlay}");
    assert!(!overlay.contains("INSTANCE_ID"), "{overlay}");

    let logs = std::env::temp_dir().join(format!("keyshard-sim-it-attach-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let _one = spawn_instance(&overlay, 1, &redis.url(), port, &logs);
    let mut two = spawn_instance(&overlay, 2, &redis.url(), port, &logs);

    let req = RunRequest {
        users: 20,
        rate: 20.0,
        duration_s: 1.0,
        until_note: Some("chaos-done".into()),
        mix: "ping=1".into(),
        drain_s: 30.0,
        ready_timeout_s: 30.0,
        ..RunRequest::default()
    };
    let (started_tx, started_rx) = tokio::sync::oneshot::channel();
    let started_tx = Arc::new(Mutex::new(Some(started_tx)));
    let run = {
        let url = url.clone();
        tokio::spawn(async move {
            control::run(&url, &req, move |e| {
                if matches!(e, Event::LoadStarted { .. }) {
                    if let Some(tx) = started_tx.lock().unwrap().take() {
                        tx.send(()).ok();
                    }
                }
            })
            .await
        })
    };
    tokio::time::timeout(Duration::from_secs(40), started_rx)
        .await
        .expect("the load starts once both instances are ready")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let kill = Note {
        what: "kill:2".into(),
        at_unix_ms: Some(now_ms()),
    };
    two.start_kill().unwrap();
    two.wait().await.unwrap();
    control::send_notes(&url, &[kill]).await.unwrap();
    // Past --duration: the load goes on until the schedule says it is done.
    tokio::time::sleep(Duration::from_secs(2)).await;
    control::send_notes(&url, &["chaos-done".parse().unwrap()])
        .await
        .unwrap();

    let last = run.await.unwrap().unwrap();
    let Event::Report {
        report, failures, ..
    } = last
    else {
        panic!("no report: {last:?}");
    };
    assert!(failures.is_empty(), "{failures:?}\n{report:#}");
    assert_eq!(report["routing"]["misrouted"], 0, "{report:#}");
    assert!(
        report["routing"]["takeover_down"].as_u64().unwrap() > 0,
        "instance 1 answered for 2 once it was killed: {report:#}"
    );
    let chaos: Vec<&str> = report["scenario"]["chaos"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c.as_str())
        .collect();
    assert!(chaos.iter().any(|c| c.starts_with("kill:2@")), "{chaos:?}");
    assert!(
        report["scenario"]["duration_s"].as_f64().unwrap() >= 2.0,
        "the load lasted until chaos-done: {report:#}"
    );
    // A second run against the same service counts only its own interactions.
    let again = RunRequest {
        users: 5,
        rate: 10.0,
        duration_s: 0.5,
        mix: "ping=1".into(),
        ready_timeout_s: 1.0,
        ..RunRequest::default()
    };
    let last = control::run(&url, &again, |_| {}).await.unwrap();
    let Event::Error { message } = last else {
        panic!("instance 2 is dead, so the run must not start: {last:?}");
    };
    assert!(message.contains("not ready"), "{message}");
    drop(svc);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

//! A cluster of real `keyshard` processes against the fake Discord and a private Redis.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use keyshard_sim::cluster::{ProcessCluster, ProcessConfig};
use keyshard_sim::discord::{DiscordConfig, FakeDiscord};
use keyshard_testkit::RedisServer;

pub struct TestCluster {
    pub redis: RedisServer,
    pub discord: FakeDiscord,
    pub procs: ProcessCluster,
    _dir: TempDir,
}

/// A run directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl TestCluster {
    pub async fn start(instances: u32) -> TestCluster {
        Self::start_with(instances, |_| {}).await
    }

    pub async fn start_with(instances: u32, tweak: impl FnOnce(&mut ProcessConfig)) -> TestCluster {
        let redis = RedisServer::start();
        let discord = FakeDiscord::start(DiscordConfig::default())
            .await
            .expect("fake Discord");
        let dir = std::env::temp_dir().join(format!(
            "keyshard-it-{}-{}",
            std::process::id(),
            keyshard_testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = ProcessConfig::new(
            PathBuf::from(env!("CARGO_BIN_EXE_keyshard")),
            instances,
            redis.url(),
            dir.clone(),
        );
        tweak(&mut cfg);
        let procs = ProcessCluster::start(cfg, &discord)
            .await
            .expect("cluster starts");
        discord
            .wait_sessions(instances as usize, Duration::from_secs(30))
            .await
            .expect("every instance opens a gateway session");
        let c = TestCluster {
            redis,
            discord,
            procs,
            _dir: TempDir(dir),
        };
        c.wait_converged(instances as usize).await;
        c
    }

    /// Waits until every running instance's snapshot sees `alive` instances, so routing
    /// assertions do not race the first heartbeats of a cluster that has just started.
    pub async fn wait_converged(&self, alive: usize) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        for id in 1..=self.procs.count() {
            let Some(addr) = self.procs.http_addr(id) else {
                continue;
            };
            loop {
                let seen = match http.get(format!("http://{addr}/readyz")).send().await {
                    Ok(r) => r
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|v| v["alive_instances"].as_u64()),
                    Err(_) => None,
                };
                if seen == Some(alive as u64) {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "instance {id} never saw {alive} instances alive (last: {seen:?})"
                );
                // The snapshot refreshes every quarter heartbeat; poll at that pace.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

//! A cluster of real `keyshard` processes against the fake Discord, the fake providers and a
//! private Redis.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshard_sim::cluster::{ProcessCluster, ProcessConfig};
use keyshard_sim::discord::{
    DiscordConfig, FakeDiscord, InteractionRecord, InteractionSpec, MessageRecord,
};
use keyshard_sim::providers::FakeProvidersConfig;
use keyshard_sim::scenario::ProviderFakes;
use keyshard_sim::wiring::ScenarioProviders;
use keyshard_testkit::{PostgresServer, RedisServer};

pub struct TestCluster {
    pub redis: RedisServer,
    /// The usage ledger's private Postgres and its database URL (with [`Setup::with_ledger`]).
    pub postgres: Option<(PostgresServer, String)>,
    pub discord: FakeDiscord,
    pub providers: Option<Arc<ScenarioProviders>>,
    pub procs: ProcessCluster,
    pub cluster_name: String,
    _dir: TempDir,
}

/// A run directory removed at the end of the test.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How the test cluster is set up.
pub struct Setup {
    pub instances: u32,
    pub discord: DiscordConfig,
    pub providers: Option<FakeProvidersConfig>,
    pub env: Vec<(String, String)>,
    /// `RUST_LOG` for the instances.
    pub rust_log: String,
    /// Run with the usage ledger on a private Postgres.
    pub ledger: bool,
}

impl Setup {
    pub fn new(instances: u32) -> Self {
        Self {
            instances,
            // Discord's rules with a 100 ms IDENTIFY window: every start goes through the
            // cluster's queue without 5 s between instances.
            discord: DiscordConfig::quick(),
            providers: None,
            env: Vec::new(),
            // Warnings and errors of the instances show up in a failed test's output.
            rust_log: "warn,keyshard_bot=info,poise=debug".into(),
            ledger: false,
        }
    }

    /// With the usage ledger: a private Postgres, passed as `DATABASE_URL`.
    pub fn with_ledger(mut self) -> Self {
        self.ledger = true;
        self
    }

    /// With fake providers: quick answers and videos that render in a few hundred ms.
    pub fn with_providers(mut self) -> Self {
        self.providers = Some(FakeProvidersConfig {
            video_step: Duration::from_millis(150),
            ..FakeProvidersConfig::default()
        });
        // Poll videos often so a test does not wait on the 10 s production interval.
        self.env.push(("VIDEO_POLL_MS".into(), "100".into()));
        self
    }
}

impl TestCluster {
    pub async fn start(instances: u32) -> TestCluster {
        Self::setup(Setup::new(instances)).await
    }

    pub async fn setup(setup: Setup) -> TestCluster {
        let redis = RedisServer::start();
        let postgres = setup.ledger.then(|| {
            let server = PostgresServer::start();
            let url = server.create_database("ledger").expect("createdb");
            (server, url)
        });
        let discord = FakeDiscord::start(setup.discord.clone())
            .await
            .expect("fake Discord");
        let providers = match setup.providers {
            Some(cfg) => Some(Arc::new(
                ScenarioProviders::start(cfg).await.expect("fake providers"),
            )),
            None => None,
        };
        let dir = std::env::temp_dir().join(format!(
            "keyshard-it-{}-{}",
            std::process::id(),
            keyshard_testkit::free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut cfg = ProcessConfig::new(
            PathBuf::from(env!("CARGO_BIN_EXE_keyshard")),
            setup.instances,
            redis.url(),
            dir.clone(),
        );
        cfg.env = setup.env;
        cfg.rust_log = setup.rust_log;
        cfg.database_url = postgres.as_ref().map(|(_, url)| url.clone());
        if let Some(p) = &providers {
            let p = p.clone();
            cfg.instance_env = Some(Arc::new(move |i| p.instance_env(i)));
        }
        let cluster_name = cfg.cluster_name.clone();
        let procs = ProcessCluster::start(cfg, &discord)
            .await
            .expect("cluster starts");
        discord
            .wait_sessions(setup.instances as usize, Duration::from_secs(30))
            .await
            .expect("every instance opens a gateway session");
        let c = TestCluster {
            redis,
            postgres,
            discord,
            providers,
            procs,
            cluster_name,
            _dir: TempDir(dir),
        };
        c.wait_converged(setup.instances as usize).await;
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
                    Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| {
                        // Serving (alive and not draining) where the instance says so.
                        v["serving_instances"]
                            .as_u64()
                            .or_else(|| v["alive_instances"].as_u64())
                    }),
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

    /// Sends one interaction and waits for its final answer (not a progress edit).
    pub async fn ask(&self, spec: InteractionSpec) -> InteractionRecord {
        let id = self.discord.send_interaction(spec).id;
        self.wait_final(id, Duration::from_secs(20)).await
    }

    /// Waits until interaction `id` has a final answer: a type-4 callback, or an accepted
    /// message after a deferred ack that is neither a progress edit (⏳) nor a streaming one (▌).
    pub async fn wait_final(&self, id: u64, deadline: Duration) -> InteractionRecord {
        let done = self
            .discord
            .wait_for(
                |records| records.iter().any(|r| r.id == id && r.is_completed()),
                deadline,
            )
            .await;
        let record = self.discord.interaction(id).expect("recorded");
        if !done {
            for i in 1..=self.procs.count() {
                if let Some(path) = self.procs.log_path(i) {
                    eprintln!(
                        "--- instance {i} log\n{}",
                        keyshard_sim::cluster::log_tail(&path, 30)
                    );
                }
            }
            panic!("no final answer for interaction {id}: {record:#?}");
        }
        record
    }

    /// Waits until the cluster statistics in Redis count `n` completions of `command` (the
    /// instances flush their counts once a second).
    pub async fn wait_stats(&self, command: &str, n: i64) {
        self.wait_counted("done", command, n).await
    }

    /// Waits until the cluster statistics in Redis count `n` failed answers of `command`.
    pub async fn wait_failed(&self, command: &str, n: i64) {
        self.wait_counted("failed", command, n).await
    }

    /// Waits until the statistics count `n` of `{outcome}:{instance}:{command}` over all
    /// instances.
    async fn wait_counted(&self, outcome: &str, command: &str, n: i64) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}:stats:*", self.cluster_name))
                .query_async(&mut c)
                .await
                .unwrap();
            let mut done = 0;
            for k in keys {
                let h: std::collections::HashMap<String, i64> = redis::cmd("HGETALL")
                    .arg(&k)
                    .query_async(&mut c)
                    .await
                    .unwrap();
                done += h
                    .iter()
                    .filter(|(f, _)| {
                        f.starts_with(&format!("{outcome}:")) && f.ends_with(&format!(":{command}"))
                    })
                    .map(|(_, v)| v)
                    .sum::<i64>();
            }
            if done >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "statistics never counted {n} {outcome} {command} (saw {done})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until instance `id` has no job left in its streams (`{c}:jobs:{id}:{kind}`; a done
    /// job is acknowledged and deleted, so the length is the backlog). A test that kills an
    /// instance right after seeing its answer waits for this first: the answer goes out a
    /// moment before the job is acknowledged, and a kill in between leaves the job for a peer
    /// to run again.
    pub async fn wait_jobs_done(&self, id: u32) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut backlog = 0;
            for kind in ["chat", "image", "video"] {
                let len: u64 = redis::cmd("XLEN")
                    .arg(format!("{}:jobs:{id}:{kind}", self.cluster_name))
                    .query_async(&mut c)
                    .await
                    .unwrap();
                backlog += len;
            }
            if backlog == 0 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} still holds {backlog} jobs"
            );
            // Acknowledging takes one Redis round trip after the answer; poll at that pace.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until `n` jobs were ever queued on instance `id`'s stream of `kind`
    /// ([`jobs_ever_queued`](Self::jobs_ever_queued)). Each interaction is dispatched on a
    /// task of its own, so interactions sent in a row may queue their jobs in another order; a
    /// test about the order jobs are picked in waits for this between the ones whose order
    /// matters.
    pub async fn wait_jobs_queued(&self, id: u32, kind: &str, n: u64) {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        let stream = format!("{}:jobs:{id}:{kind}", self.cluster_name);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let added = entries_added(&mut c, &stream).await;
            if added >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} queued {added} of {n} {kind} jobs"
            );
            // A job is queued one Redis round trip after its acknowledgement.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// How many jobs were ever queued on instance `id`'s stream of `kind` ([`entries_added`]).
    pub async fn jobs_ever_queued(&self, id: u32, kind: &str) -> u64 {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        entries_added(&mut c, &format!("{}:jobs:{id}:{kind}", self.cluster_name)).await
    }

    /// Waits until instance `id`'s log has a line containing `needle` (an event the instance
    /// logs, for a test that must know it happened before it asserts what did not).
    pub async fn wait_log(&self, id: u32, needle: &str) {
        let path = self.procs.log_path(id).expect("instance log");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|log| log.contains(needle)) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {id} never logged {needle:?}:\n{}",
                keyshard_sim::cluster::log_tail(&path, 30)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The number of stored turns of a conversation in Redis.
    pub async fn conversation_len(&self, user: u64, channel: u64) -> usize {
        let client = redis::Client::open(self.redis.url()).unwrap();
        let mut c = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("LLEN")
            .arg(format!("{}:conv:{user}:{channel}", self.cluster_name))
            .query_async(&mut c)
            .await
            .unwrap()
    }
}

/// The entries ever added to `stream`: its `entries-added` (`XINFO STREAM`), which taking
/// and deleting entries do not lower (0 before the stream exists).
async fn entries_added(c: &mut redis::aio::MultiplexedConnection, stream: &str) -> u64 {
    let info: std::collections::HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(c)
        .await
        .unwrap_or_default();
    info.get("entries-added")
        .and_then(|v| redis::from_redis_value_ref(v).ok())
        .unwrap_or(0)
}

/// One usage-ledger row as the tests read it back (`psql`, the way the simulator does).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    pub interaction_id: u64,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub command: String,
    pub primary: u32,
    pub served_by: u32,
    /// `ledger.reason`: 0 primary … 5 degraded, 6 recovered.
    pub reason: i16,
    pub rescued: bool,
    pub stolen: bool,
    pub moved: bool,
    pub provider: Option<String>,
    pub model: Option<String>,
    pub key_fp: Option<String>,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub images: u32,
    pub video_secs: u32,
    pub cost_micros: u64,
    /// 0 ok, 1 failed, 2 refused.
    pub status: i16,
    pub error_class: Option<String>,
    pub ack_ms: Option<i64>,
    pub start_ms: Option<i64>,
    pub finish_ms: i64,
    pub provider_ms: Option<i64>,
}

const ROW_SQL: &str = "SELECT interaction_id, user_id, guild_id, command, primary_instance, \
    served_by, reason, rescued, stolen, moved, provider, model, lpad(to_hex(key_fp), 12, '0'), \
    tokens_in, tokens_out, images, video_secs, cost_micros, status, error_class, ack_ms, \
    start_ms, finish_ms, provider_ms FROM ledger ORDER BY interaction_id";

impl TestCluster {
    /// The ledger's database URL.
    pub fn database_url(&self) -> &str {
        &self.postgres.as_ref().expect("a cluster with the ledger").1
    }

    /// Waits until the ledger has a row for each of `ids` (rows trail the answers by the
    /// writers' 250 ms batches), and returns those rows.
    pub async fn wait_rows(&self, ids: &[u64]) -> Vec<Row> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // A missing table (migrations not applied yet) reads as no rows.
            let rows: Vec<Row> = keyshard_testkit::psql(self.database_url(), ROW_SQL)
                .map(|out| {
                    out.lines()
                        .filter(|l| !l.is_empty())
                        .map(parse_row)
                        .collect()
                })
                .unwrap_or_default();
            let found: Vec<Row> = rows
                .into_iter()
                .filter(|r| ids.contains(&r.interaction_id))
                .collect();
            if found.len() >= ids.len() {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "rows for {ids:?} never all arrived (found {found:#?})"
            );
            // The writers batch every 250 ms.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn parse_row(line: &str) -> Row {
    let f: Vec<&str> = line.split('|').collect();
    assert_eq!(f.len(), 24, "{line}");
    let opt = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let num = |s: &str| {
        s.parse::<i64>()
            .unwrap_or_else(|_| panic!("{s:?} in {line}"))
    };
    let opt_num = |s: &str| (!s.is_empty()).then(|| num(s));
    Row {
        interaction_id: num(f[0]) as u64,
        user_id: num(f[1]) as u64,
        guild_id: opt_num(f[2]).map(|g| g as u64),
        command: f[3].to_owned(),
        primary: num(f[4]) as u32,
        served_by: num(f[5]) as u32,
        reason: num(f[6]) as i16,
        rescued: f[7] == "t",
        stolen: f[8] == "t",
        moved: f[9] == "t",
        provider: opt(f[10]),
        model: opt(f[11]),
        key_fp: opt(f[12]),
        tokens_in: num(f[13]) as u32,
        tokens_out: num(f[14]) as u32,
        images: num(f[15]) as u32,
        video_secs: num(f[16]) as u32,
        cost_micros: num(f[17]) as u64,
        status: num(f[18]) as i16,
        error_class: opt(f[19]),
        ack_ms: opt_num(f[20]),
        start_ms: opt_num(f[21]),
        finish_ms: num(f[22]),
        provider_ms: opt_num(f[23]),
    }
}

/// The accepted messages of an interaction that are not progress edits, in order.
pub fn final_messages(r: &InteractionRecord) -> impl Iterator<Item = &MessageRecord> {
    r.final_messages()
}

/// The content of the first final message (or of a type-4 callback).
pub fn final_text(r: &InteractionRecord) -> String {
    match r.ack() {
        Some(ack) if ack.kind == 4 => ack.content.clone().unwrap_or_default(),
        _ => final_messages(r)
            .next()
            .and_then(|m| m.content.clone())
            .unwrap_or_default(),
    }
}

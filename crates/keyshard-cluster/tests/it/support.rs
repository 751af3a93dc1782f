//! Shared test scaffolding: a private Redis with N cluster handles on it, fast timings,
//! waiting for conditions with a deadline, and claiming one interaction on several handles.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use keyshard_cluster::{
    keys, ClaimOutcome, ClaimTiming, Cluster, ClusterConfig, InstanceId, Job, JobArgs, UserId,
};
use keyshard_routing::snowflake_at;
use keyshard_testkit::RedisServer;
use keyshard_types::ChatArgs;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub const N: u32 = 4;
pub const HEARTBEAT: Duration = Duration::from_millis(100);
pub const DEAD_AFTER: Duration = Duration::from_millis(400);
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(50);
pub const TIMING: ClaimTiming = ClaimTiming {
    grace: Duration::from_millis(200),
    step: Duration::from_millis(150),
    margin: Duration::from_millis(500),
    pending: Duration::from_millis(1_500),
    sweep: Duration::from_millis(2_000),
};
/// Scheduling slack for a loaded 2-core CI machine on top of the mechanism's own bounds.
pub const SLACK: Duration = Duration::from_millis(150);
/// How long a test waits for something that should take well under a second.
pub const PATIENCE: Duration = Duration::from_secs(5);

pub fn config(url: &str, cluster_name: &str, id: InstanceId) -> ClusterConfig {
    ClusterConfig {
        heartbeat: HEARTBEAT,
        dead_after: DEAD_AFTER,
        snapshot_every: SNAPSHOT_EVERY,
        claim: TIMING,
        ..ClusterConfig::new(url, cluster_name, id, N)
    }
}

/// One running instance: its handle, and what stops its loops.
pub struct Node {
    pub cluster: Cluster,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<()>,
}

/// A private Redis with `N` cluster handles on it, all alive.
pub struct TestCluster {
    pub redis: RedisServer,
    pub name: String,
    pub nodes: Vec<Node>,
}

impl TestCluster {
    pub async fn start() -> TestCluster {
        Self::start_with(|_, cfg| cfg).await
    }

    /// [`start`](Self::start) with each instance's config passed through `adjust` first.
    pub async fn start_with(
        adjust: impl Fn(InstanceId, ClusterConfig) -> ClusterConfig,
    ) -> TestCluster {
        let redis = RedisServer::start();
        let name = "kstest".to_owned();
        let nodes = (1..=N)
            .map(|id| {
                let cfg = adjust(id, config(&redis.url(), &name, id));
                let cluster = Cluster::new(cfg).expect("valid config");
                let shutdown = CancellationToken::new();
                let task = cluster.spawn(shutdown.clone());
                Node {
                    cluster,
                    shutdown,
                    task,
                }
            })
            .collect();
        let tc = TestCluster { redis, name, nodes };
        tc.wait_all_see_all_alive().await;
        tc
    }

    /// Who holds the claim on interaction `id` (`None`: nobody).
    pub async fn claim_holder(&self, id: u64) -> Option<String> {
        redis_get(&self.redis.url(), &keys::claim(&self.name, id)).await
    }

    /// The `PTTL` of the claim on interaction `id`.
    pub async fn claim_ttl(&self, id: u64) -> i64 {
        redis_pttl(&self.redis.url(), &keys::claim(&self.name, id)).await
    }

    pub fn node(&self, id: InstanceId) -> &Cluster {
        &self.nodes[id as usize - 1].cluster
    }

    pub async fn wait_all_see_all_alive(&self) {
        wait_for("every node to see every node alive", PATIENCE, || {
            self.nodes.iter().all(|n| {
                !n.cluster.is_degraded() && n.cluster.membership().alive_count() == N as usize
            })
        })
        .await;
    }

    /// Claims one interaction on each of `ids` at once; outcomes in the order of `ids`, with
    /// how long each claim took.
    pub async fn claim_on(
        &self,
        ids: &[InstanceId],
        interaction: u64,
        user: UserId,
    ) -> Vec<(InstanceId, ClaimOutcome, Duration)> {
        claim_with(self.handles(ids), interaction, user).await
    }

    /// Clones of the handles of `ids`, for claims that outlive a borrow of `self`.
    pub fn handles(&self, ids: &[InstanceId]) -> Vec<Cluster> {
        ids.iter().map(|&id| self.node(id).clone()).collect()
    }
}

/// Claims one interaction on every handle at once; outcomes in order, with how long each
/// claim took.
pub async fn claim_with(
    handles: Vec<Cluster>,
    interaction: u64,
    user: UserId,
) -> Vec<(InstanceId, ClaimOutcome, Duration)> {
    let received = now_ms();
    let claims = handles.into_iter().map(|cluster| async move {
        let start = Instant::now();
        let outcome = cluster.claim(interaction, user, received).await;
        let took = start.elapsed();
        if matches!(outcome, ClaimOutcome::Won { .. }) {
            // What the bot does right after acknowledging: the claim stops being pending.
            cluster.confirm(interaction).await;
        }
        (cluster.instance_id(), outcome, took)
    });
    futures_join_all(claims).await
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            n.shutdown.cancel();
        }
    }
}

/// Runs futures concurrently on the current task and collects their outputs in order
/// (`futures::join_all` without the extra dependency).
pub async fn futures_join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("claim task panicked"));
    }
    out
}

/// Polls `cond` every 5 ms until it holds; returns how long that took.
///
/// # Panics
/// When `cond` does not hold within `timeout`.
pub async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if cond() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// [`wait_for`] with a condition that has to ask Redis: polled every 20 ms.
///
/// # Panics
/// When `cond` does not hold within `timeout`.
pub async fn wait_for_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// A fresh interaction id (a snowflake created now), distinct for distinct `seq`.
pub fn interaction(seq: u32) -> u64 {
    snowflake_at(now_ms(), seq)
}

/// A user whose primary is `primary` (1-based) in an `N`-instance cluster.
pub fn user_of(primary: InstanceId, k: u64) -> UserId {
    k * u64::from(N) + u64::from(primary - 1)
}

/// Which instances answer (won, or degraded with `answer: true`).
pub fn answering(outcomes: &[(InstanceId, ClaimOutcome, Duration)]) -> Vec<InstanceId> {
    outcomes
        .iter()
        .filter(|(_, o, _)| o.answers())
        .map(|(id, _, _)| *id)
        .collect()
}

/// One command's reply, on a fresh connection.
async fn redis_query<T: redis::FromRedisValue>(url: &str, cmd: &redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

/// The value of a key, read on a fresh connection.
pub async fn redis_get(url: &str, key: &str) -> Option<String> {
    redis_query(url, redis::cmd("GET").arg(key)).await
}

/// `XLEN` of a stream (0: no stream).
pub async fn redis_xlen(url: &str, key: &str) -> u64 {
    redis_query(url, redis::cmd("XLEN").arg(key)).await
}

/// How many script calls (`EVALSHA` and `EVAL`) Redis has run, from `INFO commandstats`.
pub async fn redis_script_calls(url: &str) -> u64 {
    let info: String = redis_query(url, redis::cmd("INFO").arg("commandstats")).await;
    info.lines()
        .filter(|l| l.starts_with("cmdstat_evalsha:") || l.starts_with("cmdstat_eval:"))
        .filter_map(|l| {
            l.split("calls=")
                .nth(1)?
                .split(',')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// `PTTL` of a key (-2: no key, -1: no expiry).
pub async fn redis_pttl(url: &str, key: &str) -> i64 {
    redis_query(url, redis::cmd("PTTL").arg(key)).await
}

/// A chat job from `user` claimed by `origin`, as the bot would queue it.
pub fn chat_job(id: u64, user: u64, origin: InstanceId) -> Job {
    Job {
        id,
        token: "test-token".into(),
        application_id: 1,
        user_id: user,
        channel_id: 7,
        guild_id: None,
        args: JobArgs::Chat(ChatArgs {
            prompt: "hi".into(),
            reset: false,
        }),
        created_ms: now_ms(),
        attachment_limit: 8 << 20,
        origin,
        tried: Vec::new(),
        attempt: 0,
        claim: None,
    }
}

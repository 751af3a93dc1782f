//! Durable jobs: each instance's own Redis Streams (one per job kind) with a consumer group,
//! workers that take jobs as capacity frees up, idempotent delivery, the rescue of a dead
//! peer's jobs, and the move of a job to a peer when this instance's keys cannot serve it.
//!
//! Life of a job: the instance that won an interaction acknowledges it and [`Jobs::submit`]s
//! a [`Job`] to `{c}:jobs:{me}:{kind}`. A reader per kind takes one entry whenever a worker
//! slot is free (`XREADGROUP … >` on a dedicated connection, because a blocking read would
//! stall the shared multiplexed one) and runs the [`JobHandler`]. The entry is acknowledged
//! and deleted when the handler returns, so the stream's length is the instance's backlog.
//!
//! - A restarted instance first re-reads its own pending entries (`XREADGROUP … 0`).
//! - A dead instance's entries, pending or never read, are moved by one rescuer (chosen with
//!   `SET NX` on `{c}:rescue:{dead}`) into the rescuer's own stream (`XAUTOCLAIM` + `XREADGROUP`,
//!   then `XADD` + `XACK` + `XDEL`); its workers finish them with its own keys.
//! - The handler calls [`JobContext::begin_delivery`] before it posts the final answer: a
//!   `SET NX` on `{c}:done:{id}`, so a job that ran twice (moved while its first runner was
//!   still alive, or a dead instance coming back) is answered once.
//! - When Redis cannot take a job, it runs in this process at once: nothing is lost, only
//!   the durability of that one job.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyshard_routing::{ladder_from, InstanceId};
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::Load;
use crate::conn::Redis;
use crate::task::run_every;
use crate::{Cluster, ClusterError};

/// The consumer group every job stream has.
pub const GROUP: &str = "workers";

/// How long a done marker or saved job state lives: interaction tokens die after 15 minutes
/// and late results go to the channel at once, so an hour covers every job's life with room.
const JOB_KEY_TTL_MS: u64 = 60 * 60 * 1000;

/// How long one rescuer holds a dead instance: long enough to move a batch, short enough
/// that another instance takes over if the rescuer itself dies mid-way.
const RESCUE_LOCK_MS: u64 = 10_000;

/// How many entries one rescue pass moves per stream; the next pass (a second later) takes
/// the rest, so one pass never holds the shared connection long.
const RESCUE_BATCH: usize = 100;

/// A blocking read returns at least this often so the reader notices shutdown and reconnects.
const READ_BLOCK_MS: usize = 1_000;

/// The window over which the service rate is measured.
const RATE_WINDOW: Duration = Duration::from_secs(30);

/// Time budget of the non-blocking job operations on the shared connection.
const OP_BUDGET: Duration = Duration::from_millis(500);

/// What kind of work a job is; each kind has its own stream and worker pool so a slow video
/// never holds up a chat answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Chat,
    Image,
    Video,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Chat, JobKind::Image, JobKind::Video];

    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chat => "chat",
            JobKind::Image => "image",
            JobKind::Video => "video",
        }
    }
}

/// One unit of deferred work: everything needed to finish an acknowledged interaction on any
/// instance. `Debug` hides the interaction token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Job {
    /// The interaction id; also the job's id.
    pub id: u64,
    pub kind: JobKind,
    /// The interaction token (a secret: it lets anyone edit the reply for 15 minutes).
    pub token: String,
    pub application_id: u64,
    pub user_id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The command's arguments, as the command module defines them.
    pub args: serde_json::Value,
    /// When the interaction was created (Unix ms); its token dies 15 minutes later.
    pub created_ms: u64,
    /// The largest attachment the interaction accepts, in bytes.
    pub attachment_limit: u64,
    /// The instance that acknowledged the interaction.
    pub origin: InstanceId,
    /// Instances whose keys could not serve this job (auth, quota, balance).
    #[serde(default)]
    pub tried: Vec<InstanceId>,
    /// How many times the job has moved between instances.
    #[serde(default)]
    pub attempt: u32,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("token", &"***")
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("origin", &self.origin)
            .field("tried", &self.tried)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// How a handler finished a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (successfully or with an error message the user has seen).
    Finished,
    /// This instance's key cannot serve the job; give it to a peer (check
    /// [`JobContext::peer_for`] first: when no peer is left, the handler tells the user).
    MoveToPeer { reason: String },
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The work itself: provider calls and delivery, implemented by the bot.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome>;
}

/// Per-job access to the durable pieces: the delivery marker and resumable state.
#[derive(Clone)]
pub struct JobContext {
    jobs: Jobs,
}

impl JobContext {
    pub fn instance(&self) -> InstanceId {
        self.jobs.inner.me
    }

    /// Claims the right to post the job's final answer. `false`: another run already did.
    /// With Redis unreachable it answers `true`: a rare duplicate beats a lost answer.
    pub async fn begin_delivery(&self, job_id: u64) -> bool {
        let key = format!("{}:done:{job_id}", self.jobs.inner.prefix);
        let me = self.jobs.inner.me;
        let r: Result<Option<String>, _> = self
            .jobs
            .inner
            .redis
            .run("done marker", OP_BUDGET, move |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(JOB_KEY_TTL_MS)
                    .query_async(&mut c)
                    .await
            })
            .await;
        match r {
            Ok(v) => v.is_some(),
            Err(e) => {
                tracing::warn!(
                    job = job_id,
                    "cannot check the delivery marker, delivering anyway: {e}"
                );
                true
            }
        }
    }

    /// Saves resumable progress (e.g. a provider's task id) so a rescuer continues the job
    /// instead of starting it again.
    pub async fn save_state(
        &self,
        job_id: u64,
        state: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let key = format!("{}:jobstate:{job_id}", self.jobs.inner.prefix);
        let value = state.to_string();
        self.jobs
            .inner
            .redis
            .run("save job state", OP_BUDGET, move |mut c| async move {
                c.pset_ex::<_, _, ()>(&key, value, JOB_KEY_TTL_MS).await
            })
            .await
    }

    /// The progress saved by an earlier run of this job, if any.
    pub async fn load_state(&self, job_id: u64) -> Option<serde_json::Value> {
        let key = format!("{}:jobstate:{job_id}", self.jobs.inner.prefix);
        let raw: Option<String> = self
            .jobs
            .inner
            .redis
            .run("load job state", OP_BUDGET, move |mut c| async move {
                c.get(&key).await
            })
            .await
            .ok()
            .flatten();
        raw.and_then(|s| serde_json::from_str(&s).ok())
    }

    /// The live instance a job that this instance's key cannot serve would move to: the next
    /// one on the ladder after this instance that has not tried it yet.
    pub fn peer_for(&self, job: &Job) -> Option<InstanceId> {
        self.jobs.peer_for(job)
    }
}

/// Per-kind counters for the load published with the heartbeat.
#[derive(Default)]
struct KindCounters {
    /// Entries in this instance's stream (waiting + being worked on), sampled from Redis.
    stream_len: AtomicU64,
    /// Jobs a worker runs right now.
    in_flight: AtomicU64,
}

/// This instance's job queues and workers. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<JobsInner>,
}

struct JobsInner {
    cluster: Cluster,
    redis: Arc<Redis>,
    client: redis::Client,
    prefix: String,
    me: InstanceId,
    count: u32,
    kinds: HashMap<JobKind, KindCounters>,
    /// Completion times within the rate window. A std Mutex: pushed and trimmed in
    /// microseconds, never held across an await.
    completions: Mutex<VecDeque<Instant>>,
    started: Instant,
    /// Bounds jobs run in-process while Redis is down, per kind (the worker pools' sizes).
    local: Mutex<HashMap<JobKind, Arc<Semaphore>>>,
    handler: Mutex<Option<Arc<dyn JobHandler>>>,
    /// Jobs finished (any outcome), for tests and metrics.
    finished: AtomicU64,
    rescued: AtomicU64,
    moved: AtomicU64,
    stolen: AtomicU64,
}

/// Counters of the job mechanism, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct JobStats {
    pub finished: u64,
    pub rescued: u64,
    pub moved: u64,
    /// Waiting jobs taken from busier peers.
    pub stolen: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub service_rate: f64,
}

impl Jobs {
    /// The job queues of the instance that `cluster` represents.
    pub fn new(cluster: &Cluster) -> Jobs {
        let cfg = cluster.config();
        Jobs {
            inner: Arc::new(JobsInner {
                redis: cluster.redis(),
                client: cluster.redis_client(),
                prefix: cfg.cluster_name.clone(),
                me: cfg.instance_id,
                count: cfg.instance_count,
                kinds: JobKind::ALL
                    .iter()
                    .map(|k| (*k, KindCounters::default()))
                    .collect(),
                completions: Mutex::new(VecDeque::new()),
                started: Instant::now(),
                local: Mutex::new(HashMap::new()),
                handler: Mutex::new(None),
                finished: AtomicU64::new(0),
                rescued: AtomicU64::new(0),
                moved: AtomicU64::new(0),
                stolen: AtomicU64::new(0),
                cluster: cluster.clone(),
            }),
        }
    }

    fn stream(&self, instance: InstanceId, kind: JobKind) -> String {
        stream_key(&self.inner.prefix, instance, kind)
    }

    fn consumer(&self) -> String {
        format!("i{}", self.inner.me)
    }

    /// Queues `job` on this instance's own stream. When Redis cannot take it, the job runs in
    /// this process at once (within the kind's worker limit) instead of being lost.
    pub async fn submit(&self, job: Job) -> Result<(), ClusterError> {
        let stream = self.stream(self.inner.me, job.kind);
        match self.xadd(&stream, &job).await {
            Ok(()) => Ok(()),
            Err(e) => {
                tracing::warn!(
                    job = job.id,
                    "Redis cannot take the job; running it in-process: {e}"
                );
                self.run_local(job)
            }
        }
    }

    fn run_local(&self, job: Job) -> Result<(), ClusterError> {
        let handler = self.inner.handler.lock().expect("jobs lock").clone();
        let Some(handler) = handler else {
            return Err(ClusterError::InvalidConfig(
                "job workers are not running".into(),
            ));
        };
        let permits = self
            .inner
            .local
            .lock()
            .expect("jobs lock")
            .entry(job.kind)
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        let jobs = self.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            let kind = job.kind;
            jobs.counters(kind)
                .in_flight
                .fetch_add(1, Ordering::Relaxed);
            let outcome = handler
                .handle(job.clone(), JobContext { jobs: jobs.clone() })
                .await;
            jobs.counters(kind)
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
            jobs.finish(job, outcome).await;
        });
        Ok(())
    }

    async fn xadd(&self, stream: &str, job: &Job) -> Result<(), ClusterError> {
        let payload = serde_json::to_string(job).expect("a job serializes");
        let stream = stream.to_owned();
        self.inner
            .redis
            .run("queue job", OP_BUDGET, move |mut c| async move {
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("*")
                    .arg("job")
                    .arg(payload)
                    .query_async::<String>(&mut c)
                    .await
                    .map(|_| ())
            })
            .await
    }

    fn counters(&self, kind: JobKind) -> &KindCounters {
        &self.inner.kinds[&kind]
    }

    fn peer_for(&self, job: &Job) -> Option<InstanceId> {
        let membership = self.inner.cluster.membership();
        ladder_from(self.inner.me, self.inner.count)
            .skip(1)
            .filter(|id| !job.tried.contains(id) && *id != self.inner.me)
            .find(|id| membership.get(*id).is_some_and(|s| s.alive && !s.draining))
    }

    /// Records a finished job, or moves it to a peer.
    async fn finish(&self, mut job: Job, outcome: Outcome) {
        match outcome {
            Outcome::Finished => {
                self.inner.finished.fetch_add(1, Ordering::Relaxed);
                let mut c = self.inner.completions.lock().expect("jobs lock");
                c.push_back(Instant::now());
                trim(&mut c);
            }
            Outcome::MoveToPeer { reason } => {
                let Some(peer) = self.peer_for(&job) else {
                    tracing::warn!(job = job.id, %reason, "no peer left to move the job to");
                    return;
                };
                job.tried.push(self.inner.me);
                job.attempt += 1;
                let stream = self.stream(peer, job.kind);
                match self.xadd(&stream, &job).await {
                    Ok(()) => {
                        self.inner.moved.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(job = job.id, to = peer, %reason, "moved the job to a peer");
                    }
                    Err(e) => tracing::warn!(
                        job = job.id,
                        "could not move the job to instance {peer}: {e}"
                    ),
                }
            }
        }
    }

    /// The load to publish with the heartbeat.
    pub fn load(&self) -> Load {
        let in_flight: u64 = self
            .inner
            .kinds
            .values()
            .map(|k| k.in_flight.load(Ordering::Relaxed))
            .sum();
        let stream_len: u64 = self
            .inner
            .kinds
            .values()
            .map(|k| k.stream_len.load(Ordering::Relaxed))
            .sum();
        Load {
            // Entries stay in the stream while a worker runs them.
            queue_depth: stream_len.saturating_sub(in_flight),
            in_flight,
            service_rate: self.service_rate(),
        }
    }

    /// Jobs finished per second over the last [`RATE_WINDOW`] (or since start, if shorter,
    /// but never over less than 5 s so one early completion does not look like a fast rate).
    fn service_rate(&self) -> f64 {
        let mut c = self.inner.completions.lock().expect("jobs lock");
        trim(&mut c);
        if c.is_empty() {
            return 0.0;
        }
        let window = self
            .inner
            .started
            .elapsed()
            .clamp(Duration::from_secs(5), RATE_WINDOW);
        c.len() as f64 / window.as_secs_f64()
    }

    pub fn stats(&self) -> JobStats {
        let load = self.load();
        JobStats {
            finished: self.inner.finished.load(Ordering::Relaxed),
            rescued: self.inner.rescued.load(Ordering::Relaxed),
            moved: self.inner.moved.load(Ordering::Relaxed),
            stolen: self.inner.stolen.load(Ordering::Relaxed),
            queue_depth: load.queue_depth,
            in_flight: load.in_flight,
            service_rate: load.service_rate,
        }
    }

    /// Starts a reader with `workers` slots for each kind, the load sampler and the rescuer.
    pub fn spawn(
        &self,
        handler: Arc<dyn JobHandler>,
        workers: &[(JobKind, usize)],
        shutdown: CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        *self.inner.handler.lock().expect("jobs lock") = Some(handler.clone());
        let mut tasks = Vec::new();
        for &(kind, n) in workers {
            let n = n.max(1);
            self.inner
                .local
                .lock()
                .expect("jobs lock")
                .insert(kind, Arc::new(Semaphore::new(n)));
            let jobs = self.clone();
            let handler = handler.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                jobs.reader(kind, n, handler, shutdown).await
            }));
        }
        let interval = self.inner.cluster.config().heartbeat;
        let jobs = self.clone();
        tasks.push(tokio::spawn(run_every(
            "job load",
            interval,
            shutdown.clone(),
            None,
            move || {
                let jobs = jobs.clone();
                async move { jobs.sample_load().await }
            },
        )));
        let jobs = self.clone();
        tasks.push(tokio::spawn(run_every(
            "job rescue",
            interval,
            shutdown,
            None,
            move || {
                let jobs = jobs.clone();
                async move { jobs.rescue_dead().await }
            },
        )));
        tasks
    }

    /// Instance `id`'s streams, one per kind, with their lengths (one pipelined round trip).
    async fn backlog_of(
        &self,
        id: InstanceId,
    ) -> Result<(Vec<(JobKind, String)>, Vec<u64>), ClusterError> {
        let streams: Vec<(JobKind, String)> = JobKind::ALL
            .iter()
            .map(|k| (*k, self.stream(id, *k)))
            .collect();
        let keys: Vec<String> = streams.iter().map(|(_, s)| s.clone()).collect();
        let lens = self
            .inner
            .redis
            .run("job backlog", OP_BUDGET, move |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("XLEN").arg(k);
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok((streams, lens))
    }

    async fn sample_load(&self) -> Result<(), ClusterError> {
        let (streams, lens) = self.backlog_of(self.inner.me).await?;
        for ((kind, _), len) in streams.iter().zip(lens) {
            self.counters(*kind)
                .stream_len
                .store(len, Ordering::Relaxed);
        }
        self.inner.cluster.set_load(self.load());
        Ok(())
    }

    /// One kind's reader: takes an entry whenever a worker slot is free, first this
    /// consumer's own pending entries (a restart resumes its unfinished jobs), then new ones.
    async fn reader(
        &self,
        kind: JobKind,
        slots: usize,
        handler: Arc<dyn JobHandler>,
        shutdown: CancellationToken,
    ) {
        let stream = self.stream(self.inner.me, kind);
        let consumer = self.consumer();
        let permits = Arc::new(Semaphore::new(slots));
        let mut conn: Option<redis::aio::MultiplexedConnection> = None;
        // Entries this reader's workers are running: a backlog scan skips them.
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        // `None`: read new entries (`>`). `Some(id)`: scan this consumer's own pending entries
        // after `id` — at start (a restart resumes its jobs) and after any failed read, since
        // Redis may have handed over an entry whose answer never arrived.
        let mut backlog: Option<String> = Some("0".into());
        let mut backoff = Duration::from_millis(100);
        // Set after a job was taken from a peer: read again without blocking, and steal again
        // while this kind's workers have room and peers have a backlog.
        let mut stealing = false;
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            let c = match conn.as_mut() {
                Some(c) => c,
                None => match self.dedicated(&stream).await {
                    Ok(c) => {
                        backoff = Duration::from_millis(100);
                        conn.insert(c)
                    }
                    Err(e) => {
                        tracing::debug!(stream, "job reader cannot connect: {e}");
                        drop(permit);
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        // Reconnect attempts back off up to 5 s so a Redis outage costs
                        // little, and resume within seconds once it is back.
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            let start_id = backlog.clone().unwrap_or_else(|| ">".into());
            let mut cmd = redis::cmd("XREADGROUP");
            cmd.arg("GROUP")
                .arg(GROUP)
                .arg(&consumer)
                .arg("COUNT")
                .arg(1);
            if backlog.is_none() && !stealing {
                cmd.arg("BLOCK").arg(READ_BLOCK_MS);
            }
            cmd.arg("STREAMS").arg(&stream).arg(start_id);
            let read: redis::RedisResult<Option<StreamReadReply>> = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = cmd.query_async(c) => r,
            };
            let entry = match read {
                Ok(reply) => reply
                    .and_then(|r| r.keys.into_iter().next())
                    .and_then(|k| k.ids.into_iter().next()),
                Err(e) => {
                    tracing::debug!(stream, "job read failed: {e}");
                    conn = None;
                    backlog = Some("0".into());
                    continue;
                }
            };
            let Some(entry) = entry else {
                if backlog.is_some() {
                    // An empty answer to the backlog scan: every pending entry is running or done.
                    backlog = None;
                } else {
                    // Nothing of this kind waits here while a worker is free: take a waiting
                    // job from the busiest peer, so no key idles while another has a queue.
                    stealing = self.steal_one(kind).await;
                }
                continue;
            };
            if backlog.is_some() {
                let is_running = running.lock().expect("jobs lock").contains(&entry.id);
                backlog = Some(entry.id.clone());
                if is_running {
                    continue;
                }
            }
            let Some(job) = parse_entry(&entry) else {
                // A deleted entry still pending (moved away by a rescuer) or a malformed one:
                // acknowledge it so it stops coming back.
                let _ = self.ack(&stream, &entry.id).await;
                continue;
            };
            running.lock().expect("jobs lock").insert(entry.id.clone());
            let jobs = self.clone();
            let handler = handler.clone();
            let stream = stream.clone();
            let running = running.clone();
            tokio::spawn(async move {
                let _permit = permit;
                jobs.counters(kind)
                    .in_flight
                    .fetch_add(1, Ordering::Relaxed);
                let outcome = handler
                    .handle(job.clone(), JobContext { jobs: jobs.clone() })
                    .await;
                jobs.finish(job, outcome).await;
                if let Err(e) = jobs.ack(&stream, &entry.id).await {
                    // The entry stays pending; a restart or a rescuer runs it again and the
                    // done marker keeps the answer single.
                    tracing::warn!("could not acknowledge a finished job: {e}");
                }
                running.lock().expect("jobs lock").remove(&entry.id);
                jobs.counters(kind)
                    .in_flight
                    .fetch_sub(1, Ordering::Relaxed);
            });
        }
    }

    /// Moves one waiting (never read) job of `kind` from the most loaded live peer into this
    /// instance's own stream; `true` when one was moved. Off with `TAKEOVER=off`, where each
    /// instance keeps to its own users' work.
    async fn steal_one(&self, kind: JobKind) -> bool {
        if !self.inner.cluster.config().takeover || self.inner.cluster.is_degraded() {
            return false;
        }
        let membership = self.inner.cluster.membership();
        let mut peers: Vec<(InstanceId, u64)> = membership
            .iter()
            .filter(|s| s.alive && s.id != self.inner.me && s.queue_depth > 0)
            .map(|s| (s.id, s.queue_depth))
            .collect();
        peers.sort_by_key(|(_, q)| std::cmp::Reverse(*q));
        for (peer, _) in peers {
            let stream = self.stream(peer, kind);
            // Read as the peer's own consumer: if the move fails (or this instance dies
            // mid-way) the entry waits in the peer's pending list, where its restart scan and
            // a dead-instance rescue find it.
            let (s, consumer) = (stream.clone(), format!("i{peer}"));
            let read: Result<Option<StreamReadReply>, _> = self
                .inner
                .redis
                .run("steal read", OP_BUDGET, move |mut c| async move {
                    redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(1)
                        .arg("STREAMS")
                        .arg(&s)
                        .arg(">")
                        .query_async(&mut c)
                        .await
                })
                .await;
            let Some(entry) = read
                .ok()
                .flatten()
                .and_then(|r| r.keys.into_iter().next())
                .and_then(|k| k.ids.into_iter().next())
            else {
                continue;
            };
            if let Ok(true) = self.requeue(&stream, &entry, kind).await {
                self.inner.stolen.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// A connection of its own for blocking reads, with the group created.
    async fn dedicated(
        &self,
        stream: &str,
    ) -> Result<redis::aio::MultiplexedConnection, ClusterError> {
        // The library's default 500 ms response timeout is shorter than a blocking read: every
        // idle read would fail, and an entry handed over just then would be stranded.
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(
                Duration::from_millis(READ_BLOCK_MS as u64) + Duration::from_secs(2),
            ));
        let mut c = tokio::time::timeout(
            Duration::from_secs(2),
            self.inner
                .client
                .get_multiplexed_async_connection_with_config(&config),
        )
        .await
        .map_err(|_| ClusterError::Timeout {
            op: "job reader connect",
            timeout: Duration::from_secs(2),
        })?
        .map_err(|source| ClusterError::Redis {
            op: "job reader connect",
            source,
        })?;
        ensure_group(&mut c, stream).await?;
        Ok(c)
    }

    async fn ack(&self, stream: &str, id: &str) -> Result<(), ClusterError> {
        let (stream, id) = (stream.to_owned(), id.to_owned());
        self.inner
            .redis
            .run("ack job", OP_BUDGET, move |mut c| async move {
                redis::pipe()
                    .cmd("XACK")
                    .arg(&stream)
                    .arg(GROUP)
                    .arg(&id)
                    .ignore()
                    .cmd("XDEL")
                    .arg(&stream)
                    .arg(&id)
                    .ignore()
                    .query_async::<()>(&mut c)
                    .await
            })
            .await
    }

    /// Moves the jobs of every dead instance that has some into this instance's own streams,
    /// one rescuer per dead instance.
    async fn rescue_dead(&self) -> Result<(), ClusterError> {
        if self.inner.cluster.is_degraded() {
            return Ok(());
        }
        let membership = self.inner.cluster.membership();
        let dead: Vec<InstanceId> = membership
            .iter()
            .filter(|s| !s.alive && s.id != self.inner.me)
            .map(|s| s.id)
            .collect();
        for d in dead {
            let (streams, lens) = self.backlog_of(d).await?;
            if lens.iter().all(|l| *l == 0) {
                continue;
            }
            if !self.lock_rescue(d).await? {
                continue;
            }
            for ((kind, stream), len) in streams.into_iter().zip(lens) {
                if len > 0 {
                    let moved = self.move_entries(&stream, kind).await?;
                    if moved > 0 {
                        self.inner.rescued.fetch_add(moved, Ordering::Relaxed);
                        tracing::info!(
                            from = d,
                            kind = kind.as_str(),
                            moved,
                            "rescued jobs of a dead instance"
                        );
                    }
                }
            }
        }
        Ok(())
    }

    async fn lock_rescue(&self, dead: InstanceId) -> Result<bool, ClusterError> {
        let key = format!("{}:rescue:{dead}", self.inner.prefix);
        let me = self.inner.me;
        let r: Option<String> = self
            .inner
            .redis
            .run("rescue lock", OP_BUDGET, move |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(RESCUE_LOCK_MS)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if r.is_some() {
            return Ok(true);
        }
        // Held already: by this instance (a previous pass) is fine too.
        let key = format!("{}:rescue:{dead}", self.inner.prefix);
        let holder: Option<String> = self
            .inner
            .redis
            .run("rescue lock", OP_BUDGET, move |mut c| async move {
                c.get(&key).await
            })
            .await?;
        Ok(holder.as_deref() == Some(me.to_string().as_str()))
    }

    /// Takes a batch of a dead stream's entries (pending ones through `XAUTOCLAIM`, unread ones
    /// through `XREADGROUP`) and re-queues them on this instance's own stream.
    async fn move_entries(&self, dead_stream: &str, kind: JobKind) -> Result<u64, ClusterError> {
        let consumer = format!("rescue-{}", self.inner.me);
        let stream = dead_stream.to_owned();
        let entries: Vec<StreamId> = self
            .inner
            .redis
            .run(
                "rescue read",
                Duration::from_secs(2),
                move |mut c| async move {
                    let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                        .arg("CREATE")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg("0")
                        .arg("MKSTREAM")
                        .query_async(&mut c)
                        .await;
                    let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                        .arg(&stream)
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg(0)
                        .arg("0-0")
                        .arg("COUNT")
                        .arg(RESCUE_BATCH)
                        .query_async(&mut c)
                        .await?;
                    let unread: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(RESCUE_BATCH)
                        .arg("STREAMS")
                        .arg(&stream)
                        .arg(">")
                        .query_async(&mut c)
                        .await?;
                    let mut all = claimed.claimed;
                    all.extend(unread.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids));
                    Ok(all)
                },
            )
            .await?;
        let mut moved = 0;
        for entry in entries {
            if self.requeue(dead_stream, &entry, kind).await? {
                moved += 1;
            }
        }
        Ok(moved)
    }

    /// Moves one entry of stream `from` into this instance's own stream of `kind`: queued on
    /// ours first, then acknowledged on theirs (a crash in between runs the job twice, and the
    /// done marker keeps the answer single). An entry that is not a job is dropped. `Ok(true)`
    /// when a job moved.
    async fn requeue(
        &self,
        from: &str,
        entry: &StreamId,
        kind: JobKind,
    ) -> Result<bool, ClusterError> {
        let job = parse_entry(entry);
        if let Some(job) = &job {
            self.xadd(&self.stream(self.inner.me, kind), job).await?;
        }
        self.ack(from, &entry.id).await?;
        Ok(job.is_some())
    }
}

fn trim(c: &mut VecDeque<Instant>) {
    while c.front().is_some_and(|t| t.elapsed() > RATE_WINDOW) {
        c.pop_front();
    }
}

/// `{c}:jobs:{instance}:{kind}`.
pub fn stream_key(prefix: &str, instance: InstanceId, kind: JobKind) -> String {
    format!("{prefix}:jobs:{instance}:{}", kind.as_str())
}

async fn ensure_group(
    c: &mut redis::aio::MultiplexedConnection,
    stream: &str,
) -> Result<(), ClusterError> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        Err(source) => Err(ClusterError::Redis {
            op: "create job group",
            source,
        }),
    }
}

fn parse_entry(entry: &StreamId) -> Option<Job> {
    let raw = entry.map.get("job")?;
    let bytes: Vec<u8> = redis::from_redis_value_ref(raw).ok()?;
    serde_json::from_slice(&bytes).ok()
}

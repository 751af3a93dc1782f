//! Durable jobs: each instance's own Redis Streams (one per job kind) with a consumer group,
//! workers that take jobs as capacity frees up, idempotent delivery, the rescue of a dead
//! peer's jobs, and the move of a job to a peer when this instance's keys cannot serve it.
//!
//! Life of a job: the instance that won an interaction acknowledges it and
//! [`Jobs::submit_claimed`]s a [`Job`] to `{c}:jobs:{me}:{kind}`, with the claim's confirmation
//! in the same script. A reader per kind takes one entry whenever a worker slot is free *and*
//! the handler has reserved a send that a provider lane of the kind can
//! make at once ([`JobHandler::ready`]), and runs the [`JobHandler`]: the waiting entry of the
//! user with the least service in hand (`pick`) that the reserved lane can serve, new entries
//! waited for with `XREADGROUP … BLOCK` on a dedicated connection, because a blocking read
//! would stall the shared multiplexed one. The entry is acknowledged and deleted when the
//! handler returns, so the stream's length is the instance's backlog.
//!
//! - A restarted instance first re-reads its own pending entries (`XREADGROUP … 0`).
//! - A dead instance's entries, pending or never read, are moved by one rescuer (chosen with
//!   `SET NX` on `{c}:rescue:{dead}`) into the rescuer's own stream (`XAUTOCLAIM` + `XREADGROUP`,
//!   then `XADD` + `XACK` + `XDEL`); its workers finish them with its own keys.
//! - A reader with a free worker and nothing of its kind waiting at home takes a waiting job
//!   of its kind from a peer, the peer with the most of that kind first, and there the job
//!   the fair pick chooses.
//! - The handler calls [`JobContext::begin_delivery`] before it posts the final answer: a
//!   `SET NX` on `{c}:done:{id}`, so a job that ran twice (moved while its first runner was
//!   still alive, or a dead instance coming back) is answered once. With the usage ledger on,
//!   [`JobContext::begin_delivery_recording`] appends the job's ledger row in the same script,
//!   so the row is recorded once too.
//! - When Redis cannot take a job, it runs in this process at once: nothing is lost, only
//!   the durability of that one job.
//! - Every job waiting in Redis has a copy in the process that queued it (`shelter`): when
//!   Redis restarts empty, each instance writes again the done markers of the jobs it answered
//!   lately and then queues its copies again.
//!
//! The decisions are routing's, as plain functions over the membership snapshot:
//! [`move_target`](keyshard_routing::move_target) (where a job moves),
//! [`steal_order`](keyshard_routing::steal_order) (whom to take a waiting job from) and
//! [`ServiceRate`] (the rate published for the overload rule). This module does the I/O.
//!
//! Modules:
//! - `job`: the types ([`Job`] with its typed [`JobArgs`], [`UnreadableJob`], [`JobKind`],
//!   [`Outcome`], [`JobHandler`], [`BoxFuture`], [`JobStats`]).
//! - `wire`: a job's JSON on the stream, unchanged across versions, and [`decode`], which
//!   reads the arguments according to the kind once, when the entry is read.
//! - `context`: [`JobContext`], what a running job may ask (delivery marker, saved state,
//!   the peer it would move to).
//! - `stream`: every Redis stream call, each written once (`XADD`, `XACK` + `XDEL`, the group's
//!   creation, the reads, `XLEN`, the move of an entry between streams).
//! - `run`: one job's path, the same for a stream entry and for the in-process fallback:
//!   count in flight → handler → finish (record, or move to a peer) → ack → uncount. A job
//!   whose arguments do not decode takes the same path to the handler's
//!   [`unreadable`](JobHandler::unreadable), which tells the user.
//! - `pick`: the fair pick's mechanism: waiting entries read ahead into the `pool` consumer,
//!   and the one routing's [`fair_pick`](keyshard_routing::fair_pick) chooses taken with a
//!   script (the user with the least service in hand first), by a worker or a thief alike.
//! - `reader`: the `Reader` of one kind: its own pending entries first, then the fair pick,
//!   a steal when idle, and a blocking read for new entries.
//! - `rescue`: moving a dead instance's jobs into this instance's streams.
//! - `steal`: taking one waiting job from a peer.
//! - `shelter`: the copies of the jobs waiting in Redis and of the answers given here, and
//!   what is done with them when Redis restarts empty.
//! - `waiting`: honest waiting's read of the jobs waiting here, each with its place in the
//!   fair pick's order and its expected wait ([`Jobs::waiting`]), and the per-job fence that
//!   keeps a waiting edit of a reply from landing after the answer.
//!
//! Here: the [`Jobs`] handle (submit, spawn, the published load and counters).

mod context;
mod job;
mod pick;
mod reader;
mod rescue;
mod run;
mod shelter;
mod steal;
mod stream;
mod waiting;
mod wire;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use keyshard_routing::{estimate_wait, move_target, InstanceId, ServiceRate};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use self::context::{Delivery, JobContext};
pub use self::job::{
    Arrival, BoxFuture, ClaimInfo, Job, JobArgs, JobHandler, JobKind, JobStats, Outcome, Payload,
    Ready, Slot, UnreadableArgs, UnreadableJob,
};
pub use self::waiting::{EditInFlight, WaitingJob, WAITING_EDIT_BUDGET};
pub use self::wire::{decode, DecodeError};
/// `{c}:jobs:{instance}:{kind}` (the key is built in [`keys`](crate::keys)).
pub use crate::keys::job_stream as stream_key;
/// The consumer group every job stream has.
pub use crate::keys::JOB_GROUP as GROUP;

/// What became of a job handed to [`Jobs::submit_claimed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Submitted {
    /// On this instance's stream, its claim confirmed for the token's life.
    Queued,
    /// Redis could not take it: it runs in this process.
    InProcess,
    /// Nothing was queued: another instance holds the claim. This instance took longer than
    /// the claim's pending life to acknowledge, a fallback swept the lapsed claim, and that
    /// fallback, told by Discord that the interaction was acknowledged already, queues the
    /// job itself.
    Swept,
}

use self::reader::Reader;
use self::shelter::Shelter;
use crate::config::Load;
use crate::conn::Redis;
use crate::task::run_every;
use crate::{keys, Cluster, ClusterError};

/// How fast this instance finishes one kind, and how long a job of it runs.
struct Pace {
    rate: ServiceRate,
    /// A moving average of run times; `None` before the first run.
    run: Option<Duration>,
}

/// Per-kind counters for the load published with the heartbeat.
#[derive(Default)]
struct KindCounters {
    /// Entries in this instance's stream (waiting + being worked on), sampled from Redis.
    stream_len: AtomicU64,
    /// Jobs a worker runs right now.
    in_flight: AtomicU64,
    /// This instance's keys cannot serve the kind now (out of service): its reader does not
    /// take peers' waiting jobs, which it would only move on.
    unavailable: AtomicBool,
    /// The kind's maximum wait in ms (0: none), for the fair pick's overdue and late jobs.
    max_wait_ms: AtomicU64,
}

/// This instance's job queues and workers. Cheap to clone.
#[derive(Clone)]
pub struct Jobs {
    inner: Arc<JobsInner>,
}

struct JobsInner {
    cluster: Cluster,
    redis: Arc<Redis>,
    prefix: String,
    me: InstanceId,
    kinds: HashMap<JobKind, KindCounters>,
    /// The origin of the times given to `rate`.
    started: Instant,
    /// Completions and the service rate they make. A std Mutex: recorded and read in
    /// microseconds, never held across an await.
    rate: Mutex<ServiceRate>,
    /// The same per kind, with the kind's typical run time, for a new job's expected wait
    /// ([`Jobs::estimated_wait`]) and the waiting edits' estimates.
    kind_pace: Mutex<HashMap<JobKind, Pace>>,
    /// Bounds jobs run in-process while Redis is down, per kind (the worker pools' sizes).
    local: Mutex<HashMap<JobKind, Arc<Semaphore>>>,
    handler: Mutex<Option<Arc<dyn JobHandler>>>,
    /// Jobs finished (any outcome), for tests and metrics.
    finished: AtomicU64,
    rescued: AtomicU64,
    moved: AtomicU64,
    stolen: AtomicU64,
    /// Copies of the jobs waiting in Redis, for a Redis that restarts empty (`shelter`).
    shelter: Shelter,
    requeued: AtomicU64,
}

impl Jobs {
    /// The job queues of the instance that `cluster` represents.
    pub fn new(cluster: &Cluster) -> Jobs {
        let cfg = cluster.config();
        Jobs {
            inner: Arc::new(JobsInner {
                redis: cluster.redis(),
                prefix: cfg.cluster_name.clone(),
                me: cfg.instance_id,
                kinds: JobKind::ALL
                    .iter()
                    .map(|k| (*k, KindCounters::default()))
                    .collect(),
                started: Instant::now(),
                rate: Mutex::new(ServiceRate::new(Duration::ZERO)),
                kind_pace: Mutex::new(HashMap::new()),
                local: Mutex::new(HashMap::new()),
                handler: Mutex::new(None),
                finished: AtomicU64::new(0),
                rescued: AtomicU64::new(0),
                moved: AtomicU64::new(0),
                stolen: AtomicU64::new(0),
                shelter: Shelter::starting_at(cluster.empty_restarts()),
                requeued: AtomicU64::new(0),
                cluster: cluster.clone(),
            }),
        }
    }

    fn stream(&self, instance: InstanceId, kind: JobKind) -> String {
        keys::job_stream(&self.inner.prefix, instance, kind)
    }

    fn counters(&self, kind: JobKind) -> &KindCounters {
        &self.inner.kinds[&kind]
    }

    /// Time since this handle was made: the clock of the service rate.
    fn now(&self) -> Duration {
        self.inner.started.elapsed()
    }

    /// Where `job` would move if this instance's key cannot serve it.
    fn move_target(&self, job: &Job) -> Option<InstanceId> {
        move_target(self.inner.me, &job.tried, &self.inner.cluster.membership())
    }

    /// Queues `job` on this instance's own stream. When Redis cannot take it, the job runs in
    /// this process at once (within the kind's worker limit) instead of being lost.
    pub async fn submit(&self, job: Job) -> Result<(), ClusterError> {
        let stream = self.stream(self.inner.me, job.kind());
        let added = stream::add(&self.inner.redis, &stream, &job, Arrival::default()).await;
        self.take_submitted(&stream, job, added.map(Some))
            .map(|_| ())
    }

    /// [`submit`](Self::submit) for the job of an interaction this instance claimed and
    /// acknowledged: the claim is confirmed in the same round trip, so that the job is queued
    /// exactly when the claim is confirmed (`stream::add_confirming`), and the interaction
    /// needs no confirmation of its own. When Redis cannot take the job, it runs in this
    /// process and its claim lapses unconfirmed.
    pub async fn submit_claimed(&self, job: Job) -> Result<Submitted, ClusterError> {
        let stream = self.stream(self.inner.me, job.kind());
        let added = stream::add_confirming(&self.inner.cluster, &stream, &job).await;
        self.take_submitted(&stream, job, added)
    }

    /// What a submission's `XADD` on `stream` came to: the copy kept in the shelter, nothing
    /// (another instance holds the claim), or the job run in this process (Redis failed).
    fn take_submitted(
        &self,
        stream: &str,
        job: Job,
        added: Result<Option<stream::Queued>, ClusterError>,
    ) -> Result<Submitted, ClusterError> {
        match added {
            Ok(Some(queued)) => {
                self.shelter(stream, job.kind(), queued);
                Ok(Submitted::Queued)
            }
            Ok(None) => Ok(Submitted::Swept),
            Err(e) => {
                tracing::warn!(
                    job = job.id,
                    "Redis cannot take the job; running it in-process: {e}"
                );
                self.run_local(job).map(|()| Submitted::InProcess)
            }
        }
    }

    /// Says whether this instance's keys can serve jobs of `kind` now. While they cannot, its
    /// own jobs of the kind still run (the handler moves each to a peer without calling the
    /// provider) but its reader takes no waiting job from a peer.
    pub fn set_available(&self, kind: JobKind, available: bool) {
        self.counters(kind)
            .unavailable
            .store(!available, Ordering::Relaxed);
    }

    fn is_available(&self, kind: JobKind) -> bool {
        !self.counters(kind).unavailable.load(Ordering::Relaxed)
    }

    /// The longest a job of `kind` may wait (the command's `MAX_WAIT_SECS_*`; `None`: no
    /// maximum). A job waiting past half of it is overdue, past nine tenths late: the fair pick
    /// takes those first, oldest first (routing's [`lateness`](keyshard_routing::lateness)).
    pub fn set_max_wait(&self, kind: JobKind, max: Option<Duration>) {
        let ms = max.map_or(0, |m| m.as_millis().clamp(1, u128::from(u64::MAX)) as u64);
        self.counters(kind).max_wait_ms.store(ms, Ordering::Relaxed);
    }

    /// The lateness of a job of `kind` whose interaction was made at `created_ms` (an unknown
    /// time, 0, is on time).
    fn lateness(&self, kind: JobKind, created_ms: u64) -> keyshard_routing::Lateness {
        if created_ms == 0 {
            return keyshard_routing::Lateness::OnTime;
        }
        let max = self.counters(kind).max_wait_ms.load(Ordering::Relaxed);
        let waited = crate::clock::now_ms().saturating_sub(created_ms);
        keyshard_routing::lateness(
            Duration::from_millis(waited),
            (max > 0).then(|| Duration::from_millis(max)),
        )
    }

    /// The load to publish with the heartbeat.
    pub fn load(&self) -> Load {
        let (mut stream_len, mut in_flight) = (0, 0);
        let mut waiting = BTreeMap::new();
        for kind in JobKind::ALL {
            let c = self.counters(kind);
            let (len, running) = (
                c.stream_len.load(Ordering::Relaxed),
                c.in_flight.load(Ordering::Relaxed),
            );
            stream_len += len;
            in_flight += running;
            // Entries stay in the stream while a worker runs them.
            waiting.insert(kind.as_str().to_owned(), len.saturating_sub(running));
        }
        Load {
            queue_depth: stream_len.saturating_sub(in_flight),
            in_flight,
            service_rate: self.service_rate(),
            waiting,
        }
    }

    /// Jobs finished per second (routing's [`ServiceRate`]: the last 30 s, or since start if
    /// shorter, but never over less than 5 s).
    fn service_rate(&self) -> f64 {
        let now = self.now();
        self.inner.rate.lock().expect("jobs lock").rate(now)
    }

    /// The expected wait of a new job of `kind` queued now (routing's
    /// [`estimate_wait`](keyshard_routing::estimate_wait)): the jobs of that kind waiting in
    /// this instance's own stream, where the job goes, as this process counts them (no Redis
    /// call: the claim path asks this before it acknowledges), over the rate at which this
    /// instance finishes the kind, then the kind's typical run. `None` while no rate is known.
    ///
    /// Local, not the cluster's sum over its rate: under overload every instance has a queue
    /// and none steals, so a job waits for the queue it is in; and the published loads are up
    /// to a heartbeat old, so instances admitting against the same stale sum overshoot the
    /// maximum together, by the arrivals of that heartbeat.
    pub fn estimated_wait(&self, kind: JobKind) -> Option<Duration> {
        let (rate, run) = self.kind_pace(kind);
        estimate_wait(self.waiting_here(kind), rate, run)
    }

    /// Jobs of `kind` this instance finished per second lately (routing's [`ServiceRate`]),
    /// and how long one typically runs here (zero before the first).
    pub(super) fn kind_pace(&self, kind: JobKind) -> (f64, Duration) {
        let now = self.now();
        let pace = self.inner.kind_pace.lock().expect("jobs lock");
        pace.get(&kind).map_or((0.0, Duration::ZERO), |p| {
            (p.rate.rate(now), p.run.unwrap_or_default())
        })
    }

    pub fn stats(&self) -> JobStats {
        let load = self.load();
        JobStats {
            finished: self.inner.finished.load(Ordering::Relaxed),
            rescued: self.inner.rescued.load(Ordering::Relaxed),
            moved: self.inner.moved.load(Ordering::Relaxed),
            stolen: self.inner.stolen.load(Ordering::Relaxed),
            requeued: self.requeued(),
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
            let reader = Reader::new(self.clone(), kind, n, handler.clone());
            tasks.push(tokio::spawn(reader.run(shutdown.clone())));
        }
        // All three follow the heartbeat: the load is sampled as often as it is published, a
        // dead instance is rescued within a heartbeat of being seen dead, and the shelter's
        // copies are pruned (or queued again after Redis restarted empty) as often.
        let interval = self.inner.cluster.config().heartbeat;
        let every_heartbeat = |name, tick: fn(Jobs) -> BoxFuture<Result<(), ClusterError>>| {
            let jobs = self.clone();
            tokio::spawn(run_every(
                name,
                interval,
                shutdown.clone(),
                None,
                move || tick(jobs.clone()),
            ))
        };
        tasks.push(every_heartbeat("job load", |j| {
            Box::pin(async move { j.sample_load().await })
        }));
        tasks.push(every_heartbeat("job shelter", |j| {
            Box::pin(async move { j.shelter_tick().await })
        }));
        tasks.push(every_heartbeat("job rescue", |j| {
            Box::pin(async move { j.rescue_dead().await })
        }));
        tasks
    }

    /// Instance `id`'s streams, one per kind, with their lengths (one pipelined round trip).
    async fn backlog_of(
        &self,
        id: InstanceId,
    ) -> Result<Vec<(JobKind, String, u64)>, ClusterError> {
        let streams: Vec<String> = JobKind::ALL.iter().map(|k| self.stream(id, *k)).collect();
        let lens = stream::lengths(&self.inner.redis, &streams).await?;
        Ok(JobKind::ALL
            .into_iter()
            .zip(streams)
            .zip(lens)
            .map(|((kind, stream), len)| (kind, stream, len))
            .collect())
    }

    async fn sample_load(&self) -> Result<(), ClusterError> {
        for (kind, _, len) in self.backlog_of(self.inner.me).await? {
            self.counters(kind).stream_len.store(len, Ordering::Relaxed);
        }
        self.inner.cluster.set_load(self.load());
        Ok(())
    }
}

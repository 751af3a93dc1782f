//! Durable jobs against a real Redis: every job runs and is answered once, a dead instance's
//! jobs are rescued by a peer, a restarted instance resumes its own, a key problem moves a
//! job to a peer, a Redis outage runs jobs in-process instead of losing them, and an entry
//! whose arguments do not decode reaches the handler's `unreadable` (so the user is told) and
//! is acknowledged, on its own instance and after a rescue.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshard_cluster::jobs::BoxFuture;
use keyshard_cluster::{
    keys, Arrival, Cluster, Delivery, InstanceId, Job, JobContext, JobHandler, JobKind, Jobs,
    Outcome, UnreadableJob,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::support::{
    chat_job, now_ms, redis_get, wait_for, wait_for_async, TestCluster, PATIENCE,
};

/// What a recording handler does with a job.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Finish at once, delivering through the done marker.
    Finish,
    /// Never finish (a process that dies mid-job).
    Hang,
    /// Report a key problem, so the job moves to a peer.
    KeyProblem,
    /// Deliver, then never return (a process killed between the answer and the ack).
    DeliverThenHang,
}

/// Records which instance ran and which delivered each job.
#[derive(Clone)]
struct Recorder {
    me: InstanceId,
    mode: Mode,
    ran: Arc<Mutex<Vec<(u64, InstanceId)>>>,
    delivered: Arc<Mutex<HashMap<u64, Vec<InstanceId>>>>,
    started: Arc<Notify>,
    /// Jobs given to `unreadable`: id, kind, and the reason.
    unreadable: Arc<Mutex<Vec<(u64, JobKind, String)>>>,
    /// How each delivered job reached the stream its run read it from.
    arrivals: Arc<Mutex<HashMap<u64, Arrival>>>,
}

impl Recorder {
    fn new(
        me: InstanceId,
        mode: Mode,
        delivered: &Arc<Mutex<HashMap<u64, Vec<InstanceId>>>>,
    ) -> Self {
        Self {
            me,
            mode,
            ran: Arc::default(),
            delivered: delivered.clone(),
            started: Arc::new(Notify::new()),
            unreadable: Arc::default(),
            arrivals: Arc::default(),
        }
    }
}

impl JobHandler for Recorder {
    fn unreadable(&self, job: UnreadableJob, ctx: JobContext) -> BoxFuture<()> {
        let r = self.clone();
        Box::pin(async move {
            // As the bot does: the error message goes out through the done marker.
            if ctx.begin_delivery(job.id).await {
                r.delivered
                    .lock()
                    .unwrap()
                    .entry(job.id)
                    .or_default()
                    .push(r.me);
            }
            let reason = job.args.reason.clone();
            r.unreadable
                .lock()
                .unwrap()
                .push((job.id, job.kind(), reason));
        })
    }

    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
        let r = self.clone();
        Box::pin(async move {
            r.ran.lock().unwrap().push((job.id, r.me));
            r.started.notify_one();
            match r.mode {
                Mode::Hang => std::future::pending().await,
                Mode::DeliverThenHang => {
                    if ctx.begin_delivery(job.id).await {
                        r.delivered
                            .lock()
                            .unwrap()
                            .entry(job.id)
                            .or_default()
                            .push(r.me);
                    }
                    std::future::pending().await
                }
                Mode::KeyProblem if ctx.peer_for(&job).is_some() => Outcome::MoveToPeer {
                    reason: "test key rejected".into(),
                },
                Mode::Finish | Mode::KeyProblem => {
                    r.arrivals.lock().unwrap().insert(job.id, ctx.arrival());
                    if ctx.begin_delivery(job.id).await {
                        r.delivered
                            .lock()
                            .unwrap()
                            .entry(job.id)
                            .or_default()
                            .push(r.me);
                    }
                    Outcome::Finished
                }
            }
        })
    }
}

fn job(id: u64, origin: InstanceId) -> Job {
    chat_job(id, 42, origin)
}

const SLOTS: &[(JobKind, usize)] = &[(JobKind::Chat, 4), (JobKind::Image, 1), (JobKind::Video, 1)];

fn start_workers(
    cluster: &Cluster,
    handler: Recorder,
) -> (Jobs, CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
    let jobs = Jobs::new(cluster);
    let stop = CancellationToken::new();
    let tasks = jobs.spawn(Arc::new(handler), SLOTS, stop.clone());
    (jobs, stop, tasks)
}

fn delivered_once(
    delivered: &Arc<Mutex<HashMap<u64, Vec<InstanceId>>>>,
    ids: impl Iterator<Item = u64>,
) {
    let d = delivered.lock().unwrap();
    for id in ids {
        assert_eq!(
            d.get(&id).map(Vec::len),
            Some(1),
            "job {id} delivered {:?}",
            d.get(&id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_job_runs_and_is_answered_once() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    let (jobs, stop, _tasks) =
        start_workers(tc.node(1), Recorder::new(1, Mode::Finish, &delivered));
    for id in 1..=60 {
        jobs.submit(job(id, 1)).await.unwrap();
    }
    wait_for("60 jobs delivered", PATIENCE, || {
        delivered.lock().unwrap().len() == 60
    })
    .await;
    delivered_once(&delivered, 1..=60);
    wait_for("the stream to be empty", PATIENCE, || {
        jobs.stats().finished == 60
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_instances_jobs_are_rescued_by_a_peer() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    // Instance 1 takes jobs and hangs on them, like a process killed mid-job.
    let hang = Recorder::new(1, Mode::Hang, &delivered);
    let started = hang.started.clone();
    let (jobs1, _stop1, tasks1) = start_workers(tc.node(1), hang);
    for id in 100..120 {
        jobs1.submit(job(id, 1)).await.unwrap();
    }
    started.notified().await;
    // The rescuer: instance 2, with workers that finish.
    let rescuer = Recorder::new(2, Mode::Finish, &delivered);
    let (jobs2, stop2, _tasks2) = start_workers(tc.node(2), rescuer.clone());

    // Kill instance 1: its heartbeat and job loops stop without a goodbye.
    for t in tasks1 {
        t.abort();
    }
    let node1 = tc.nodes.remove(0);
    node1.task.abort();

    wait_for(
        "all 20 jobs delivered by the rescuer",
        Duration::from_secs(10),
        || delivered.lock().unwrap().len() == 20,
    )
    .await;
    delivered_once(&delivered, 100..120);
    assert!(delivered.lock().unwrap().values().all(|v| v == &vec![2]));
    assert_eq!(jobs2.stats().rescued, 20);
    let arrivals = rescuer.arrivals.lock().unwrap().clone();
    assert!(
        arrivals.values().all(|a| a.rescued && !a.stolen),
        "every run knows its job was rescued: {arrivals:?}"
    );
    stop2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_answered_before_its_instance_died_is_not_run_again() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    // Instance 1 answers job 150 and dies before acknowledging its entry.
    let (jobs1, _stop1, tasks1) = start_workers(
        tc.node(1),
        Recorder::new(1, Mode::DeliverThenHang, &delivered),
    );
    jobs1.submit(job(150, 1)).await.unwrap();
    wait_for("the answer out", PATIENCE, || {
        delivered.lock().unwrap().contains_key(&150)
    })
    .await;
    for t in tasks1 {
        t.abort();
    }
    tc.nodes.remove(0).task.abort();
    // Instance 2 rescues the entry, sees the done marker, and acknowledges it unrun.
    let rescuer = Recorder::new(2, Mode::Finish, &delivered);
    let ran = rescuer.ran.clone();
    let (jobs2, stop2, _tasks2) = start_workers(tc.node(2), rescuer);
    wait_for("the entry rescued", Duration::from_secs(10), || {
        jobs2.stats().rescued == 1
    })
    .await;
    let stream = keyshard_cluster::jobs::stream_key(&tc.name, 2, JobKind::Chat);
    let client = redis::Client::open(tc.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let len: u64 = redis::cmd("XLEN")
            .arg(&stream)
            .query_async(&mut conn)
            .await
            .unwrap();
        if len == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rescued entry stayed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        ran.lock().unwrap().is_empty(),
        "run again: {:?}",
        ran.lock().unwrap()
    );
    assert_eq!(jobs2.stats().finished, 0);
    delivered_once(&delivered, 150..151);
    stop2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_instance_resumes_its_own_jobs() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    let hang = Recorder::new(3, Mode::Hang, &delivered);
    let started = hang.started.clone();
    let (jobs, stop, tasks) = start_workers(tc.node(3), hang);
    for id in 200..205 {
        jobs.submit(job(id, 3)).await.unwrap();
    }
    started.notified().await;
    // The process "restarts": its workers die with jobs taken but unfinished...
    stop.cancel();
    for t in tasks {
        t.abort();
    }
    // ...and a new run of instance 3 (same id, same consumer) takes them up again.
    let (jobs, stop, _tasks) =
        start_workers(tc.node(3), Recorder::new(3, Mode::Finish, &delivered));
    wait_for("the 5 jobs resumed and delivered", PATIENCE, || {
        delivered.lock().unwrap().len() == 5
    })
    .await;
    delivered_once(&delivered, 200..205);
    assert_eq!(
        jobs.stats().rescued,
        0,
        "resumed by its own instance, not rescued"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_problem_moves_the_job_to_a_peer() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    let (jobs1, stop1, _t1) =
        start_workers(tc.node(1), Recorder::new(1, Mode::KeyProblem, &delivered));
    let (_jobs2, stop2, _t2) =
        start_workers(tc.node(2), Recorder::new(2, Mode::Finish, &delivered));
    jobs1.submit(job(300, 1)).await.unwrap();
    wait_for("the moved job delivered", PATIENCE, || {
        delivered.lock().unwrap().contains_key(&300)
    })
    .await;
    assert_eq!(
        delivered.lock().unwrap()[&300],
        vec![2],
        "instance 2 is next on the ladder after 1"
    );
    assert_eq!(jobs1.stats().moved, 1);
    stop1.cancel();
    stop2.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_a_job_runs_in_process() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    let recorder = Recorder::new(4, Mode::Finish, &delivered);
    let ran = recorder.ran.clone();
    let (jobs, stop, _tasks) = start_workers(tc.node(4), recorder);
    tc.redis.kill();
    jobs.submit(job(400, 4)).await.expect("taken in-process");
    wait_for("the job ran without Redis", PATIENCE, || {
        ran.lock().unwrap().iter().any(|(id, _)| *id == 400)
    })
    .await;
    // With Redis down the delivery marker cannot be checked: the answer goes out anyway.
    wait_for("delivered", PATIENCE, || {
        delivered.lock().unwrap().contains_key(&400)
    })
    .await;
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_heartbeat_carries_the_job_backlog() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    let hang = Recorder::new(2, Mode::Hang, &delivered);
    let (jobs, stop, _tasks) = start_workers(tc.node(2), hang);
    // 4 chat slots hang, so 6 of 10 jobs wait in the stream.
    for id in 500..510 {
        jobs.submit(job(id, 2)).await.unwrap();
    }
    wait_for("peers to see a queue of 6 on instance 2", PATIENCE, || {
        tc.node(1)
            .membership()
            .get(2)
            .is_some_and(|s| s.queue_depth == 6 && s.in_flight == 4)
    })
    .await;
    // Per kind too: the six are chat jobs, which is what a peer's idle chat worker looks for.
    let m = tc.node(1).membership();
    let two = m.get(2).unwrap();
    assert_eq!(
        (
            two.waiting_of("chat"),
            two.waiting_of("image"),
            two.waiting_of("video")
        ),
        (6, 0, 0),
        "{two:?}"
    );
    stop.cancel();
}

/// The shelter's copies follow the stream: a copy whose entry left it (moved by a peer, here
/// deleted by hand) is dropped by the next heartbeat's prune, and the others stay. Its count
/// is what the max-wait estimate reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shelter_drops_copies_of_entries_gone_from_the_stream() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    let (jobs, stop, _tasks) = start_workers(tc.node(2), Recorder::new(2, Mode::Hang, &delivered));
    // 4 chat slots hang, so 6 of 10 jobs wait in the stream.
    for id in 700..710 {
        jobs.submit(job(id, 2)).await.unwrap();
    }
    wait_for("six jobs waiting", PATIENCE, || {
        jobs.waiting_here(JobKind::Chat) == 6
    })
    .await;
    let stream = keyshard_cluster::jobs::stream_key(&tc.name, 2, JobKind::Chat);
    let mut conn = redis::Client::open(tc.redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ids: Vec<String> = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async::<Vec<(String, Vec<(String, String)>)>>(&mut conn)
        .await
        .unwrap()
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    // The entries its hanging workers took (consumer `i2`); the rest wait.
    let taken: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(keyshard_cluster::keys::JOB_GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .arg(keyshard_cluster::keys::job_consumer(2))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(taken.len(), 4, "{taken:?}");
    let waiting: Vec<&String> = ids
        .iter()
        .filter(|id| !taken.iter().any(|t| &t.0 == *id))
        .collect();
    assert_eq!(waiting.len(), 6);
    // One at a time, each awaited: a prune that dropped a copy still in the stream would skip
    // past the exact counts.
    for (gone, left) in [(waiting[5], 5), (waiting[4], 4)] {
        let _: u64 = redis::cmd("XDEL")
            .arg(&stream)
            .arg(gone)
            .query_async(&mut conn)
            .await
            .unwrap();
        wait_for("the copy pruned", PATIENCE, || {
            jobs.waiting_here(JobKind::Chat) == left
        })
        .await;
    }
    assert_eq!(jobs.waiting_here(JobKind::Chat), 4);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_instance_takes_waiting_jobs_from_a_busy_peer() {
    let tc = TestCluster::start().await;
    let delivered = Arc::default();
    // Instance 1's four chat workers hang, so six of its ten jobs wait in its stream.
    let (jobs1, stop1, _t1) = start_workers(tc.node(1), Recorder::new(1, Mode::Hang, &delivered));
    for id in 600..610 {
        jobs1.submit(job(id, 1)).await.unwrap();
    }
    // Instance 3 has nothing of its own to do: it takes the waiting ones.
    let idle = Recorder::new(3, Mode::Finish, &delivered);
    let arrivals = idle.arrivals.clone();
    let (jobs3, stop3, _t3) = start_workers(tc.node(3), idle);
    wait_for(
        "six waiting jobs finished by the idle peer",
        PATIENCE,
        || delivered.lock().unwrap().len() == 6,
    )
    .await;
    assert!(delivered.lock().unwrap().values().all(|v| v == &vec![3]));
    assert_eq!(jobs3.stats().stolen, 6);
    assert!(
        arrivals
            .lock()
            .unwrap()
            .values()
            .all(|a| a.stolen && !a.rescued),
        "{arrivals:?}"
    );
    stop1.cancel();
    stop3.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_reconnect_after_redis_restarts_empty() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    let (jobs, stop, _tasks) =
        start_workers(tc.node(2), Recorder::new(2, Mode::Finish, &delivered));
    jobs.submit(job(700, 2)).await.unwrap();
    wait_for("the first job delivered", PATIENCE, || {
        delivered.lock().unwrap().contains_key(&700)
    })
    .await;
    // The readers' dedicated connections break; the restarted Redis has no streams or groups.
    tc.redis.kill();
    tc.redis.restart();
    // The shared connection is back once the node's heartbeat is in the new Redis.
    wait_heartbeat_back(&tc, 2).await;
    // Queued in Redis, not in-process: only a reader that reconnected (and made the group
    // again) can run it.
    for id in 701..=705 {
        jobs.submit(job(id, 2)).await.unwrap();
    }
    wait_for("the jobs after the restart delivered", PATIENCE, || {
        delivered.lock().unwrap().len() == 6
    })
    .await;
    delivered_once(&delivered, 700..=705);
    // They went through the new stream, not in-process: all five were added to it, and it is
    // empty now, so a reader took and acknowledged every one.
    let stream = keyshard_cluster::jobs::stream_key(&tc.name, 2, JobKind::Chat);
    assert_eq!(stream_counts(&tc.redis.url(), &stream).await, (5, 0));
    stop.cancel();
}

/// The JSON of an image job as any version writes it, with `ratio` as given.
fn image_entry(id: u64, origin: InstanceId, ratio: &str) -> String {
    format!(
        r#"{{"id":{id},"kind":"image","token":"test-token","application_id":1,"user_id":42,"channel_id":7,"guild_id":null,"args":{{"model":null,"prompt":"cat","ratio":"{ratio}"}},"created_ms":{},"attachment_limit":8388608,"origin":{origin},"tried":[],"attempt":0}}"#,
        now_ms()
    )
}

/// `XADD`s `payload` as the `job` field of `stream`, as an instance queues a job.
async fn add_raw(conn: &mut redis::aio::MultiplexedConnection, stream: &str, payload: &str) {
    let _: String = redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg("job")
        .arg(payload)
        .query_async(conn)
        .await
        .unwrap();
}

/// Waits until `stream` has no entries and its group no pending ones: every entry acknowledged.
async fn wait_all_acknowledged(conn: &mut redis::aio::MultiplexedConnection, stream: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let (len, pending): (u64, (u64, redis::Value, redis::Value, redis::Value)) = redis::pipe()
            .cmd("XLEN")
            .arg(stream)
            .cmd("XPENDING")
            .arg(stream)
            .arg(keyshard_cluster::jobs::GROUP)
            .query_async(conn)
            .await
            .unwrap();
        if (len, pending.0) == (0, 0) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{stream}: {len} entries, {} pending",
            pending.0
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_with_unreadable_arguments_reaches_the_handler_and_is_acknowledged() {
    let mut tc = TestCluster::start().await;
    let client = redis::Client::open(tc.redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    // (`tc.node(id)` indexes the nodes still running: take instance 2 before one stops.)
    let node2 = tc.node(2).clone();
    // Instance 1 has a bad entry queued and dies before it runs a worker.
    let dead_stream = keyshard_cluster::jobs::stream_key(&tc.name, 1, JobKind::Image);
    add_raw(&mut conn, &dead_stream, &image_entry(901, 1, "7:3")).await;
    tc.nodes.remove(0).task.abort();
    // Instance 2 has a bad entry and a good one of its own.
    let stream = keyshard_cluster::jobs::stream_key(&tc.name, 2, JobKind::Image);
    add_raw(&mut conn, &stream, &image_entry(900, 2, "4:5")).await;
    add_raw(&mut conn, &stream, &image_entry(902, 2, "16:9")).await;

    let delivered = Arc::default();
    let recorder = Recorder::new(2, Mode::Finish, &delivered);
    let (unreadable, ran) = (recorder.unreadable.clone(), recorder.ran.clone());
    let (jobs, stop, _tasks) = start_workers(&node2, recorder);
    wait_for("all three jobs answered", Duration::from_secs(10), || {
        delivered.lock().unwrap().len() == 3
    })
    .await;
    delivered_once(&delivered, [900, 901, 902].into_iter());
    let mut told = unreadable.lock().unwrap().clone();
    told.sort_by_key(|(id, _, _)| *id);
    assert_eq!(told.len(), 2, "{told:?}");
    for ((id, kind, reason), (want_id, bad)) in told.iter().zip([(900, "4:5"), (901, "7:3")]) {
        assert_eq!((*id, *kind), (want_id, JobKind::Image));
        assert!(
            reason.contains("`ratio`") && reason.contains(bad),
            "{reason}"
        );
    }
    // Only the good job ran; the others were moved (901, by the rescue) as written.
    assert_eq!(*ran.lock().unwrap(), vec![(902, 2)]);
    assert_eq!(jobs.stats().rescued, 1);
    wait_all_acknowledged(&mut conn, &stream).await;
    wait_all_acknowledged(&mut conn, &dead_stream).await;
    wait_for("three jobs counted finished", PATIENCE, || {
        jobs.stats().finished == 3
    })
    .await;
    stop.cancel();
}

/// The done marker and the job's ledger row are one step: whichever run delivers first
/// records the row, every later run records nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_row_is_recorded_with_the_done_marker_once() {
    let tc = TestCluster::start().await;
    // A context of each instance, taken from a job run that hangs there.
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    struct Grab(tokio::sync::mpsc::UnboundedSender<JobContext>);
    impl JobHandler for Grab {
        fn handle(&self, _job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
            let _ = self.0.send(ctx);
            Box::pin(std::future::pending())
        }
    }
    let mut stops = Vec::new();
    let mut contexts = Vec::new();
    for id in [1, 2] {
        let jobs = Jobs::new(tc.node(id));
        let stop = CancellationToken::new();
        jobs.spawn(Arc::new(Grab(tx.clone())), SLOTS, stop.clone());
        jobs.submit(job(700 + u64::from(id), id)).await.unwrap();
        contexts.push(rx.recv().await.unwrap());
        stops.push(stop);
    }
    let first = contexts[0]
        .begin_delivery_recording(777, r#"{"row":"a"}"#)
        .await;
    assert!(matches!(first, Delivery::First { .. }), "{first:?}");
    let again = contexts[1]
        .begin_delivery_recording(777, r#"{"row":"b"}"#)
        .await;
    assert_eq!(again, Delivery::Again);
    let client = redis::Client::open(tc.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let lens: (u64, u64) = redis::pipe()
        .cmd("XLEN")
        .arg(keys::ledger_stream(&tc.name, 1))
        .cmd("XLEN")
        .arg(keys::ledger_stream(&tc.name, 2))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(
        lens,
        (1, 0),
        "one row, in the first run's instance's stream"
    );
    assert_eq!(
        redis_get(&tc.redis.url(), &keys::done(&tc.name, 777))
            .await
            .as_deref(),
        Some("1")
    );
    for s in stops {
        s.cancel();
    }
}

/// Waits until `id`'s heartbeat is in the (restarted) Redis again.
async fn wait_heartbeat_back(tc: &TestCluster, id: InstanceId) {
    let (url, hb) = (tc.redis.url(), keys::heartbeat(&tc.name, id));
    wait_for_async("a heartbeat after the restart", PATIENCE, || async {
        redis_get(&url, &hb).await.is_some()
    })
    .await;
}

/// Jobs waiting in Redis when it restarts empty were acknowledged to their users and exist
/// nowhere else in Redis: the instance that queued them queues its copies again, and each is
/// answered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_waiting_when_redis_restarts_empty_are_queued_again_and_answered_once() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    // Queued with no worker running yet: all five wait in the stream.
    let jobs = Jobs::new(tc.node(2));
    for id in 810..=814 {
        jobs.submit(job(id, 2)).await.unwrap();
    }
    tc.redis.kill();
    tc.redis.restart();
    wait_heartbeat_back(&tc, 2).await;
    let stop = CancellationToken::new();
    let handler = Recorder::new(2, Mode::Finish, &delivered);
    let _tasks = jobs.spawn(Arc::new(handler), SLOTS, stop.clone());
    wait_for("the waiting jobs delivered", PATIENCE, || {
        delivered.lock().unwrap().len() == 5
    })
    .await;
    delivered_once(&delivered, 810..=814);
    assert_eq!(jobs.stats().requeued, 5);
    stop.cancel();
}

/// After an empty restart, an instance writes again the done markers of the jobs it answered,
/// so a copy of one that a peer still holds (an entry taken just before the restart) is not
/// answered twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_done_markers_of_recent_answers_are_written_again_after_an_empty_restart() {
    let mut tc = TestCluster::start().await;
    let delivered = Arc::default();
    let (jobs, stop, _tasks) =
        start_workers(tc.node(3), Recorder::new(3, Mode::Finish, &delivered));
    jobs.submit(job(820, 3)).await.unwrap();
    wait_for("the job delivered", PATIENCE, || {
        delivered.lock().unwrap().contains_key(&820)
    })
    .await;
    let done = keys::done(&tc.name, 820);
    assert_eq!(
        redis_get(&tc.redis.url(), &done).await.as_deref(),
        Some("3")
    );
    tc.redis.kill();
    tc.redis.restart();
    let url = tc.redis.url();
    wait_for_async("the done marker written again", PATIENCE, || async {
        redis_get(&url, &done).await.is_some()
    })
    .await;
    // A copy of the job queued now (as a peer's stale copy would be) is not answered again.
    jobs.submit(job(820, 3)).await.unwrap();
    let stream = keyshard_cluster::jobs::stream_key(&tc.name, 3, JobKind::Chat);
    wait_for_async("the copy taken and acknowledged", PATIENCE, || async {
        stream_counts(&url, &stream).await == (1, 0)
    })
    .await;
    delivered_once(&delivered, 820..=820);
    stop.cancel();
}

/// `(entries-added, length)` of a job stream (`XINFO STREAM`), read on a fresh connection.
async fn stream_counts(url: &str, stream: &str) -> (i64, i64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let info: HashMap<String, redis::Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(&mut conn)
        .await
        .unwrap_or_default();
    let count = |field: &str| {
        info.get(field)
            .map_or(0, |v| redis::from_redis_value_ref::<i64>(v).unwrap())
    };
    (count("entries-added"), count("length"))
}

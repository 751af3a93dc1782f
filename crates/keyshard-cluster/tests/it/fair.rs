//! The fair pick against a real Redis: a light user's job is not queued behind a heavy
//! user's, on the instance that holds them and when an idle peer steals; every pooled job
//! still runs once, and a job's in-flight count is released when it ends.

use std::sync::{Arc, Mutex};

use keyshard_cluster::jobs::BoxFuture;
use keyshard_cluster::{
    keys, Cluster, InstanceId, Job, JobArgs, JobContext, JobHandler, JobKind, Jobs, Outcome, Ready,
};
use keyshard_types::{ImageArgs, ProviderKind};
use tokio_util::sync::CancellationToken;

use crate::support::{chat_job, wait_for, TestCluster, PATIENCE};

const HEAVY: u64 = 1001;
const LIGHT: u64 = 2002;

/// Records the users of the jobs it runs, in order; hangs instead when `hang`.
#[derive(Clone, Default)]
struct Order {
    hang: bool,
    ran: Arc<Mutex<Vec<(u64, u64)>>>,
}

impl JobHandler for Order {
    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
        let me = self.clone();
        Box::pin(async move {
            me.ran.lock().unwrap().push((job.id, job.user_id));
            if me.hang {
                std::future::pending::<()>().await;
            }
            assert!(ctx.begin_delivery(job.id).await, "answered once");
            Outcome::Finished
        })
    }
}

/// One chat worker, so the order of picks is the order of runs.
fn one_worker(cluster: &Cluster, handler: Order) -> (Jobs, CancellationToken) {
    let jobs = Jobs::new(cluster);
    let stop = CancellationToken::new();
    jobs.spawn(Arc::new(handler), &[(JobKind::Chat, 1)], stop.clone());
    (jobs, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_users_job_is_not_queued_behind_a_heavy_users_jobs() {
    let tc = TestCluster::start().await;
    let jobs = Jobs::new(tc.node(1));
    // Ten jobs of one user, then one of another, all waiting before any worker runs.
    for id in 1..=10 {
        jobs.submit(chat_job(id, HEAVY, 1)).await.unwrap();
    }
    jobs.submit(chat_job(11, LIGHT, 1)).await.unwrap();
    let order = Order::default();
    let ran = order.ran.clone();
    let (_jobs, stop) = one_worker(tc.node(1), order);
    wait_for("all eleven jobs run", PATIENCE, || {
        ran.lock().unwrap().len() == 11
    })
    .await;
    let ran = ran.lock().unwrap().clone();
    // First come first served would run the light job last. Both users start with nothing in
    // hand, so the heavy user's oldest job goes first; the light one is next.
    let light_at = ran.iter().position(|(_, u)| *u == LIGHT).unwrap();
    assert_eq!(light_at, 1, "{ran:?}");
    let mut ids: Vec<u64> = ran.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=11).collect::<Vec<_>>(), "each job ran once");
    // Every counted job is released once it ends: nobody has anything in flight.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let busy = busy_of(&tc, 1).await;
        if busy.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still counted: {busy:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    stop.cancel();
}

/// A job that has waited past half its kind's maximum is overdue and goes first, oldest
/// first, even before a light user's job: under sustained overload the fair order alone lets
/// newer jobs pass it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overdue_job_goes_before_a_light_users_job() {
    let tc = TestCluster::start().await;
    let jobs = Jobs::new(tc.node(1));
    jobs.set_max_wait(JobKind::Chat, Some(std::time::Duration::from_secs(60)));
    // The heavy user's first job is fresh; the second has waited 40 s (past half of 60 s);
    // the light user's is fresh.
    jobs.submit(chat_job(1, HEAVY, 1)).await.unwrap();
    let mut late = chat_job(2, HEAVY, 1);
    late.created_ms -= 40_000;
    jobs.submit(late).await.unwrap();
    jobs.submit(chat_job(3, LIGHT, 1)).await.unwrap();
    let order = Order::default();
    let ran = order.ran.clone();
    let stop = CancellationToken::new();
    jobs.spawn(Arc::new(order), &[(JobKind::Chat, 1)], stop.clone());
    wait_for("all three jobs run", PATIENCE, || {
        ran.lock().unwrap().len() == 3
    })
    .await;
    let ids: Vec<u64> = ran.lock().unwrap().iter().map(|(id, _)| *id).collect();
    // Without the overdue rule: 1 (the oldest, nobody served yet), 3 (the light user), 2.
    // With it, the overdue job first; the heavy user was served just now, so the light one
    // goes next.
    assert_eq!(ids, [2, 3, 1], "the overdue job first, then the fair order");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_peer_steals_the_job_the_fair_pick_chooses() {
    let tc = TestCluster::start().await;
    // Instance 1's one chat worker takes the heavy user's first job and hangs on it: the
    // heavy user has one job in flight, and nine more wait behind it, then the light one.
    let hang = Order {
        hang: true,
        ..Order::default()
    };
    let hung = hang.ran.clone();
    let (jobs1, stop1) = one_worker(tc.node(1), hang);
    jobs1.submit(chat_job(1, HEAVY, 1)).await.unwrap();
    wait_for("the first job to start", PATIENCE, || {
        hung.lock().unwrap().len() == 1
    })
    .await;
    for id in 2..=10 {
        jobs1.submit(chat_job(id, HEAVY, 1)).await.unwrap();
    }
    jobs1.submit(chat_job(11, LIGHT, 1)).await.unwrap();
    // Instance 3 is idle: the first job it takes is the light user's.
    let thief = Order::default();
    let stolen = thief.ran.clone();
    let (jobs3, stop3) = one_worker(tc.node(3), thief);
    wait_for(
        "ten waiting jobs finished by the idle peer",
        PATIENCE,
        || stolen.lock().unwrap().len() == 10,
    )
    .await;
    let stolen = stolen.lock().unwrap().clone();
    assert_eq!(stolen[0], (11, LIGHT), "{stolen:?}");
    assert_eq!(jobs3.stats().stolen, 10);
    assert_eq!(hung.lock().unwrap().len(), 1, "no pooled job ran twice");
    stop1.cancel();
    stop3.cancel();
}

/// A handler whose sends are reserved one at a time by the test: `ready` waits for a permit
/// of `sends` and reserves a MiniMax send (a `Reserved` slot); `handle` records each job with
/// the slot it was given.
#[derive(Clone)]
struct Gated {
    sends: Arc<tokio::sync::Semaphore>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
    ran: Ran,
}

/// The jobs a [`Gated`] ran, in order, with the reservation each came with.
type Ran = Arc<Mutex<Vec<(u64, Option<u32>)>>>;

/// What the test's `ready` reserves: a number, to see which job got which.
struct Reserved(u32);

impl JobHandler for Gated {
    fn ready(&self, _kind: JobKind) -> BoxFuture<Ready> {
        let me = self.clone();
        Box::pin(async move {
            let n = me.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) as u32;
            me.sends.acquire().await.unwrap().forget();
            Ready {
                provider: Some(ProviderKind::MiniMax),
                slot: Some(Box::new(Reserved(n))),
            }
        })
    }

    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
        let me = self.clone();
        Box::pin(async move {
            let slot = ctx.take_slot::<Reserved>().map(|r| r.0);
            me.ran.lock().unwrap().push((job.id, slot));
            assert!(ctx.begin_delivery(job.id).await, "answered once");
            Outcome::Finished
        })
    }
}

fn image_job(id: u64, user: u64, provider: Option<ProviderKind>) -> Job {
    let mut job = chat_job(id, user, 1);
    job.args = JobArgs::Image(ImageArgs {
        provider,
        prompt: "a \"model\":\"minimax\" cat".into(),
        ratio: None,
    });
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_picked_only_once_a_send_is_reserved_and_for_a_provider_that_serves_it() {
    let tc = TestCluster::start().await;
    let jobs = Jobs::new(tc.node(1));
    // The oldest job's user chose Stability (whose prompt mentions MiniMax, which must not
    // fool the pick); the next has no choice.
    jobs.submit(image_job(1, HEAVY, Some(ProviderKind::Stability)))
        .await
        .unwrap();
    jobs.submit(image_job(2, LIGHT, None)).await.unwrap();
    let gated = Gated {
        sends: Arc::new(tokio::sync::Semaphore::new(0)),
        asked: Arc::default(),
        ran: Arc::default(),
    };
    let (sends, asked, ran) = (gated.sends.clone(), gated.asked.clone(), gated.ran.clone());
    let stop = CancellationToken::new();
    // Eight worker slots: a free slot alone would start both jobs at once.
    jobs.spawn(Arc::new(gated), &[(JobKind::Image, 8)], stop.clone());
    wait_for("the reader to ask for a send", PATIENCE, || {
        asked.load(std::sync::atomic::Ordering::SeqCst) == 1
    })
    .await;
    assert!(
        ran.lock().unwrap().is_empty(),
        "nothing picked before a send"
    );
    sends.add_permits(1);
    wait_for("one job to run", PATIENCE, || {
        ran.lock().unwrap().len() == 1
    })
    .await;
    // The MiniMax send serves the job without a choice, and comes with it.
    assert_eq!(ran.lock().unwrap()[0], (2, Some(0)));
    sends.add_permits(1);
    wait_for("both jobs to run", PATIENCE, || {
        ran.lock().unwrap().len() == 2
    })
    .await;
    // Only a job for another provider waits: it runs (work-conserving) without the
    // reservation, which is given back.
    assert_eq!(ran.lock().unwrap()[1], (1, None));
    stop.cancel();
}

/// Instance `id`'s in-flight counts, user → jobs.
async fn busy_of(tc: &TestCluster, id: InstanceId) -> std::collections::HashMap<String, String> {
    let client = redis::Client::open(tc.redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("HGETALL")
        .arg(keys::busy(&tc.name, id))
        .query_async(&mut c)
        .await
        .unwrap()
}

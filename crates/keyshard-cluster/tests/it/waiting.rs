//! Honest waiting's read and fence against a real Redis: the waiting view lists the jobs not
//! yet taken, in the fair pick's order, without pulling any into the pool; an edit fenced
//! before a run begins is reported to that run, and no edit begins after it.

use std::sync::{Arc, Mutex};

use keyshard_cluster::jobs::BoxFuture;
use keyshard_cluster::{Job, JobContext, JobHandler, JobKind, Jobs, Outcome};
use tokio_util::sync::CancellationToken;

use crate::support::{chat_job, wait_for, TestCluster, PATIENCE};

/// Hangs on every job it takes, noting its id.
#[derive(Clone, Default)]
struct Hang(Arc<Mutex<Vec<u64>>>);

impl JobHandler for Hang {
    fn handle(&self, job: Job, _ctx: JobContext) -> BoxFuture<Outcome> {
        let me = self.clone();
        Box::pin(async move {
            me.0.lock().unwrap().push(job.id);
            std::future::pending::<Outcome>().await
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_waiting_view_ranks_untaken_jobs_by_the_fair_pick() {
    let tc = TestCluster::start().await;
    let jobs = Jobs::new(tc.node(1));
    // Nothing queued: an empty view (no group yet is not an error).
    assert!(jobs.waiting(JobKind::Chat).await.unwrap().is_empty());
    let hang = Hang::default();
    let ran = hang.0.clone();
    let stop = CancellationToken::new();
    jobs.spawn(Arc::new(hang), &[(JobKind::Chat, 1)], stop.clone());
    jobs.submit(chat_job(1, 100, 1)).await.unwrap();
    wait_for("the first job to run", PATIENCE, || {
        ran.lock().unwrap().len() == 1
    })
    .await;
    // User 100 (one job in hand) queues two more, then user 200 one.
    for (id, user) in [(2, 100), (3, 100), (4, 200)] {
        jobs.submit(chat_job(id, user, 1)).await.unwrap();
    }
    let view = jobs.waiting(JobKind::Chat).await.unwrap();
    let ranks: Vec<(u64, u64)> = view.iter().map(|w| (w.job.id, w.ahead)).collect();
    // The running job is not listed; user 200's job goes first, then user 100's in order.
    assert_eq!(ranks, vec![(2, 1), (3, 2), (4, 0)]);
    assert!(
        view.iter().all(|w| w.estimate.is_none()),
        "nothing finished yet"
    );
    // Read twice, same answer: the view takes nothing.
    let again = jobs.waiting(JobKind::Chat).await.unwrap();
    assert_eq!(again.len(), 3);
    assert_eq!(ran.lock().unwrap().len(), 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_learns_of_the_edit_on_its_way_and_no_edit_begins_after_it() {
    let tc = TestCluster::start().await;
    let (one, three) = (Jobs::new(tc.node(1)), Jobs::new(tc.node(3)));
    // Instance 1 fences an edit of job 7; instance 3 (a thief) starts the job meanwhile.
    assert!(one.begin_waiting_edit(7).await.unwrap());
    let edit = three
        .job_started(7)
        .await
        .unwrap()
        .expect("an edit on its way");
    assert_eq!(edit.sender, 1);
    assert!(three.waiting_edit_remaining(7).await.unwrap().is_some());
    // Only its sender lifts the fence.
    three.end_waiting_edit(7).await;
    assert!(three.waiting_edit_remaining(7).await.unwrap().is_some());
    one.end_waiting_edit(7).await;
    assert_eq!(three.waiting_edit_remaining(7).await.unwrap(), None);
    // The run has begun: no edit of that job begins any more, on any instance.
    assert!(!one.begin_waiting_edit(7).await.unwrap());
    assert!(!three.begin_waiting_edit(7).await.unwrap());
    // Another job with no edit in flight starts without waiting.
    assert_eq!(one.job_started(8).await.unwrap(), None);
}

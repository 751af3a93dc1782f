//! One job's path, the same whether the job came from this instance's stream (the reader) or
//! runs in-process because Redis refused it: count it in flight → run the handler (unless an
//! earlier run already answered) → finish (record the completion, or move the job to a peer)
//! → acknowledge its stream entry → uncount it. A job whose arguments did not decode
//! ([`Work::Unreadable`]) takes the same path, with the handler's `unreadable` in place of
//! `handle`: the user is told, and the job counts as finished.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use keyshard_routing::ServiceRate;
use std::time::Duration;
use tokio::sync::Semaphore;

use super::{
    stream, Arrival, Job, JobContext, JobHandler, JobKind, Jobs, Outcome, Slot, UnreadableJob,
};
use crate::ClusterError;

/// What a worker runs: a job, or a job whose arguments did not decode.
pub(super) enum Work {
    Job(Job),
    Unreadable(UnreadableJob),
}

impl Work {
    fn id(&self) -> u64 {
        match self {
            Work::Job(j) => j.id,
            Work::Unreadable(j) => j.id,
        }
    }

    fn kind(&self) -> JobKind {
        match self {
            Work::Job(j) => j.kind(),
            Work::Unreadable(j) => j.kind(),
        }
    }
}

/// Where a job's stream entry is, to acknowledge it once the job is done, and how the job got
/// into that stream.
pub(super) struct Entry {
    pub(super) stream: String,
    pub(super) id: String,
    pub(super) arrival: Arrival,
    /// The user the fair pick counted in flight for this run, released when it ends.
    pub(super) counted: Option<u64>,
}

impl Jobs {
    /// Runs `job` to the end. `entry`: its stream entry; `None` for a job run in-process.
    ///
    /// The job counts as in flight until after `finish` and the ack, never less. The
    /// published backlog is `stream length − in flight`: uncounting before the entry is gone
    /// (as the in-process path once did) shows a finished job as waiting for a moment, a
    /// phantom backlog that can tip the overload rule or send a peer to steal a job that is
    /// not there. Uncounting after `finish` also puts the completion in the service rate
    /// before the job leaves the in-flight count, so no published load misses it. The
    /// in-process path has no entry but keeps the order, so both publish the same load.
    pub(super) async fn run_job(
        &self,
        handler: &dyn JobHandler,
        work: Work,
        entry: Option<&Entry>,
        slot: Option<Slot>,
    ) {
        // Uncounted when dropped: at the end below, or while unwinding from a panicking
        // handler, which would otherwise leave a phantom job in flight for good.
        let _in_flight = InFlight::count(&self.counters(work.kind()).in_flight);
        // An entry may hold a job that an earlier run answered without acknowledging it (its
        // instance died in between, and the job was rescued or resumed). Running it again
        // would only repeat the provider call and its side effects, such as a second copy of
        // the turn in conversation memory: the done marker stops a second answer anyway. A
        // job run in-process never reached a stream, so it has no earlier run.
        let arrival = entry.map(|e| e.arrival).unwrap_or_default();
        let ctx = JobContext {
            jobs: self.clone(),
            arrival,
            slot: Arc::new(std::sync::Mutex::new(slot)),
        };
        if entry.is_some() && self.answered(work.id()).await {
            tracing::info!(job = work.id(), "answered by an earlier run; not run again");
        } else {
            match work {
                Work::Job(job) => {
                    let began = std::time::Instant::now();
                    let outcome = handler.handle(job.clone(), ctx).await;
                    self.finish(job, outcome, arrival, began.elapsed()).await;
                }
                Work::Unreadable(job) => {
                    let kind = job.kind();
                    // The handler logs it (the default does nothing else).
                    handler.unreadable(job, ctx).await;
                    // Answered (with an error): a completion like any other, so the
                    // backlog and the service rate stay true.
                    self.record_finished(kind, None);
                }
            }
        }
        if let Some(entry) = entry {
            if let Err(e) = stream::ack(&self.inner.redis, &entry.stream, &entry.id).await {
                // The entry stays pending; a restart or a rescuer runs it again and the
                // done marker keeps the answer single.
                tracing::warn!("could not acknowledge a finished job: {e}");
            }
            if let Some(user) = entry.counted {
                self.release(user).await;
            }
        }
    }

    /// Runs `job` in this process (Redis refused it), within the kind's worker limit.
    pub(super) fn run_local(&self, job: Job) -> Result<(), ClusterError> {
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
            .entry(job.kind())
            .or_insert_with(|| Arc::new(Semaphore::new(1)))
            .clone();
        let jobs = self.clone();
        tokio::spawn(async move {
            let _permit = permits.acquire_owned().await;
            jobs.run_job(&*handler, Work::Job(job), None, None).await;
        });
        Ok(())
    }

    /// Records a finished job (its run took `took`), or moves it to a peer (keeping how it
    /// arrived here).
    async fn finish(&self, mut job: Job, outcome: Outcome, arrival: Arrival, took: Duration) {
        match outcome {
            Outcome::Finished => self.record_finished(job.kind(), Some(took)),
            Outcome::MoveToPeer { reason } => {
                let Some(peer) = self.move_target(&job) else {
                    tracing::warn!(job = job.id, %reason, "no peer left to move the job to");
                    return;
                };
                job.tried.push(self.inner.me);
                job.attempt += 1;
                let to = self.stream(peer, job.kind());
                match stream::add(&self.inner.redis, &to, &job, arrival).await {
                    Ok(queued) => {
                        self.shelter(&to, job.kind(), queued);
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
}

impl Jobs {
    /// Counts a finished job, in the totals and in the service rates (all kinds, its kind),
    /// and how long its run took in the kind's typical run time.
    fn record_finished(&self, kind: JobKind, took: Option<Duration>) {
        self.inner.finished.fetch_add(1, Ordering::Relaxed);
        let now = self.now();
        self.inner.rate.lock().expect("jobs lock").record(now);
        let mut pace = self.inner.kind_pace.lock().expect("jobs lock");
        let pace = pace.entry(kind).or_insert_with(|| super::Pace {
            rate: ServiceRate::new(Duration::ZERO),
            run: None,
        });
        pace.rate.record(now);
        if let Some(took) = took {
            pace.run = Some(pace.run.map_or(took, |typical| ewma(typical, took)));
        }
    }
}

/// A kind's typical run time moved an eighth of the way to the latest run: a few dozen runs of
/// memory, so one slow answer does not swing the estimate.
fn ewma(typical: Duration, latest: Duration) -> Duration {
    if latest >= typical {
        typical + (latest - typical) / 8
    } else {
        typical - (typical - latest) / 8
    }
}

/// One job counted in flight for as long as this lives.
struct InFlight<'a>(&'a AtomicU64);

impl<'a> InFlight<'a> {
    fn count(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::{BoxFuture, JobKind};
    use crate::{Cluster, ClusterConfig};

    /// Checks the published load from inside the handler, then finishes or panics.
    struct Probe {
        panic: bool,
    }

    impl JobHandler for Probe {
        fn handle(&self, _job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
            let panic = self.panic;
            Box::pin(async move {
                let load = ctx.jobs.load();
                assert_eq!(load.in_flight, 1, "counted while the handler runs");
                assert_eq!(load.service_rate, 0.0, "not recorded before it finishes");
                if panic {
                    panic!("handler failed");
                }
                Outcome::Finished
            })
        }
    }

    fn job() -> Job {
        serde_json::from_value(serde_json::json!({
            "id": 1, "kind": "chat", "token": "t", "application_id": 1, "user_id": 2,
            "channel_id": 3, "guild_id": null, "args": {"prompt": "p"}, "created_ms": 0,
            "attachment_limit": 0, "origin": 1
        }))
        .unwrap()
    }

    fn jobs() -> Jobs {
        // Nothing listens on port 1: no Redis is needed for a job run without a stream entry.
        Jobs::new(&Cluster::new(ClusterConfig::new("redis://127.0.0.1:1", "ks", 1, 2)).unwrap())
    }

    #[tokio::test]
    async fn a_finished_job_is_recorded_before_it_is_uncounted() {
        let jobs = jobs();
        jobs.run_job(&Probe { panic: false }, Work::Job(job()), None, None)
            .await;
        let stats = jobs.stats();
        assert_eq!((stats.in_flight, stats.finished), (0, 1));
        assert!(stats.service_rate > 0.0);
        assert_eq!(jobs.load().waiting.get(JobKind::Chat.as_str()), Some(&0));
    }

    #[tokio::test]
    async fn a_panicking_handler_leaves_no_job_in_flight() {
        let jobs = jobs();
        let run = {
            let jobs = jobs.clone();
            tokio::spawn(async move {
                jobs.run_job(&Probe { panic: true }, Work::Job(job()), None, None)
                    .await
            })
        };
        assert!(run.await.unwrap_err().is_panic());
        assert_eq!((jobs.stats().in_flight, jobs.stats().finished), (0, 0));
    }
}

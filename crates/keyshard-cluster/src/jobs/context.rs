//! What a running job may ask of the cluster ([`JobContext`]): the delivery marker that makes
//! its answer single (with the job's usage-ledger row in the same step), resumable state for
//! the next run, how the job got here, and the peer it would move to.

use std::sync::{Arc, Mutex};

use keyshard_routing::InstanceId;
use redis::AsyncCommands;

use super::stream::OP_BUDGET;
use super::{Arrival, Job, Jobs, Slot};
use crate::{keys, ClusterError};

/// How long a done marker or saved job state lives: interaction tokens die after 15 minutes
/// and late results go to the channel at once, so an hour covers every job's life with room.
pub(super) const JOB_KEY_TTL_MS: u64 = 60 * 60 * 1000;

/// Sets the done marker and, only when this run set it, appends the job's ledger row to this
/// instance's ledger stream (`KEYS[1]` the marker, `KEYS[2]` the stream; `ARGV` me, the
/// marker's TTL, the row's JSON). One script, so a row exists exactly when a done marker
/// does: a kill before it leaves neither (the job runs again), a kill after it leaves both.
const DELIVERY_SCRIPT: &str = r"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('XADD', KEYS[2], '*', 'row', ARGV[3])
end
return false
";

/// What [`JobContext::begin_delivery_recording`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// This run posts the answer; its row is entry `entry` of this instance's ledger stream.
    First { entry: String },
    /// Another run already posted the answer (and recorded the row): drop this one.
    Again,
    /// Redis did not answer: deliver anyway (a rare duplicate beats a lost answer). The row
    /// may or may not be in the stream; the caller keeps it in memory and Postgres keeps one.
    Unchecked,
}

/// Per-job access to the durable pieces: the delivery marker and resumable state.
#[derive(Clone)]
pub struct JobContext {
    pub(super) jobs: Jobs,
    pub(super) arrival: Arrival,
    /// What [`JobHandler::ready`](super::JobHandler::ready) reserved for this job, until the
    /// handler takes it. A std Mutex: taken once, never held across an await.
    pub(super) slot: Arc<Mutex<Option<Slot>>>,
}

impl JobContext {
    pub fn instance(&self) -> InstanceId {
        self.jobs.inner.me
    }

    /// How the job reached this instance's stream (rescued from a dead instance, taken from a
    /// busy peer); the default for a job queued here or run in-process.
    pub fn arrival(&self) -> Arrival {
        self.arrival
    }

    /// Takes what [`JobHandler::ready`](super::JobHandler::ready) reserved for this job, if
    /// it is a `T` (`None`: nothing reserved, as for a job resumed from the pending list or
    /// run in-process, or already taken).
    pub fn take_slot<T: 'static>(&self) -> Option<T> {
        let slot = self.slot.lock().expect("slot lock").take()?;
        slot.downcast::<T>().ok().map(|b| *b)
    }

    /// Claims the right to post the job's final answer. `false`: another run already did.
    /// With Redis unreachable it answers `true`: a rare duplicate beats a lost answer.
    pub async fn begin_delivery(&self, job_id: u64) -> bool {
        let key = keys::done(&self.jobs.inner.prefix, job_id);
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
        let first = match r {
            Ok(v) => v.is_some(),
            Err(e) => {
                tracing::warn!(
                    job = job_id,
                    "cannot check the delivery marker, delivering anyway: {e}"
                );
                true
            }
        };
        if first {
            self.jobs.remember_answered(job_id);
        }
        first
    }

    /// [`begin_delivery`](Self::begin_delivery) with the job's usage-ledger row (JSON, opaque
    /// here) appended to `{c}:ledger:{me}` in the same step ([`DELIVERY_SCRIPT`]), so the row is
    /// recorded once per job however many runs it had. Build the row before calling: the
    /// delivery that follows cannot change it.
    pub async fn begin_delivery_recording(&self, job_id: u64, row: &str) -> Delivery {
        let inner = &self.jobs.inner;
        let done = keys::done(&inner.prefix, job_id);
        let stream = keys::ledger_stream(&inner.prefix, inner.me);
        let me = inner.me;
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(DELIVERY_SCRIPT));
        let script = &*SCRIPT;
        let r: Result<Option<String>, _> = inner
            .redis
            .run("done marker", OP_BUDGET, |mut c| async move {
                script
                    .key(&done)
                    .key(&stream)
                    .arg(me)
                    .arg(JOB_KEY_TTL_MS)
                    .arg(row)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        let delivery = match r {
            Ok(Some(entry)) => Delivery::First { entry },
            Ok(None) => Delivery::Again,
            Err(e) => {
                tracing::warn!(
                    job = job_id,
                    "cannot check the delivery marker, delivering anyway: {e}"
                );
                Delivery::Unchecked
            }
        };
        if delivery != Delivery::Again {
            self.jobs.remember_answered(job_id);
        }
        delivery
    }

    /// Saves resumable progress (e.g. a provider's task id) so a rescuer continues the job
    /// instead of starting it again.
    pub async fn save_state(
        &self,
        job_id: u64,
        state: &serde_json::Value,
    ) -> Result<(), ClusterError> {
        let key = keys::job_state(&self.jobs.inner.prefix, job_id);
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
        let key = keys::job_state(&self.jobs.inner.prefix, job_id);
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

    /// The live instance a job that this instance's key cannot serve would move to
    /// (routing's [`move_target`](keyshard_routing::move_target)); `None` when no peer is left.
    pub fn peer_for(&self, job: &Job) -> Option<InstanceId> {
        self.jobs.move_target(job)
    }
}

impl Jobs {
    /// Whether a run of job `job_id` already posted its final answer (its done marker is
    /// set). Unknown (Redis unreachable) counts as no: the job runs, and
    /// [`JobContext::begin_delivery`] decides at the end as always.
    pub(super) async fn answered(&self, job_id: u64) -> bool {
        let key = keys::done(&self.inner.prefix, job_id);
        self.inner
            .redis
            .run("done marker", OP_BUDGET, move |mut c| async move {
                redis::cmd("EXISTS")
                    .arg(&key)
                    .query_async::<bool>(&mut c)
                    .await
            })
            .await
            .unwrap_or(false)
    }
}

//! What a Redis that restarts *empty* would take with it, kept in this process: the jobs
//! waiting in the streams this instance wrote them to, and which jobs it answered lately.
//!
//! A waiting job lives in Redis and nowhere else. A Redis that comes back without its data
//! (no persistence, a failover to an empty replica) would drop every job still waiting: each
//! acknowledged to its user ("thinking…") and then never answered. So every instance keeps a
//! copy of each entry it queues — its own submits, the jobs it rescues or steals into its
//! streams, the jobs it moves to a peer — until one of its own workers takes the entry, or the
//! entry is gone from its stream (taken by a thief, finished by the peer it was moved to), which
//! [`Jobs::prune_shelter`] checks every heartbeat.
//!
//! When the cluster sees Redis restart empty (`Cluster::empty_restarts`),
//! this instance:
//! 1. writes again the done markers of the jobs it answered in the last [`ANSWERED_KEEP`];
//! 2. after a grace of two membership ticks (every live peer has noticed the restart and done
//!    step 1 by then), queues each copy made before the restart again, on its own stream.
//!
//! A copy whose entry a peer took just before the restart (within one prune) may so run twice;
//! the done marker keeps the answer single. Either the peer answered before the restart (its
//! marker is written again in step 1, and the copy is not run: `Jobs::answered`), or it
//! answers after it (the marker goes to whichever run finishes first). What no instance can
//! give back: the jobs of an instance that was already dead, and not yet rescued, when Redis
//! lost them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::stream::{self, Queued};
use super::{Arrival, JobKind, Jobs};
use crate::{keys, ClusterError};

/// Which copies' entries are still in their streams, checked inside Redis: the generation
/// (`KEYS[1]`, `''` when unset) and one character per copy (`ARGV`: the stream's index in
/// `KEYS`, the entry id), `1` present, `0` gone. A pipeline of one `XRANGE` per copy would
/// send every waiting job's whole entry (prompt and token, ~2.7 KB) back to the instance every
/// heartbeat: megabytes a second once hundreds of jobs wait, on the cores the jobs need.
const PRUNE_SCRIPT: &str = r"
local present = {}
for i = 1, #ARGV, 2 do
  local found = redis.call('XRANGE', KEYS[tonumber(ARGV[i])], ARGV[i + 1], ARGV[i + 1], 'COUNT', 1)
  present[#present + 1] = (#found > 0) and '1' or '0'
end
return {redis.call('GET', KEYS[1]) or '', table.concat(present)}
";

static PRUNE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(PRUNE_SCRIPT));

/// How long this instance remembers a job it answered: far longer than the one prune (a
/// heartbeat) in which a copy can outlive the entry a peer took and answered.
const ANSWERED_KEEP: Duration = Duration::from_secs(60);

/// At most this many answered jobs are remembered (about 1,000 answers a second for
/// [`ANSWERED_KEEP`]); past it the oldest are forgotten first.
const ANSWERED_MAX: usize = 60_000;

/// Done markers written again per round trip after an empty restart.
const MARKER_BATCH: usize = 500;

/// Where an entry is: its stream and its id there.
type Place = (String, String);

/// A copy of one queued entry. Its `Debug` shows the payload's length only: the job's JSON
/// holds the interaction token.
#[derive(Clone, PartialEq)]
struct Kept {
    kind: JobKind,
    payload: Vec<u8>,
    arrival: Arrival,
    /// The count of empty restarts the cluster had seen when the entry was queued: a copy
    /// made before the latest one is what it lost.
    epoch: u64,
}

/// The copies and the answered jobs; see the module docs. Pure: the time and the restart
/// count are passed in.
#[derive(Debug, Default)]
struct ShelterState {
    /// `(stream, entry id)` → its copy.
    copies: HashMap<Place, Kept>,
    /// The number of copies per stream: for this instance's own streams, the jobs waiting
    /// there now (every submit counted at once, every take by a worker here too).
    per_stream: HashMap<String, u64>,
    /// Jobs answered here, oldest first.
    answered: VecDeque<(u64, Instant)>,
    /// The empty restarts this instance has recovered from (markers written, copies queued).
    recovered: u64,
    /// Set when an empty restart was seen: the markers are written, the copies wait until
    /// then to be queued again.
    requeue_at: Option<Instant>,
}

/// What a shelter tick should do now.
#[derive(Debug, PartialEq)]
enum Step {
    /// Nothing lost: check which copies are still in their streams.
    Prune,
    /// Redis restarted empty: write these done markers again, then wait.
    Remark(Vec<u64>),
    /// The grace is over: queue these copies again, oldest entry first.
    Requeue(Vec<(Place, Kept)>),
    /// Waiting out the grace.
    Wait,
}

impl ShelterState {
    fn keep(&mut self, stream: &str, queued: Queued, kind: JobKind, epoch: u64) {
        let kept = Kept {
            kind,
            payload: queued.payload,
            arrival: queued.arrival,
            epoch,
        };
        if self
            .copies
            .insert((stream.to_owned(), queued.id), kept)
            .is_none()
        {
            *self.per_stream.entry(stream.to_owned()).or_default() += 1;
        }
    }

    fn taken(&mut self, stream: &str, id: &str) {
        if self
            .copies
            .remove(&(stream.to_owned(), id.to_owned()))
            .is_some()
        {
            if let Some(n) = self.per_stream.get_mut(stream) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.per_stream.remove(stream);
                }
            }
        }
    }

    fn waiting_in(&self, stream: &str) -> u64 {
        self.per_stream.get(stream).copied().unwrap_or(0)
    }

    fn answered(&mut self, job: u64, now: Instant) {
        self.answered.push_back((job, now));
        while self.answered.len() > ANSWERED_MAX {
            self.answered.pop_front();
        }
    }

    fn forget_old_answers(&mut self, now: Instant) {
        while let Some(&(_, at)) = self.answered.front() {
            if now.saturating_duration_since(at) <= ANSWERED_KEEP {
                break;
            }
            self.answered.pop_front();
        }
    }

    /// The next step, given the empty restarts seen so far and the grace to wait after one.
    fn step(&mut self, restarts: u64, now: Instant, grace: Duration) -> Step {
        self.forget_old_answers(now);
        if restarts > self.recovered && self.requeue_at.is_none() {
            self.requeue_at = Some(now + grace);
            return Step::Remark(self.answered.iter().map(|(job, _)| *job).collect());
        }
        match self.requeue_at {
            None => Step::Prune,
            Some(at) if now < at => Step::Wait,
            Some(_) => {
                self.requeue_at = None;
                self.recovered = restarts;
                // Copies made before the restart, oldest entry first (ids are times).
                let mut lost: Vec<_> = self
                    .copies
                    .iter()
                    .filter(|(_, c)| c.epoch < restarts)
                    .map(|(place, kept)| (place.clone(), kept.clone()))
                    .collect();
                lost.sort_by_key(|(place, _)| entry_order(&place.1));
                Step::Requeue(lost)
            }
        }
    }

    /// The copies a prune should look for, made in the current epoch.
    fn current(&self, restarts: u64) -> Vec<Place> {
        self.copies
            .iter()
            .filter(|(_, c)| c.epoch == restarts)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("kind", &self.kind)
            .field("payload_bytes", &self.payload.len())
            .field("arrival", &self.arrival)
            .field("epoch", &self.epoch)
            .finish()
    }
}

/// A stream entry id (`ms-seq`) as numbers, for ordering.
fn entry_order(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
    (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
}

/// The shelter of one [`Jobs`] handle.
#[derive(Debug, Default)]
pub(super) struct Shelter {
    state: Mutex<ShelterState>,
}

impl Shelter {
    fn state(&self) -> std::sync::MutexGuard<'_, ShelterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts remembering with the restarts the cluster has seen already, so a restart before
    /// this handle existed is not recovered from.
    pub(super) fn starting_at(restarts: u64) -> Self {
        let shelter = Shelter::default();
        shelter.state().recovered = restarts;
        shelter
    }
}

impl Jobs {
    fn restarts(&self) -> u64 {
        self.inner.cluster.empty_restarts()
    }

    /// Keeps a copy of an entry this instance queued on `stream`.
    pub(super) fn shelter(&self, stream: &str, kind: JobKind, queued: Queued) {
        let epoch = self.restarts();
        self.inner.shelter.state().keep(stream, queued, kind, epoch);
    }

    /// One of this instance's workers took entry `id` of `stream`: it runs here, and an empty
    /// restart no longer loses it.
    pub(super) fn unshelter(&self, stream: &str, id: &str) {
        self.inner.shelter.state().taken(stream, id);
    }

    /// This instance posted the answer of `job` (its done marker is set).
    pub(super) fn remember_answered(&self, job: u64) {
        self.inner.shelter.state().answered(job, Instant::now());
    }

    /// The jobs waiting in this instance's own stream of `kind` as this process counts them:
    /// queued here (or rescued, stolen, queued again) and not yet taken by one of its workers
    /// nor gone from the stream (a theft, noticed within a heartbeat). Exact at once for what
    /// this instance does, unlike the stream's length sampled each heartbeat.
    pub fn waiting_here(&self, kind: JobKind) -> u64 {
        let stream = self.stream(self.inner.me, kind);
        self.inner.shelter.state().waiting_in(&stream)
    }

    /// Jobs queued again after Redis restarted empty, for metrics.
    pub(super) fn requeued(&self) -> u64 {
        self.inner.requeued.load(Ordering::Relaxed)
    }

    /// One shelter tick (every heartbeat): prune, or recover from an empty restart.
    pub(super) async fn shelter_tick(&self) -> Result<(), ClusterError> {
        let cfg = self.inner.cluster.config();
        let grace = 2 * cfg.snapshot_every.max(cfg.heartbeat);
        let restarts = self.restarts();
        let step = self
            .inner
            .shelter
            .state()
            .step(restarts, Instant::now(), grace);
        match step {
            Step::Wait => Ok(()),
            Step::Prune => self.prune_shelter(restarts).await,
            Step::Remark(jobs) => {
                let r = self.remark(&jobs).await;
                if r.is_err() {
                    // Written again on the next tick, before any copy is queued.
                    self.inner.shelter.state().requeue_at = None;
                }
                r
            }
            Step::Requeue(copies) => self.requeue(copies, restarts).await,
        }
    }

    /// Drops the copies whose entries are gone from their streams. Only while Redis is the
    /// server these copies were made on: the generation is read in the same round trip, and
    /// a Redis that restarted and was not noticed yet (an empty stream that only looks
    /// finished) prunes nothing.
    async fn prune_shelter(&self, restarts: u64) -> Result<(), ClusterError> {
        let look = self.inner.shelter.state().current(restarts);
        let Some(seen) = self.inner.cluster.generation_seen() else {
            return Ok(());
        };
        if look.is_empty() {
            return Ok(());
        }
        // The streams as the script's keys (after the generation), each copy as its stream's
        // index and its entry id.
        let mut streams: Vec<&str> = look.iter().map(|(s, _)| s.as_str()).collect();
        streams.sort_unstable();
        streams.dedup();
        let mut invocation = PRUNE.prepare_invoke();
        invocation.key(keys::generation(&self.inner.prefix));
        for s in &streams {
            invocation.key(*s);
        }
        for (s, id) in &look {
            let index = streams.binary_search(&s.as_str()).unwrap_or_default();
            invocation.arg(index + 2).arg(id);
        }
        let (current, present): (String, String) = self
            .inner
            .redis
            .run("job shelter", stream::OP_BUDGET, move |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        if current != seen || restarts != self.restarts() {
            return Ok(());
        }
        let mut state = self.inner.shelter.state();
        for ((s, id), here) in look.iter().zip(present.bytes()) {
            if here == b'0' {
                state.taken(s, id);
            }
        }
        Ok(())
    }

    /// Writes again the done markers of the jobs this instance answered lately.
    async fn remark(&self, jobs: &[u64]) -> Result<(), ClusterError> {
        tracing::warn!(
            answered = jobs.len(),
            "Redis restarted empty; writing again the done markers of the jobs answered here"
        );
        for batch in jobs.chunks(MARKER_BATCH) {
            let keys: Vec<String> = batch
                .iter()
                .map(|j| keys::done(&self.inner.prefix, *j))
                .collect();
            let me = self.inner.me;
            self.inner
                .redis
                .run("done marker", stream::OP_BUDGET, move |mut c| async move {
                    let mut pipe = redis::pipe();
                    for k in &keys {
                        pipe.cmd("SET")
                            .arg(k)
                            .arg(me)
                            .arg("NX")
                            .arg("PX")
                            .arg(super::context::JOB_KEY_TTL_MS)
                            .ignore();
                    }
                    pipe.query_async::<()>(&mut c).await
                })
                .await?;
        }
        Ok(())
    }

    /// Queues the copies an empty restart lost on this instance's own streams (a job moved
    /// here from elsewhere moves on again if this instance cannot serve it). A copy that
    /// Redis refuses stays for the next tick.
    async fn requeue(&self, copies: Vec<(Place, Kept)>, restarts: u64) -> Result<(), ClusterError> {
        let mut queued = 0u64;
        for (
            (from, id),
            Kept {
                kind,
                payload,
                arrival,
                ..
            },
        ) in copies
        {
            let mine = self.stream(self.inner.me, kind);
            match stream::add_payload(&self.inner.redis, &mine, payload, arrival).await {
                Ok(again) => {
                    let mut state = self.inner.shelter.state();
                    state.taken(&from, &id);
                    state.keep(&mine, again, kind, restarts);
                    queued += 1;
                }
                Err(e) => {
                    // Recover again on the next tick: the copies made before are still here.
                    let mut state = self.inner.shelter.state();
                    state.recovered = restarts.saturating_sub(1);
                    state.requeue_at = Some(Instant::now());
                    drop(state);
                    self.inner.requeued.fetch_add(queued, Ordering::Relaxed);
                    return Err(e);
                }
            }
        }
        self.inner.requeued.fetch_add(queued, Ordering::Relaxed);
        if queued > 0 {
            tracing::warn!(
                jobs = queued,
                "Redis restarted empty; queued again the jobs that were waiting here"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queued(id: &str) -> Queued {
        Queued {
            id: id.into(),
            payload: id.as_bytes().to_vec(),
            arrival: Arrival::default(),
        }
    }

    const GRACE: Duration = Duration::from_millis(200);

    #[test]
    fn a_taken_entry_is_not_queued_again_and_a_waiting_one_is_after_the_grace() {
        let t0 = Instant::now();
        let mut s = ShelterState::default();
        s.keep("s:chat", queued("5-0"), JobKind::Chat, 0);
        s.keep("s:chat", queued("3-1"), JobKind::Chat, 0);
        s.keep("s:image", queued("4-0"), JobKind::Image, 0);
        s.taken("s:image", "4-0");
        s.taken("s:image", "4-0");
        assert_eq!((s.waiting_in("s:chat"), s.waiting_in("s:image")), (2, 0));
        assert_eq!(s.step(0, t0, GRACE), Step::Prune, "nothing lost yet");
        s.answered(77, t0);
        assert_eq!(s.step(1, t0, GRACE), Step::Remark(vec![77]));
        // A job queued after the restart is not the restart's loss.
        s.keep("s:chat", queued("9-0"), JobKind::Chat, 1);
        assert_eq!(s.step(1, t0 + GRACE / 2, GRACE), Step::Wait);
        let Step::Requeue(lost) = s.step(1, t0 + GRACE, GRACE) else {
            panic!("the grace is over")
        };
        let ids: Vec<&str> = lost.iter().map(|(k, ..)| k.1.as_str()).collect();
        assert_eq!(ids, ["3-1", "5-0"], "oldest first, the taken one left out");
        assert_eq!(s.step(1, t0 + GRACE * 2, GRACE), Step::Prune, "recovered");
        assert_eq!(s.current(1), vec![("s:chat".to_owned(), "9-0".to_owned())]);
    }

    #[test]
    fn answers_are_remembered_for_a_minute_and_at_most_the_cap() {
        let t0 = Instant::now();
        let mut s = ShelterState::default();
        s.answered(1, t0);
        s.answered(2, t0 + Duration::from_secs(30));
        assert_eq!(
            s.step(1, t0 + ANSWERED_KEEP + Duration::from_secs(1), GRACE),
            Step::Remark(vec![2]),
            "the one older than a minute is forgotten"
        );
        let mut s = ShelterState::default();
        for j in 0..(ANSWERED_MAX as u64 + 10) {
            s.answered(j, t0);
        }
        assert_eq!(s.answered.len(), ANSWERED_MAX);
        assert_eq!(s.answered.front().map(|a| a.0), Some(10));
    }

    #[test]
    fn a_restart_before_the_handle_existed_is_not_recovered_from() {
        let s = Shelter::starting_at(3);
        assert_eq!(s.state().step(3, Instant::now(), GRACE), Step::Prune);
    }

    #[test]
    fn entry_ids_order_by_time_then_sequence() {
        assert!(entry_order("10-0") > entry_order("9-5"));
        assert!(entry_order("9-10") > entry_order("9-9"));
    }
}

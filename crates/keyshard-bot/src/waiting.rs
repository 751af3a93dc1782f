//! Honest waiting (issue 14 §4): while a job waits in this instance's queue, its deferred
//! reply says its place and its expected wait ([`replies::progress::queued`]), updated as it
//! moves.
//!
//! One pass per instance every [`PASS_EVERY`] reads each kind's waiting jobs in one script
//! ([`Jobs::waiting`]: no per-job Redis call) and edits the replies routing's
//! [`WaitingPolicy`] says to: not before a job has waited a few seconds (a job that starts at
//! once is never edited), only when what the reply would say changed, at most one edit per
//! job per `min_gap`. The state of each reply (what it last said, when) lives here, in memory.
//!
//! The answer always wins: every run of a job first calls [`WaitingEdits::started`], which
//! marks the job started in Redis and waits out a waiting edit already on its way (this
//! instance's: awaited on its lock; a peer's, for a stolen job: its fence read until it is
//! down), so a waiting edit can never land after the job's progress or its answer, whichever
//! instance runs it. A job stolen by a peer gets no further waiting edit from here (it is no
//! longer in this instance's queue, and a thief takes a job only for a free worker); a job
//! rescued from a dead instance that had not started gets them from its rescuer, whose queue
//! it now waits in; a job that started once gets none again (the started mark).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use keyshard_cluster::jobs::{WaitingJob, WAITING_EDIT_BUDGET};
use keyshard_cluster::{run_every, JobKind, Jobs};
use keyshard_routing::{Notice, Shown, WaitingPolicy};
use poise::serenity_prelude as serenity;
use tokio_util::sync::CancellationToken;

use crate::clock::unix_ms;
use crate::replies;

/// How often the pass runs: half the policy's gap between two edits of one reply, so each
/// waiting reply is edited every 5 to 7.5 s while what it says changes.
pub const PASS_EVERY: Duration = Duration::from_millis(2_500);

/// Edits in flight at once in a pass: enough that a pass over a hundred waiting jobs takes a
/// fraction of [`PASS_EVERY`], few enough not to crowd the job's own calls to Discord.
/// (Interaction webhooks are outside the bot's global rate limit; each reply has its own.)
const EDITS_AT_ONCE: usize = 16;

/// How often a run polls a peer's fence while it waits for that peer's edit: a fence is up
/// for at most [`WAITING_EDIT_BUDGET`] and only when an edit raced with a steal, so a few
/// cheap reads at most, rarely.
const FENCE_POLL: Duration = Duration::from_millis(50);

/// The waiting edits of one instance. Cheap to clone.
#[derive(Clone)]
pub struct WaitingEdits {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: Jobs,
    http: Arc<serenity::Http>,
    me: u32,
    policy: WaitingPolicy,
    /// What each waiting reply last said, and when; jobs that left the queue are dropped by
    /// the next pass. A std Mutex: read and written in microseconds, never across an await.
    shown: Mutex<HashMap<u64, Shown>>,
    /// The edits on their way, each holding its job's lock until Discord answered: a run of
    /// the job on this instance awaits the lock. A std Mutex for the map, as above.
    sending: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<()>>>>,
}

impl WaitingEdits {
    pub fn new(jobs: Jobs, http: Arc<serenity::Http>, me: u32) -> Self {
        Self {
            inner: Arc::new(Inner {
                jobs,
                http,
                me,
                policy: WaitingPolicy::default(),
                shown: Mutex::default(),
                sending: Mutex::default(),
            }),
        }
    }

    /// The pass, every [`PASS_EVERY`] until `stop`.
    pub fn spawn(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(run_every(
            "waiting edits",
            PASS_EVERY,
            stop,
            None,
            move || {
                let this = this.clone();
                async move { this.pass().await }
            },
        ))
    }

    /// One pass: every kind's waiting jobs read, the replies that need it edited.
    pub async fn pass(&self) -> Result<(), keyshard_cluster::ClusterError> {
        let mut waiting = Vec::new();
        for kind in JobKind::ALL {
            waiting.extend(self.inner.jobs.waiting(kind).await?);
        }
        let now = unix_ms();
        let due: Vec<(WaitingJob, Notice)> = {
            let here: std::collections::HashSet<u64> = waiting.iter().map(|w| w.job.id).collect();
            let mut shown = self.inner.shown.lock().expect("waiting lock");
            shown.retain(|id, _| here.contains(id));
            waiting
                .into_iter()
                .filter_map(|w| {
                    let notice = Notice::new(w.ahead, w.estimate);
                    let age = Duration::from_millis(now.saturating_sub(w.job.created_ms));
                    self.inner
                        .policy
                        .should_edit(age, now, shown.get(&w.job.id), notice)
                        .then_some((w, notice))
                })
                .collect()
        };
        futures::stream::iter(due)
            .for_each_concurrent(EDITS_AT_ONCE, |(w, notice)| self.edit(w, notice, now))
            .await;
        Ok(())
    }

    /// Edits one waiting reply, fenced against the job's start (see the module docs).
    async fn edit(&self, w: WaitingJob, notice: Notice, now: u64) {
        let id = w.job.id;
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        let _held = lock.clone().lock_owned().await;
        self.inner
            .sending
            .lock()
            .expect("waiting lock")
            .insert(id, lock);
        match self.inner.jobs.begin_waiting_edit(id).await {
            Ok(true) => {
                let text = replies::progress::queued(notice.ahead, notice.estimate_secs);
                let edit = serenity::EditInteractionResponse::new().content(text);
                let sent = tokio::time::timeout(
                    WAITING_EDIT_BUDGET,
                    self.inner.http.edit_original_interaction_response(
                        &w.job.token,
                        &edit,
                        Vec::new(),
                    ),
                )
                .await;
                match sent {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::debug!(
                        job = id,
                        "waiting edit failed: {}",
                        crate::redact::redact(&e.to_string())
                    ),
                    Err(_) => tracing::debug!(job = id, "waiting edit abandoned: too slow"),
                }
                // Shown or not, the next try waits the gap: a reply Discord refuses is not
                // asked again every pass.
                self.inner
                    .shown
                    .lock()
                    .expect("waiting lock")
                    .insert(id, Shown { at_ms: now, notice });
                self.inner.jobs.end_waiting_edit(id).await;
            }
            // A run began: the reply is the job's now.
            Ok(false) => {}
            Err(e) => tracing::debug!(job = id, "waiting edit not fenced, skipped: {e}"),
        }
        self.inner.sending.lock().expect("waiting lock").remove(&id);
    }

    /// A run of job `id` begins (here, whichever instance queued it): no waiting edit starts
    /// after this, and one on its way is waited out, so the run's first word to Discord comes
    /// after it. Redis failing: the run goes on (no edit can start then either: its fence
    /// needs Redis).
    pub async fn started(&self, id: u64) {
        let edit = match self.inner.jobs.job_started(id).await {
            Ok(edit) => edit,
            Err(e) => {
                tracing::debug!(job = id, "could not mark the job started: {e}");
                return;
            }
        };
        let Some(edit) = edit else { return };
        if edit.sender == self.inner.me {
            let lock = self
                .inner
                .sending
                .lock()
                .expect("waiting lock")
                .get(&id)
                .cloned();
            if let Some(lock) = lock {
                // Held until Discord answered the edit (or it was abandoned).
                let _ = tokio::time::timeout(edit.remaining, lock.lock()).await;
            }
            return;
        }
        // A peer's edit (the job was stolen from its queue): no channel between processes,
        // so its fence is read until it is down, within the fence's remaining life.
        let deadline = tokio::time::Instant::now() + edit.remaining;
        while tokio::time::Instant::now() < deadline {
            match self.inner.jobs.waiting_edit_remaining(id).await {
                Ok(Some(_)) => tokio::time::sleep(FENCE_POLL).await,
                _ => return,
            }
        }
    }
}

//! The reader of one job kind: it takes an entry of this instance's stream whenever a worker
//! slot is free and starts the job's [`run_job`](super::Jobs::run_job). First this consumer's
//! own pending entries (a restart resumes its unfinished jobs), then the waiting entry the fair
//! pick chooses (`pick`: the user with the least service in hand first); with nothing waiting
//! at home, a job from a peer, and with nothing there either, a blocking read on a connection
//! of its own until a new entry arrives (it goes to the pick's pool, and the loop picks).
//!
//! The fair pick waits for a send, not only for a worker slot: the handler first reserves a
//! send that a provider lane of the kind can make at once ([`JobHandler::ready`]), and only
//! then does the reader pick, among the jobs that lane can serve. A kind has more worker
//! slots than its keys' rate serves; picking on a free slot alone would park picked jobs in
//! the providers' pacing, first come first served, out of the pick's reach.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::streams::StreamId;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::pick::Taker;
use super::run::Entry;
use super::{stream, JobHandler, JobKind, Jobs, Slot};
use crate::conn::Dedicated;
use crate::keys::{self, JOB_POOL};
use crate::ClusterError;

/// How long a blocking read waits for a new entry: it returns at least this often so the
/// reader notices shutdown, a broken connection, and peers' waiting jobs.
const READ_BLOCK: Duration = Duration::from_secs(1);

/// Which entries the next read asks for.
#[derive(Debug, Clone, PartialEq)]
enum Cursor {
    /// This consumer's own pending entries after the given id (`0`: from the start): at start
    /// (a restart resumes its jobs) and after any failed read, since Redis may have handed
    /// over an entry whose answer never arrived.
    Pending(String),
    /// The fair pick among waiting entries; with none, a steal, then a blocking read of up
    /// to [`READ_BLOCK`] for a new entry.
    Fair,
}

/// One kind's reader; see the module docs.
pub(super) struct Reader {
    jobs: Jobs,
    kind: JobKind,
    stream: String,
    consumer: String,
    handler: Arc<dyn JobHandler>,
    /// One per worker slot: the reader reads only while one is free.
    permits: Arc<Semaphore>,
    link: Dedicated,
    /// Entries this reader's workers are running: a backlog scan skips them. A std Mutex:
    /// inserted and removed in microseconds, never held across an await.
    running: Arc<Mutex<HashSet<String>>>,
}

impl Reader {
    pub(super) fn new(
        jobs: Jobs,
        kind: JobKind,
        slots: usize,
        handler: Arc<dyn JobHandler>,
    ) -> Self {
        Self {
            stream: jobs.stream(jobs.inner.me, kind),
            consumer: keys::job_consumer(jobs.inner.me),
            link: jobs.inner.redis.dedicated("job reader", READ_BLOCK),
            permits: Arc::new(Semaphore::new(slots)),
            running: Arc::default(),
            jobs,
            kind,
            handler,
        }
    }

    /// Reads and starts jobs until `shutdown`.
    pub(super) async fn run(mut self, shutdown: CancellationToken) {
        // This instance's earlier life counted jobs in flight that its pending scan now runs
        // again uncounted; its old counts would only hold its users back.
        self.jobs.forget_busy(self.jobs.inner.me).await;
        let mut cursor = Cursor::Pending("0".into());
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                p = self.permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
            };
            if cursor == Cursor::Fair {
                let ready = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    r = self.handler.ready(self.kind) => r,
                };
                match self
                    .jobs
                    .pick(
                        &self.stream,
                        self.kind,
                        self.jobs.inner.me,
                        Taker::Worker,
                        ready.provider,
                    )
                    .await
                {
                    Ok(Some(picked)) => {
                        // A job its user sent to another provider waits for that one; the
                        // reservation goes back at once (dropped here).
                        let slot = if picked.fits { ready.slot } else { None };
                        self.start(picked.entry, picked.counted, permit, slot).await
                    }
                    Ok(None) => {
                        drop(ready);
                        // Nothing waits here: a peer's waiting job, or wait for a new one.
                        if !self.jobs.steal_one(self.kind).await
                            && self.wait_new(&shutdown).await.is_none()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        // The take may have reached Redis: rescan our own pending entries
                        // (through the link, which reconnects after its backoff).
                        tracing::debug!(stream = self.stream, "fair pick failed: {e}");
                        cursor = Cursor::Pending("0".into());
                    }
                }
                continue;
            }
            let Some(read) = self.read(&cursor, &shutdown).await else {
                return;
            };
            let entry = match read {
                Ok(entry) => entry,
                Err(e) => {
                    // The link reconnects (after its backoff) on the next read.
                    tracing::debug!(stream = self.stream, "job read failed: {e}");
                    cursor = Cursor::Pending("0".into());
                    continue;
                }
            };
            let Some(entry) = entry else {
                // The backlog scan is through: every pending entry is running or done.
                cursor = Cursor::Fair;
                continue;
            };
            if let Cursor::Pending(after) = &mut cursor {
                *after = entry.id.clone();
                if self.is_running(&entry.id) {
                    continue;
                }
            }
            self.start(entry, None, permit, None).await;
        }
    }

    /// This consumer's own pending entries after the cursor's id; `None` when `shutdown`
    /// came first.
    async fn read(
        &mut self,
        cursor: &Cursor,
        shutdown: &CancellationToken,
    ) -> Option<Result<Option<StreamId>, ClusterError>> {
        let after = match cursor {
            Cursor::Pending(after) => after.as_str(),
            Cursor::Fair => "0",
        };
        let cmd = stream::read_own(&self.stream, &self.consumer, after, None);
        self.query(cmd, shutdown).await
    }

    /// Waits up to [`READ_BLOCK`] for a new entry and puts it in the pick's pool (the next
    /// pick decides whether it runs first); `None` when `shutdown` came first.
    async fn wait_new(&mut self, shutdown: &CancellationToken) -> Option<()> {
        let cmd = stream::read_own(&self.stream, JOB_POOL, ">", Some(self.link.block()));
        if let Err(e) = self.query(cmd, shutdown).await? {
            tracing::debug!(stream = self.stream, "job read failed: {e}");
        }
        Some(())
    }

    /// Runs a read on the reader's own connection.
    async fn query(
        &mut self,
        cmd: redis::Cmd,
        shutdown: &CancellationToken,
    ) -> Option<Result<Option<StreamId>, ClusterError>> {
        // A new connection (at start, after a Redis restart) makes the group first: a
        // restarted Redis has lost it, and a read without it fails.
        let s = self.stream.clone();
        let reply = self
            .link
            .query(&cmd, shutdown, move |mut c| {
                let s = s.clone();
                async move { stream::ensure_group(&mut c, &s).await }
            })
            .await?;
        Some(reply.map(stream::first))
    }

    fn is_running(&self, id: &str) -> bool {
        self.running.lock().expect("jobs lock").contains(id)
    }

    /// Starts the job in `entry` on a worker that holds `permit` until it is done; `counted`:
    /// the user the fair pick counted in flight for it; `slot`: what the handler reserved
    /// for it.
    async fn start(
        &self,
        entry: StreamId,
        counted: Option<u64>,
        permit: OwnedSemaphorePermit,
        slot: Option<Slot>,
    ) {
        // It runs here now: an empty Redis restart no longer loses it.
        self.jobs.unshelter(&self.stream, &entry.id);
        let work = match stream::parse(&entry) {
            Ok(work) => work,
            Err(not) => {
                // A deleted entry still pending (moved away by a rescuer) or one without a
                // job's envelope, so no one to tell: acknowledge it so it stops coming back.
                not.log(&self.stream, &entry.id);
                let _ = stream::ack(&self.jobs.inner.redis, &self.stream, &entry.id).await;
                if let Some(user) = counted {
                    self.jobs.release(user).await;
                }
                return;
            }
        };
        self.running
            .lock()
            .expect("jobs lock")
            .insert(entry.id.clone());
        let entry = Entry {
            stream: self.stream.clone(),
            arrival: stream::arrival(&entry),
            id: entry.id,
            counted,
        };
        let (jobs, handler, running) = (
            self.jobs.clone(),
            self.handler.clone(),
            self.running.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            jobs.run_job(&*handler, work, Some(&entry), slot).await;
            running.lock().expect("jobs lock").remove(&entry.id);
        });
    }
}

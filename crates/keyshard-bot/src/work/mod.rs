//! The job handler: what a worker does with a [`Job`] taken from the instance's queue —
//! the provider calls with this instance's keys, progress edits, and the one final answer.
//! The job's arguments arrive decoded ([`JobArgs`]); a job whose arguments could not be read
//! ([`UnreadableJob`]) is answered with an error message, never run with defaults.
//!
//! - [`deliver`]: posting to Discord (edit of the deferred reply, follow-ups, and a channel
//!   message mentioning the user once the interaction token is dead).
//! - [`chat`], [`image`], [`video`]: one module per job kind.
//! - [`meter`]: what a run spent ([`Meter`]) and this instance's models and keys
//!   ([`Catalog`]), for the job's usage-ledger row, which [`Worker::finish`] records with the
//!   done marker (see `crate::ledger`).

pub mod chat;
pub mod deliver;
pub mod image;
pub mod meter;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use keyshard_cluster::jobs::BoxFuture;
use keyshard_cluster::{
    Job, JobArgs, JobContext, JobHandler, JobKind, Memory, Outcome, Quotas, Ready, Stats,
    UnreadableJob,
};
use keyshard_ledger::{LedgerRow, Routing, Status};
use keyshard_providers::{ErrorClass, LaneKind, ProviderError, ProviderKind, Providers};
use poise::serenity_prelude as serenity;

use crate::clock::unix_ms;
use crate::ledger::Ledger;
use crate::replies;
use crate::waiting::WaitingEdits;
use deliver::Answer;
pub use meter::{Catalog, Meter, Use};

/// Timing knobs of the workers.
#[derive(Clone, Copy, Debug)]
pub struct WorkTiming {
    /// At most one streaming edit per this interval (Discord allows about 5 edits per 5 s
    /// per message; one a second stays well under and still feels live).
    pub chat_edit_every: Duration,
    /// The longest gap between two polls of a video task, and the progress refresh
    /// (`VIDEO_POLL_MS`).
    pub video_poll: Duration,
    /// How long a video may take before the job gives up.
    pub video_deadline: Duration,
}

impl Default for WorkTiming {
    fn default() -> Self {
        Self {
            chat_edit_every: Duration::from_secs(1),
            video_poll: Duration::from_secs(10),
            // Hailuo renders a 6 s clip in a few minutes; half an hour is a broken task.
            video_deadline: Duration::from_secs(30 * 60),
        }
    }
}

/// The job handler of one instance. Cheap to clone.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<WorkerInner>,
}

struct WorkerInner {
    http: Arc<serenity::Http>,
    providers: Providers,
    memory: Memory,
    stats: Stats,
    instance: u32,
    instance_count: u32,
    timing: WorkTiming,
    catalog: Catalog,
    ledger: Option<Arc<Ledger>>,
    quotas: Quotas,
    waiting: Option<WaitingEdits>,
}

/// What a worker is built from besides its handles: who it is, its models and keys as the
/// ledger names them, and the ledger itself (`None` when off).
pub struct WorkerSetup {
    pub instance: u32,
    pub instance_count: u32,
    pub timing: WorkTiming,
    pub catalog: Catalog,
    pub ledger: Option<Arc<Ledger>>,
    /// The quotas, for the refund of a failed job.
    pub quotas: Quotas,
    /// The waiting edits, told when a run begins so none lands after it (`None`: off).
    pub waiting: Option<WaitingEdits>,
}

impl Worker {
    pub fn new(
        http: Arc<serenity::Http>,
        providers: Providers,
        memory: Memory,
        stats: Stats,
        setup: WorkerSetup,
    ) -> Self {
        Self {
            inner: Arc::new(WorkerInner {
                http,
                providers,
                memory,
                stats,
                instance: setup.instance,
                instance_count: setup.instance_count,
                timing: setup.timing,
                catalog: setup.catalog,
                ledger: setup.ledger,
                quotas: setup.quotas,
                waiting: setup.waiting,
            }),
        }
    }

    pub(crate) fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Worker slots per kind: as many as the keys allow in flight, at least one so a job
    /// of a kind this instance cannot serve is still taken and moved to a peer.
    /// Worker slots per kind: as many as the keys allow in flight (for videos, the jobs whose
    /// tasks render meanwhile too: `MiniMax::video_slots`), at least one so a job of a kind
    /// this instance cannot serve is still taken and moved to a peer.
    pub fn slots(providers: &Providers) -> Vec<(JobKind, usize)> {
        let conc = |b: &[keyshard_providers::LaneBudget]| {
            b.iter().map(|l| l.concurrency as usize).max().unwrap_or(0)
        };
        let chat = providers.openai.as_ref().map_or(0, |p| conc(&p.budget()));
        let image: usize = [
            providers.openai.as_ref().map(|p| conc(&p.budget())),
            providers.minimax.as_ref().map(|p| conc(&p.budget())),
            providers.stability.as_ref().map(|p| conc(&p.budget())),
        ]
        .into_iter()
        .flatten()
        .sum();
        let video = providers.minimax.as_ref().map_or(0, |p| p.video_slots());
        vec![
            (JobKind::Chat, chat.max(1)),
            (JobKind::Image, image.max(1)),
            (JobKind::Video, video.max(1)),
        ]
    }

    /// A run of job `id` begins: before its first word to Discord, so no waiting edit of
    /// the reply lands after it (`crate::waiting`).
    async fn begin(&self, id: u64) {
        if let Some(w) = &self.inner.waiting {
            w.started(id).await;
        }
    }

    pub(crate) fn http(&self) -> &serenity::Http {
        &self.inner.http
    }

    pub(crate) fn providers(&self) -> &Providers {
        &self.inner.providers
    }

    pub(crate) fn instance(&self) -> u32 {
        self.inner.instance
    }

    /// Ends a job whose provider call failed: a key problem moves it to a peer while one is
    /// left; anything else (or no peer) is told to the user.
    pub(crate) async fn fail(
        &self,
        job: &Job,
        ctx: &JobContext,
        command: &str,
        meter: &Meter,
        error: &ProviderError,
    ) -> Outcome {
        if error.class == ErrorClass::KeyProblem {
            let reason = format!("{} key problem: {}", error.provider, error.message);
            let message = replies::provider_failed(error);
            return self
                .move_or_tell(
                    job,
                    ctx,
                    command,
                    meter,
                    reason,
                    message,
                    error.class.as_str(),
                )
                .await;
        }
        tracing::warn!(job = job.id, provider = %error.provider, class = %error.class, "provider call failed: {}", error.message);
        let answer = Answer::text(replies::provider_failed(error));
        self.finish(job, ctx, command, meter, Err(error.class.as_str()), answer)
            .await
    }

    /// A job whose kind needs a provider this instance has no key for.
    pub(crate) async fn unconfigured(
        &self,
        job: &Job,
        ctx: &JobContext,
        command: &str,
        meter: &Meter,
        provider: keyshard_providers::ProviderKind,
    ) -> Outcome {
        let reason = format!("no {provider} key on this instance");
        let message = replies::not_configured(provider);
        self.move_or_tell(job, ctx, command, meter, reason, message, "not_configured")
            .await
    }

    /// This instance's keys cannot serve the job: a peer that has not tried it takes it, and
    /// only when none is left does the user read `message` (recorded as failed with `class`).
    #[allow(clippy::too_many_arguments)] // the job's handles, then what to say and record
    async fn move_or_tell(
        &self,
        job: &Job,
        ctx: &JobContext,
        command: &str,
        meter: &Meter,
        reason: String,
        message: String,
        class: &'static str,
    ) -> Outcome {
        if ctx.peer_for(job).is_some() {
            return Outcome::MoveToPeer { reason };
        }
        tracing::warn!(job = job.id, %reason, "no peer left to take the job");
        self.finish(job, ctx, command, meter, Err(class), Answer::text(message))
            .await
    }

    /// Posts the final answer once (the done marker, which also records the job's ledger row)
    /// and records the completion. `result` is `Err(class)` when the answer is an error
    /// message. Any job, whether its arguments were read or not (`A`): only its envelope is
    /// needed.
    pub(crate) async fn finish<A: Sync>(
        &self,
        job: &Job<A>,
        ctx: &JobContext,
        command: &str,
        meter: &Meter,
        result: Result<(), &'static str>,
        answer: Answer,
    ) -> Outcome {
        let ok = result.is_ok();
        let first = match &self.inner.ledger {
            Some(ledger) => {
                // Built before the delivery, with everything known now: a delivery that fails
                // after the marker changes neither the answer's fate nor the row.
                let row = self.row(job, ctx, command, meter, result);
                ledger.begin_delivery(ctx, row).await
            }
            None => ctx.begin_delivery(job.id).await,
        };
        if !first {
            tracing::debug!(
                job = job.id,
                "already answered by another run; dropping this one"
            );
            return Outcome::Finished;
        }
        if let Err(e) = deliver::deliver(self.http(), job, answer).await {
            tracing::warn!(
                job = job.id,
                "could not deliver the answer: {}",
                crate::redact::redact(&e.to_string())
            );
        }
        self.inner.stats.completed(command, ok, since_created(job));
        if !ok {
            // The user got an error, not a result: the job gives back its daily counts (once,
            // however many runs it had: the done marker above lets one run through).
            self.inner.quotas.refund(job.id).await;
        }
        Outcome::Finished
    }

    /// The job's ledger row as this run answers it.
    fn row<A>(
        &self,
        job: &Job<A>,
        ctx: &JobContext,
        command: &str,
        meter: &Meter,
        result: Result<(), &'static str>,
    ) -> LedgerRow {
        let primary = keyshard_routing::primary(job.user_id, self.inner.instance_count);
        let reason = match job.claim {
            Some(c) if c.recovered => Routing::Recovered,
            Some(c) if c.degraded => Routing::Degraded,
            Some(c) => Routing::from(c.reason),
            // A job queued by a version that did not say how it was claimed: the primary's
            // own, or taken over (the likeliest reason when another instance acknowledged).
            None if job.origin == primary => Routing::Primary,
            None => Routing::PrimaryDown,
        };
        let mut row = LedgerRow::new(
            job.id,
            job.user_id,
            job.channel_id,
            command,
            primary,
            self.inner.instance,
            reason,
            unix_ms(),
        );
        let arrival = ctx.arrival();
        row.guild_id = job.guild_id;
        row.rescued = arrival.rescued;
        row.stolen = arrival.stolen;
        row.moved = job.attempt > 0;
        row.provider = meter.provider.map(|p| p.as_str().to_owned());
        row.model = meter.model.clone();
        row.key_fp = meter.key_fp.clone();
        row.tokens_in = meter.tokens_in;
        row.tokens_out = meter.tokens_out;
        row.images = meter.images;
        row.video_secs = meter.video_secs;
        row.acked_ms = job.claim.map(|c| c.acked_ms);
        row.started_ms = Some(meter.started_ms);
        row.provider_ms = meter.provider_ms;
        if let Err(class) = result {
            row.status = Status::Failed;
            row.error_class = Some(class.to_owned());
        }
        row
    }
}

impl JobHandler for Worker {
    /// A send reserved on a lane of `kind` that can send now ([`Providers::reserve`]): an
    /// image job with no provider chosen goes to whichever image lane has room (so none idles
    /// while such a job waits), a job whose user chose one only with that one's reservation.
    /// Nothing usable (no key, every key out of service): ready at once, and the job's run
    /// moves it to a peer.
    fn ready(&self, kind: JobKind) -> BoxFuture<Ready> {
        let worker = self.clone();
        Box::pin(async move {
            let lanes = lanes_of(kind);
            match worker.providers().reserve(&lanes).await {
                Some(ticket) => Ready {
                    provider: (kind == JobKind::Image).then(|| ticket.provider()),
                    slot: Some(Box::new(ticket)),
                },
                None => Ready::default(),
            }
        })
    }

    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
        let worker = self.clone();
        Box::pin(async move {
            worker.begin(job.id).await;
            let mut meter = Meter::start();
            let m = &mut meter;
            match &job.args {
                JobArgs::Chat(a) => chat::run(&worker, &job, a, &ctx, m).await,
                JobArgs::Image(a) => image::run(&worker, &job, a, &ctx, m).await,
                JobArgs::Video(a) => video::run(&worker, &job, a, &ctx, m).await,
            }
        })
    }

    /// The user reads [`replies::JOB_UNREADABLE`] and the job counts as failed: its stored
    /// arguments cannot be read (a value this version does not know), and guessing them
    /// would answer a request the user did not make.
    fn unreadable(&self, job: UnreadableJob, ctx: JobContext) -> BoxFuture<()> {
        let worker = self.clone();
        Box::pin(async move {
            worker.begin(job.id).await;
            tracing::error!(job = job.id, "cannot run the job: {}", job.args);
            let answer = Answer::text(replies::JOB_UNREADABLE);
            let command = command_of(job.kind());
            let meter = Meter::start();
            worker
                .finish(&job, &ctx, command, &meter, Err("unreadable"), answer)
                .await;
        })
    }
}

/// The provider lanes a job of `kind` starts on, in order of preference.
fn lanes_of(kind: JobKind) -> Vec<(ProviderKind, LaneKind)> {
    match kind {
        JobKind::Chat => vec![(ProviderKind::OpenAi, LaneKind::Chat)],
        JobKind::Image => image::DEFAULT_ORDER
            .iter()
            .map(|p| (*p, LaneKind::Images))
            .collect(),
        JobKind::Video => vec![(ProviderKind::MiniMax, LaneKind::Video)],
    }
}

/// The command a job of `kind` answers, as the statistics name it.
fn command_of(kind: JobKind) -> &'static str {
    match kind {
        JobKind::Chat => chat::COMMAND,
        JobKind::Image => image::COMMAND,
        JobKind::Video => video::COMMAND,
    }
}

/// Time since the interaction was created (the user's wait).
pub(crate) fn since_created<A>(job: &Job<A>) -> Duration {
    Duration::from_millis(unix_ms().saturating_sub(job.created_ms))
}

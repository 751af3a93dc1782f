//! The job handler: what a worker does with a [`Job`] taken from the instance's queue —
//! the provider calls with this instance's keys, progress edits, and the one final answer.
//! The job's arguments arrive decoded ([`JobArgs`]); a job whose arguments could not be read
//! ([`UnreadableJob`]) is answered with an error message, never run with defaults.
//!
//! - [`deliver`]: posting to Discord (edit of the deferred reply, follow-ups, and a channel
//!   message mentioning the user once the interaction token is dead).
//! - [`chat`], [`image`], [`video`]: one module per job kind.

pub mod chat;
pub mod deliver;
pub mod image;
pub mod video;

use std::sync::Arc;
use std::time::Duration;

use keyshard_cluster::jobs::BoxFuture;
use keyshard_cluster::{
    Job, JobArgs, JobContext, JobHandler, JobKind, Memory, Outcome, Stats, UnreadableJob,
};
use keyshard_providers::{ErrorClass, ProviderError, Providers};
use poise::serenity_prelude as serenity;

use crate::clock::unix_ms;
use crate::replies;
use deliver::Answer;

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
    timing: WorkTiming,
}

impl Worker {
    pub fn new(
        http: Arc<serenity::Http>,
        providers: Providers,
        memory: Memory,
        stats: Stats,
        instance: u32,
        timing: WorkTiming,
    ) -> Self {
        Self {
            inner: Arc::new(WorkerInner {
                http,
                providers,
                memory,
                stats,
                instance,
                timing,
            }),
        }
    }

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
        error: &ProviderError,
    ) -> Outcome {
        if error.class == ErrorClass::KeyProblem {
            let reason = format!("{} key problem: {}", error.provider, error.message);
            return self
                .move_or_tell(job, ctx, command, reason, replies::provider_failed(error))
                .await;
        }
        tracing::warn!(job = job.id, provider = %error.provider, class = %error.class, "provider call failed: {}", error.message);
        self.finish(
            job,
            ctx,
            command,
            false,
            Answer::text(replies::provider_failed(error)),
        )
        .await
    }

    /// A job whose kind needs a provider this instance has no key for.
    pub(crate) async fn unconfigured(
        &self,
        job: &Job,
        ctx: &JobContext,
        command: &str,
        provider: keyshard_providers::ProviderKind,
    ) -> Outcome {
        let reason = format!("no {provider} key on this instance");
        self.move_or_tell(job, ctx, command, reason, replies::not_configured(provider))
            .await
    }

    /// This instance's keys cannot serve the job: a peer that has not tried it takes it, and
    /// only when none is left does the user read `message`.
    async fn move_or_tell(
        &self,
        job: &Job,
        ctx: &JobContext,
        command: &str,
        reason: String,
        message: String,
    ) -> Outcome {
        if ctx.peer_for(job).is_some() {
            return Outcome::MoveToPeer { reason };
        }
        tracing::warn!(job = job.id, %reason, "no peer left to take the job");
        self.finish(job, ctx, command, false, Answer::text(message))
            .await
    }

    /// Posts the final answer once (the done marker) and records the completion. Any job,
    /// whether its arguments were read or not (`A`): only its envelope is needed.
    pub(crate) async fn finish<A: Sync>(
        &self,
        job: &Job<A>,
        ctx: &JobContext,
        command: &str,
        ok: bool,
        answer: Answer,
    ) -> Outcome {
        if !ctx.begin_delivery(job.id).await {
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
        Outcome::Finished
    }
}

impl JobHandler for Worker {
    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome> {
        let worker = self.clone();
        Box::pin(async move {
            match &job.args {
                JobArgs::Chat(a) => chat::run(&worker, &job, a, &ctx).await,
                JobArgs::Image(a) => image::run(&worker, &job, a, &ctx).await,
                JobArgs::Video(a) => video::run(&worker, &job, a, &ctx).await,
            }
        })
    }

    /// The user reads [`replies::JOB_UNREADABLE`] and the job counts as failed: its stored
    /// arguments cannot be read (a value this version does not know), and guessing them
    /// would answer a request the user did not make.
    fn unreadable(&self, job: UnreadableJob, ctx: JobContext) -> BoxFuture<()> {
        let worker = self.clone();
        Box::pin(async move {
            tracing::error!(job = job.id, "cannot run the job: {}", job.args);
            let answer = Answer::text(replies::JOB_UNREADABLE);
            let command = command_of(job.kind());
            worker.finish(&job, &ctx, command, false, answer).await;
        })
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

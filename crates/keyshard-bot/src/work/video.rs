//! `/비디오` jobs: a MiniMax Hailuo task created once (its id saved with the job so the
//! instance resumes it after a restart instead of paying for a second video), progress edits
//! while it renders, and the video attached when it fits the interaction's upload limit, else
//! linked.
//!
//! The job holds its worker slot while the task renders, so the task is polled on the plan
//! of the MiniMax client (`MiniMax::video_poll_delay`: near the render time the last tasks
//! took, then every tenth of it, at most `VIDEO_POLL_MS` apart) rather than every few
//! seconds: polls cost lookups and, through the slot, creations. The progress message is
//! refreshed every `VIDEO_POLL_MS` whether or not a poll is due.
//!
//! A task belongs to the MiniMax account of the key that created it; the saved state names
//! that key by its fingerprint. A peer that rescues the job holds another key, usually another
//! account (N key sets at N times the limits are N accounts), and cannot see the task: when
//! the provider refuses a poll of a task saved by another key, the job starts it again with
//! this instance's key rather than failing the user. A task saved by this same key is never
//! created twice: an error polling it is an error.

use std::time::Duration;

use keyshard_cluster::{Job, JobContext, Outcome};
use keyshard_providers::{
    ErrorClass, MiniMax, ProviderError, ProviderKind, VideoFile, VideoStatus, VideoTaskId,
};
use keyshard_types::VideoArgs;
use poise::serenity_prelude as serenity;
use tokio::time::Instant;

use super::deliver::{progress, Answer};
use super::{since_created, Meter, Use, Worker};
use crate::replies::progress::VideoPhase;
use crate::replies::{self, results};

pub(super) const COMMAND: &str = "video";

pub async fn run(
    w: &Worker,
    job: &Job,
    a: &VideoArgs,
    ctx: &JobContext,
    meter: &mut Meter,
) -> Outcome {
    let Some(minimax) = w.providers().minimax.clone() else {
        return w
            .unconfigured(job, ctx, COMMAND, meter, ProviderKind::MiniMax)
            .await;
    };
    meter.called(w.catalog(), ProviderKind::MiniMax, Use::Video);
    // Provider time for a video is the render: from the task's creation (or resumption) to
    // the file's retrieval, polls and the waits between them included.
    let started = Instant::now();
    let file_id = match render(w, job, ctx, &minimax, &a.prompt, meter, started).await {
        Ok(id) => id,
        Err(outcome) => return outcome,
    };
    let file = minimax.video_file(&file_id).await;
    meter.spent(started.elapsed());
    let file = match file {
        Ok(f) => f,
        Err(e) => return w.fail(job, ctx, COMMAND, meter, &e).await,
    };
    w.inner
        .stats
        .provider_request(ProviderKind::MiniMax.as_str());
    meter.video_secs = keyshard_providers::minimax::VIDEO_SECONDS;
    let answer = answer(w, job, &minimax, &file).await;
    w.finish(job, ctx, COMMAND, meter, Ok(()), answer).await
}

/// Resumes the task an earlier run saved, or starts one, and polls it until the provider has
/// the file (its id); `Err` is the job's outcome when it ended otherwise (with the render's
/// time, from `started`, on the meter). Long because the poll loop, the progress edits and
/// the restart with this key of a task another key created share the task, its age and the
/// plan; one loop reads in the order a video goes through.
async fn render(
    w: &Worker,
    job: &Job,
    ctx: &JobContext,
    minimax: &MiniMax,
    prompt: &str,
    meter: &mut Meter,
    started: Instant,
) -> Result<String, Outcome> {
    let own_key = minimax.key_fingerprint();
    let saved = ctx.load_state(job.id).await.and_then(|s| {
        let task = VideoTaskId(s.get("task_id")?.as_str()?.to_owned());
        let by = s.get("key").and_then(|k| k.as_str()).map(str::to_owned);
        Some((task, by))
    });
    // Whether `task` was saved by an earlier run with another key (or an unnamed one) and
    // this key has not yet seen it.
    let mut foreign = false;
    // When this run created the task: the age the poll plan follows. A resumed task's age
    // is unknown: it is polled at once and not learned from.
    let mut created = None;
    let mut task = match saved {
        Some((task, by)) => {
            // A resumed task creates nothing: the creation the reader reserved goes back.
            drop(ctx.take_slot::<keyshard_providers::LaneTicket>());
            foreign = by.as_deref() != Some(own_key.as_str());
            tracing::info!(
                job = job.id,
                other_key = foreign,
                "resuming a video task started by an earlier run"
            );
            task
        }
        None => match start(minimax, w, job, prompt, &own_key, ctx).await {
            Ok(task) => {
                created = Some(Instant::now());
                task
            }
            Err(e) => {
                meter.spent(started.elapsed());
                return Err(w.fail(job, ctx, COMMAND, meter, &e).await);
            }
        },
    };

    let timing = w.inner.timing;
    let gap = timing.video_poll;
    let plan = |created: Option<Instant>, polled: bool| match created {
        Some(c) => minimax.video_poll_delay(c.elapsed(), polled, gap),
        None if polled => minimax.video_poll_delay(Duration::MAX, true, gap),
        None => Duration::ZERO,
    };
    let mut next_poll = started + plan(created, false);
    let mut phase = VideoPhase::Queued;
    // The task's age when a poll last found it still rendering.
    let mut pending_age = None;
    if created.is_some() {
        progress_edit(w, job, phase).await;
    }
    let mut next_progress = Instant::now() + gap;
    loop {
        tokio::time::sleep_until(next_poll.min(next_progress)).await;
        if Instant::now() < next_poll {
            progress_edit(w, job, phase).await;
            next_progress = Instant::now() + gap;
            continue;
        }
        let status = match minimax.video_poll(&task).await {
            Ok(s) => s,
            Err(e) if foreign && not_ours(&e) => {
                tracing::info!(
                    job = job.id,
                    class = %e.class,
                    "the saved video task belongs to another MiniMax key; starting it again with this one"
                );
                foreign = false;
                task = match start(minimax, w, job, prompt, &own_key, ctx).await {
                    Ok(task) => task,
                    Err(e) => {
                        meter.spent(started.elapsed());
                        return Err(w.fail(job, ctx, COMMAND, meter, &e).await);
                    }
                };
                created = Some(Instant::now());
                pending_age = None;
                next_poll = Instant::now() + plan(created, false);
                continue;
            }
            Err(e) => {
                meter.spent(started.elapsed());
                return Err(w.fail(job, ctx, COMMAND, meter, &e).await);
            }
        };
        foreign = false;
        let age = created.map(|c| c.elapsed());
        phase = match status {
            VideoStatus::Success { file_id } => {
                if let Some(age) = age {
                    minimax.video_rendered(pending_age, age);
                }
                return Ok(file_id);
            }
            VideoStatus::Failed(msg) => {
                tracing::warn!(job = job.id, "the video task failed at the provider: {msg}");
                meter.spent(started.elapsed());
                let answer = Answer::text(replies::VIDEO_FAILED);
                let failed = Err("video_failed");
                return Err(w.finish(job, ctx, COMMAND, meter, failed, answer).await);
            }
            VideoStatus::Preparing | VideoStatus::Queueing => VideoPhase::Queued,
            VideoStatus::Processing => VideoPhase::Rendering,
        };
        pending_age = age;
        if started.elapsed() > timing.video_deadline {
            let e = ProviderError::new(
                ProviderKind::MiniMax,
                ErrorClass::Retryable,
                "the video task did not finish in time",
            );
            meter.spent(started.elapsed());
            return Err(w.fail(job, ctx, COMMAND, meter, &e).await);
        }
        next_poll = Instant::now() + plan(created, true);
        progress_edit(w, job, phase).await;
        next_progress = Instant::now() + gap;
    }
}

/// Refreshes the progress message: the phase last seen, and the time since the user asked.
async fn progress_edit(w: &Worker, job: &Job, phase: VideoPhase) {
    let text = replies::progress::video(phase, since_created(job).as_secs());
    progress(w.http(), job, &text).await;
}

/// The finished video: attached when it fits the interaction's upload limit, else linked.
async fn answer(w: &Worker, job: &Job, minimax: &MiniMax, file: &VideoFile) -> Answer {
    let elapsed = since_created(job).as_secs();
    let link = || link_answer(job, w.instance(), elapsed, &file.download_url);
    let fits = file.bytes.is_some_and(|b| b <= job.attachment_limit);
    if !fits {
        return link();
    }
    match minimax.download(&file.download_url).await {
        Ok(bytes) if bytes.len() as u64 <= job.attachment_limit => Answer {
            text: results::video_attached(job.user_id, w.instance(), elapsed),
            embed: None,
            files: vec![serenity::CreateAttachment::bytes(
                bytes.to_vec(),
                format!("keyshard-{}.mp4", job.id),
            )],
        },
        Ok(_) | Err(_) => link(),
    }
}

/// Creates the task with this instance's key and saves its id with the job; `Err` when the
/// provider refused to create it.
async fn start(
    minimax: &MiniMax,
    w: &Worker,
    job: &Job,
    prompt: &str,
    own_key: &str,
    ctx: &JobContext,
) -> Result<VideoTaskId, ProviderError> {
    progress(w.http(), job, replies::progress::VIDEO_REQUESTING).await;
    let task = minimax.video_create(prompt).await?;
    if let Err(e) = ctx
        .save_state(
            job.id,
            &serde_json::json!({ "task_id": task.0, "key": own_key }),
        )
        .await
    {
        tracing::warn!(
            job = job.id,
            "could not save the video task id (a restart would start over): {e}"
        );
    }
    Ok(task)
}

/// How the provider answers a poll of another account's task: MiniMax's "invalid params"
/// (2013) for an id it does not know, or an auth-class refusal. If this instance's key is
/// itself broken, creating the task again fails the same way and moves the job to a peer.
fn not_ours(e: &ProviderError) -> bool {
    matches!(e.class, ErrorClass::BadRequest | ErrorClass::KeyProblem)
}

/// The answer when the video is over the upload limit: a link instead of an attachment.
fn link_answer(job: &Job, instance: u32, elapsed: u64, url: &str) -> Answer {
    Answer::text(results::video_linked(job.user_id, instance, elapsed, url))
}

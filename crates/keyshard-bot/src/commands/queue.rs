//! What every provider-backed command does after its input check: acknowledge at once with a
//! deferred reply, and queue the job on this instance's durable stream.

use keyshard_cluster::{Job, JobArgs};
use keyshard_routing::created_at_ms;

use crate::context::{Answered, Claimed, Context, Error};
use crate::{replies, respond};

/// Defers the reply (the acknowledgement Discord needs within 3 s) and queues the job; its
/// kind is its arguments'.
pub async fn defer_and_queue(ctx: Context<'_>, args: JobArgs) -> Result<(), Error> {
    let poise::Context::Application(app) = ctx else {
        return Ok(());
    };
    respond::defer(ctx).await?;
    let data = ctx.data();
    let i = app.interaction;
    // How it was claimed and when it was acknowledged travel with the job, for the ledger row
    // its final run records (maybe on another instance).
    let (claim, trips) = match ctx.invocation_data::<Claimed>().await {
        Some(c) => (Some(c.claim_info()), c.trips.clone()),
        None => (None, keyshard_cluster::RoundTrips::new()),
    };
    let job = Job {
        id: i.id.get(),
        token: i.token.clone(),
        application_id: i.application_id.get(),
        user_id: i.user.id.get(),
        channel_id: i.channel_id.get(),
        guild_id: i.guild_id.map(|g| g.get()),
        args,
        created_ms: created_at_ms(i.id.get()),
        attachment_limit: u64::from(i.attachment_size_limit),
        origin: data.config.instance_id,
        tried: Vec::new(),
        attempt: 0,
        claim,
    };
    if let Err(e) = trips.scope(data.jobs.submit(job)).await {
        tracing::error!(interaction = i.id.get(), "could not queue the job: {e}");
        respond::fill_deferred(ctx, replies::QUEUE_FAILED, Answered::Failed("queue")).await?;
    }
    Ok(())
}

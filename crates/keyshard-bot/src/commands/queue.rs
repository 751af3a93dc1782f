//! What every provider-backed command does after its input check: acknowledge at once with a
//! deferred reply, and queue the job on this instance's durable stream; before that, the
//! quota's check and reservation (`crate::quota`), whose refusal is the answer.

use keyshard_cluster::{Job, JobArgs};
use keyshard_routing::{created_at_ms, Verdict};

use crate::context::{Answered, Claimed, Context, Error};
use crate::{replies, respond};

/// Defers the reply (the acknowledgement Discord needs within 3 s) and queues the job; its
/// kind is its arguments'.
pub async fn defer_and_queue(ctx: Context<'_>, args: JobArgs) -> Result<(), Error> {
    let poise::Context::Application(app) = ctx else {
        return Ok(());
    };
    let data = ctx.data();
    let i = app.interaction;
    // The quota is checked and reserved by the instance that won the claim, before the
    // acknowledgement: a refusal is the answer itself (ephemeral), never a deferred reply.
    let roles: Vec<u64> = i
        .member
        .as_ref()
        .map(|m| m.roles.iter().map(|r| r.get()).collect())
        .unwrap_or_default();
    let command = crate::quota::command_of(args.kind());
    let asker = crate::quota::Asker {
        interaction_id: i.id.get(),
        user: i.user.id.get(),
        guild: i.guild_id.map(|g| g.get()),
        roles: &roles,
    };
    if let Verdict::Refuse {
        rule,
        limit,
        until_ms,
    } = crate::quota::admit(data, &asker, command).await
    {
        let zone = data.config.quota.zone.name();
        let text = replies::quota::refused(command, rule, limit, until_ms, zone);
        let class = replies::quota::ledger_class(rule);
        if let Some(mut c) = ctx.invocation_data::<Claimed>().await {
            c.refusing(class);
        }
        return respond::ephemeral(ctx, text, Answered::Refused(class)).await;
    }
    // A failed acknowledgement keeps the reservation: the usual cause is another instance
    // that answered this interaction (a swept claim), and that answer holds the same
    // reservation (the verdict is per interaction), so giving it back here would let it run
    // for free. The rarer expired interaction is counted once too much; the reconciliation
    // sees it as drift.
    respond::defer(ctx).await?;
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
        data.quotas.refund(i.id.get()).await;
        respond::fill_deferred(ctx, replies::QUEUE_FAILED, Answered::Failed("queue")).await?;
    }
    Ok(())
}

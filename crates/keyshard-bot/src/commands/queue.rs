//! What every provider-backed command does after its input check: refuse at once a job whose
//! expected wait is past its command's maximum ([`admission`]); then the quota's check and
//! reservation (`crate::quota`), whose refusal is the answer; then acknowledge at once with a
//! deferred reply and queue the job on this instance's durable stream, confirming the claim
//! in the same round trip. A fallback that swept the lapsed claim of an instance that died
//! between its acknowledgement and its queueing hears "already acknowledged" and queues the
//! job itself.
//!
//! The wait is judged before the quota, so a job refused for its wait reserves nothing and
//! costs the user no quota (issue 14), with no refund to get wrong.

use keyshard_cluster::{Job, JobArgs, JobKind, Submitted};
use keyshard_routing::{admit, created_at_ms, Admission, Verdict};

use poise::serenity_prelude as serenity;

use crate::context::{Answered, Claimed, Context, Error};
use crate::{replies, respond};

/// Defers the reply (the acknowledgement Discord needs within 3 s) and queues the job; its
/// kind is its arguments'.
pub async fn defer_and_queue(ctx: Context<'_>, args: JobArgs) -> Result<(), Error> {
    let poise::Context::Application(app) = ctx else {
        return Ok(());
    };
    let data = ctx.data();
    let kind = args.kind();
    if let Admission::Refuse { estimate } = admission(data, kind) {
        tracing::info!(
            interaction = app.interaction.id.get(),
            kind = kind.as_str(),
            estimate_secs = estimate.as_secs(),
            "refused a job: its expected wait is past the maximum"
        );
        let max = data.config.max_wait.of(kind).unwrap_or_default();
        let text = replies::progress::wait_refused(estimate.as_secs(), max.as_secs());
        return respond::ephemeral(ctx, text, Answered::Refused("max_wait")).await;
    }
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
    acknowledge_and_queue(ctx, i, args).await
}

/// After the checks: the deferred reply, then the job on this instance's stream (with the
/// claim's confirmation, one round trip), or the job of the instance whose claim this one
/// swept, which acknowledged and died before it queued it.
async fn acknowledge_and_queue(
    ctx: Context<'_>,
    i: &serenity::CommandInteraction,
    args: JobArgs,
) -> Result<(), Error> {
    let data = ctx.data();
    // A failed acknowledgement keeps the reservation: the usual cause is another instance
    // that answered this interaction (a swept claim), and that answer holds the same
    // reservation (the verdict is per interaction), so giving it back here would let it run
    // for free. The rarer expired interaction is counted once too much; the reconciliation
    // sees it as drift.
    let swept_from = ctx
        .invocation_data::<Claimed>()
        .await
        .and_then(|c| c.how.swept_from);
    let recovering = match respond::defer(ctx).await {
        Ok(()) => false,
        // This instance swept the lapsed claim of another, and Discord says that one
        // acknowledged: it died (or stalled) after its acknowledgement and before its job was
        // queued, since a queued job confirms the claim and a confirmed claim is not swept.
        // It queues nothing now that the claim is not its own (`Jobs::submit_claimed`), so the
        // job is queued from here.
        Err(e) if swept_from.is_some() && respond::is_already_acknowledged(&e) => {
            tracing::info!(
                interaction = i.id.get(),
                acknowledged_by = ?swept_from,
                "the instance whose claim lapsed acknowledged but did not queue the job; queueing it here"
            );
            true
        }
        Err(e) => return Err(e),
    };
    // How it was claimed and when it was acknowledged travel with the job, for the ledger row
    // its final run records (maybe on another instance).
    let (claim, trips) = match ctx.invocation_data::<Claimed>().await {
        Some(c) => (Some(c.claim_info(recovering)), c.trips.clone()),
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
    match trips.scope(data.jobs.submit_claimed(job)).await {
        Ok(submitted) => {
            if submitted == Submitted::Swept {
                // Slower than the claim's pending life to acknowledge: the fallback that swept
                // the claim hears "already acknowledged" and queues the job (above, there).
                tracing::info!(
                    interaction = i.id.get(),
                    "acknowledged after the claim lapsed and was swept; the sweeper queues the job"
                );
            }
            if submitted != Submitted::InProcess {
                if let Some(mut c) = ctx.invocation_data::<Claimed>().await {
                    c.settled();
                }
            }
        }
        Err(e) => {
            tracing::error!(interaction = i.id.get(), "could not queue the job: {e}");
            data.quotas.refund(i.id.get()).await;
            respond::fill_deferred(ctx, replies::QUEUE_FAILED, Answered::Failed("queue")).await?;
        }
    }
    Ok(())
}

/// Whether a new job of `kind` is queued: its expected wait (the cluster's queue of that kind
/// over its service rate, from the published snapshot: no Redis call, so the acknowledgement
/// still waits on nothing but the claim) against `MAX_WAIT_SECS_<KIND>`. The one place the
/// max-wait rule is applied.
fn admission(data: &crate::context::Data, kind: JobKind) -> Admission {
    match data.config.max_wait.of(kind) {
        Some(max) => admit(data.jobs.estimated_wait(kind), max),
        None => Admission::Queue { estimate: None },
    }
}

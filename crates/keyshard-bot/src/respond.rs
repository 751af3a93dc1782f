//! Answering the interaction in hand, for the commands and for `edge::on_error`: an ephemeral
//! message, a deferred reply, a public message, an embed only the caller sees. Acknowledgements
//! that a user waits on record their latency from the claim decision ([`Claimed`]), and every
//! answer that reached Discord is noted on the claim ([`Claimed::answered`]), which records
//! the interaction's usage-ledger row when the invocation ends.
//!
//! The texts come from `replies`; this module only says how they are sent.

use poise::serenity_prelude as serenity;
use poise::CreateReply;

use crate::context::{Answered, Claimed, Context, Error};

/// A message only the caller sees (a mistake in their input, a refusal, an error); `answered`
/// says which, for the ledger.
pub async fn ephemeral(
    ctx: Context<'_>,
    text: impl Into<String>,
    answered: Answered,
) -> Result<(), Error> {
    ctx.send(CreateReply::default().content(text).ephemeral(true))
        .await?;
    note(ctx, answered).await;
    Ok(())
}

/// An embed only the caller sees (the admin views, a usage report).
pub async fn ephemeral_embed(ctx: Context<'_>, embed: serenity::CreateEmbed) -> Result<(), Error> {
    ctx.send(CreateReply::default().embed(embed).ephemeral(true))
        .await?;
    note(ctx, Answered::Ok).await;
    Ok(())
}

/// Defers the reply: the acknowledgement Discord needs within 3 s for work that takes longer.
/// The answer comes later as an edit of this reply.
pub async fn defer(ctx: Context<'_>) -> Result<(), Error> {
    ctx.defer().await?;
    observe_ack(ctx).await;
    if let Some(mut c) = ctx.invocation_data::<Claimed>().await {
        c.acked();
    }
    Ok(())
}

/// Defers the reply so that only the caller sees it (a view that reads the ledger): the
/// acknowledgement within 3 s, the view as an edit after.
pub async fn defer_ephemeral(ctx: Context<'_>) -> Result<(), Error> {
    ctx.defer_ephemeral().await?;
    observe_ack(ctx).await;
    if let Some(mut c) = ctx.invocation_data::<Claimed>().await {
        c.acked();
    }
    Ok(())
}

/// After [`defer_ephemeral`]: the view itself.
pub async fn fill_deferred_embed(
    ctx: Context<'_>,
    embed: serenity::CreateEmbed,
) -> Result<(), Error> {
    ctx.send(CreateReply::default().embed(embed).ephemeral(true))
        .await?;
    note(ctx, Answered::Ok).await;
    Ok(())
}

/// A public message that answers the interaction at once.
pub async fn say(ctx: Context<'_>, text: impl Into<String>) -> Result<(), Error> {
    ctx.say(text).await?;
    observe_ack(ctx).await;
    note(ctx, Answered::Ok).await;
    Ok(())
}

/// After [`defer`]: fills the deferred reply with `text` (visible as the final answer) when no
/// job will; `answered` says what it was, for the ledger.
pub async fn fill_deferred(
    ctx: Context<'_>,
    text: impl Into<String>,
    answered: Answered,
) -> Result<(), Error> {
    ctx.send(CreateReply::default().content(text)).await?;
    note(ctx, answered).await;
    Ok(())
}

/// Discord's error code when `err` is Discord refusing a request (40060 already acknowledged,
/// 10062 unknown interaction, …).
pub fn discord_code(err: &serenity::Error) -> Option<isize> {
    match err {
        serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(resp)) => {
            Some(resp.error.code)
        }
        _ => None,
    }
}

/// Whether Discord says the interaction was acknowledged already (40060): another instance
/// answered or deferred it.
pub fn is_already_acknowledged(err: &Error) -> bool {
    err.downcast_ref::<serenity::Error>().and_then(discord_code) == Some(40060)
}

/// Counts the acknowledgement's latency from the claim decision.
async fn observe_ack(ctx: Context<'_>) {
    if let Some(c) = ctx.invocation_data::<Claimed>().await {
        ctx.data()
            .metrics
            .ack_latency
            .observe(c.decided_at.elapsed());
    }
}

/// Notes on the claim that the interaction was answered (no I/O).
async fn note(ctx: Context<'_>, answered: Answered) {
    if let Some(mut c) = ctx.invocation_data::<Claimed>().await {
        c.answered(answered);
    }
}

//! The poise framework around the commands: the claim as a framework-wide check, the one place
//! that turns errors into what a Discord user reads, and the Discord client pointed at Discord
//! or at `DISCORD_API_BASE`.
//!
//! The top of the bot's import graph: `edge → commands → {context, respond, replies}`. Nothing
//! below names `edge`; what commands and edge both need to answer a user lives in `respond`.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keyshard_cluster::ClaimOutcome;
use poise::serenity_prelude as serenity;

use crate::clock::unix_ms;
use crate::config::Config;
use crate::context::{command_name, Answered, Asked, Claimed, Context, Data, Error, HowClaimed};
use crate::redact::redact;
use crate::{replies, respond};

/// The framework-wide check: route and claim. `Ok(false)` means another instance answers.
fn claim_check(ctx: Context<'_>) -> poise::BoxFuture<'_, Result<bool, Error>> {
    Box::pin(async move {
        let poise::Context::Application(app) = ctx else {
            return Ok(false);
        };
        let data = ctx.data();
        let command: &str = &ctx.command().name;
        if data.state.is_draining() {
            // Peers see the draining flag in our heartbeat and the fallback ladder takes over.
            data.metrics.interactions.inc(&[command, "draining"]);
            return Ok(false);
        }
        let interaction = app.interaction;
        let started = Instant::now();
        let outcome = data
            .cluster
            .claim(interaction.id.get(), interaction.user.id.get(), unix_ms())
            .await;
        let (assignment, how, redis_rtt) = match outcome {
            // An owner's claim is one Redis round trip: it doubles as /핑's measurement.
            ClaimOutcome::Won {
                assignment,
                rank,
                swept_from,
            } => (
                assignment,
                HowClaimed {
                    degraded: false,
                    swept_from,
                },
                rank.is_none().then(|| started.elapsed()),
            ),
            ClaimOutcome::Degraded {
                answer: true,
                assignment,
            } => (
                assignment,
                HowClaimed {
                    degraded: true,
                    swept_from: None,
                },
                None,
            ),
            ClaimOutcome::Lost | ClaimOutcome::Degraded { answer: false, .. } => {
                data.metrics.interactions.inc(&[command, "not_ours"]);
                return Ok(false);
            }
        };
        data.stats
            .handled(assignment.owner.is_some_and(|o| o != assignment.primary));
        let asked = Asked {
            interaction_id: interaction.id.get(),
            user_id: interaction.user.id.get(),
            guild_id: interaction.guild_id.map(|g| g.get()),
            channel_id: interaction.channel_id.get(),
            command: command_name(ctx.command()).to_owned(),
        };
        ctx.set_invocation_data(Claimed::new(assignment, how, redis_rtt, asked, data))
            .await;
        data.metrics.interactions.inc(&[command, "answered"]);
        Ok(true)
    })
}

/// Whether Discord says the interaction was already answered or is gone: another instance won
/// the race, or the 3 s window passed. Never a user-facing error.
pub fn is_lost_race(err: &serenity::Error) -> bool {
    match err {
        serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(resp)) => {
            matches!(resp.error.code, 40060 | 10062)
        }
        _ => false,
    }
}

/// A log-safe description of an error: Discord's code and message, never a token.
pub fn describe(err: &Error) -> String {
    if let Some(serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(resp))) =
        err.downcast_ref::<serenity::Error>()
    {
        return format!(
            "Discord {} (code {}): {}",
            resp.status_code.as_u16(),
            resp.error.code,
            resp.error.message
        );
    }
    redact(&format!("{err:#}"))
}

/// The one place where errors become what a Discord user reads (in Korean, starting with ⚠️).
/// Tells the user what went wrong in an ephemeral reply; a reply that cannot be sent is only
/// logged (the interaction may already be answered or its token dead).
async fn tell(ctx: Context<'_>, text: &str, answered: Answered) {
    if let Err(e) = respond::ephemeral(ctx, text, answered).await {
        tracing::debug!(
            "could not tell the user what went wrong: {}",
            redact(&e.to_string())
        );
    }
}

/// Discord said the interaction was answered already. For a command answered without a job,
/// when this instance swept the lapsed claim of another, that instance answered and died (or
/// stalled) before confirming: its ledger row is recorded from here, on its behalf. A job
/// command's row comes from its job (the one that instance queued, if it did).
async fn recover(ctx: Context<'_>) {
    if crate::commands::queues_a_job(command_name(ctx.command())) {
        return;
    }
    if let Some(mut claimed) = ctx.invocation_data::<Claimed>().await {
        if claimed.recover() {
            tracing::info!(
                command = %ctx.command().name,
                answered_by = ?claimed.how.swept_from,
                "the instance whose claim lapsed had answered; recording its usage row"
            );
        }
    }
}

fn on_error(error: poise::FrameworkError<'_, Data, Error>) -> poise::BoxFuture<'_, ()> {
    Box::pin(async move {
        match error {
            poise::FrameworkError::CommandCheckFailed { error: None, .. } => {
                // Another instance owns this interaction: nothing to do.
            }
            poise::FrameworkError::Command { error, ctx, .. } => {
                if error
                    .downcast_ref::<serenity::Error>()
                    .is_some_and(is_lost_race)
                {
                    tracing::debug!(command = %ctx.command().name, "lost the acknowledgement race: {}", describe(&error));
                    recover(ctx).await;
                    return;
                }
                tracing::warn!(command = %ctx.command().name, "command failed: {}", describe(&error));
                ctx.data()
                    .metrics
                    .interactions
                    .inc(&[&ctx.command().name, "error"]);
                tell(ctx, replies::INTERNAL, Answered::Failed("internal")).await;
            }
            poise::FrameworkError::ArgumentParse { ctx, error, .. } => {
                tracing::debug!(command = %ctx.command().name, "argument parse failed: {error}");
                tell(ctx, replies::INPUT_UNREADABLE, Answered::Refused("input")).await;
            }
            poise::FrameworkError::CommandStructureMismatch {
                ctx, description, ..
            } => {
                // An option that does not match the registered command: a user Discord could
                // not resolve (deleted account, not in the guild) or a stale registration.
                tracing::info!(command = %ctx.command().name, "unreadable options: {description}");
                let (text, class) = if description.contains("User") {
                    (replies::UNKNOWN_USER, "unknown_user")
                } else {
                    (replies::INPUT_UNREADABLE, "input")
                };
                tell(
                    poise::Context::Application(ctx),
                    text,
                    Answered::Refused(class),
                )
                .await;
            }
            poise::FrameworkError::CommandPanic { ctx, .. } => {
                // The panic itself is logged by the panic hook (`logging::init`); poise's own
                // handler would answer in English, so the user reads our internal error.
                tracing::error!(command = %ctx.command().name, "command panicked");
                ctx.data()
                    .metrics
                    .interactions
                    .inc(&[&ctx.command().name, "error"]);
                tell(ctx, replies::INTERNAL, Answered::Failed("panic")).await;
            }
            poise::FrameworkError::CommandCheckFailed {
                error: Some(error),
                ctx,
                ..
            } => {
                tracing::warn!(command = %ctx.command().name, "claim check failed: {}", describe(&error));
            }
            other => {
                if let Err(e) = poise::builtins::on_error(other).await {
                    tracing::warn!("error while handling an error: {}", redact(&e.to_string()));
                }
            }
        }
    })
}

/// Builds the serenity client with the poise framework.
pub async fn build_client(data: Data) -> anyhow::Result<serenity::Client> {
    let config = data.config.clone();
    let setup_config = config.clone();
    let state = data.state.clone();
    let commands = crate::commands::all();
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands,
            command_check: Some(claim_check),
            on_error,
            event_handler: |framework, event| {
                Box::pin(async move {
                    let data = framework.user_data;
                    match event {
                        serenity::FullEvent::Ready { .. } | serenity::FullEvent::Resume { .. } => {
                            data.state.gateway_ready.store(true, Ordering::Release);
                        }
                        serenity::FullEvent::ShardStageUpdate { event } => {
                            let connected = event.new == serenity::ConnectionStage::Connected;
                            data.state.gateway_ready.store(connected, Ordering::Release);
                            tracing::info!(stage = ?event.new, "gateway stage");
                        }
                        _ => {}
                    }
                    Ok(())
                })
            },
            // Owners come from ADMIN_USER_IDS, not from the application's owner list.
            initialize_owners: false,
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            Box::pin(async move {
                tracing::info!(session = %ready.session_id.len(), "gateway READY");
                state.gateway_ready.store(true, Ordering::Release);
                let commands = &framework.options().commands;
                match setup_config.guild_id {
                    Some(guild) => {
                        poise::builtins::register_in_guild(
                            ctx,
                            commands,
                            serenity::GuildId::new(guild),
                        )
                        .await?
                    }
                    None => poise::builtins::register_globally(ctx, commands).await?,
                }
                state.commands_registered.store(true, Ordering::Release);
                tracing::info!(count = commands.len(), "slash commands registered");
                Ok(data)
            })
        })
        .build();

    let token = data_token(&config);
    // Interactions arrive whatever the intents; asking for none keeps the gateway quiet and
    // the idle memory small.
    let intents = serenity::GatewayIntents::empty();
    let builder = match &config.discord_api_base {
        Some(base) => {
            // serenity ignores the proxy while its own ratelimiter is on (notes/discord.md), so
            // proxy mode relies on the proxy (or the simulator) for rate limits.
            let http = serenity::HttpBuilder::new(token)
                .proxy(base.clone())
                .ratelimiter_disabled(true)
                .build();
            serenity::ClientBuilder::new_with_http(http, intents)
        }
        None => serenity::ClientBuilder::new(token, intents),
    };
    Ok(builder.framework(framework).await?)
}

fn data_token(config: &Config) -> String {
    config.discord_token.expose().to_owned()
}

/// How long shutdown waits for interactions in hand before it leaves anyway: an ack is due
/// within 3 s and a deferred answer within 15 min, but a stuck provider must not hold a
/// rolling restart forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

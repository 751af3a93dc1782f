//! The poise framework around the commands: the claim as a framework-wide check, the one place
//! that turns errors into what a Discord user reads, one Discord client per shard pointed at
//! Discord or at `DISCORD_API_BASE` (and, for the gateway, at the relay), and the command set
//! registered once for the cluster.
//!
//! The top of the bot's import graph: `edge → commands → {context, respond, replies}`. Nothing
//! below names `edge`; what commands and edge both need to answer a user lives in `respond`.

mod sieve;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use keyshard_cluster::ClaimOutcome;
use poise::serenity_prelude as serenity;

use crate::clock::unix_ms;
use crate::config::Config;
use crate::context::{
    command_name, Answered, Asked, Claimed, Context, Data, Decided, Error, HowClaimed,
};
use crate::redact::redact;
use crate::{replies, respond};

pub use sieve::Sieve;

/// The framework-wide check: the edge's claim, carried into the command. `Ok(false)` means
/// another instance answers (the edge hands poise only what this instance won, so that is an
/// interaction that did not come through it).
fn claim_check(ctx: Context<'_>) -> poise::BoxFuture<'_, Result<bool, Error>> {
    Box::pin(async move {
        let poise::Context::Application(app) = ctx else {
            return Ok(false);
        };
        // poise runs the check once per level of the command tree (`/한도 설정`: twice); the
        // first one took the decision.
        if ctx.invocation_data::<Claimed>().await.is_some() {
            return Ok(true);
        }
        let data = ctx.data();
        let interaction = app.interaction;
        let Some(decided) = data.state.decided.take(interaction.id.get()) else {
            return Ok(false);
        };
        data.stats.handled(
            decided
                .assignment
                .owner
                .is_some_and(|o| o != decided.assignment.primary),
        );
        let asked = Asked {
            interaction_id: interaction.id.get(),
            user_id: interaction.user.id.get(),
            guild_id: interaction.guild_id.map(|g| g.get()),
            channel_id: interaction.channel_id.get(),
            command: command_name(ctx.command()).to_owned(),
        };
        let mut claimed = Claimed::new(
            decided.assignment,
            decided.how,
            decided.redis_rtt,
            asked,
            data,
        );
        claimed.trips = decided.trips;
        ctx.set_invocation_data(claimed).await;
        data.metrics
            .interactions
            .inc(&[&ctx.command().name, "answered"]);
        Ok(true)
    })
}

/// Routes and claims one command interaction, received as `receipt` says: `Some` when this
/// instance answers it. A fallback first waits its turn on the ladder, to a [`FALLBACK_TICK`].
async fn decide(
    data: &Data,
    command: &str,
    id: u64,
    user: u64,
    receipt: keyshard_cluster::Receipt,
) -> Option<Decided> {
    let receipt = if receipt.delay().is_zero() {
        receipt
    } else {
        tokio::time::sleep_until(on_tick(receipt.delay())).await;
        receipt.waited()
    };
    if data.state.is_draining() {
        // Peers see the draining flag in our heartbeat and the fallback ladder takes over.
        data.metrics.interactions.inc(&[command, "draining"]);
        return None;
    }
    // Boxed: inline, the claim's state (several KB) would sit in every waiting fallback's
    // future through its wait.
    Box::pin(claim(data, command, id, user, receipt)).await
}

/// The claim of [`decide`], after any wait.
async fn claim(
    data: &Data,
    command: &str,
    id: u64,
    user: u64,
    receipt: keyshard_cluster::Receipt,
) -> Option<Decided> {
    let started = Instant::now();
    // The claim's round trips start the interaction's count (`Claimed::trips`).
    let trips = keyshard_cluster::RoundTrips::new();
    let outcome = trips
        .scope(data.cluster.claim_received(id, user, receipt))
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
            return None;
        }
    };
    Some(Decided {
        assignment,
        how,
        redis_rtt,
        trips,
        received_ms: receipt.received_ms,
    })
}

/// Whether `poise` has the command `name`: the edge and the sieve claim only those, and leave
/// a stale registration's interactions to poise, which ignores them.
fn knows(poise: &poise::Framework<Data, Error>, name: &str) -> bool {
    poise.options().commands.iter().any(|c| c.name == name)
}

/// The grain of a fallback's wake-up. Every instance receives every interaction, and waits
/// out most of them as a fallback (three in four with 4 instances) before a claim that finds
/// the owner's: woken on a shared 10 ms tick, those claims leave together, in one write to
/// Redis instead of one each, for at most 10 ms more of a ladder step (400 ms and up).
const FALLBACK_TICK: Duration = Duration::from_millis(10);

/// The first [`FALLBACK_TICK`] at or after `delay` from now.
fn on_tick(delay: Duration) -> tokio::time::Instant {
    static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
    let due = tokio::time::Instant::now() + delay;
    let tick = FALLBACK_TICK.as_nanos();
    let ticks = (due - origin).as_nanos().div_ceil(tick);
    origin + Duration::from_nanos(u64::try_from(ticks * tick).unwrap_or(u64::MAX))
}

/// Whether Discord says the interaction was already answered or is gone: another instance won
/// the race, or the 3 s window passed. Never a user-facing error.
pub fn is_lost_race(err: &serenity::Error) -> bool {
    matches!(respond::discord_code(err), Some(40060 | 10062))
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
/// command's row comes from its job: the one that instance queued, or, when it acknowledged
/// and died before queueing it, the one this instance queued (`commands::queue`).
async fn recover(ctx: Context<'_>) {
    if let Some(mut claimed) = ctx.invocation_data::<Claimed>().await {
        // A job command's row comes from its job, unless its quota refused it (no job).
        if crate::commands::queues_a_job(command_name(ctx.command())) && !claimed.is_refusal() {
            return;
        }
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

/// The HTTP client for Discord, or for `DISCORD_API_BASE` when set.
pub fn http(config: &Config) -> serenity::Http {
    let token = data_token(config);
    match &config.discord_api_base {
        // serenity ignores the proxy while its own ratelimiter is on (notes/discord.md), so
        // proxy mode relies on the proxy (or the simulator) for rate limits.
        Some(base) => serenity::HttpBuilder::new(token)
            .proxy(base.clone())
            .ratelimiter_disabled(true)
            .build(),
        None => serenity::Http::new(&token),
    }
}

/// Builds one serenity client per shard (shard `k` is the `k`-th), each with its own poise
/// framework over a clone of `data` and its gateway URL pointed at the relay (`relay_url`).
///
/// One client per shard, not one client for all: serenity's shard queuer spaces the shards of
/// one client 5 s apart whatever the cluster's queue allows, and shuts them down one after the
/// other; with a client each, the cluster's queue alone decides when a shard IDENTIFYs, and
/// a stop closes every shard at once.
pub async fn build_clients(
    data: Data,
    shards: u32,
    relay_url: &str,
    sieve: &Arc<Sieve>,
) -> anyhow::Result<Vec<serenity::Client>> {
    let mut clients = Vec::with_capacity(shards as usize);
    for shard in 0..shards {
        let client = build_client(data.clone(), shard, sieve.clone()).await?;
        *client.ws_url.lock().await = relay_url.to_owned();
        clients.push(client);
    }
    Ok(clients)
}

/// The events the edge follows: a shard READY or RESUMED is up (its end is the relay's to
/// see), and READY names the session a later RESUME will name.
fn on_event<'a>(
    framework: poise::FrameworkContext<'a, Data, Error>,
    event: &'a serenity::FullEvent,
) -> poise::BoxFuture<'a, Result<(), Error>> {
    Box::pin(async move {
        let shards = &framework.user_data.state.shards;
        let shard = framework.serenity_context.shard_id.0;
        match event {
            serenity::FullEvent::Ready { data_about_bot } => {
                shards.session(&data_about_bot.session_id, shard);
                shards.up(shard);
            }
            serenity::FullEvent::Resume { .. } => shards.up(shard),
            serenity::FullEvent::ShardStageUpdate { event } => {
                tracing::info!(shard, stage = ?event.new, "gateway stage");
            }
            _ => {}
        }
        Ok(())
    })
}

/// poise's framework with the claim in front of it. Every instance receives every
/// interaction and, for those a peer owns, waits its turn on the fallback ladder before it
/// tries the claim, almost always to find the owner's. Both happen here, before poise: poise
/// builds some 40 KB of dispatch state per command, which a wait inside it kept alive (at
/// 1,000 interactions/s with 4 instances, some 500 waits at once in each: RSS 48 MB, 28 MB
/// with the wait here), and which a lost claim never needs. poise sees only the interactions
/// this instance answers; its claim check takes the edge's [`Decided`].
struct Edge {
    poise: Arc<poise::Framework<Data, Error>>,
    data: Data,
    /// The shard this client runs, and the sieve that hands it the interactions it kept.
    shard: u32,
    sieve: Arc<Sieve>,
}

#[serenity::async_trait]
impl serenity::Framework for Edge {
    async fn init(&mut self, client: &serenity::Client) {
        match Arc::get_mut(&mut self.poise) {
            Some(poise) => serenity::Framework::init(poise, client).await,
            None => unreachable!("the framework is shared only once initialised"),
        }
        self.sieve.framework(self.shard, self.poise.clone());
    }

    // Written out rather than as an `async fn`: that would keep the event (4 KB inline) in
    // the boxed future through the wait; boxed first, the wait holds a pointer to it.
    fn dispatch<'life0, 'async_trait>(
        &'life0 self,
        ctx: serenity::Context,
        event: serenity::FullEvent,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        let event = Box::new(event);
        Box::pin(async move {
            match &*event {
                serenity::FullEvent::InteractionCreate {
                    interaction: serenity::Interaction::Command(command),
                } => {
                    let name = &command.data.name;
                    // A command this build does not know (a stale registration) goes to poise
                    // unclaimed, which ignores it.
                    if knows(&self.poise, name) {
                        let (id, user) = (command.id.get(), command.user.id.get());
                        let receipt = self.data.cluster.receive(id, user, unix_ms());
                        match decide(&self.data, name, id, user, receipt).await {
                            Some(decided) => self.data.state.decided.put(id, decided),
                            None => return,
                        }
                    }
                }
                serenity::FullEvent::Ready { .. } | serenity::FullEvent::Resume { .. } => {
                    self.sieve.context(self.shard, &ctx);
                }
                _ => {}
            }
            serenity::Framework::dispatch(&*self.poise, ctx, *event).await;
        })
    }
}

/// One serenity client with the poise framework.
async fn build_client(
    data: Data,
    shard: u32,
    sieve: Arc<Sieve>,
) -> anyhow::Result<serenity::Client> {
    let config = data.config.clone();
    let edge_data = data.clone();
    let framework = poise::Framework::builder()
        .options(poise::FrameworkOptions {
            commands: crate::commands::all(),
            command_check: Some(claim_check),
            on_error,
            event_handler: on_event,
            // Owners come from ADMIN_USER_IDS, not from the application's owner list.
            initialize_owners: false,
            ..Default::default()
        })
        .setup(move |ctx, ready, framework| {
            Box::pin(async move {
                let shard = ctx.shard_id.0;
                tracing::info!(shard, "gateway READY");
                data.state.shards.session(&ready.session_id, shard);
                data.state.shards.up(shard);
                // The first shard READY of the process registers the command set (once for
                // the cluster); the others go on serving meanwhile.
                if !data.state.registering.swap(true, Ordering::AcqRel) {
                    let builders =
                        poise::builtins::create_application_commands(&framework.options().commands);
                    tokio::spawn(register_commands(ctx.http.clone(), builders, data.clone()));
                }
                Ok(data)
            })
        })
        .build();

    // Interactions arrive whatever the intents; asking for none keeps the gateway quiet and
    // the idle memory small.
    let intents = serenity::GatewayIntents::empty();
    let builder = serenity::ClientBuilder::new_with_http(http(&config), intents);
    let edge = Edge {
        poise: Arc::new(framework),
        data: edge_data,
        shard,
        sieve,
    };
    Ok(builder.framework(edge).await?)
}

/// How long a failed registration waits before it tries again, doubling up to
/// [`REGISTER_RETRY_MAX`]: Discord's 5xx and rate limits pass within seconds to a minute.
const REGISTER_RETRY_FIRST: Duration = Duration::from_secs(1);
const REGISTER_RETRY_MAX: Duration = Duration::from_secs(60);

/// The hash that tells one command set from another: FNV-1a (64 bits) over where the set goes
/// (globally or to `GUILD_ID`) and its JSON as Discord receives it. Stable across builds and
/// Rust versions, unlike `std`'s hasher.
pub fn command_set_hash(guild: Option<u64>, builders: &[serenity::CreateCommand]) -> String {
    let json = serde_json::to_vec(builders).unwrap_or_default();
    let scope = guild.map_or("global".to_owned(), |g| format!("guild:{g}"));
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in scope.bytes().chain([0]).chain(json) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Registers the command set unless the cluster already has (see
/// `keyshard_cluster::sync_commands`), retrying until it succeeds; readiness waits for it.
async fn register_commands(
    http: std::sync::Arc<serenity::Http>,
    builders: Vec<serenity::CreateCommand>,
    data: Data,
) {
    let guild = data.config.guild_id;
    let hash = command_set_hash(guild, &builders);
    let mut wait = REGISTER_RETRY_FIRST;
    loop {
        let result = keyshard_cluster::sync_commands(&data.cluster, &hash, || {
            let (http, builders) = (http.clone(), builders.clone());
            async move {
                match guild {
                    Some(g) => serenity::GuildId::new(g)
                        .set_commands(&http, builders)
                        .await
                        .map(drop),
                    None => serenity::Command::set_global_commands(&http, builders)
                        .await
                        .map(drop),
                }
            }
        })
        .await;
        match result {
            Ok(outcome) => {
                data.state
                    .commands_registered
                    .store(true, Ordering::Release);
                tracing::info!(
                    count = builders.len(),
                    ?outcome,
                    hash,
                    "slash commands in place"
                );
                return;
            }
            Err(e) => {
                tracing::warn!(
                    "could not register the slash commands ({}); trying again in {wait:?}",
                    redact(&e.to_string())
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(REGISTER_RETRY_MAX);
            }
        }
    }
}

fn data_token(config: &Config) -> String {
    config.discord_token.expose().to_owned()
}

/// How long shutdown waits for interactions in hand before it leaves anyway: an ack is due
/// within 3 s and a deferred answer within 15 min, but a stuck provider must not hold a
/// rolling restart forever.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

//! `/한도` (`/limits`, admins): the admins' quota overrides per user or guild and command —
//! `설정` (set a daily count and, for a user, a cooldown; 0 lifts a limit), `보기` (show),
//! `해제` (clear, back to the env defaults). Stored in Postgres (`quota_overrides`), then
//! written through to the Redis hash the quota script reads; without a ledger there is
//! nowhere to store them, and the admin is told so.

use keyshard_cluster::Scope;
use keyshard_ledger::OverrideScope;
use keyshard_routing::{Override, QuotaCommand};
use keyshard_types::Choices;
use poise::serenity_prelude as serenity;

use super::admin::is_admin;
use super::choice::Choice;
use crate::context::{Answered, Context, Error};
use crate::replies::quota as view;
use crate::{replies, respond};

/// A limited command as a slash choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LimitedCommand(pub QuotaCommand);

impl Choices for LimitedCommand {
    const CHOICES: &'static [LimitedCommand] = &[
        LimitedCommand(QuotaCommand::Chat),
        LimitedCommand(QuotaCommand::Image),
        LimitedCommand(QuotaCommand::Video),
    ];

    fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    fn label(self) -> &'static str {
        view::command_ko(self.0)
    }
}

/// 사용자나 서버의 사용 한도를 바꿉니다. (관리자)
#[poise::command(
    slash_command,
    rename = "한도",
    name_localized("en-US", "limits"),
    description_localized("en-US", "Quota overrides for a user or a guild (admins)"),
    default_member_permissions = "ADMINISTRATOR",
    subcommands("set", "show", "clear"),
    subcommand_required
)]
pub async fn limits(_ctx: Context<'_>) -> Result<(), Error> {
    Ok(())
}

/// Whom the command names: exactly one of a user and a guild id.
fn target(
    user: Option<&serenity::User>,
    guild: Option<&str>,
) -> Result<(Scope, String), &'static str> {
    match (user, guild.map(str::trim)) {
        (Some(u), None) => Ok((
            Scope::User(u.id.get()),
            view::target(Some(u.id.get()), None),
        )),
        (None, Some(g)) => g
            .parse::<u64>()
            .map(|g| (Scope::Guild(g), view::target(None, Some(g))))
            .map_err(|_| replies::usage::BAD_GUILD),
        _ => Err(view::ONE_TARGET),
    }
}

fn ledger_scope(s: Scope) -> OverrideScope {
    match s {
        Scope::User(u) => OverrideScope::User(u),
        Scope::Guild(g) => OverrideScope::Guild(g),
    }
}

/// The admin check, the target and the ledger, or the reason why not (already told).
async fn prepare(
    ctx: Context<'_>,
    user: Option<&serenity::User>,
    guild: Option<&str>,
) -> Result<Option<(Scope, String, std::sync::Arc<crate::ledger::Ledger>)>, Error> {
    if !is_admin(ctx) {
        respond::ephemeral(ctx, replies::ADMIN_ONLY, Answered::Refused("not_admin")).await?;
        return Ok(None);
    }
    let (scope, who) = match target(user, guild) {
        Ok(t) => t,
        Err(text) => {
            respond::ephemeral(ctx, text, Answered::Refused("input")).await?;
            return Ok(None);
        }
    };
    let Some(ledger) = ctx.data().ledger.clone() else {
        respond::ephemeral(
            ctx,
            view::OVERRIDES_NEED_LEDGER,
            Answered::Failed("ledger_off"),
        )
        .await?;
        return Ok(None);
    };
    Ok(Some((scope, who, ledger)))
}

/// 한도를 설정합니다. 0은 제한 없음입니다.
#[poise::command(
    slash_command,
    rename = "설정",
    name_localized("en-US", "set"),
    description_localized("en-US", "Set a daily count and/or a cooldown (0: no limit)")
)]
pub async fn set(
    ctx: Context<'_>,
    #[rename = "명령"]
    #[description = "어느 명령의 한도인지"]
    #[name_localized("en-US", "command")]
    #[description_localized("en-US", "Which command")]
    command: Choice<LimitedCommand>,
    #[rename = "사용자"]
    #[description = "대상 사용자 (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "user")]
    #[description_localized("en-US", "The user (a user or a guild)")]
    user: Option<serenity::User>,
    #[rename = "서버"]
    #[description = "대상 서버 ID (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "guild")]
    #[description_localized("en-US", "The guild id (a user or a guild)")]
    #[max_length = 20]
    guild: Option<String>,
    #[rename = "하루"]
    #[description = "하루 횟수 (0: 제한 없음)"]
    #[name_localized("en-US", "daily")]
    #[description_localized("en-US", "Requests per day (0: no limit)")]
    #[min = 0]
    #[max = 100000]
    daily: Option<u32>,
    #[rename = "대기"]
    #[description = "다음 요청까지 기다릴 초 (사용자만, 0: 없음)"]
    #[name_localized("en-US", "cooldown")]
    #[description_localized("en-US", "Seconds between two requests (users only; 0: none)")]
    #[min = 0]
    #[max = 86400]
    cooldown: Option<u32>,
) -> Result<(), Error> {
    let Some((scope, who, ledger)) = prepare(ctx, user.as_ref(), guild.as_deref()).await? else {
        return Ok(());
    };
    if daily.is_none() && cooldown.is_none() {
        return respond::ephemeral(ctx, view::OVERRIDE_EMPTY, Answered::Refused("input")).await;
    }
    if matches!(scope, Scope::Guild(_)) && cooldown.is_some() {
        return respond::ephemeral(ctx, view::GUILD_HAS_NO_COOLDOWN, Answered::Refused("input"))
            .await;
    }
    respond::defer_ephemeral(ctx).await?;
    let cmd = command.0 .0;
    let stored = keyshard_ledger::set_override(
        ledger.pool(),
        ledger_scope(scope),
        cmd.as_str(),
        daily,
        cooldown,
        ctx.author().id.get(),
    )
    .await;
    let text = match stored {
        Ok(row) => {
            let o = Override {
                daily: row.daily,
                cooldown_secs: row.cooldown_secs,
            };
            if let Err(e) = ctx.data().quotas.cache_override(scope, cmd, o).await {
                // Postgres has it; the next reload of the cache (at most a minute) brings it.
                tracing::warn!(error = %e, "quota override stored but not cached yet");
            }
            format!(
                "{}\n{}",
                view::override_set(&who),
                view::override_line(cmd, row.daily, row.cooldown_secs)
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "quota override not stored");
            view::OVERRIDE_STORE_FAILED.to_owned()
        }
    };
    respond::fill_deferred(ctx, text, Answered::Ok).await
}

/// 설정된 한도를 보여줍니다.
#[poise::command(
    slash_command,
    rename = "보기",
    name_localized("en-US", "show"),
    description_localized("en-US", "Show the overrides of a user or a guild")
)]
pub async fn show(
    ctx: Context<'_>,
    #[rename = "사용자"]
    #[description = "대상 사용자 (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "user")]
    #[description_localized("en-US", "The user (a user or a guild)")]
    user: Option<serenity::User>,
    #[rename = "서버"]
    #[description = "대상 서버 ID (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "guild")]
    #[description_localized("en-US", "The guild id (a user or a guild)")]
    #[max_length = 20]
    guild: Option<String>,
) -> Result<(), Error> {
    let Some((scope, who, ledger)) = prepare(ctx, user.as_ref(), guild.as_deref()).await? else {
        return Ok(());
    };
    respond::defer_ephemeral(ctx).await?;
    let text = match keyshard_ledger::list_overrides(ledger.pool(), Some(ledger_scope(scope))).await
    {
        Ok(rows) if rows.is_empty() => view::no_overrides(&who),
        Ok(rows) => {
            let lines: Vec<String> = rows
                .iter()
                .filter_map(|r| {
                    QuotaCommand::parse(&r.command)
                        .map(|c| view::override_line(c, r.daily, r.cooldown_secs))
                })
                .collect();
            format!("{who}\n{}", lines.join("\n"))
        }
        Err(e) => {
            tracing::warn!(error = %e, "quota overrides not read");
            replies::usage::LEDGER_UNAVAILABLE.to_owned()
        }
    };
    respond::fill_deferred(ctx, text, Answered::Ok).await
}

/// 설정된 한도를 지우고 기본값으로 돌립니다.
#[poise::command(
    slash_command,
    rename = "해제",
    name_localized("en-US", "clear"),
    description_localized("en-US", "Clear overrides (back to the defaults)")
)]
pub async fn clear(
    ctx: Context<'_>,
    #[rename = "사용자"]
    #[description = "대상 사용자 (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "user")]
    #[description_localized("en-US", "The user (a user or a guild)")]
    user: Option<serenity::User>,
    #[rename = "서버"]
    #[description = "대상 서버 ID (사용자나 서버 중 하나)"]
    #[name_localized("en-US", "guild")]
    #[description_localized("en-US", "The guild id (a user or a guild)")]
    #[max_length = 20]
    guild: Option<String>,
    #[rename = "명령"]
    #[description = "이 명령만 (기본: 전부)"]
    #[name_localized("en-US", "command")]
    #[description_localized("en-US", "Only this command (default: all)")]
    command: Option<Choice<LimitedCommand>>,
) -> Result<(), Error> {
    let Some((scope, who, ledger)) = prepare(ctx, user.as_ref(), guild.as_deref()).await? else {
        return Ok(());
    };
    respond::defer_ephemeral(ctx).await?;
    let only = command.map(|c| c.0 .0);
    let cleared = keyshard_ledger::clear_overrides(
        ledger.pool(),
        ledger_scope(scope),
        only.map(|c| c.as_str()),
    )
    .await;
    let text = match cleared {
        Ok(n) => {
            for cmd in only.map_or(QuotaCommand::ALL.to_vec(), |c| vec![c]) {
                if let Err(e) = ctx
                    .data()
                    .quotas
                    .cache_override(scope, cmd, Override::default())
                    .await
                {
                    tracing::warn!(error = %e, "quota override cleared but still cached");
                }
            }
            view::override_cleared(&who, n)
        }
        Err(e) => {
            tracing::warn!(error = %e, "quota overrides not cleared");
            view::OVERRIDE_STORE_FAILED.to_owned()
        }
    };
    respond::fill_deferred(ctx, text, Answered::Ok).await
}

//! `/사용량 [사용자] [서버] [순위] [기간]` (`/usage`): usage from the ledger. Anyone sees their
//! own usage today and this month (in `QUOTA_TIMEZONE`); an admin may also ask for another
//! user, a guild (by id), the whole cluster, or the top users, guilds, commands, providers
//! and keys, over the last day, week or month, with the estimated cost.
//!
//! The reply is deferred (ephemeral) first: a read takes milliseconds, but a Postgres that is
//! slow or down must not make the interaction miss Discord's 3 s window.

use std::time::Duration;

use keyshard_ledger::{Dimension, Rank, Span, UsageFilter};
use keyshard_types::Choices;
use poise::serenity_prelude as serenity;

use super::admin::is_admin;
use super::choice::Choice;
use crate::clock::unix_ms;
use crate::context::{Answered, Context, Error};
use crate::replies::usage as view;
use crate::respond;

/// How many groups a ranking shows: an embed stays readable, and the CLI shows them all.
const TOP_N: usize = 10;

/// The period of an admin view, counted back from now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    fn length(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Period::Day => DAY,
            Period::Week => 7 * DAY,
            Period::Month => 30 * DAY,
        })
    }
}

impl Choices for Period {
    const CHOICES: &'static [Period] = &[Period::Day, Period::Week, Period::Month];

    fn as_str(self) -> &'static str {
        match self {
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Period::Day => "하루",
            Period::Week => "일주일",
            Period::Month => "한 달",
        }
    }
}

/// What an admin ranking is by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranking(pub Dimension);

impl Choices for Ranking {
    const CHOICES: &'static [Ranking] = &[
        Ranking(Dimension::User),
        Ranking(Dimension::Guild),
        Ranking(Dimension::Command),
        Ranking(Dimension::Provider),
        Ranking(Dimension::Key),
    ];

    fn as_str(self) -> &'static str {
        self.0.as_str()
    }

    fn label(self) -> &'static str {
        view::dimension(self.0)
    }
}

/// 사용량과 예상 비용을 보여줍니다. (다른 사용자·서버·순위는 관리자)
///
/// Long because poise reads the options from this signature (four annotated parameters) and
/// the body is a flat choice between the caller's own view and an admin's.
#[poise::command(
    slash_command,
    rename = "사용량",
    name_localized("en-US", "usage"),
    description_localized(
        "en-US",
        "Your usage and its estimated cost (other users, guilds and rankings: admins)"
    )
)]
pub async fn usage(
    ctx: Context<'_>,
    #[rename = "사용자"]
    #[description = "볼 사용자 (기본: 나, 다른 사용자는 관리자만)"]
    #[name_localized("en-US", "user")]
    #[description_localized("en-US", "Whose usage (default: yours; others: admins)")]
    user: Option<serenity::User>,
    #[rename = "서버"]
    #[description = "볼 서버 ID (관리자)"]
    #[name_localized("en-US", "guild")]
    #[description_localized("en-US", "A guild id (admins)")]
    #[max_length = 20]
    guild: Option<String>,
    #[rename = "순위"]
    #[description = "가장 많이 쓴 순위 (관리자)"]
    #[name_localized("en-US", "top")]
    #[description_localized(
        "en-US",
        "Rank the heaviest users, guilds, commands, providers or keys (admins)"
    )]
    top: Option<Choice<Ranking>>,
    #[rename = "기간"]
    #[description = "기간 (관리자, 기본: 하루)"]
    #[name_localized("en-US", "period")]
    #[description_localized("en-US", "Over the last day, week or month (admins; default: day)")]
    period: Option<Choice<Period>>,
) -> Result<(), Error> {
    let data = ctx.data();
    let me = ctx.author().id;
    let others = user.as_ref().is_some_and(|u| u.id != me)
        || guild.is_some()
        || top.is_some()
        || period.is_some();
    if others && !is_admin(ctx) {
        return respond::ephemeral(ctx, view::ADMIN_OPTIONS, Answered::Refused("not_admin")).await;
    }
    let Some(ledger) = data.ledger.clone() else {
        return respond::ephemeral(ctx, view::LEDGER_OFF, Answered::Failed("ledger_off")).await;
    };
    let guild = match guild.as_deref().map(str::trim).map(str::parse::<u64>) {
        None => None,
        Some(Ok(g)) => Some(g),
        Some(Err(_)) => {
            return respond::ephemeral(ctx, view::BAD_GUILD, Answered::Refused("input")).await
        }
    };
    respond::defer_ephemeral(ctx).await?;
    let pool = ledger.pool();
    let now = unix_ms();
    let raw_kept = Some(ledger.retention().raw_kept_since(now));
    let named = user;

    let embed = match (top, guild, period) {
        // One user's today and this month: their own, or the one an admin named.
        (None, None, None) => {
            let target = named.unwrap_or_else(|| ctx.author().clone());
            let tz = &data.config.quota_timezone;
            keyshard_ledger::user_usage(pool, target.id.get(), now, tz, raw_kept)
                .await
                .map(|u| view::user_view(&target.name, &u, tz))
        }
        // An admin's view over a period: a ranking, or sums for a user, a guild or everyone.
        (top, guild, period) => {
            let period = period.map_or(Period::Day, |p| p.0);
            let span = Span {
                since_ms: now.saturating_sub(period.length().as_millis() as u64),
                until_ms: now + 1,
                raw_kept_since_ms: raw_kept,
            };
            let filter = UsageFilter {
                user: named.as_ref().map(|u| u.id.get()),
                guild,
                ..UsageFilter::default()
            };
            match top {
                Some(Choice(Ranking(by))) => {
                    keyshard_ledger::top(pool, &span, by, &filter, TOP_N, Rank::Cost)
                        .await
                        .map(|lines| view::top_view(by, period.label(), &lines))
                }
                None => {
                    let subject = match (&named, guild) {
                        (Some(u), _) => format!("{} 님", u.name),
                        (None, Some(g)) => format!("서버 {g}"),
                        (None, None) => "클러스터 전체".to_owned(),
                    };
                    keyshard_ledger::totals(pool, &span, &filter)
                        .await
                        .map(|t| view::span_view(&subject, period.label(), &t))
                }
            }
        }
    };
    match embed {
        Ok(embed) => respond::fill_deferred_embed(ctx, embed).await,
        Err(e) => {
            tracing::warn!(error = %e, "usage read failed");
            let text = match e {
                keyshard_ledger::LedgerError::InvalidTimezone(_) => {
                    "⚠️ QUOTA_TIMEZONE에 설정된 시간대를 데이터베이스가 알지 못해요. 관리자에게 알려 주세요."
                }
                _ => view::LEDGER_UNAVAILABLE,
            };
            respond::fill_deferred(ctx, text, Answered::Failed("ledger_unavailable")).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_send_stable_strings_and_show_korean() {
        assert_eq!(Period::from_choice("week"), Some(Period::Week));
        assert_eq!(Period::Week.label(), "일주일");
        assert_eq!(Period::Month.length(), Duration::from_secs(30 * 86_400));
        assert_eq!(Ranking::from_choice("key"), Some(Ranking(Dimension::Key)));
        assert_eq!(Ranking(Dimension::Guild).label(), "서버");
        assert!(Ranking::CHOICES.iter().all(|r| r.0 != Dimension::Instance));
    }
}

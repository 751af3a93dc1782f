//! The quota texts: one wording per rule for a refusal (which limit, and when it resets or the
//! cooldown ends), `/한도`'s answers, and the remaining-limits lines of `/사용량`.
//!
//! Times are Discord timestamps (`<t:…>`), which every client shows in its own reader's zone;
//! the reset is named as midnight in `QUOTA_TIMEZONE` too, since that is the rule.

use keyshard_routing::{Limits, QuotaCommand, Remaining, Rule};

/// Every quota refusal starts with this mark: the simulator tells a refusal from an error
/// (`⚠️`) and from an answer by it, together with the ephemeral flag.
pub const REFUSAL_MARK: &str = "🚫";

/// The command as users know it.
pub fn command_ko(c: QuotaCommand) -> &'static str {
    match c {
        QuotaCommand::Chat => "채팅",
        QuotaCommand::Image => "이미지",
        QuotaCommand::Video => "비디오",
    }
}

/// A refusal by `rule` of `command` (limit `limit`: a count, or the cooldown in seconds) until
/// `until_ms`; the day resets at midnight in `zone`.
pub fn refused(command: QuotaCommand, rule: Rule, limit: u32, until_ms: u64, zone: &str) -> String {
    let secs = until_ms.div_ceil(1000);
    let cmd = command_ko(command);
    match rule {
        Rule::UserDaily => format!(
            "{REFUSAL_MARK} 오늘의 /{cmd} 사용 한도({limit}회)를 모두 썼어요. \
             <t:{secs}:f>(<t:{secs}:R>, {zone} 자정)에 초기화돼요."
        ),
        Rule::GuildDaily => format!(
            "{REFUSAL_MARK} 이 서버의 오늘 /{cmd} 사용 한도({limit}회)를 모두 썼어요. \
             <t:{secs}:f>(<t:{secs}:R>, {zone} 자정)에 초기화돼요."
        ),
        Rule::Cooldown => format!(
            "{REFUSAL_MARK} /{cmd}는 {limit}초에 한 번만 쓸 수 있어요. \
             <t:{secs}:T>(<t:{secs}:R>)부터 다시 쓸 수 있어요."
        ),
    }
}

/// The class a refusal is recorded under in the ledger (`error_class`).
pub fn ledger_class(rule: Rule) -> &'static str {
    match rule {
        Rule::UserDaily => "quota_user_daily",
        Rule::GuildDaily => "quota_guild_daily",
        Rule::Cooldown => "quota_cooldown",
    }
}

/// `/사용량`'s line for one command: what is left today and the cooldown.
pub fn remaining_line(c: QuotaCommand, limits: Limits, r: Remaining) -> String {
    let mut parts = Vec::new();
    match r.user_daily {
        Some(n) => parts.push(format!("오늘 {n}/{}회 남음", limits.user_daily)),
        None => parts.push("하루 한도 없음".to_owned()),
    }
    if let Some(n) = r.guild_daily {
        parts.push(format!("서버 {n}/{}회 남음", limits.guild_daily));
    }
    if limits.cooldown_secs > 0 {
        if r.cooldown_left_ms > 0 {
            parts.push(format!("대기 {}초 남음", r.cooldown_left_ms.div_ceil(1000)));
        } else {
            parts.push(format!("대기 {}초", limits.cooldown_secs));
        }
    }
    format!("/{}: {}", command_ko(c), parts.join(" · "))
}

/// The refusals of a statistics window by rule, for `/로드밸런서` and `/성능`.
pub fn refusals_line(by_rule: &std::collections::BTreeMap<String, u64>) -> String {
    let n = |rule: Rule| by_rule.get(rule.as_str()).copied().unwrap_or(0);
    format!(
        "하루 한도 {} · 서버 한도 {} · 대기 시간 {}",
        n(Rule::UserDaily),
        n(Rule::GuildDaily),
        n(Rule::Cooldown)
    )
}

/// `/사용량` for an admin or an exempt member.
pub const EXEMPT: &str = "관리자 또는 예외 역할: 한도 없음";

/// `/사용량` when the counters cannot be read.
pub const STANDING_UNAVAILABLE: &str = "지금은 남은 한도를 확인할 수 없어요.";

/// `/한도` without a ledger: overrides are stored in Postgres.
pub const OVERRIDES_NEED_LEDGER: &str =
    "⚠️ 한도 설정은 사용 기록 데이터베이스(DATABASE_URL)가 있어야 쓸 수 있어요.";
/// `/한도` names neither or both of a user and a guild.
pub const ONE_TARGET: &str = "⚠️ 사용자나 서버 ID 중 하나만 골라 주세요.";
/// `/한도 설정` without any value.
pub const OVERRIDE_EMPTY: &str = "⚠️ 하루 횟수나 대기 시간 중 하나는 입력해 주세요.";
/// `/한도` on a guild with a cooldown (cooldowns are per user).
pub const GUILD_HAS_NO_COOLDOWN: &str =
    "⚠️ 대기 시간은 사용자에게만 설정할 수 있어요. 서버에는 하루 횟수만 설정해 주세요.";
pub const OVERRIDE_STORE_FAILED: &str = "⚠️ 한도를 저장하지 못했어요. 잠시 후 다시 시도해 주세요.";

/// Whom an override is for, as `/한도` shows it.
pub fn target(user: Option<u64>, guild: Option<u64>) -> String {
    match (user, guild) {
        (Some(u), _) => format!("<@{u}>"),
        (None, Some(g)) => format!("서버 {g}"),
        (None, None) => "?".to_owned(),
    }
}

/// One override, as `/한도 보기` lists it (`None`: the default applies).
pub fn override_line(c: QuotaCommand, daily: Option<u32>, cooldown: Option<u32>) -> String {
    let show = |v: Option<u32>, unit: &str| match v {
        Some(0) => "제한 없음".to_owned(),
        Some(n) => format!("{n}{unit}"),
        None => "기본값".to_owned(),
    };
    format!(
        "/{}: 하루 {} · 대기 {}",
        command_ko(c),
        show(daily, "회"),
        show(cooldown, "초")
    )
}

pub fn override_set(who: &str) -> String {
    format!("✅ {who}의 한도를 바꿨어요.")
}

pub fn override_cleared(who: &str, n: u64) -> String {
    format!("✅ {who}의 한도 설정 {n}개를 지웠어요. 이제 기본값이 적용돼요.")
}

pub fn no_overrides(who: &str) -> String {
    format!("{who}에게 따로 설정된 한도가 없어요. 기본값이 적용돼요.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_says_which_limit_and_when() {
        for rule in Rule::ALL {
            let t = refused(
                QuotaCommand::Image,
                rule,
                10,
                1_780_000_000_500,
                "Asia/Seoul",
            );
            assert!(t.starts_with(REFUSAL_MARK), "{t}");
            assert!(t.contains("/이미지"), "{t}");
            assert!(t.contains("<t:1780000001:R>"), "{t}");
            assert!(!t.starts_with(crate::replies::ERROR_PREFIX));
        }
        assert!(refused(QuotaCommand::Chat, Rule::Cooldown, 30, 0, "Asia/Seoul").contains("30초"));
        assert!(refused(QuotaCommand::Chat, Rule::GuildDaily, 5, 0, "Asia/Seoul").contains("서버"));
        assert!(
            refused(QuotaCommand::Chat, Rule::UserDaily, 5, 0, "Asia/Seoul")
                .contains("Asia/Seoul 자정")
        );
    }
}

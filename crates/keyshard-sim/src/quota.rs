//! The simulator's own judgement of the quotas (DESIGN §8, `quota.*` in the report): which
//! answered interactions were refusals and which were accepted, and how many accepted ones
//! went beyond the configured limits — counted from its own tally of what it saw, never
//! from the bot's counters.
//!
//! The limits are read from the instance env the run passes (`--instance-env
//! QUOTA_IMAGE_USER_DAILY=10`, or `--quota image=10`). A refusal is recognised by its shape:
//! a type-4 acknowledgement, ephemeral, whose text starts with the bot's refusal mark `🚫`
//! (an error starts with `⚠️`; a served command defers). An *accepted* interaction is one
//! acknowledged with a deferral whose final answer is not an error: a failed job gives its
//! count back to the user, so it does not count against the limit. All of a run is taken as
//! one quota day (a run that crosses midnight in `QUOTA_TIMEZONE` would overstate
//! `over_limit`).

use std::collections::HashMap;

use serde::Serialize;

use crate::discord::InteractionRecord;

/// The mark every quota refusal starts with (the bot's `replies::quota::REFUSAL_MARK`).
pub const REFUSAL_MARK: &str = "🚫";

/// The commands that quotas apply to: (registered name, env name).
const COMMANDS: [(&str, &str); 3] = [("채팅", "CHAT"), ("이미지", "IMAGE"), ("비디오", "VIDEO")];

/// Daily limits per command, as the run configured them (0: none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuotaLimits {
    /// Registered command name → accepted per user per day.
    pub user_daily: HashMap<String, u64>,
    /// Registered command name → accepted per guild per day.
    pub guild_daily: HashMap<String, u64>,
}

impl QuotaLimits {
    /// The limits from `QUOTA_<CMD>_USER_DAILY` / `_GUILD_DAILY` in the instance env (the
    /// last value of a name wins, as in the instances' environment).
    pub fn from_env(env: &[(String, String)]) -> QuotaLimits {
        let mut out = QuotaLimits::default();
        for (name, env_name) in COMMANDS {
            let get = |suffix: &str| {
                let key = format!("QUOTA_{env_name}_{suffix}");
                env.iter()
                    .rev()
                    .find(|(k, _)| *k == key)
                    .and_then(|(_, v)| v.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let (u, g) = (get("USER_DAILY"), get("GUILD_DAILY"));
            if u > 0 {
                out.user_daily.insert(name.to_owned(), u);
            }
            if g > 0 {
                out.guild_daily.insert(name.to_owned(), g);
            }
        }
        out
    }

    pub fn is_empty(&self) -> bool {
        self.user_daily.is_empty() && self.guild_daily.is_empty()
    }
}

/// `quota.*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct QuotaReport {
    /// Interactions of a limited command that were served (deferred, answered, not an error).
    pub accepted: u64,
    /// Interactions answered with a quota refusal.
    pub refused: u64,
    /// Served but failed (an error answer): refunded, so not counted against the limit.
    pub failed: u64,
    /// Accepted interactions beyond a configured daily limit, per user (and per guild) per
    /// command, from the simulator's own tally. Must be 0.
    pub over_limit: u64,
    /// The limits judged against.
    pub limits: QuotaLimits,
}

/// Whether the record is a quota refusal.
pub fn is_refusal(r: &InteractionRecord) -> bool {
    r.ack().is_some_and(|a| {
        a.kind == 4
            && a.ephemeral
            && a.content
                .as_deref()
                .is_some_and(|c| c.starts_with(REFUSAL_MARK))
    })
}

/// Judges `records` against `limits`.
pub fn judge(records: &[InteractionRecord], limits: &QuotaLimits) -> QuotaReport {
    let mut report = QuotaReport {
        limits: limits.clone(),
        ..QuotaReport::default()
    };
    let mut per_user: HashMap<(u64, &str), u64> = HashMap::new();
    let mut per_guild: HashMap<(u64, &str), u64> = HashMap::new();
    for r in records {
        if !COMMANDS.iter().any(|(n, _)| *n == r.command) {
            continue;
        }
        if is_refusal(r) {
            report.refused += 1;
            continue;
        }
        let deferred = r.ack().is_some_and(|a| a.kind == 5);
        let Some(done) = r.completion() else { continue };
        if !deferred {
            continue;
        }
        if done.failed {
            report.failed += 1;
            continue;
        }
        report.accepted += 1;
        *per_user.entry((r.user_id, &r.command)).or_default() += 1;
        if let Some(g) = r.guild_id {
            *per_guild.entry((g, &r.command)).or_default() += 1;
        }
    }
    let over = |counts: &HashMap<(u64, &str), u64>, limits: &HashMap<String, u64>| -> u64 {
        counts
            .iter()
            .filter_map(|((_, cmd), n)| limits.get(*cmd).map(|l| n.saturating_sub(*l)))
            .sum()
    };
    report.over_limit = over(&per_user, &limits.user_daily) + over(&per_guild, &limits.guild_daily);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_come_from_the_instance_env() {
        let env = vec![
            ("QUOTA_IMAGE_USER_DAILY".to_owned(), "10".to_owned()),
            ("QUOTA_VIDEO_GUILD_DAILY".to_owned(), "3".to_owned()),
            ("QUOTA_IMAGE_USER_DAILY".to_owned(), "12".to_owned()),
            ("QUOTA_CHAT_USER_DAILY".to_owned(), "0".to_owned()),
        ];
        let l = QuotaLimits::from_env(&env);
        assert_eq!(l.user_daily.get("이미지"), Some(&12));
        assert_eq!(l.guild_daily.get("비디오"), Some(&3));
        assert!(!l.user_daily.contains_key("채팅"));
        assert!(QuotaLimits::from_env(&[]).is_empty());
    }
}

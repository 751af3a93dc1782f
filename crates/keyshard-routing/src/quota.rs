//! Quota policy (DESIGN §8): per user and per guild, per command, a daily count and a per-user
//! cooldown; who is never limited; the day boundary in `QUOTA_TIMEZONE`; and the verdict for
//! one interaction given what has been used. Pure: the time is a parameter, the counts come
//! from the caller (Redis's script in `keyshard-cluster::quota`, or an instance's own counters
//! while Redis is away), and the same [`judge`] decides for both.

use std::fmt;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

/// A command that quotas apply to: the provider-backed ones, which cost money and key time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum QuotaCommand {
    Chat,
    Image,
    Video,
}

impl QuotaCommand {
    pub const ALL: [QuotaCommand; 3] =
        [QuotaCommand::Chat, QuotaCommand::Image, QuotaCommand::Video];

    /// The stable English name (as the ledger and the statistics spell the command).
    pub fn as_str(self) -> &'static str {
        match self {
            QuotaCommand::Chat => "chat",
            QuotaCommand::Image => "image",
            QuotaCommand::Video => "video",
        }
    }

    pub fn parse(s: &str) -> Option<QuotaCommand> {
        QuotaCommand::ALL.into_iter().find(|c| c.as_str() == s)
    }

    fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for QuotaCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits of one command. 0 means no limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// Seconds between two accepted requests of one user.
    pub cooldown_secs: u32,
    /// Accepted requests per user per day.
    pub user_daily: u32,
    /// Accepted requests per guild per day (all its users together).
    pub guild_daily: u32,
}

impl Limits {
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// Which limit refused a request; also the `rule` label of `keyshard_quota_refusals_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    UserDaily,
    GuildDaily,
    Cooldown,
}

impl Rule {
    pub const ALL: [Rule; 3] = [Rule::UserDaily, Rule::GuildDaily, Rule::Cooldown];

    pub fn as_str(self) -> &'static str {
        match self {
            Rule::UserDaily => "user_daily",
            Rule::GuildDaily => "guild_daily",
            Rule::Cooldown => "cooldown",
        }
    }

    pub fn parse(s: &str) -> Option<Rule> {
        Rule::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// The cluster's quota rules: defaults per command (from env), and who is never limited.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QuotaRules {
    pub limits: [Limits; 3],
    /// `ADMIN_USER_IDS`: never limited.
    pub admins: Vec<u64>,
    /// `QUOTA_EXEMPT_ROLE_ID`: members with this role are never limited.
    pub exempt_role: Option<u64>,
}

impl QuotaRules {
    pub fn limits(&self, command: QuotaCommand) -> Limits {
        self.limits[command.index()]
    }

    pub fn set_limits(&mut self, command: QuotaCommand, limits: Limits) {
        self.limits[command.index()] = limits;
    }

    /// Whether the asker is never limited: an admin, or a member with the exempt role.
    pub fn is_exempt(&self, user: u64, roles: &[u64]) -> bool {
        self.admins.contains(&user) || self.exempt_role.is_some_and(|r| roles.contains(&r))
    }
}

/// "Today" in the quota's time zone: its date (the daily counters' name) and its bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Day {
    /// `YYYY-MM-DD` in the zone.
    pub date: String,
    /// Unix ms of today's midnight in the zone.
    pub start_ms: u64,
    /// Unix ms of the next midnight in the zone: when the daily counts reset.
    pub next_ms: u64,
}

/// Why a time zone could not be used.
#[derive(Debug)]
pub struct ZoneError(pub String);

impl std::error::Error for ZoneError {}

impl fmt::Display for ZoneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown time zone {:?}", self.0)
    }
}

/// The quota's time zone, looked up once (from the bundled tz database).
#[derive(Clone, Debug)]
pub struct QuotaZone {
    name: String,
    tz: TimeZone,
}

impl QuotaZone {
    pub fn new(name: &str) -> Result<QuotaZone, ZoneError> {
        let tz = TimeZone::get(name).map_err(|_| ZoneError(name.to_owned()))?;
        Ok(QuotaZone {
            name: name.to_owned(),
            tz,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Today at `now_ms` in this zone. A day whose midnight does not exist (a DST gap at
    /// 00:00) starts at the first instant of that date.
    pub fn day(&self, now_ms: u64) -> Day {
        let ts = Timestamp::from_millisecond(now_ms.min(i64::MAX as u64) as i64)
            .unwrap_or(Timestamp::UNIX_EPOCH);
        let zdt = ts.to_zoned_datetime(self.tz.clone());
        let date: Date = zdt.date();
        let start = zdt
            .start_of_day()
            .map(|z| z.timestamp().as_millisecond())
            .unwrap_or(now_ms as i64);
        let next = date
            .tomorrow()
            .ok()
            .and_then(|d| d.to_zoned_datetime(self.tz.clone()).ok())
            .and_then(|z| z.start_of_day().ok())
            .map(|z| z.timestamp().as_millisecond())
            // The last representable day: never resets, which is as good as any answer.
            .unwrap_or(i64::MAX);
        Day {
            date: date.to_string(),
            start_ms: start.max(0) as u64,
            next_ms: next.max(0) as u64,
        }
    }
}

/// What one interaction is checked against: the limits that apply to it (defaults with any
/// admin override already merged) and today's bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub command: QuotaCommand,
    pub limits: Limits,
    /// The guild's daily limit applies only inside a guild.
    pub in_guild: bool,
    pub day: Day,
}

/// What has been used when an interaction asks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Used {
    /// Accepted requests of this user and command today.
    pub user_today: u64,
    /// Accepted requests of this guild and command today.
    pub guild_today: u64,
    /// When the user's cooldown for this command ends (Unix ms), if it is running.
    pub cooldown_until_ms: Option<u64>,
}

/// The answer for one interaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Within every limit: the caller reserves (counts +1, starts the cooldown).
    Admit,
    /// Refused by `rule` (limit `limit`: a count, or the cooldown in seconds) until `until_ms`.
    Refuse {
        rule: Rule,
        limit: u32,
        until_ms: u64,
    },
}

/// The verdict for `plan` given `used`, at `now_ms`. The cooldown is checked first (it ends
/// soonest, so it is the most useful thing to tell), then the user's day, then the guild's.
///
/// The Redis script in `keyshard-cluster::quota` applies the same order and comparisons; the
/// cluster crate's tests run both over the same table.
pub fn judge(plan: &Plan, used: Used, now_ms: u64) -> Verdict {
    let l = plan.limits;
    if l.cooldown_secs > 0 {
        if let Some(until) = used.cooldown_until_ms.filter(|u| *u > now_ms) {
            return Verdict::Refuse {
                rule: Rule::Cooldown,
                limit: l.cooldown_secs,
                until_ms: until,
            };
        }
    }
    if l.user_daily > 0 && used.user_today >= u64::from(l.user_daily) {
        return Verdict::Refuse {
            rule: Rule::UserDaily,
            limit: l.user_daily,
            until_ms: plan.day.next_ms,
        };
    }
    if plan.in_guild && l.guild_daily > 0 && used.guild_today >= u64::from(l.guild_daily) {
        return Verdict::Refuse {
            rule: Rule::GuildDaily,
            limit: l.guild_daily,
            until_ms: plan.day.next_ms,
        };
    }
    Verdict::Admit
}

/// An admin's override of one command's limits for one user or guild. `None` fields keep the
/// default; `Some(0)` lifts that limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Override {
    pub cooldown_secs: Option<u32>,
    pub daily: Option<u32>,
}

/// The limits after a user's and a guild's overrides: a user override sets the user's daily
/// count and cooldown, a guild override the guild's daily count.
pub fn merge(defaults: Limits, user: Override, guild: Override) -> Limits {
    Limits {
        cooldown_secs: user.cooldown_secs.unwrap_or(defaults.cooldown_secs),
        user_daily: user.daily.unwrap_or(defaults.user_daily),
        guild_daily: guild.daily.unwrap_or(defaults.guild_daily),
    }
}

/// What is left for a user today, for `/사용량`: `None` where there is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remaining {
    pub user_daily: Option<u64>,
    pub guild_daily: Option<u64>,
    pub cooldown_left_ms: u64,
}

pub fn remaining(plan: &Plan, used: Used, now_ms: u64) -> Remaining {
    let l = plan.limits;
    let left = |limit: u32, used: u64| (limit > 0).then(|| u64::from(limit).saturating_sub(used));
    Remaining {
        user_daily: left(l.user_daily, used.user_today),
        guild_daily: if plan.in_guild {
            left(l.guild_daily, used.guild_today)
        } else {
            None
        },
        cooldown_left_ms: if l.cooldown_secs > 0 {
            used.cooldown_until_ms
                .map_or(0, |u| u.saturating_sub(now_ms))
        } else {
            0
        },
    }
}

/// The quota drift: for every (user, command) counter, the absolute difference between what
/// it reserved and the ledger's answered (ok) rows of the same interactions, summed. A user
/// without a counter (exempt, or never limited) is not compared. The goal is 0.
pub fn drift<K: Eq + std::hash::Hash>(
    reserved: &std::collections::HashMap<K, u64>,
    answered: &std::collections::HashMap<K, u64>,
) -> u64 {
    reserved
        .iter()
        .map(|(k, n)| n.abs_diff(answered.get(k).copied().unwrap_or(0)))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u64 {
        s.parse::<Timestamp>().unwrap().as_millisecond() as u64
    }

    #[test]
    fn the_day_turns_at_midnight_in_seoul_not_utc() {
        let z = QuotaZone::new("Asia/Seoul").unwrap();
        // 14:59:59.999 UTC is 23:59:59.999 KST on the 30th.
        let before = z.day(ms("2026-11-30T14:59:59.999Z"));
        assert_eq!(before.date, "2026-11-30");
        assert_eq!(before.start_ms, ms("2026-11-29T15:00:00Z"));
        assert_eq!(before.next_ms, ms("2026-11-30T15:00:00Z"));
        let after = z.day(ms("2026-11-30T15:00:00Z"));
        assert_eq!(after.date, "2026-12-01");
        assert_eq!(after.start_ms, before.next_ms);
        assert_eq!(after.next_ms - after.start_ms, 86_400_000);
    }

    #[test]
    fn a_dst_day_is_23_or_25_hours_long() {
        let z = QuotaZone::new("America/New_York").unwrap();
        let spring = z.day(ms("2026-03-08T12:00:00Z"));
        assert_eq!(spring.next_ms - spring.start_ms, 23 * 3_600_000);
        let fall = z.day(ms("2026-11-01T12:00:00Z"));
        assert_eq!(fall.next_ms - fall.start_ms, 25 * 3_600_000);
    }

    #[test]
    fn an_unknown_zone_is_an_error() {
        assert!(QuotaZone::new("Mars/Olympus").is_err());
    }

    fn plan(limits: Limits) -> Plan {
        let z = QuotaZone::new("Asia/Seoul").unwrap();
        Plan {
            command: QuotaCommand::Image,
            limits,
            in_guild: true,
            day: z.day(ms("2026-11-30T03:00:00Z")),
        }
    }

    #[test]
    fn judge_table() {
        let now = ms("2026-11-30T03:00:00Z");
        let l = Limits {
            cooldown_secs: 30,
            user_daily: 10,
            guild_daily: 50,
        };
        let p = plan(l);
        let next = p.day.next_ms;
        let u = |user_today, guild_today, cd: Option<u64>| Used {
            user_today,
            guild_today,
            cooldown_until_ms: cd,
        };
        let table = [
            (u(0, 0, None), Verdict::Admit),
            (u(9, 49, None), Verdict::Admit),
            // A cooldown that ended is no cooldown.
            (u(0, 0, Some(now)), Verdict::Admit),
            (
                u(10, 0, None),
                Verdict::Refuse {
                    rule: Rule::UserDaily,
                    limit: 10,
                    until_ms: next,
                },
            ),
            (
                u(3, 50, None),
                Verdict::Refuse {
                    rule: Rule::GuildDaily,
                    limit: 50,
                    until_ms: next,
                },
            ),
            (
                u(10, 50, Some(now + 5_000)),
                Verdict::Refuse {
                    rule: Rule::Cooldown,
                    limit: 30,
                    until_ms: now + 5_000,
                },
            ),
        ];
        for (used, want) in table {
            assert_eq!(judge(&p, used, now), want, "{used:?}");
        }
        // Outside a guild the guild's limit does not apply; 0 means no limit.
        let mut dm = plan(l);
        dm.in_guild = false;
        assert_eq!(judge(&dm, u(3, 50, None), now), Verdict::Admit);
        assert_eq!(
            judge(
                &plan(Limits::default()),
                u(1_000, 1_000, Some(now + 1)),
                now
            ),
            Verdict::Admit
        );
    }

    #[test]
    fn overrides_replace_only_what_they_name() {
        let d = Limits {
            cooldown_secs: 30,
            user_daily: 10,
            guild_daily: 50,
        };
        let user = Override {
            cooldown_secs: None,
            daily: Some(0),
        };
        let guild = Override {
            cooldown_secs: None,
            daily: Some(5),
        };
        assert_eq!(
            merge(d, user, guild),
            Limits {
                cooldown_secs: 30,
                user_daily: 0,
                guild_daily: 5
            }
        );
        assert_eq!(merge(d, Override::default(), Override::default()), d);
    }

    #[test]
    fn admins_and_the_exempt_role_are_never_limited() {
        let rules = QuotaRules {
            admins: vec![7],
            exempt_role: Some(99),
            ..Default::default()
        };
        assert!(rules.is_exempt(7, &[]));
        assert!(rules.is_exempt(8, &[1, 99]));
        assert!(!rules.is_exempt(8, &[1]));
    }

    #[test]
    fn drift_sums_the_differences_of_counted_users_only() {
        use std::collections::HashMap;
        let reserved: HashMap<(u64, &str), u64> =
            [((1, "image"), 3), ((2, "image"), 1), ((3, "chat"), 2)].into();
        // User 9 has rows but no counter (exempt): not drift.
        let answered: HashMap<(u64, &str), u64> =
            [((1, "image"), 3), ((2, "image"), 2), ((9, "image"), 5)].into();
        assert_eq!(drift(&reserved, &answered), 1 + 2);
        assert_eq!(drift(&reserved, &reserved), 0);
    }

    #[test]
    fn remaining_counts_down_and_saturates() {
        let now = ms("2026-11-30T03:00:00Z");
        let p = plan(Limits {
            cooldown_secs: 30,
            user_daily: 10,
            guild_daily: 0,
        });
        let r = remaining(
            &p,
            Used {
                user_today: 12,
                guild_today: 3,
                cooldown_until_ms: Some(now + 4_000),
            },
            now,
        );
        assert_eq!(
            r,
            Remaining {
                user_daily: Some(0),
                guild_daily: None,
                cooldown_left_ms: 4_000
            }
        );
    }
}

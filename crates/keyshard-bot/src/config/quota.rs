//! The quota settings (DESIGN.md §8): limits per command from `QUOTA_<CMD>_*`, who is never
//! limited, the zone whose midnight resets the daily counts, and a test-only clock offset.

use super::Env;

/// The quota settings (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct QuotaConfig {
    /// Defaults per command from `QUOTA_{CHAT,IMAGE,VIDEO}_{COOLDOWN_SECS,USER_DAILY,GUILD_DAILY}`
    /// (0 or unset: no limit), admins (`ADMIN_USER_IDS`) and `QUOTA_EXEMPT_ROLE_ID`.
    pub rules: keyshard_routing::QuotaRules,
    /// `QUOTA_TIMEZONE`, looked up in the bundled tz database.
    pub zone: keyshard_routing::QuotaZone,
    /// `QUOTA_CLOCK_OFFSET_MS`: added to the wall clock for quota decisions only. For tests
    /// (a midnight that comes in two seconds); 0 in production.
    pub clock_offset_ms: i64,
}

impl QuotaConfig {
    /// Whether any limit is set: without one the claim path skips the quota step entirely.
    pub fn any_limit(&self) -> bool {
        self.rules.limits.iter().any(|l| !l.is_unlimited())
    }

    /// The wall clock as the quotas see it.
    pub fn now_ms(&self) -> u64 {
        (crate::clock::unix_ms() as i64)
            .saturating_add(self.clock_offset_ms)
            .max(0) as u64
    }
}

pub(super) fn read_quota(env: &mut Env<'_>, zone: &str, admins: &[u64]) -> QuotaConfig {
    use keyshard_routing::{Limits, QuotaCommand, QuotaRules, QuotaZone};
    let mut rules = QuotaRules {
        admins: admins.to_vec(),
        exempt_role: env.optional_parse::<u64>("QUOTA_EXEMPT_ROLE_ID"),
        ..QuotaRules::default()
    };
    for cmd in QuotaCommand::ALL {
        let name = cmd.as_str().to_ascii_uppercase();
        rules.set_limits(
            cmd,
            Limits {
                cooldown_secs: env.parse(&format!("QUOTA_{name}_COOLDOWN_SECS"), 0),
                user_daily: env.parse(&format!("QUOTA_{name}_USER_DAILY"), 0),
                guild_daily: env.parse(&format!("QUOTA_{name}_GUILD_DAILY"), 0),
            },
        );
    }
    let zone = QuotaZone::new(zone).unwrap_or_else(|e| {
        env.problem(format!(
            "QUOTA_TIMEZONE: {e}; use a name such as Asia/Seoul"
        ));
        QuotaZone::new("Asia/Seoul").expect("Asia/Seoul is in the bundled tz database")
    });
    QuotaConfig {
        rules,
        zone,
        clock_offset_ms: env.parse("QUOTA_CLOCK_OFFSET_MS", 0),
    }
}

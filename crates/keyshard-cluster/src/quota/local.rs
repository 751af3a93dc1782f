//! [`Local`]: the quota counters an instance keeps for itself while Redis fails.

use std::collections::HashMap;

use super::*;

/// This instance's own counters, used while Redis fails: the same rules through the same
/// [`judge`], counted here only. Old days and ended cooldowns are dropped as they pass.
#[derive(Debug, Default)]
pub(super) struct Local {
    /// (day, scope, command) → accepted today.
    pub(super) counts: HashMap<(String, Scope, QuotaCommand), u64>,
    /// (user, command) → cooldown end (Unix ms).
    pub(super) cooldowns: HashMap<(u64, QuotaCommand), u64>,
    /// interaction → (verdict, what it reserved) for idempotence and refunds.
    pub(super) reservations: HashMap<u64, (Verdict, Vec<Taken>)>,
    /// The overrides as last loaded or written by this instance.
    pub(super) overrides: HashMap<(Scope, QuotaCommand), Override>,
}

/// How many local reservations are kept for refunds before the oldest are forgotten: a
/// Redis outage of a few minutes at a busy instance's rate, without growing unbounded.
const LOCAL_RESERVATIONS: usize = 10_000;

impl Local {
    pub(super) fn admit(&mut self, ask: &QuotaAsk) -> Verdict {
        if let Some((v, _)) = self.reservations.get(&ask.interaction_id) {
            return *v;
        }
        let date = &ask.day.date;
        self.counts.retain(|(d, _, _), _| d == date);
        self.cooldowns.retain(|_, until| *until > ask.now_ms);
        let user = Scope::User(ask.user);
        let guild = ask.guild.map(Scope::Guild);
        let ov = |s: Option<Scope>| {
            s.and_then(|s| self.overrides.get(&(s, ask.command)).copied())
                .unwrap_or_default()
        };
        let limits = keyshard_routing::merge(ask.defaults, ov(Some(user)), ov(guild));
        let count = |s: Option<Scope>| {
            s.and_then(|s| self.counts.get(&(date.clone(), s, ask.command)).copied())
                .unwrap_or(0)
        };
        let plan = Plan {
            command: ask.command,
            limits,
            in_guild: guild.is_some(),
            day: ask.day.clone(),
        };
        let used = Used {
            user_today: count(Some(user)),
            guild_today: count(guild),
            cooldown_until_ms: self.cooldowns.get(&(ask.user, ask.command)).copied(),
        };
        let verdict = judge(&plan, used, ask.now_ms);
        let mut taken = Vec::new();
        if verdict == Verdict::Admit {
            for s in [Some(user), guild].into_iter().flatten() {
                let k = (date.clone(), s, ask.command);
                *self.counts.entry(k.clone()).or_default() += 1;
                taken.push(k);
            }
            if limits.cooldown_secs > 0 {
                self.cooldowns.insert(
                    (ask.user, ask.command),
                    ask.now_ms + u64::from(limits.cooldown_secs) * 1000,
                );
            }
        }
        if self.reservations.len() >= LOCAL_RESERVATIONS {
            self.reservations.clear();
        }
        self.reservations
            .insert(ask.interaction_id, (verdict, taken));
        verdict
    }

    pub(super) fn refund(&mut self, interaction_id: u64) -> bool {
        let Some((Verdict::Admit, taken)) = self.reservations.get_mut(&interaction_id) else {
            return false;
        };
        if taken.is_empty() {
            return false;
        }
        for k in taken.drain(..) {
            if let Some(n) = self.counts.get_mut(&k) {
                *n = n.saturating_sub(1);
            }
        }
        true
    }
}

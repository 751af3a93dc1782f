//! The bot's side of the quotas (DESIGN §8): at the claim of a limited command, the one
//! atomic check-and-reserve in Redis (`keyshard_cluster::Quotas::admit`, the policy being
//! `keyshard_routing::quota`), skipped for admins and the exempt role; what a refusal counts
//! (metrics, statistics). The refusal's text is `replies::quota`'s; the refund of a failed
//! job is one call in `work::Worker::finish`.

use keyshard_cluster::{JobKind, QuotaAsk};
use keyshard_routing::{QuotaCommand, Verdict};

use crate::context::Data;

/// The quota command of a job kind.
pub fn command_of(kind: JobKind) -> QuotaCommand {
    match kind {
        JobKind::Chat => QuotaCommand::Chat,
        JobKind::Image => QuotaCommand::Image,
        JobKind::Video => QuotaCommand::Video,
    }
}

/// Who asks: the interaction's user, guild and roles.
pub struct Asker<'a> {
    pub interaction_id: u64,
    pub user: u64,
    pub guild: Option<u64>,
    pub roles: &'a [u64],
}

/// Checks and reserves `command` for `asker`; the verdict (always `Admit` for the exempt, and
/// without any limit or override). A refusal is counted here.
pub async fn admit(data: &Data, asker: &Asker<'_>, command: QuotaCommand) -> Verdict {
    let q = &data.config.quota;
    if q.rules.is_exempt(asker.user, asker.roles) {
        return Verdict::Admit;
    }
    // No default limit and no override known: no round trip on the acknowledgement path.
    if !q.any_limit() && !data.quotas.has_overrides() {
        return Verdict::Admit;
    }
    let now_ms = q.now_ms();
    let ask = QuotaAsk {
        interaction_id: asker.interaction_id,
        user: asker.user,
        guild: asker.guild,
        command,
        defaults: q.rules.limits(command),
        day: q.zone.day(now_ms),
        now_ms,
    };
    let decision = data.quotas.admit(&ask).await;
    if let Verdict::Refuse { rule, .. } = decision.verdict {
        data.metrics.quota_refusals.inc(&[rule.as_str()]);
        data.stats.quota_refused(rule.as_str());
    }
    decision.verdict
}

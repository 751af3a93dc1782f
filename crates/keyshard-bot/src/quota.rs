//! The bot's side of the quotas (DESIGN §8): at the claim of a limited command, the one
//! atomic check-and-reserve in Redis (`keyshard_cluster::Quotas::admit`, the policy being
//! `keyshard_routing::quota`), skipped for admins and the exempt role; what a refusal counts
//! (metrics, statistics). The refusal's text is `replies::quota`'s; the refund of a failed
//! job is one call in `work::Worker::finish`.

use keyshard_cluster::{JobKind, QuotaAsk};
use keyshard_routing::{QuotaCommand, Verdict};

use std::time::Duration;

use crate::context::Data;

/// What the admission leaves of the acknowledgement window for the answer's own trip to
/// Discord (a healthy one takes tens of milliseconds; half a second covers a slow one).
const RESPONSE_MARGIN_MS: u64 = 500;

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
    // The wait may use what is left of Discord's 3 s window, less the time the deferral (or
    // the refusal) needs to reach Discord.
    let deadline = keyshard_routing::ack_deadline_ms(asker.interaction_id);
    let left_ms = deadline
        .saturating_sub(crate::clock::unix_ms())
        .saturating_sub(RESPONSE_MARGIN_MS);
    let budget = Duration::from_millis(left_ms).max(keyshard_cluster::quota::QUOTA_BUDGET);
    let decision = data.quotas.admit(&ask, budget).await;
    if let Verdict::Refuse { rule, .. } = decision.verdict {
        data.metrics.quota_refusals.inc(&[rule.as_str()]);
        data.stats.quota_refused(rule.as_str());
    }
    decision.verdict
}

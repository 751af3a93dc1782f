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

/// `/사용량`'s remaining limits of `user` today (in `guild`), one line per command; the
/// exempt see that they have none. Read from Redis; a failed read says so.
pub async fn remaining_lines(data: &Data, user: u64, guild: Option<u64>, roles: &[u64]) -> String {
    let q = &data.config.quota;
    if q.rules.is_exempt(user, roles) {
        return crate::replies::quota::EXEMPT.to_owned();
    }
    let now = q.now_ms();
    let day = q.zone.day(now);
    match data
        .quotas
        .standing(user, guild, &q.rules.limits, &day, now)
        .await
    {
        Ok(all) => all
            .into_iter()
            .map(|(cmd, st)| {
                let plan = keyshard_routing::Plan {
                    command: cmd,
                    limits: st.limits,
                    in_guild: guild.is_some(),
                    day: day.clone(),
                };
                let left = keyshard_routing::remaining(&plan, st.used, now);
                crate::replies::quota::remaining_line(cmd, st.limits, left)
            })
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => {
            tracing::warn!(error = %e, "quota standing not read");
            crate::replies::quota::STANDING_UNAVAILABLE.to_owned()
        }
    }
}

/// How often the overrides are read from Postgres: the cache in Redis is reloaded from them
/// when Redis lost it (restarted empty), and this instance's own copy (for its local
/// counters, and whether the claim path may skip the script) is refreshed. An override set
/// with `/한도` is written through at once; this only bounds how stale a lost cache can be.
const OVERRIDES_EVERY: Duration = Duration::from_secs(30);

/// How often one instance compares the quota counters with the ledger.
const RECONCILE_EVERY: Duration = Duration::from_secs(60);

/// How long the counters' snapshot waits before it is compared: every interaction counted in
/// it must have finished (a video renders for minutes; a job's deadline is 30 min, but a
/// typical one ends within 5) and its row must be in Postgres (the writer batches every
/// 250 ms, more during an outage). A row not there yet would read as drift.
const RECONCILE_LAG: Duration = Duration::from_secs(10 * 60);

/// The override rows as the cluster's cache holds them.
fn cache_entries(
    rows: &[keyshard_ledger::OverrideRow],
) -> Vec<(
    keyshard_cluster::Scope,
    QuotaCommand,
    keyshard_routing::Override,
)> {
    rows.iter()
        .filter_map(|r| {
            let cmd = QuotaCommand::parse(&r.command)?;
            let scope = match r.scope {
                keyshard_ledger::OverrideScope::User(u) => keyshard_cluster::Scope::User(u),
                keyshard_ledger::OverrideScope::Guild(g) => keyshard_cluster::Scope::Guild(g),
            };
            Some((
                scope,
                cmd,
                keyshard_routing::Override {
                    daily: r.daily,
                    cooldown_secs: r.cooldown_secs,
                },
            ))
        })
        .collect()
}

/// One tick of the overrides loop: reload the Redis cache when it was lost, and refresh this
/// instance's copy.
async fn refresh_overrides(
    quotas: &keyshard_cluster::Quotas,
    ledger: &crate::ledger::Ledger,
) -> Result<(), String> {
    let rows = keyshard_ledger::list_overrides(ledger.pool(), None)
        .await
        .map_err(|e| e.to_string())?;
    let entries = cache_entries(&rows);
    quotas.remember(&entries);
    if !quotas.cache_loaded().await.map_err(|e| e.to_string())? {
        tracing::info!(
            overrides = entries.len(),
            "loading the quota overrides into Redis"
        );
        quotas
            .load_cache(entries)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The counters' snapshot a reconciliation compares once it is old enough.
struct Snapshot {
    taken_ms: u64,
    day: keyshard_routing::Day,
    counts: std::collections::HashMap<(u64, String), u64>,
}

/// One tick of the reconciliation: takes a snapshot of today's counters and, once a snapshot
/// is [`RECONCILE_LAG`] old, compares it with the ledger's answered rows of interactions
/// created today before it was taken; the absolute differences summed are the drift.
/// Only counters are compared (an exempt user has none).
async fn reconcile(
    data: &Data,
    ledger: &crate::ledger::Ledger,
    pending: &tokio::sync::Mutex<std::collections::VecDeque<Snapshot>>,
) -> Result<(), String> {
    let lock_ttl = RECONCILE_EVERY - Duration::from_secs(5);
    if !data
        .quotas
        .reconcile_lock(data.config.instance_id, lock_ttl)
        .await
        .map_err(|e| e.to_string())?
    {
        // Another instance reconciles this minute; its drift is the cluster's. Ours would be
        // stale, so it is not shown.
        pending.lock().await.clear();
        return Ok(());
    }
    let now = data.config.quota.now_ms();
    let day = data.config.quota.zone.day(now);
    let counts = data
        .quotas
        .reserved_today(&day)
        .await
        .map_err(|e| e.to_string())?;
    let mut queue = pending.lock().await;
    queue.push_back(Snapshot {
        taken_ms: now,
        day,
        counts,
    });
    let lag = RECONCILE_LAG.as_millis() as u64;
    let mut ripe = None;
    while queue.front().is_some_and(|s| s.taken_ms + lag <= now) {
        ripe = queue.pop_front();
    }
    drop(queue);
    let Some(snap) = ripe else { return Ok(()) };
    let answered =
        keyshard_ledger::answered_by_user(ledger.pool(), snap.day.start_ms, snap.taken_ms)
            .await
            .map_err(|e| e.to_string())?;
    let drift = keyshard_routing::drift(&snap.counts, &answered);
    if drift > 0 {
        tracing::warn!(
            drift,
            day = %snap.day.date,
            "quota counters differ from the ledger's answered rows"
        );
    }
    data.quotas
        .stats
        .drift
        .store(drift, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// The quotas' background loops (with a ledger only): the overrides cache and the
/// reconciliation against the ledger.
pub fn spawn_loops(
    data: Data,
    stop: tokio_util::sync::CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let Some(ledger) = data.ledger.clone() else {
        return Vec::new();
    };
    let overrides = {
        let (quotas, ledger, stop) = (data.quotas.clone(), ledger.clone(), stop.clone());
        tokio::spawn(keyshard_cluster::run_every(
            "quota overrides",
            OVERRIDES_EVERY,
            stop,
            None,
            move || {
                let (quotas, ledger) = (quotas.clone(), ledger.clone());
                async move { refresh_overrides(&quotas, &ledger).await }
            },
        ))
    };
    let pending = std::sync::Arc::new(tokio::sync::Mutex::new(std::collections::VecDeque::new()));
    let reconciler = tokio::spawn(keyshard_cluster::run_every(
        "quota reconcile",
        RECONCILE_EVERY,
        stop,
        None,
        move || {
            let (data, ledger, pending) = (data.clone(), ledger.clone(), pending.clone());
            async move { reconcile(&data, &ledger, &pending).await }
        },
    ));
    vec![overrides, reconciler]
}

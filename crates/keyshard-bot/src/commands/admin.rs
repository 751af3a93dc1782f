//! The admin commands: `/로드밸런서` (cluster status), `/할당 [사용자]` (who serves a user) and
//! `/성능` (throughput, latency, key use). Admin means listed in `ADMIN_USER_IDS` or holding
//! the Administrator permission; Discord hides the commands from others
//! (`default_member_permissions`) and the check is repeated here, on the server side.

use std::sync::Arc;

use keyshard_cluster::{read_info, read_window, ClusterStatus, Window};
use poise::serenity_prelude as serenity;

use crate::context::{Answered, Context, Error};
use crate::replies::admin::Freshness;
use crate::{replies, respond};

/// Whether the caller may run admin commands.
pub fn is_admin(ctx: Context<'_>) -> bool {
    let user = ctx.author().id.get();
    if ctx.data().config.admin_user_ids.contains(&user) {
        return true;
    }
    match ctx {
        poise::Context::Application(app) => app
            .interaction
            .member
            .as_ref()
            .and_then(|m| m.permissions)
            .is_some_and(|p| p.administrator()),
        poise::Context::Prefix(_) => false,
    }
}

/// Tells a non-admin no (ephemeral); `true` when the caller is an admin.
async fn ensure_admin(ctx: Context<'_>) -> Result<bool, Error> {
    if is_admin(ctx) {
        return Ok(true);
    }
    respond::ephemeral(ctx, replies::ADMIN_ONLY, Answered::Refused("not_admin")).await?;
    Ok(false)
}

/// The cluster view: the one the membership loop read last, or a fresh read.
async fn status(ctx: Context<'_>) -> Option<Arc<ClusterStatus>> {
    let data = ctx.data();
    if let Some(s) = data.cluster.status() {
        return Some(s);
    }
    let c = &data.config;
    keyshard_cluster::fetch_status(&c.redis_url, &c.cluster_name, c.instance_count, &c.overload)
        .await
        .ok()
        .map(Arc::new)
}

/// 클러스터의 모든 인스턴스 상태를 보여줍니다. (관리자)
#[poise::command(
    slash_command,
    rename = "로드밸런서",
    name_localized("en-US", "loadbalancer"),
    description_localized("en-US", "Every instance of the cluster (admins)"),
    default_member_permissions = "ADMINISTRATOR"
)]
pub async fn loadbalancer(ctx: Context<'_>) -> Result<(), Error> {
    if !ensure_admin(ctx).await? {
        return Ok(());
    }
    let data = ctx.data();
    let (status, window) = futures::future::join(status(ctx), read_window(&data.cluster, 5)).await;
    let Some(status) = status else {
        return respond::ephemeral(
            ctx,
            replies::STATS_UNAVAILABLE,
            Answered::Failed("stats_unavailable"),
        )
        .await;
    };
    // Redis down is when an operator most wants this view: show the last snapshot, say so.
    let (window, freshness) = match window {
        Ok(w) => (w, Freshness::Live),
        Err(e) => {
            tracing::debug!(error = %e, "statistics read for /로드밸런서 failed");
            let age = data.cluster.snapshot_age().unwrap_or_default();
            let snapshot_age_ms = u64::try_from(age.as_millis()).unwrap_or(u64::MAX);
            (Window::default(), Freshness::RedisDown { snapshot_age_ms })
        }
    };
    // With Redis down the other two reads would fail too, each after its own timeout.
    let live = freshness == Freshness::Live;
    let info = if live {
        read_info(&data.cluster).await.unwrap_or_default()
    } else {
        Default::default()
    };
    let remaining = match data.state.shards.queue().filter(|_| live) {
        Some(q) => q.remaining().await.ok().flatten().map(|(n, _)| n),
        None => None,
    };
    let starts = replies::admin::SessionStarts {
        remaining,
        reserve: data.config.gateway.identify.reserve,
    };
    let view = replies::admin::load_balancer(
        data.config.instance_id,
        &status,
        &window,
        &info,
        starts,
        freshness,
    );
    respond::ephemeral_embed(ctx, view).await
}

/// 사용자를 어느 인스턴스가 처리하는지 보여줍니다. (관리자)
#[poise::command(
    slash_command,
    rename = "할당",
    name_localized("en-US", "assign"),
    description_localized("en-US", "Which instance serves a user, and why (admins)"),
    default_member_permissions = "ADMINISTRATOR"
)]
pub async fn assign(
    ctx: Context<'_>,
    #[rename = "사용자"]
    #[description = "확인할 사용자 (기본: 나)"]
    #[name_localized("en-US", "user")]
    #[description_localized("en-US", "The user to look up (default: you)")]
    user: Option<serenity::User>,
) -> Result<(), Error> {
    if !ensure_admin(ctx).await? {
        return Ok(());
    }
    let user = user.unwrap_or_else(|| ctx.author().clone());
    let data = ctx.data();
    let Some(status) = status(ctx).await else {
        return respond::ephemeral(
            ctx,
            replies::STATS_UNAVAILABLE,
            Answered::Failed("stats_unavailable"),
        )
        .await;
    };
    let report = status.assign_report(user.id.get(), &data.config.overload);
    respond::ephemeral_embed(ctx, replies::admin::assignment(&user.name, &report)).await
}

/// 클러스터 처리량, 지연 시간, 키 사용률을 보여줍니다. (관리자)
#[poise::command(
    slash_command,
    rename = "성능",
    name_localized("en-US", "performance"),
    description_localized("en-US", "Throughput, latency and key use of the cluster (admins)"),
    default_member_permissions = "ADMINISTRATOR"
)]
pub async fn performance(ctx: Context<'_>) -> Result<(), Error> {
    if !ensure_admin(ctx).await? {
        return Ok(());
    }
    let data = ctx.data();
    let windows = futures::future::join3(
        read_window(&data.cluster, 1),
        read_window(&data.cluster, 5),
        read_window(&data.cluster, 60),
    )
    .await;
    let (Ok(w1), Ok(w5), Ok(w60)) = windows else {
        return respond::ephemeral(
            ctx,
            replies::STATS_UNAVAILABLE,
            Answered::Failed("stats_unavailable"),
        )
        .await;
    };
    let info = read_info(&data.cluster).await.unwrap_or_default();
    let ledger = ledger_lines(ctx).await;
    let view =
        replies::admin::performance(data.config.instance_count, [&w1, &w5, &w60], &info, &ledger);
    respond::ephemeral_embed(ctx, view).await
}

/// How long `/성능` waits for the ledger's two sums. The view is answered directly (no
/// deferral), so a slow or unreachable Postgres must leave room in Discord's 3 s window:
/// the sums come from the daily rollup and take milliseconds when Postgres is healthy.
const LEDGER_VIEW_BUDGET: std::time::Duration = std::time::Duration::from_millis(800);

/// `/성능`'s ledger lines: the cluster's sums over the last 24 hours and 7 days.
async fn ledger_lines(ctx: Context<'_>) -> (String, String) {
    let Some(ledger) = ctx.data().ledger.clone() else {
        let off = "기록 꺼짐 (DATABASE_URL 미설정)".to_owned();
        return (off.clone(), off);
    };
    let now = crate::clock::unix_ms();
    let span = |days: u64| keyshard_ledger::Span {
        since_ms: now.saturating_sub(days * keyshard_ledger::DAY_MS),
        until_ms: now + 1,
        raw_kept_since_ms: Some(ledger.retention().raw_kept_since(now)),
    };
    let filter = keyshard_ledger::UsageFilter::default();
    let pool = ledger.pool();
    let read = async {
        let day = keyshard_ledger::totals(pool, &span(1), &filter).await?;
        let week = keyshard_ledger::totals(pool, &span(7), &filter).await?;
        Ok::<_, keyshard_ledger::LedgerError>((day, week))
    };
    match tokio::time::timeout(LEDGER_VIEW_BUDGET, read).await {
        Ok(Ok((day, week))) => replies::usage::performance_lines(&day, &week),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "ledger read for /성능 failed");
            let na = "읽을 수 없음 (데이터베이스 연결 문제)".to_owned();
            (na.clone(), na)
        }
        Err(_) => {
            let na = "읽을 수 없음 (데이터베이스 응답 지연)".to_owned();
            (na.clone(), na)
        }
    }
}

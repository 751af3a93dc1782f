//! The admin commands: `/로드밸런서` (cluster status), `/할당 [사용자]` (who serves a user) and
//! `/성능` (throughput, latency, key use). Admin means listed in `ADMIN_USER_IDS` or holding
//! the Administrator permission; Discord hides the commands from others
//! (`default_member_permissions`) and the check is repeated here, on the server side.

use std::collections::BTreeMap;

use keyshard_cluster::{read_info, read_window, ClusterStatus, InstanceId, Reason, Window};
use poise::serenity_prelude as serenity;
use poise::CreateReply;

use crate::edge::{Context, Error};
use crate::replies;

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
    ctx.send(
        CreateReply::default()
            .content(replies::ADMIN_ONLY)
            .ephemeral(true),
    )
    .await?;
    Ok(false)
}

/// The cluster view: the one the membership loop read last, or a fresh read.
async fn status(ctx: Context<'_>) -> Option<std::sync::Arc<ClusterStatus>> {
    let data = ctx.data();
    if let Some(s) = data.cluster.status() {
        return Some(s);
    }
    let c = &data.config;
    keyshard_cluster::fetch_status(&c.redis_url, &c.cluster_name, c.instance_count, &c.overload)
        .await
        .ok()
        .map(std::sync::Arc::new)
}

fn reason_ko(reason: Reason) -> &'static str {
    match reason {
        Reason::Primary => "기본 인스턴스가 정상이라 그대로 맡아요",
        Reason::PrimaryDown => "기본 인스턴스가 응답하지 않아 다음 인스턴스가 맡아요",
        Reason::PrimaryOverloaded => "기본 인스턴스가 과부하라 다음 인스턴스가 맡아요",
        Reason::AllOverloaded => "모든 인스턴스가 바빠 대기 시간이 가장 짧은 인스턴스가 맡아요",
        Reason::NoneAlive => "살아 있는 인스턴스가 없어요",
    }
}

fn secs(ms: u64) -> String {
    format!("{:.1}초", ms as f64 / 1000.0)
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
    let (Some(status), Ok(window)) = (status(ctx).await, read_window(&data.cluster, 5).await)
    else {
        return crate::commands::queue::reject(ctx, replies::STATS_UNAVAILABLE).await;
    };
    let info = read_info(&data.cluster).await.unwrap_or_default();
    let mut embed = serenity::CreateEmbed::new()
        .title(format!(
            "⚖️ 로드밸런서 — {} (인스턴스 {}개)",
            status.cluster_name, status.instance_count
        ))
        .description(format!(
            "응답: 인스턴스 #{} · 과부하 기준: 예상 대기 {}",
            data.config.instance_id,
            secs(status.max_wait_ms)
        ));
    for s in &status.instances {
        let state = match (s.alive, s.overloaded || s.draining) {
            (false, _) => "🔴 다운",
            (true, true) => "🟠 과부하",
            (true, false) => "🟢 정상",
        };
        let heartbeat = s
            .heartbeat_age_ms
            .map_or("없음".to_owned(), |ms| format!("{} 전", secs(ms)));
        let budget = budget_line(info.get(&s.id));
        embed = embed.field(
            format!("#{} {state}", s.id),
            format!(
                "하트비트 {heartbeat} · 대기 {} · 처리 중 {}\n최근 5분 처리 {} · 대신 처리 {}\n키 잔량: {budget}",
                s.queue_depth,
                s.in_flight,
                window.handled(s.id),
                window.takeovers(s.id),
            ),
            false,
        );
    }
    ctx.send(CreateReply::default().embed(embed).ephemeral(true))
        .await?;
    Ok(())
}

/// `openai/chat 480/500 · minimax/images 9/10`, from an instance's published budget.
fn budget_line(info: Option<&serde_json::Value>) -> String {
    let Some(lanes) = info.and_then(|i| i["budget"].as_array()) else {
        return "알 수 없음".into();
    };
    let parts: Vec<String> = lanes
        .iter()
        .map(|l| {
            format!(
                "{}/{} {}/{}",
                l["provider"].as_str().unwrap_or("?"),
                l["lane"].as_str().unwrap_or("?"),
                l["requests_remaining"].as_u64().unwrap_or(0),
                l["requests_limit"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    if parts.is_empty() {
        "키 없음".into()
    } else {
        parts.join(" · ")
    }
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
        return crate::commands::queue::reject(ctx, replies::STATS_UNAVAILABLE).await;
    };
    let report = status.assign_report(user.id.get(), &data.config.overload);
    let ladder: Vec<String> = report
        .ladder
        .iter()
        .map(|r| match (r.alive, r.overloaded) {
            (false, _) => format!("#{} 다운", r.id),
            (true, true) => format!("#{} 과부하({})", r.id, secs(r.estimated_wait_ms)),
            (true, false) => format!("#{} 정상", r.id),
        })
        .collect();
    let owner = report.owner.map_or("없음".to_owned(), |o| format!("#{o}"));
    let embed = serenity::CreateEmbed::new()
        .title(format!("🧭 {} 님의 담당 인스턴스", user.name))
        .field("기본 인스턴스", format!("#{}", report.primary), true)
        .field("현재 담당", owner, true)
        .field("이유", reason_ko(report.reason), false)
        .field("순서", ladder.join(" → "), false);
    ctx.send(CreateReply::default().embed(embed).ephemeral(true))
        .await?;
    Ok(())
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
        return crate::commands::queue::reject(ctx, replies::STATS_UNAVAILABLE).await;
    };
    let info = read_info(&data.cluster).await.unwrap_or_default();
    let embed = performance_embed(data.config.instance_count, [&w1, &w5, &w60], &info);
    ctx.send(CreateReply::default().embed(embed).ephemeral(true))
        .await?;
    Ok(())
}

fn per_min(n: u64, w: &Window) -> f64 {
    n as f64 / w.minutes as f64
}

pub fn performance_embed(
    count: u32,
    [w1, w5, w60]: [&Window; 3],
    info: &BTreeMap<InstanceId, serde_json::Value>,
) -> serenity::CreateEmbed {
    let mut by_instance = Vec::new();
    for id in 1..=count {
        by_instance.push(format!(
            "#{id}: {:.1} / {:.1} / {:.1}",
            per_min(w1.completed_by(id), w1),
            per_min(w5.completed_by(id), w5),
            per_min(w60.completed_by(id), w60),
        ));
    }
    let mut by_provider: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for (i, w) in [w1, w5, w60].into_iter().enumerate() {
        for ((_, provider), n) in w.provider_requests() {
            by_provider.entry(provider).or_default()[i] += n;
        }
    }
    let providers: Vec<String> = by_provider
        .iter()
        .map(|(p, n)| {
            format!(
                "{p}: {:.1} / {:.1} / {:.1}",
                per_min(n[0], w1),
                per_min(n[1], w5),
                per_min(n[2], w60)
            )
        })
        .collect();
    let latency: Vec<String> = w60
        .commands()
        .iter()
        .map(|c| {
            let q = |q| {
                w60.latency_quantile_ms(c, q).map_or("-".to_owned(), |ms| {
                    if ms == u64::MAX {
                        "300초+".into()
                    } else {
                        secs(ms)
                    }
                })
            };
            format!("{c}: p50 ≤ {} · p95 ≤ {}", q(0.5), q(0.95))
        })
        .collect();
    // Key use over the last minute: each instance's provider requests against its key's limit.
    let mut utilisation = Vec::new();
    for ((id, provider), n) in w1.provider_requests() {
        let limit: u64 = info
            .get(&id)
            .and_then(|i| i["budget"].as_array())
            .map(|lanes| {
                lanes
                    .iter()
                    .filter(|l| l["provider"].as_str() == Some(provider.as_str()))
                    .filter_map(|l| {
                        let limit = l["requests_limit"].as_f64()?;
                        let window = l["window_secs"].as_f64().filter(|w| *w > 0.0)?;
                        Some((limit * 60.0 / window) as u64)
                    })
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        if limit > 0 {
            utilisation.push(format!(
                "#{id} {provider}: {:.0}%",
                100.0 * n as f64 / limit as f64
            ));
        }
    }
    // The measured multiple over one key set: all provider requests of the last five minutes
    // over those of the busiest single instance (N when the load is spread evenly).
    let mut per_instance: BTreeMap<InstanceId, u64> = BTreeMap::new();
    for ((id, _), n) in w5.provider_requests() {
        *per_instance.entry(id).or_default() += n;
    }
    let total: u64 = per_instance.values().sum();
    let busiest = per_instance.values().copied().max().unwrap_or(0);
    let multiple = if busiest > 0 {
        format!(
            "{:.2}배 (인스턴스 {}개 중)",
            total as f64 / busiest as f64,
            count
        )
    } else {
        "측정 전".into()
    };
    let or_none = |v: Vec<String>| {
        if v.is_empty() {
            "아직 없음".to_owned()
        } else {
            v.join("\n")
        }
    };
    serenity::CreateEmbed::new()
        .title("📈 성능 (분당 처리량: 1분 / 5분 / 60분)")
        .field("인스턴스별 완료", or_none(by_instance), false)
        .field("제공사별 요청", or_none(providers), false)
        .field("명령별 지연 (60분)", or_none(latency), false)
        .field("키 사용률 (1분)", or_none(utilisation), false)
        .field("키 세트 대비 용량 배수 (5분)", multiple, false)
}

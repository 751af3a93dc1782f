//! The admin views: `/로드밸런서` (every instance), `/할당` (who serves a user, and why) and
//! `/성능` (throughput, latency, key use). Each renders the cluster crate's plain data
//! (`ClusterStatus`, `AssignReport`, `Window`, the published key budgets) into an embed.

use std::collections::BTreeMap;

use keyshard_cluster::{AssignReport, ClusterStatus, InstanceId, Window};
use poise::serenity_prelude as serenity;

use super::{reason, secs};

/// The cluster's day of gateway session starts, for `/로드밸런서`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionStarts {
    /// Left today as the cluster counts them (`None`: not read yet today).
    pub remaining: Option<u32>,
    /// `IDENTIFY_RESERVE`: IDENTIFYs stop there.
    pub reserve: u32,
}

/// How fresh `/로드밸런서`'s view is. While Redis is unreachable the view is the membership
/// snapshot the instance read last, and the five-minute counts are missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Live,
    /// Redis did not answer; the snapshot is this many milliseconds old.
    RedisDown {
        snapshot_age_ms: u64,
    },
}

/// `/로드밸런서`: every instance with its state, heartbeat, load, recent work, key budget and
/// shards. `me` is the instance answering; `window` covers the last five minutes.
pub fn load_balancer(
    me: InstanceId,
    status: &ClusterStatus,
    window: &Window,
    info: &BTreeMap<InstanceId, serde_json::Value>,
    starts: SessionStarts,
    freshness: Freshness,
) -> serenity::CreateEmbed {
    let remaining = starts
        .remaining
        .map_or("확인 전".to_owned(), |r| r.to_string());
    let banner = match freshness {
        Freshness::Live => String::new(),
        Freshness::RedisDown { snapshot_age_ms } => format!(
            "⚠️ Redis에 연결할 수 없어 {} 전에 읽은 상태예요. 최근 5분 처리 수는 빠져 있어요.\n",
            secs(snapshot_age_ms)
        ),
    };
    let mut embed = serenity::CreateEmbed::new()
        .title(format!(
            "⚖️ 로드밸런서 — {} (인스턴스 {}개)",
            status.cluster_name, status.instance_count
        ))
        .description(format!(
            "{banner}응답: 인스턴스 #{me} · 과부하 기준: 예상 대기 {}\n\
             게이트웨이 세션 시작 잔량(오늘): {remaining} · 예약분 {}\n\
             한도 거절(최근 5분): {}",
            secs(status.max_wait_ms),
            starts.reserve,
            super::quota::refusals_line(&window.quota_refusals())
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
        let gateway = gateway_line(info.get(&s.id));
        let health = health_line(info.get(&s.id))
            .map(|h| format!("\n키 상태: {h}"))
            .unwrap_or_default();
        embed = embed.field(
            format!("#{} {state}", s.id),
            format!(
                "하트비트 {heartbeat} · 대기 {} · 처리 중 {}\n최근 5분 처리 {} · 대신 처리 {}\n키 잔량: {budget}{health}\n게이트웨이: {gateway}",
                s.queue_depth,
                s.in_flight,
                window.handled(s.id),
                window.takeovers(s.id),
            ),
            false,
        );
    }
    embed
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

/// `openai 키 사용 중지(점검 중) · minimax 회로 차단`: the keys out of service and the open
/// circuits of an instance, from its published health; `None` when all is well (or unknown).
fn health_line(info: Option<&serde_json::Value>) -> Option<String> {
    let keys = info.and_then(|i| i["health"].as_array())?;
    let parts: Vec<String> = keys
        .iter()
        .flat_map(|k| {
            let provider = k["provider"].as_str().unwrap_or("?");
            let mut v = Vec::new();
            if k["out_of_service"].as_bool() == Some(true) {
                let probe = if k["prober"].as_bool() == Some(true) {
                    "(점검 중)"
                } else {
                    ""
                };
                v.push(format!("{provider} 키 사용 중지{probe}"));
            }
            if k["circuit_open"].as_bool() == Some(true) {
                v.push(format!("{provider} 회로 차단"));
            }
            v
        })
        .collect();
    (!parts.is_empty()).then(|| parts.join(" · "))
}

/// `샤드 4/4 · 41/40/39/42 ms`, or what a shard's IDENTIFY waits for, from an instance's
/// published shards (`shards::published`).
fn gateway_line(info: Option<&serde_json::Value>) -> String {
    let Some(shards) = info.and_then(|i| i["gateway"].as_array()) else {
        return "알 수 없음".into();
    };
    let up = shards
        .iter()
        .filter(|s| s["up"].as_bool() == Some(true))
        .count();
    let latencies: Vec<String> = shards
        .iter()
        .map(|s| {
            s["latency_ms"]
                .as_u64()
                .map_or("-".to_owned(), |ms| ms.to_string())
        })
        .collect();
    let mut line = format!("샤드 {up}/{} · {} ms", shards.len(), latencies.join("/"));
    // The wait an operator must act on (the reserve) before the passing ones.
    let waits: Vec<&str> = shards
        .iter()
        .filter_map(|s| s["waiting"].as_str())
        .collect();
    let wait = ["reserve", "backoff", "local", "budget", "bucket"]
        .into_iter()
        .find(|w| waits.contains(w));
    if let Some(w) = wait {
        line.push_str(" · ⏸ ");
        line.push_str(match w {
            "reserve" => "IDENTIFY 중지: 오늘 세션 시작 한도가 예약분에 닿았어요 (초기화까지 대기)",
            "backoff" => "IDENTIFY 대기: 비정상 종료 후 재시작 지연 중",
            "local" => "IDENTIFY: Redis 없이 자체 간격으로 연결 중",
            "budget" => "IDENTIFY 대기: 세션 한도 확인 중",
            _ => "IDENTIFY 순서 대기",
        });
    }
    line
}

/// `/할당`: the user's primary, the instance serving them now, why, and their ladder.
pub fn assignment(user_name: &str, report: &AssignReport) -> serenity::CreateEmbed {
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
    serenity::CreateEmbed::new()
        .title(format!("🧭 {user_name} 님의 담당 인스턴스"))
        .field("기본 인스턴스", format!("#{}", report.primary), true)
        .field("현재 담당", owner, true)
        .field("이유", reason(report.reason), false)
        .field("순서", ladder.join(" → "), false)
}

fn per_min(n: u64, w: &Window) -> f64 {
    n as f64 / w.minutes as f64
}

/// `/성능`: completions per instance, requests per provider (per minute over the last 1, 5 and
/// 60 minutes), latency per command, key use, the measured capacity multiple, and the usage
/// ledger's sums over the last 24 hours and 7 days (`ledger`, already rendered: the ledger may
/// be off or unreachable).
pub fn performance(
    count: u32,
    [w1, w5, w60]: [&Window; 3],
    info: &BTreeMap<InstanceId, serde_json::Value>,
    ledger: &(String, String),
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
    let utilisation: Vec<String> = key_use(w1, info)
        .into_iter()
        .map(|(id, provider, percent)| format!("#{id} {provider}: {percent:.0}%"))
        .collect();
    let multiple = match capacity_multiple(w5) {
        Some(m) => format!("{m:.2}배 (인스턴스 {count}개 중)"),
        None => "측정 전".into(),
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
        .field(
            "한도 거절 (1분 / 5분 / 60분)",
            [w1, w5, w60]
                .map(|w| super::quota::refusals_line(&w.quota_refusals()))
                .join("\n"),
            false,
        )
        .field("최근 24시간 (사용량 원장)", &ledger.0, false)
        .field("최근 7일 (사용량 원장)", &ledger.1, false)
}

/// Key use over the last minute: each instance's provider requests against its key's limit,
/// in percent; providers whose limit is unknown are left out.
fn key_use(
    w1: &Window,
    info: &BTreeMap<InstanceId, serde_json::Value>,
) -> Vec<(InstanceId, String, f64)> {
    let mut out = Vec::new();
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
            out.push((id, provider, 100.0 * n as f64 / limit as f64));
        }
    }
    out
}

/// The measured multiple over one key set: all provider requests of the window over those of
/// the busiest single instance (N when the load is spread evenly); `None` before any request.
fn capacity_multiple(w5: &Window) -> Option<f64> {
    let mut per_instance: BTreeMap<InstanceId, u64> = BTreeMap::new();
    for ((id, _), n) in w5.provider_requests() {
        *per_instance.entry(id).or_default() += n;
    }
    let total: u64 = per_instance.values().sum();
    let busiest = per_instance.values().copied().max().unwrap_or(0);
    (busiest > 0).then(|| total as f64 / busiest as f64)
}

#[cfg(test)]
mod tests {
    use keyshard_cluster::{LadderRung, Reason};

    use super::*;

    fn embed_json(e: serenity::CreateEmbed) -> String {
        serde_json::to_string(&e).unwrap()
    }

    #[test]
    fn assignment_names_the_reason_in_the_shared_wording() {
        let report = AssignReport {
            user: 7,
            primary: 2,
            owner: Some(3),
            reason: Reason::PrimaryDown,
            reason_text: String::new(),
            ladder: vec![
                LadderRung {
                    id: 2,
                    alive: false,
                    overloaded: false,
                    estimated_wait_ms: 0,
                },
                LadderRung {
                    id: 3,
                    alive: true,
                    overloaded: true,
                    estimated_wait_ms: 1_500,
                },
            ],
        };
        let json = embed_json(assignment("고양이", &report));
        assert!(json.contains("🧭 고양이 님의 담당 인스턴스"), "{json}");
        assert!(json.contains(reason(Reason::PrimaryDown)), "{json}");
        assert!(json.contains("#2 다운 → #3 과부하(1.5초)"), "{json}");
    }

    #[test]
    fn gateway_lines_show_shards_latencies_and_the_wait_that_matters() {
        assert_eq!(gateway_line(None), "알 수 없음");
        let info = serde_json::json!({"gateway": [
            {"id": 0, "up": true, "latency_ms": 41, "waiting": null},
            {"id": 1, "up": true, "latency_ms": null, "waiting": null},
        ]});
        assert_eq!(gateway_line(Some(&info)), "샤드 2/2 · 41/- ms");
        let info = serde_json::json!({"gateway": [
            {"id": 0, "up": false, "latency_ms": null, "waiting": "bucket"},
            {"id": 1, "up": false, "latency_ms": null, "waiting": "reserve"},
        ]});
        let line = gateway_line(Some(&info));
        assert!(
            line.starts_with("샤드 0/2 · -/- ms · ⏸ IDENTIFY 중지"),
            "{line}"
        );
    }

    #[test]
    fn health_lines_name_keys_out_of_service_and_open_circuits() {
        assert_eq!(health_line(None), None);
        let fine = serde_json::json!({"health": [{"provider": "openai", "out_of_service": false, "circuit_open": false}]});
        assert_eq!(health_line(Some(&fine)), None);
        let sick = serde_json::json!({"health": [
            {"provider": "openai", "out_of_service": true, "prober": true, "circuit_open": false},
            {"provider": "minimax", "out_of_service": false, "circuit_open": true},
        ]});
        assert_eq!(
            health_line(Some(&sick)).as_deref(),
            Some("openai 키 사용 중지(점검 중) · minimax 회로 차단")
        );
    }

    #[test]
    fn budget_lines_say_what_is_known() {
        assert_eq!(budget_line(None), "알 수 없음");
        assert_eq!(
            budget_line(Some(&serde_json::json!({"budget": []}))),
            "키 없음"
        );
        let info = serde_json::json!({"budget": [
            {"provider": "openai", "lane": "chat", "requests_remaining": 480, "requests_limit": 500},
            {"provider": "minimax", "lane": "images", "requests_remaining": 9, "requests_limit": 10},
        ]});
        assert_eq!(
            budget_line(Some(&info)),
            "openai/chat 480/500 · minimax/images 9/10"
        );
    }
}

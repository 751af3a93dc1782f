//! `/핑` (`/ping`): which instance answered, gateway latency, Redis round trip, and the
//! caller's primary instance.

use std::time::Duration;

use keyshard_routing::{primary, Reason};

use crate::edge::{Claimed, Context, Error};

/// 응답한 인스턴스와 지연 시간을 보여줍니다.
#[poise::command(
    slash_command,
    rename = "핑",
    name_localized("en-US", "ping"),
    description_localized("en-US", "Shows which instance answered and the latencies")
)]
pub async fn ping(ctx: Context<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let user = ctx.author().id.get();
    let (reason, decided_at, claim_rtt) = match ctx.invocation_data::<Claimed>().await {
        Some(c) => (c.assignment.reason, Some(c.decided_at), c.redis_rtt),
        None => (Reason::Primary, None, None),
    };
    let gateway = ctx.ping().await;
    // The owner's claim was a Redis round trip already; a second one before the answer would
    // only widen the window between claim and acknowledgement.
    let redis = match claim_rtt {
        Some(rtt) => Some(rtt),
        None => data.cluster.redis_ping().await.ok(),
    };
    let content = render(
        data.config.instance_id,
        data.config.instance_count,
        primary(user, data.config.instance_count),
        reason,
        gateway,
        redis,
    );
    ctx.say(content).await?;
    if let Some(at) = decided_at {
        data.metrics.ack_latency.observe(at.elapsed());
    }
    Ok(())
}

fn render(
    me: u32,
    count: u32,
    primary: u32,
    reason: Reason,
    gateway: Duration,
    redis: Option<Duration>,
) -> String {
    let gateway = if gateway.is_zero() {
        "측정 중".to_owned()
    } else {
        format!("{} ms", gateway.as_millis())
    };
    let redis = match redis {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "연결 안 됨 (정적 규칙으로 동작 중)".to_owned(),
    };
    let why = match reason {
        Reason::Primary => String::new(),
        Reason::PrimaryDown => format!(" — 인스턴스 {primary}이(가) 응답하지 않아 대신 처리했어요"),
        Reason::PrimaryOverloaded | Reason::AllOverloaded => {
            format!(" — 인스턴스 {primary}이(가) 바빠서 대신 처리했어요")
        }
        Reason::NoneAlive => " — 클러스터 상태를 알 수 없어 정적 규칙으로 처리했어요".to_owned(),
    };
    format!(
        "🏓 퐁! 인스턴스 {me}/{count}이(가) 응답했어요{why}\n\
         • 게이트웨이 지연: {gateway}\n\
         • Redis 왕복: {redis}\n\
         • 내 기본 인스턴스: {primary}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn takeover_is_explained() {
        let text = render(
            3,
            4,
            2,
            Reason::PrimaryDown,
            Duration::from_millis(41),
            Some(Duration::from_micros(350)),
        );
        assert!(text.starts_with("🏓 퐁! 인스턴스 3/4"), "{text}");
        assert!(text.contains("인스턴스 2이(가) 응답하지 않아"), "{text}");
        assert!(
            text.contains("41 ms") && text.contains("0.3 ms") && text.contains("기본 인스턴스: 2"),
            "{text}"
        );
    }

    #[test]
    fn redis_down_is_said_plainly() {
        let text = render(1, 4, 1, Reason::Primary, Duration::ZERO, None);
        assert!(text.contains("연결 안 됨"), "{text}");
        assert!(!text.contains(" — "), "{text}");
    }
}

//! `/핑`'s answer: which instance answered and why, the gateway latency, the Redis round trip
//! and the caller's primary instance.

use std::time::Duration;

use keyshard_routing::Reason;

/// What `/핑` measured, as plain data.
pub struct Ping {
    /// The instance that answered, of `count`.
    pub me: u32,
    pub count: u32,
    /// The caller's primary instance.
    pub primary: u32,
    /// Why `me` answered.
    pub reason: Reason,
    /// The gateway heartbeat latency; zero before the first heartbeat was acknowledged.
    pub gateway: Duration,
    /// The Redis round trip; `None` when Redis did not answer.
    pub redis: Option<Duration>,
}

pub fn ping(p: &Ping) -> String {
    let gateway = if p.gateway.is_zero() {
        "측정 중".to_owned()
    } else {
        format!("{} ms", p.gateway.as_millis())
    };
    let redis = match p.redis {
        Some(d) => format!("{:.1} ms", d.as_secs_f64() * 1000.0),
        None => "연결 안 됨 (정적 규칙으로 동작 중)".to_owned(),
    };
    // The primary answering needs no explanation; anything else says why, in the same words
    // as `/할당`.
    let why = match p.reason {
        Reason::Primary => String::new(),
        other => format!(" — {}", super::reason(other)),
    };
    let (me, count, primary) = (p.me, p.count, p.primary);
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
    fn takeover_is_explained_in_the_words_of_assign() {
        let text = ping(&Ping {
            me: 3,
            count: 4,
            primary: 2,
            reason: Reason::PrimaryDown,
            gateway: Duration::from_millis(41),
            redis: Some(Duration::from_micros(350)),
        });
        assert!(text.starts_with("🏓 퐁! 인스턴스 3/4"), "{text}");
        assert!(
            text.contains(&format!(
                " — {}",
                crate::replies::reason(Reason::PrimaryDown)
            )),
            "{text}"
        );
        assert!(
            text.contains("41 ms") && text.contains("0.3 ms") && text.contains("기본 인스턴스: 2"),
            "{text}"
        );
    }

    #[test]
    fn redis_down_is_said_plainly() {
        let text = ping(&Ping {
            me: 1,
            count: 4,
            primary: 1,
            reason: Reason::Primary,
            gateway: Duration::ZERO,
            redis: None,
        });
        assert!(text.contains("연결 안 됨"), "{text}");
        assert!(!text.contains(" — "), "{text}");
    }
}

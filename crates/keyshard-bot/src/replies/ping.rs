//! `/핑`'s answer: which instance answered and why, the gateway latency (of the shard that
//! delivered the interaction, and of every shard when there are several), the Redis round
//! trip and the caller's primary instance.

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
    /// The shard that delivered the interaction.
    pub shard: u32,
    /// Every shard of this instance: id, up or not, heartbeat latency.
    pub shards: Vec<(u32, bool, Option<Duration>)>,
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
    let total = p.shards.len().max(1);
    let shard = p.shard;
    // With several shards, each one's latency: they are separate sessions, and one lagging
    // shard is what an operator asking /핑 wants to see.
    let per_shard = if p.shards.len() > 1 {
        let list: Vec<String> = p
            .shards
            .iter()
            .map(|(id, up, latency)| match (up, latency) {
                (false, _) => format!("#{id} 연결 중"),
                (true, None) => format!("#{id} 측정 중"),
                (true, Some(l)) => format!("#{id} {} ms", l.as_millis()),
            })
            .collect();
        format!("\n• 샤드별 지연: {}", list.join(" · "))
    } else {
        String::new()
    };
    format!(
        "🏓 퐁! 인스턴스 {me}/{count}이(가) 응답했어요{why}\n\
         • 게이트웨이 지연: {gateway} (샤드 #{shard}, 전체 {total}개){per_shard}\n\
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
            shard: 0,
            shards: vec![(0, true, Some(Duration::from_millis(41)))],
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
            shard: 0,
            shards: vec![(0, true, None)],
            redis: None,
        });
        assert!(text.contains("연결 안 됨"), "{text}");
        assert!(!text.contains(" — "), "{text}");
        assert!(text.contains("(샤드 #0, 전체 1개)"), "{text}");
        assert!(!text.contains("샤드별"), "one shard needs no list: {text}");
    }

    #[test]
    fn every_shard_is_listed_when_there_are_several() {
        let text = ping(&Ping {
            me: 2,
            count: 4,
            primary: 2,
            reason: Reason::Primary,
            gateway: Duration::from_millis(40),
            shard: 2,
            shards: vec![
                (0, true, Some(Duration::from_millis(41))),
                (1, true, None),
                (2, true, Some(Duration::from_millis(40))),
                (3, false, None),
            ],
            redis: Some(Duration::from_micros(500)),
        });
        assert!(text.contains("40 ms (샤드 #2, 전체 4개)"), "{text}");
        assert!(
            text.contains("• 샤드별 지연: #0 41 ms · #1 측정 중 · #2 40 ms · #3 연결 중"),
            "{text}"
        );
    }
}

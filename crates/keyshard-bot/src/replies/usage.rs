//! `/사용량`'s answers (a user's own usage today and this month; an admin's view of a user, a
//! guild, the whole cluster or the top users, guilds, commands, providers and keys over a
//! day, a week or a month) and `/성능`'s ledger lines (the last 24 hours and 7 days). Each
//! renders the ledger's plain data (`Totals`, `UserUsage`, `UsageLine`).

use keyshard_ledger::{Dimension, Totals, UsageLine, UserUsage};
use poise::serenity_prelude as serenity;

pub const LEDGER_OFF: &str =
    "⚠️ 사용량 기록이 꺼져 있어요 (DATABASE_URL이 설정되지 않았어요). 관리자에게 알려 주세요.";
pub const LEDGER_UNAVAILABLE: &str =
    "⚠️ 지금은 사용량을 읽을 수 없어요 (데이터베이스 연결 문제). 잠시 후 다시 시도해 주세요.";
pub const ADMIN_OPTIONS: &str =
    "⚠️ 다른 사용자나 서버의 사용량, 순위와 기간 보기는 관리자만 사용할 수 있어요. 옵션 없이 입력하면 내 사용량을 볼 수 있어요.";
pub const BAD_GUILD: &str = "⚠️ 서버 ID는 숫자로 입력해 주세요 (서버 설정 → 위젯에서 확인).";

/// An estimated cost in micro-dollars as dollars: `$0.0042`, `$12.35`.
pub fn dollars(micros: u64) -> String {
    let d = micros as f64 / 1e6;
    if d >= 100.0 {
        format!("${d:.2}")
    } else {
        format!("${d:.4}")
    }
}

/// One line of sums: `요청 12회 (실패 1) · 토큰 900/350 · 이미지 2장 · 영상 6초 · 예상 비용 $0.0123`,
/// leaving out what is zero.
pub fn totals_line(t: &Totals) -> String {
    let mut parts = vec![if t.failed > 0 {
        format!("요청 {}회 (실패 {})", t.interactions, t.failed)
    } else {
        format!("요청 {}회", t.interactions)
    }];
    if t.tokens_in + t.tokens_out > 0 {
        parts.push(format!("토큰 {}/{}", t.tokens_in, t.tokens_out));
    }
    if t.images > 0 {
        parts.push(format!("이미지 {}장", t.images));
    }
    if t.video_secs > 0 {
        parts.push(format!("영상 {}초", t.video_secs));
    }
    parts.push(format!("예상 비용 {}", dollars(t.cost_micros)));
    parts.join(" · ")
}

/// A user's usage today and this month (`/사용량` with no options, or an admin's look at one
/// user). `who` is the name shown; `timezone` the zone "today" is counted in.
pub fn user_view(who: &str, u: &UserUsage, timezone: &str) -> serenity::CreateEmbed {
    serenity::CreateEmbed::new()
        .title(format!("📊 {who} 님의 사용량"))
        .field("오늘", totals_line(&u.today), false)
        .field("이번 달", totals_line(&u.month), false)
        .footer(serenity::CreateEmbedFooter::new(format!(
            "기준 시간대: {timezone} · 비용은 공개 단가로 계산한 추정치예요"
        )))
}

/// Sums over a period for one subject (a user, a guild, the cluster).
pub fn span_view(subject: &str, period: &str, t: &Totals) -> serenity::CreateEmbed {
    let mut embed = serenity::CreateEmbed::new()
        .title(format!("📊 {subject} — 최근 {period}"))
        .field("합계", totals_line(t), false);
    if let Some(avg) = average_ms(t.queue_ms, t.interactions) {
        embed = embed.field("평균 대기", super::secs(avg), true);
    }
    if let Some(avg) = average_ms(t.provider_ms, t.interactions) {
        embed = embed.field("평균 제공사 시간", super::secs(avg), true);
    }
    embed
}

/// The top groups of one dimension over a period, highest cost first.
pub fn top_view(by: Dimension, period: &str, lines: &[UsageLine]) -> serenity::CreateEmbed {
    let rows: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| {
            format!(
                "{}. {} — 요청 {}회 · {}",
                i + 1,
                subject(by, &l.key),
                l.totals.interactions,
                dollars(l.totals.cost_micros)
            )
        })
        .collect();
    serenity::CreateEmbed::new()
        .title(format!(
            "🏆 {} 순위 — 최근 {period} (예상 비용순)",
            dimension(by)
        ))
        .description(if rows.is_empty() {
            "아직 기록이 없어요".to_owned()
        } else {
            rows.join("\n")
        })
}

/// `/성능`'s ledger lines: the cluster's sums over the last 24 hours and 7 days.
pub fn performance_lines(day: &Totals, week: &Totals) -> (String, String) {
    let line = |t: &Totals| {
        let mut s = totals_line(t);
        if let Some(avg) = average_ms(t.queue_ms, t.interactions) {
            s.push_str(&format!(" · 평균 대기 {}", super::secs(avg)));
        }
        if let Some(avg) = average_ms(t.provider_ms, t.interactions) {
            s.push_str(&format!(" · 평균 제공사 {}", super::secs(avg)));
        }
        s
    };
    (line(day), line(week))
}

/// What a dimension is called.
pub fn dimension(by: Dimension) -> &'static str {
    match by {
        Dimension::User => "사용자",
        Dimension::Guild => "서버",
        Dimension::Command => "명령어",
        Dimension::Provider => "제공사",
        Dimension::Key => "키",
        Dimension::Instance => "인스턴스",
    }
}

/// A group key as shown: users as mentions, the empty key as what it means.
fn subject(by: Dimension, key: &str) -> String {
    match (by, key) {
        (Dimension::User, k) => format!("<@{k}>"),
        (Dimension::Guild, "") => "DM".into(),
        (Dimension::Provider | Dimension::Key, "") => "제공사 호출 없음".into(),
        (Dimension::Instance, k) => format!("#{k}"),
        (_, k) => format!("`{k}`"),
    }
}

fn average_ms(sum: u64, n: u64) -> Option<u64> {
    (sum > 0 && n > 0).then(|| sum / n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_read_as_one_line_without_the_zeros() {
        let t = Totals {
            interactions: 12,
            failed: 1,
            tokens_in: 900,
            tokens_out: 350,
            images: 2,
            cost_micros: 12_300,
            ..Totals::default()
        };
        assert_eq!(
            totals_line(&t),
            "요청 12회 (실패 1) · 토큰 900/350 · 이미지 2장 · 예상 비용 $0.0123"
        );
        assert_eq!(
            totals_line(&Totals::default()),
            "요청 0회 · 예상 비용 $0.0000"
        );
        assert_eq!(dollars(123_450_000), "$123.45");
    }

    #[test]
    fn keys_are_shown_as_what_they_mean() {
        assert_eq!(subject(Dimension::User, "42"), "<@42>");
        assert_eq!(subject(Dimension::Guild, ""), "DM");
        assert_eq!(subject(Dimension::Key, ""), "제공사 호출 없음");
        assert_eq!(subject(Dimension::Command, "chat"), "`chat`");
        for msg in [LEDGER_OFF, LEDGER_UNAVAILABLE, ADMIN_OPTIONS, BAD_GUILD] {
            assert!(msg.starts_with(super::super::ERROR_PREFIX));
        }
    }
}

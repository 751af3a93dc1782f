//! Unit tests of `quota`, beside it (moved out of the file to keep it readable).

use super::*;
use keyshard_routing::QuotaZone;

fn ask(id: u64, now_ms: u64) -> QuotaAsk {
    QuotaAsk {
        interaction_id: id,
        user: 5,
        guild: Some(6),
        command: QuotaCommand::Image,
        defaults: Limits {
            cooldown_secs: 0,
            user_daily: 2,
            guild_daily: 0,
        },
        day: QuotaZone::new("Asia/Seoul").unwrap().day(now_ms),
        now_ms,
    }
}

#[test]
fn local_counters_limit_refund_and_reset_at_the_next_day() {
    let mut l = Local::default();
    let now = 1_780_000_000_000;
    assert_eq!(l.admit(&ask(1, now)), Verdict::Admit);
    assert_eq!(l.admit(&ask(2, now)), Verdict::Admit);
    assert!(matches!(
        l.admit(&ask(3, now)),
        Verdict::Refuse {
            rule: Rule::UserDaily,
            ..
        }
    ));
    // The same interaction gets the same verdict and takes nothing more.
    assert_eq!(l.admit(&ask(1, now)), Verdict::Admit);
    assert!(l.refund(2));
    assert!(!l.refund(2), "a refund gives back once");
    assert!(!l.refund(3), "a refusal reserved nothing");
    assert_eq!(l.admit(&ask(4, now)), Verdict::Admit);
    let tomorrow = ask(5, now).day.next_ms;
    assert_eq!(l.admit(&ask(5, tomorrow)), Verdict::Admit);
}

#[test]
fn verdicts_parse_from_the_script_reply() {
    let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(parse_verdict(&s(&["A"])), Verdict::Admit);
    assert_eq!(
        parse_verdict(&s(&["R", "cooldown", "30", "123"])),
        Verdict::Refuse {
            rule: Rule::Cooldown,
            limit: 30,
            until_ms: 123
        }
    );
}

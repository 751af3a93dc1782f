//! Unit tests of `gateway::identify`, beside it (moved out of the file to keep it readable).

use super::*;

#[test]
fn waits_read_as_operators_need_them() {
    let reserve = IdentifyWait::Reserve {
        remaining: 50,
        reserve: 50,
        resets_in: Some(Duration::from_secs(3_600)),
    };
    assert_eq!(reserve.kind(), "reserve");
    let text = reserve.to_string();
    assert!(
        text.contains("50 session starts left") && text.contains("IDENTIFY_RESERVE"),
        "{text}"
    );
    assert!(text.contains("3600s"), "{text}");
    assert_eq!(IdentifyWait::Local.kind(), "local");
}

#[test]
fn pttl_values_map_to_durations() {
    assert_eq!(ttl_of(-2), None);
    assert_eq!(ttl_of(-1), None);
    assert_eq!(ttl_of(0), None);
    assert_eq!(ttl_of(250), Some(Duration::from_millis(250)));
}

//! Unit tests of `writer`, beside it (moved out of the file to keep it readable).

use super::*;

#[test]
fn backoff_doubles_up_to_its_cap() {
    let base = Duration::from_millis(250);
    let max = Duration::from_secs(5);
    let d: Vec<u64> = (1..=7)
        .map(|n| backoff_delay(n, base, max).as_millis() as u64)
        .collect();
    assert_eq!(d, vec![250, 500, 1_000, 2_000, 4_000, 5_000, 5_000]);
    assert_eq!(backoff_delay(0, base, max), base);
    assert_eq!(backoff_delay(u32::MAX, base, max), max);
}

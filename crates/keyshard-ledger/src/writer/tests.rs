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

#[test]
fn a_ticks_few_rows_are_spread_and_a_backlog_is_written_at_once() {
    let cfg = WriterConfig::default();
    let gap = cfg.spread_gap;
    // One statement's worth: one statement, no pause.
    assert_eq!(statements(1, &cfg), (cfg.batch, Duration::ZERO));
    assert_eq!(statements(16, &cfg), (cfg.batch, Duration::ZERO));
    // A quarter second of 1,000/s over 4 instances: 4 statements, 5 ms apart.
    assert_eq!(statements(62, &cfg), (16, gap));
    // The most that is done within half the interval: 26 statements, 25 pauses of 5 ms.
    assert_eq!(statements(416, &cfg), (16, gap));
    // More (a backlog): full batches, back to back.
    assert_eq!(statements(417, &cfg), (cfg.batch, Duration::ZERO));
    assert_eq!(statements(cfg.batch, &cfg), (cfg.batch, Duration::ZERO));
    // Spreading turned off.
    let off = WriterConfig {
        spread_gap: Duration::ZERO,
        ..cfg
    };
    assert_eq!(statements(62, &off), (cfg.batch, Duration::ZERO));
}

#[test]
fn instances_started_together_write_at_their_own_moment_of_the_interval() {
    let i = Duration::from_millis(250);
    let starts: Vec<u128> = (1..=4).map(|me| stagger(me, 4, i).as_millis()).collect();
    assert_eq!(starts, vec![0, 62, 125, 187]);
    assert_eq!(stagger(1, 1, i), Duration::ZERO);
    // An id past the count (a misconfiguration caught elsewhere) still stays within the interval.
    assert!(stagger(9, 4, i) < i);
    assert_eq!(stagger(3, 0, i), Duration::ZERO);
}

//! Property tests of job placement (where a job moves, whom to steal from) and of the
//! service-rate estimate, over random snapshots and completion histories (seeded runner).

use std::collections::BTreeMap;
use std::time::Duration;

use keyshard_routing::{
    ladder_from, move_target, steal_order, InstanceId, InstanceState, Membership, ServiceRate,
};
use proptest::prelude::*;

use crate::runner;

const KINDS: [&str; 3] = ["chat", "image", "video"];

/// Random snapshots of 1..=8 instances, each with waiting jobs per kind. One in five publishes
/// no per-kind figures (an older version), so the fallback to its total is exercised too.
fn membership() -> impl Strategy<Value = Membership> {
    (1u32..=8).prop_flat_map(|n| {
        proptest::collection::vec(
            (
                any::<bool>(),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.2),
                [0u64..6, 0u64..6, 0u64..6],
            ),
            n as usize,
        )
        .prop_map(move |states| {
            let mut m = Membership::new(n);
            for (i, (alive, draining, old, per_kind)) in states.into_iter().enumerate() {
                let waiting: BTreeMap<String, u64> = if old {
                    BTreeMap::new()
                } else {
                    KINDS.iter().map(|k| k.to_string()).zip(per_kind).collect()
                };
                m.set(InstanceState {
                    id: i as u32 + 1,
                    alive,
                    draining,
                    queue_depth: per_kind.iter().sum(),
                    in_flight: 0,
                    service_rate: 0.0,
                    waiting,
                });
            }
            m
        })
    })
}

/// A snapshot, an instance of it, and a random set of instances that already tried the job.
fn snapshot_me_tried() -> impl Strategy<Value = (Membership, InstanceId, Vec<InstanceId>)> {
    membership().prop_flat_map(|m| {
        let n = m.count();
        (
            Just(m),
            1..=n,
            proptest::collection::vec(1..=n, 0..n as usize),
        )
    })
}

fn can_take(m: &Membership, id: InstanceId) -> bool {
    m.get(id).is_some_and(|s| s.alive && !s.draining)
}

#[test]
fn a_job_moves_to_the_first_live_untried_instance_after_me() {
    runner(5_000)
        .run(&snapshot_me_tried(), |(m, me, tried)| {
            let target = move_target(me, &tried, &m);
            let eligible = |id: InstanceId| id != me && !tried.contains(&id) && can_take(&m, id);
            match target {
                Some(t) => {
                    prop_assert_ne!(t, me);
                    prop_assert!(!tried.contains(&t));
                    prop_assert!(can_take(&m, t));
                    // Nothing eligible is skipped on the way from `me` to the target.
                    let before: Vec<_> = ladder_from(me, m.count())
                        .skip(1)
                        .take_while(|id| *id != t)
                        .collect();
                    prop_assert!(before.iter().all(|id| !eligible(*id)), "{before:?}");
                }
                None => prop_assert!((1..=m.count()).all(|id| !eligible(id))),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn steal_order_is_every_live_peer_with_work_of_the_kind_busiest_first() {
    runner(5_000)
        .run(
            &(membership(), 1u32..=8, 0usize..KINDS.len()),
            |(m, me, kind)| {
                let me = (me - 1) % m.count() + 1;
                let kind = KINDS[kind];
                let order = steal_order(me, kind, &m);
                let waiting = |id: InstanceId| m.get(id).unwrap().waiting_of(kind);
                for id in &order {
                    prop_assert_ne!(*id, me);
                    prop_assert!(m.get(*id).unwrap().alive);
                    prop_assert!(waiting(*id) > 0);
                }
                // Complete: every live peer with work of this kind is in it, once.
                let mut expected: Vec<InstanceId> = (1..=m.count())
                    .filter(|&id| id != me && m.get(id).unwrap().alive && waiting(id) > 0)
                    .collect();
                let mut sorted = order.clone();
                sorted.sort_unstable();
                expected.sort_unstable();
                prop_assert_eq!(sorted, expected);
                // Most waiting first; equal queues in id order.
                for w in order.windows(2) {
                    let (a, b) = (waiting(w[0]), waiting(w[1]));
                    prop_assert!(a > b || (a == b && w[0] < w[1]), "{order:?}");
                }
                Ok(())
            },
        )
        .unwrap();
}

/// A start time, sorted completion times after it, and a `now` at or after the last one.
fn history() -> impl Strategy<Value = (Duration, Vec<Duration>, Duration)> {
    (
        0u64..100_000,
        proptest::collection::vec(0u64..20_000, 0..60),
        0u64..60_000,
    )
        .prop_map(|(start, gaps, tail)| {
            let mut t = start;
            let times: Vec<Duration> = gaps
                .into_iter()
                .map(|g| {
                    t += g;
                    Duration::from_millis(t)
                })
                .collect();
            (
                Duration::from_millis(start),
                times,
                Duration::from_millis(t + tail),
            )
        })
}

#[test]
fn the_rate_counts_the_window_and_never_exceeds_count_over_min_span() {
    runner(5_000)
        .run(&history(), |(start, times, now)| {
            let mut r = ServiceRate::new(start);
            prop_assert_eq!(r.rate(now), 0.0, "no completions, no rate");
            for t in &times {
                r.record(*t);
            }
            let rate = r.rate(now);
            prop_assert!(rate.is_finite() && rate >= 0.0, "{rate}");
            let in_window = times
                .iter()
                .filter(|t| now - **t <= ServiceRate::WINDOW)
                .count();
            // Older completions are forgotten, recent ones all count.
            prop_assert_eq!(r.recent(now), in_window);
            prop_assert!(rate <= in_window as f64 / ServiceRate::MIN_SPAN.as_secs_f64() + 1e-9);
            prop_assert!(rate <= times.len() as f64 / ServiceRate::MIN_SPAN.as_secs_f64() + 1e-9);
            prop_assert_eq!(rate == 0.0, in_window == 0);
            // The divisor is never more than the window: a full window of work is its rate.
            prop_assert!(rate + 1e-9 >= in_window as f64 / ServiceRate::WINDOW.as_secs_f64());
            Ok(())
        })
        .unwrap();
}

#[test]
fn one_more_completion_never_lowers_the_rate() {
    runner(2_000)
        .run(&history(), |(start, times, now)| {
            let mut r = ServiceRate::new(start);
            for t in &times {
                r.record(*t);
            }
            let before = r.rate(now);
            r.record(now);
            prop_assert!(r.rate(now) >= before);
            Ok(())
        })
        .unwrap();
}

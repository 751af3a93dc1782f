//! Property tests of the gateway policy: the IDENTIFY decision over random views, a whole
//! cluster's IDENTIFYs through a model of the shared store (one slot per bucket, one day
//! counter, the take-then-check of the mechanism), and the restart backoff.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::time::Duration;

use keyshard_routing::{
    bucket, identify_turn, keeps_reserve, restart_delay, starts_within, IdentifyPolicy,
    IdentifyTurn, IdentifyView, RestartPolicy, WaitReason,
};
use proptest::prelude::*;

use crate::runner;

fn views() -> impl Strategy<Value = (IdentifyView, IdentifyPolicy)> {
    (
        prop::option::of(0u64..10_000),
        prop::option::of(0u32..200),
        prop::option::of(0u64..100_000_000),
        prop::bool::weighted(0.3),
        0u64..20_000,
        1u64..10_000,
        0u32..100,
    )
        .prop_map(
            |(busy, remaining, resets, backoff, left, window, reserve)| {
                (
                    IdentifyView {
                        bucket_busy_for: busy.map(Duration::from_millis),
                        remaining,
                        resets_in: resets.map(Duration::from_millis),
                        backoff_left: if backoff {
                            Duration::from_millis(left)
                        } else {
                            Duration::ZERO
                        },
                    },
                    IdentifyPolicy {
                        window: Duration::from_millis(window),
                        reserve,
                    },
                )
            },
        )
}

#[test]
fn an_identify_goes_only_with_a_free_slot_budget_above_the_reserve_and_no_backoff() {
    runner(5_000)
        .run(&views(), |(view, policy)| {
            let turn = identify_turn(&view, &policy);
            match turn {
                IdentifyTurn::Now => {
                    prop_assert!(view.backoff_left.is_zero());
                    prop_assert!(view.remaining.is_some_and(|r| r > policy.reserve));
                    prop_assert!(view.bucket_busy_for.is_none_or(|b| b.is_zero()));
                }
                IdentifyTurn::Wait { delay, why } => {
                    // Every wait is a positive delay that ends when its reason does.
                    prop_assert!(!delay.is_zero());
                    match why {
                        WaitReason::Backoff => prop_assert_eq!(delay, view.backoff_left),
                        WaitReason::Bucket => {
                            prop_assert_eq!(Some(delay), view.bucket_busy_for)
                        }
                    }
                }
                IdentifyTurn::AtReserve {
                    remaining,
                    retry_in,
                    ..
                } => {
                    prop_assert!(remaining <= policy.reserve);
                    prop_assert!(retry_in <= keyshard_routing::gateway::RESERVE_RECHECK);
                }
                IdentifyTurn::RefreshBudget => prop_assert!(view.remaining.is_none()),
            }
            Ok(())
        })
        .unwrap();
}

/// A cluster in miniature: `instances × shards` IDENTIFY requests at random times through a
/// store with one slot per bucket and one day counter, each request following the policy and
/// the mechanism's take-then-check. Returns the grant times per bucket and the counter left.
fn simulate(
    instances: u32,
    shards: u32,
    max_concurrency: u32,
    budget: u32,
    policy: IdentifyPolicy,
    arrivals: &[u64],
) -> (BTreeMap<u32, Vec<u64>>, i64, u32) {
    let window = policy.slot_hold().as_millis() as u64;
    let mut slot_until: BTreeMap<u32, u64> = BTreeMap::new();
    let mut remaining = i64::from(budget);
    let mut grants: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    let mut refused = 0;
    // (time, request number): requests ask in time order; ties in request order.
    let mut queue: BinaryHeap<Reverse<(u64, u32)>> = BinaryHeap::new();
    let total = instances * shards;
    for r in 0..total {
        queue.push(Reverse((arrivals[r as usize % arrivals.len()], r)));
    }
    while let Some(Reverse((now, r))) = queue.pop() {
        let b = bucket(r % shards, max_concurrency);
        let busy = slot_until.get(&b).copied().filter(|&u| u > now);
        let view = IdentifyView {
            bucket_busy_for: busy.map(|u| Duration::from_millis(u - now)),
            remaining: Some(remaining.max(0) as u32),
            resets_in: None,
            backoff_left: Duration::ZERO,
        };
        match identify_turn(&view, &policy) {
            IdentifyTurn::Now => {
                // The mechanism's atomic take: the slot only if still free, then the counter.
                if slot_until.get(&b).is_some_and(|&u| u > now) {
                    queue.push(Reverse((now + 1, r)));
                    continue;
                }
                slot_until.insert(b, now + window);
                remaining -= 1;
                if keeps_reserve(remaining, policy.reserve) {
                    grants.entry(b).or_default().push(now);
                } else {
                    remaining += 1;
                    refused += 1;
                }
            }
            IdentifyTurn::Wait { delay, .. } => {
                queue.push(Reverse((now + delay.as_millis() as u64, r)));
            }
            IdentifyTurn::AtReserve { .. } => refused += 1,
            IdentifyTurn::RefreshBudget => unreachable!("the model always knows the count"),
        }
    }
    (grants, remaining, refused)
}

#[test]
fn a_cluster_spends_one_identify_per_bucket_per_window_and_never_the_reserve() {
    let cases = (
        1u32..=6,
        1u32..=6,
        prop::sample::select(vec![1u32, 2, 4, 16]),
        0u32..60,
        0u32..10,
        prop::collection::vec(0u64..3_000, 1..40),
    );
    runner(2_000)
        .run(
            &cases,
            |(instances, shards, mc, budget, reserve, arrivals)| {
                let policy = IdentifyPolicy {
                    window: Duration::from_millis(500),
                    reserve,
                };
                let (grants, remaining, refused) =
                    simulate(instances, shards, mc, budget, policy, &arrivals);
                let granted: u32 = grants.values().map(|g| g.len() as u32).sum();
                // Every request is either granted or refused at the reserve, none is lost.
                prop_assert_eq!(granted + refused, instances * shards);
                // The budget down to the reserve is spent, and no further.
                prop_assert_eq!(
                    granted,
                    (instances * shards).min(budget.saturating_sub(reserve))
                );
                prop_assert!(remaining >= i64::from(reserve.min(budget)));
                // A window apart at least, with the slot's margin on top.
                for times in grants.values() {
                    for w in times.windows(2) {
                        prop_assert!(w[1] - w[0] >= 600, "{times:?}");
                    }
                }
                Ok(())
            },
        )
        .unwrap();
}

#[test]
fn the_restart_backoff_grows_is_capped_and_bounds_a_crash_loop() {
    // Spans of up to a few hundred capped waits, so the bound is reached in a few steps.
    let cases = (1u64..60_000, 1u64..200, 0u64..300_000);
    runner(2_000)
        .run(&cases, |(base, factor, span_permille)| {
            let policy = RestartPolicy {
                base: Duration::from_millis(base),
                max: Duration::from_millis(base * factor),
            };
            let span = base * factor * span_permille / 1_000;
            prop_assert_eq!(restart_delay(1, &policy), Duration::ZERO);
            let mut previous = Duration::ZERO;
            for n in 1..40 {
                let d = restart_delay(n, &policy);
                prop_assert!(d >= previous);
                prop_assert!(d <= policy.max);
                previous = d;
            }
            // The bound: the first `n` starts' waits fit in the span, one more does not.
            let span = Duration::from_millis(span);
            let n = starts_within(span, &policy);
            let waited = |k: u32| (1..=k).map(|i| restart_delay(i, &policy)).sum::<Duration>();
            prop_assert!(waited(n) <= span);
            prop_assert!(waited(n + 1) > span);
            Ok(())
        })
        .unwrap();
}

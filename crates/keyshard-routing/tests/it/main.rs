//! Property tests of the routing policy over random snapshots (seeded, so runs repeat).

mod fair;
mod gateway;
mod placement;

use std::time::Duration;

use keyshard_routing::{
    claim_turn, effective_owner, ladder, primary, snowflake_at, ClaimTiming, ClaimTurn,
    InstanceState, Membership, OverloadPolicy, Reason,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use rand::{Rng, SeedableRng};

/// A fixed-seed runner: the same cases on every run and every machine.
fn runner(cases: u32) -> TestRunner {
    let seed = *b"keyshard-routing-proptest-seed!!";
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

fn policy() -> OverloadPolicy {
    OverloadPolicy {
        max_wait: Duration::from_secs(10),
        assumed_rate: 1.0,
    }
}

/// Random snapshots of 1..=8 instances: any mix of dead, draining, idle and loaded.
fn membership() -> impl Strategy<Value = Membership> {
    (1u32..=8).prop_flat_map(|n| {
        proptest::collection::vec(
            (any::<bool>(), prop::bool::weighted(0.1), 0u64..60, 0u32..4),
            n as usize,
        )
        .prop_map(move |states| {
            let mut m = Membership::new(n);
            for (i, (alive, draining, queue, rate)) in states.into_iter().enumerate() {
                m.set(InstanceState {
                    id: i as u32 + 1,
                    alive,
                    draining,
                    queue_depth: queue,
                    in_flight: 0,
                    service_rate: f64::from(rate),
                    waiting: Default::default(),
                });
            }
            m
        })
    })
}

#[test]
fn exactly_one_live_owner_when_anyone_is_alive() {
    runner(5_000)
        .run(&(membership(), any::<u64>()), |(m, user)| {
            let a = effective_owner(user, &m, &policy());
            if m.alive_count() == 0 {
                prop_assert_eq!(a.owner, None);
                prop_assert_eq!(a.reason, Reason::NoneAlive);
            } else {
                let owner = a.owner.expect("someone is alive");
                prop_assert!(m.get(owner).unwrap().alive);
                // Every live instance runs the claim schedule on the same snapshot: exactly one
                // of them claims at once, and it is the owner.
                let id = snowflake_at(1_790_000_000_000, 1);
                let now: Vec<u32> = (1..=m.count())
                    .filter(|&me| m.get(me).unwrap().alive)
                    .filter(|&me| {
                        let turn = claim_turn(
                            me,
                            user,
                            id,
                            1_790_000_000_000,
                            &m,
                            &policy(),
                            &ClaimTiming::default(),
                        );
                        matches!(turn, ClaimTurn::Now(_))
                    })
                    .collect();
                prop_assert_eq!(now, vec![owner]);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn primary_is_chosen_whenever_it_is_available() {
    runner(5_000)
        .run(&(membership(), any::<u64>()), |(m, user)| {
            let p = primary(user, m.count());
            let a = effective_owner(user, &m, &policy());
            if m.get(p).unwrap().is_available(&policy()) {
                prop_assert_eq!(a.owner, Some(p));
                prop_assert_eq!(a.reason, Reason::Primary);
            } else {
                prop_assert_ne!(a.reason, Reason::Primary);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn owner_is_first_available_on_the_ladder() {
    runner(2_000)
        .run(&(membership(), any::<u64>()), |(m, user)| {
            let a = effective_owner(user, &m, &policy());
            let first =
                ladder(user, m.count()).find(|&id| m.get(id).unwrap().is_available(&policy()));
            if let Some(first) = first {
                prop_assert_eq!(a.owner, Some(first));
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn ladder_is_a_permutation_starting_at_primary() {
    runner(2_000)
        .run(&(1u32..=16, any::<u64>()), |(n, user)| {
            let l: Vec<_> = ladder(user, n).collect();
            prop_assert_eq!(l[0], primary(user, n));
            let mut sorted = l.clone();
            sorted.sort_unstable();
            prop_assert_eq!(sorted, (1..=n).collect::<Vec<_>>());
            Ok(())
        })
        .unwrap();
}

#[test]
fn users_spread_evenly_over_four_instances() {
    // 100,000 random snowflake user ids from accounts created over Discord's lifetime.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6b65_7973_6861_7264);
    let mut counts = [0u32; 4];
    let total = 100_000;
    for _ in 0..total {
        let created = rng.random_range(1_420_070_400_000u64..1_790_000_000_000);
        let user = snowflake_at(created, rng.random::<u32>());
        counts[primary(user, 4) as usize - 1] += 1;
    }
    for (i, c) in counts.iter().enumerate() {
        let share = f64::from(*c) / f64::from(total);
        assert!(
            (0.24..=0.26).contains(&share),
            "instance {} owns {:.2} % of users",
            i + 1,
            share * 100.0
        );
    }
}

#[test]
fn fallbacks_wait_at_least_grace_and_in_ladder_order() {
    let timing = ClaimTiming::default();
    runner(3_000)
        .run(
            &(membership(), any::<u64>(), 0u64..3_500),
            |(m, user, received_after)| {
                let created = 1_790_000_000_000u64;
                let id = snowflake_at(created, 9);
                let now = created + received_after;
                let turns: Vec<(u32, ClaimTurn)> = (1..=m.count())
                    .map(|me| (me, claim_turn(me, user, id, now, &m, &policy(), &timing)))
                    .collect();
                let owner = effective_owner(user, &m, &policy()).owner;
                for (me, turn) in &turns {
                    match turn {
                        ClaimTurn::Now(_) => {
                            // Only the owner, or an instance the snapshot calls dead (which counts
                            // itself alive and so may see itself as owner), claims at once.
                            prop_assert!(owner == Some(*me) || !m.get(*me).unwrap().alive);
                        }
                        ClaimTurn::After { delay, .. } => {
                            prop_assert!(*delay >= timing.grace);
                            prop_assert!(owner != Some(*me));
                        }
                    }
                }
                // Live fallbacks of a higher rank never try before those of a lower rank.
                let mut live: Vec<(u32, Duration)> = turns
                    .iter()
                    .filter(|(me, _)| m.get(*me).unwrap().alive)
                    .filter_map(|(_, t)| match t {
                        ClaimTurn::After { rank, delay, .. } => Some((*rank, *delay)),
                        ClaimTurn::Now(_) => None,
                    })
                    .collect();
                live.sort();
                for w in live.windows(2) {
                    prop_assert!(w[0].1 <= w[1].1);
                }
                Ok(())
            },
        )
        .unwrap();
}

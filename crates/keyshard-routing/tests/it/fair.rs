//! Property tests of the fair pick: work-conserving, least service in hand first, oldest first
//! among equals, and a light user never waits behind a heavy user's queue (seeded runner).

use std::collections::HashMap;

use std::time::Duration;

use keyshard_routing::{fair_pick, lateness, Lateness, Waiting};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

use crate::runner;

/// Random queues of up to 40 jobs from up to 6 users, each user with 0..5 jobs in hand.
fn queue() -> impl Strategy<Value = Vec<Waiting>> {
    (
        [0u64..5, 0u64..5, 0u64..5, 0u64..5, 0u64..5, 0u64..5],
        [0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..4, 0u64..4],
        proptest::collection::vec(0usize..6, 0..40),
    )
        .prop_map(|(in_hand, last_served, users)| {
            users
                .into_iter()
                .map(|u| Waiting {
                    user: u as u64,
                    in_hand: in_hand[u],
                    last_served: last_served[u],
                    lateness: Lateness::OnTime,
                })
                .collect()
        })
}

#[test]
fn the_pick_is_work_conserving_and_takes_the_oldest_job_of_the_least_served() {
    runner(500)
        .run(&queue(), |q| {
            let pick = fair_pick(&q);
            prop_assert_eq!(
                pick.is_some(),
                !q.is_empty(),
                "a job runs whenever one waits"
            );
            if let Some(i) = pick {
                let key = |w: &Waiting| (w.in_hand, w.last_served);
                let least = q.iter().map(key).min().unwrap();
                prop_assert_eq!(key(&q[i]), least);
                prop_assert!(q[..i].iter().all(|w| key(w) > least), "oldest first");
            }
            Ok(())
        })
        .unwrap();
}

/// Workers take jobs one at a time with the pick, each finishing in one step: a light user
/// who queues one job behind `heavy` jobs of one heavy user (who already has `busy` in flight)
/// is served in the first round of picks, or the second when the heavy user had nothing in
/// flight and there is one worker: never after the heavy user's queue.
#[test]
fn a_light_users_job_does_not_wait_behind_a_heavy_users_queue() {
    let cases = (1u64..200, 0u64..8, 1usize..8);
    runner(300)
        .run(&cases, |(heavy, busy, workers)| {
            let (heavy_user, light_user) = (1u64, 2u64);
            let mut in_hand: HashMap<u64, u64> = HashMap::from([(heavy_user, busy)]);
            let mut last_served: HashMap<u64, u64> = HashMap::new();
            let mut seq = 0;
            let mut queue: Vec<u64> = vec![heavy_user; heavy as usize];
            queue.push(light_user);
            // One round: every free worker picks; then every running job finishes.
            let mut rounds = 0;
            loop {
                rounds += 1;
                let mut running = Vec::new();
                for _ in 0..workers {
                    let view: Vec<Waiting> = queue
                        .iter()
                        .map(|u| Waiting {
                            user: *u,
                            in_hand: in_hand.get(u).copied().unwrap_or(0),
                            last_served: last_served.get(u).copied().unwrap_or(0),
                            lateness: Lateness::OnTime,
                        })
                        .collect();
                    let Some(i) = fair_pick(&view) else { break };
                    let u = queue.remove(i);
                    *in_hand.entry(u).or_default() += 1;
                    seq += 1;
                    last_served.insert(u, seq);
                    running.push(u);
                }
                if running.contains(&light_user) {
                    break;
                }
                for u in running {
                    *in_hand.get_mut(&u).unwrap() -= 1;
                }
                // The heavy user's earlier jobs finish too.
                in_hand.insert(heavy_user, 0);
            }
            // Only a heavy user with nothing in flight and one worker goes first (its oldest
            // job is first come); then the light user is next: one job's service time.
            let expected = if busy == 0 && workers == 1 { 2 } else { 1 };
            prop_assert_eq!(rounds, expected);
            Ok(())
        })
        .unwrap();
}

/// The longest wait of an admitted job in a toy cluster under sustained 3x overload: 500 users,
/// 3 arrivals and 1 service a tick for 3,000 ticks, a job admitted while its first-come
/// estimate (the queue plus itself, a tick each) is within `max` ticks, and the fair pick with
/// overdue jobs marked (`ageing`) or not.
fn longest_wait_at_3x(max: u64, ageing: bool) -> u64 {
    let mut rng = rand::rngs::SmallRng::seed_from_u64(14);
    let mut queue: Vec<(u64, u64)> = Vec::new(); // (user, arrived at)
    let mut last_served: HashMap<u64, u64> = HashMap::new();
    let mut longest = 0;
    for tick in 0..3_000u64 {
        for _ in 0..3 {
            if (queue.len() as u64) < max {
                queue.push((rng.random_range(0..500), tick));
            }
        }
        let view: Vec<Waiting> = queue
            .iter()
            .map(|&(user, at)| Waiting {
                user,
                in_hand: 0,
                last_served: last_served.get(&user).copied().unwrap_or(0),
                lateness: if ageing {
                    lateness(
                        Duration::from_secs(tick - at),
                        Some(Duration::from_secs(max)),
                    )
                } else {
                    Lateness::OnTime
                },
            })
            .collect();
        if let Some(i) = fair_pick(&view) {
            let (user, at) = queue.remove(i);
            last_served.insert(user, tick + 1);
            longest = longest.max(tick + 1 - at);
        }
    }
    longest
}

/// Without overdue jobs, a job of a user served a moment ago is passed by every newly admitted
/// job of a user served longer ago: under sustained overload it waits many times the maximum it
/// was admitted under. Overdue jobs going first, oldest first, keep every wait within it.
#[test]
fn under_sustained_overload_overdue_jobs_keep_every_wait_within_the_maximum() {
    let max = 20;
    let without = longest_wait_at_3x(max, false);
    assert!(without > 3 * max, "the fair pick alone: {without} ticks");
    let with = longest_wait_at_3x(max, true);
    assert!(
        with <= max + max / 10,
        "with overdue jobs first: {with} ticks"
    );
}

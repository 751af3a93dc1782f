//! Property tests of the fair pick: work-conserving, least service in hand first, oldest first
//! among equals, and a light user never waits behind a heavy user's queue (seeded runner).

use std::collections::HashMap;

use keyshard_routing::{fair_pick, Waiting};
use proptest::prelude::*;

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

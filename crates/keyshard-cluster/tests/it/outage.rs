//! Redis going away: the static rule meanwhile, full service afterwards, and never two
//! answers for one interaction while Redis is up.

use keyshard_cluster::ClaimOutcome;
use keyshard_routing::primary;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

const ALL: [u32; 4] = [1, 2, 3, 4];

#[tokio::test]
async fn redis_killed_and_restarted_static_rule_meanwhile_then_full_service() {
    let mut tc = TestCluster::start().await;
    let mut rng = SmallRng::seed_from_u64(7);

    tc.redis.kill();
    wait_for("every node to notice the outage", PATIENCE, || {
        tc.nodes.iter().all(|n| n.cluster.is_degraded())
    })
    .await;

    for seq in 0..100 {
        let user: u64 = rng.random();
        let outcomes = tc.claim_on(&ALL, interaction(seq), user).await;
        assert_eq!(answering(&outcomes), vec![primary(user, N)], "{outcomes:?}");
        for (me, outcome, _) in &outcomes {
            let ClaimOutcome::Degraded { answer, assignment } = outcome else {
                panic!("Redis is down, yet {outcome:?}");
            };
            assert_eq!(*answer, *me == primary(user, N));
            assert_eq!(assignment.owner, Some(primary(user, N)));
        }
    }
    let degraded: u64 = tc
        .nodes
        .iter()
        .map(|n| n.cluster.metrics().snapshot().degraded_decisions)
        .sum();
    let answers: u64 = tc
        .nodes
        .iter()
        .map(|n| n.cluster.metrics().snapshot().degraded_answers)
        .sum();
    assert_eq!((degraded, answers), (400, 100));
    assert!(
        tc.nodes.iter().all(|n| !n.task.is_finished()),
        "the loops survive the outage"
    );

    tc.redis.restart();
    // Nothing is told about the restart: the loops find Redis again and re-announce.
    tc.wait_all_see_all_alive().await;
    // Concurrently: the fallbacks' waits (up to grace + 2 steps) would add up otherwise.
    let batch: Vec<_> = (100..200)
        .map(|seq| {
            let user: u64 = rng.random();
            let claims = claim_with(tc.handles(&ALL), interaction(seq), user);
            async move { (user, claims.await) }
        })
        .collect();
    for (user, outcomes) in futures_join_all(batch).await {
        assert_eq!(answering(&outcomes), vec![primary(user, N)], "{outcomes:?}");
        let won = outcomes
            .iter()
            .filter(|(_, o, _)| matches!(o, ClaimOutcome::Won { .. }))
            .count();
        assert_eq!(won, 1, "{outcomes:?}");
    }
}

#[tokio::test]
async fn right_after_a_restart_each_interaction_is_answered_exactly_once() {
    let mut tc = TestCluster::start().await;
    let mut rng = SmallRng::seed_from_u64(11);
    tc.redis.kill();
    wait_for("every node to notice the outage", PATIENCE, || {
        tc.nodes.iter().all(|n| n.cluster.is_degraded())
    })
    .await;
    tc.redis.restart();
    // The test runtime is single-threaded, so no loop has run since the restart: every node
    // still believes Redis is down.
    assert!(tc.nodes.iter().all(|n| n.cluster.is_degraded()));

    // The first claim: its primary tries Redis although degraded, and reaches it; the other
    // (still degraded) nodes decline by the static rule. One answer, through Redis.
    let user = user_of(3, 1);
    let outcomes = tc.claim_on(&ALL, interaction(0), user).await;
    assert_eq!(answering(&outcomes), vec![3], "{outcomes:?}");
    assert!(
        matches!(outcomes[2].1, ClaimOutcome::Won { .. }),
        "{outcomes:?}"
    );

    // Keep starting claims every 5 ms while the nodes recover one by one (and a while
    // after): never two answers, never none.
    let mut seq = 1;
    let mut mixed_seen = false;
    let mut claims = Vec::new();
    let recovering = std::time::Instant::now();
    while tc.nodes.iter().any(|n| n.cluster.is_degraded()) || seq < 60 {
        mixed_seen |= tc.nodes.iter().any(|n| n.cluster.is_degraded())
            && tc.nodes.iter().any(|n| !n.cluster.is_degraded());
        let user: u64 = rng.random();
        claims.push(tokio::spawn(claim_with(
            tc.handles(&ALL),
            interaction(seq),
            user,
        )));
        seq += 1;
        assert!(recovering.elapsed() < PATIENCE, "the nodes never recovered");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    for claim in claims {
        let outcomes = claim.await.unwrap();
        assert_eq!(answering(&outcomes).len(), 1, "{outcomes:?}");
    }
    assert!(
        mixed_seen,
        "the test should exercise a mix of degraded and recovered nodes"
    );
}

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
async fn after_a_restart_nodes_that_still_believe_redis_down_never_answer_twice() {
    let mut tc = TestCluster::start().await;
    let mut rng = SmallRng::seed_from_u64(11);
    tc.redis.kill();
    wait_for("every node to notice the outage", PATIENCE, || {
        tc.nodes.iter().all(|n| n.cluster.is_degraded())
    })
    .await;
    // Freeze the belief of 1, 2 and 4: with their loops stopped, nothing tells them Redis is
    // back, which stands for peers whose next tick has not come yet.
    for i in [0, 1, 3] {
        tc.nodes[i].shutdown.cancel();
    }
    wait_for("the loops of 1, 2 and 4 to stop", PATIENCE, || {
        [0, 1, 3].iter().all(|&i| tc.nodes[i].task.is_finished())
    })
    .await;
    tc.redis.restart();
    wait_for("instance 3 to find Redis again", PATIENCE, || {
        !tc.node(3).is_degraded() && tc.node(3).membership().get(3).unwrap().alive
    })
    .await;
    assert!([1, 2, 4].iter().all(|&id| tc.node(id).is_degraded()));

    // A degraded primary still tries Redis first, and reaches it.
    let outcomes = tc.claim_on(&[1], interaction(0), user_of(1, 1)).await;
    assert!(
        matches!(outcomes[0].1, ClaimOutcome::Won { .. }),
        "{outcomes:?}"
    );
    assert!(
        !tc.node(1).is_degraded(),
        "a successful claim ends degraded mode"
    );

    // Mixed beliefs (3 and 1 up, 2 and 4 degraded; 3 sees nobody else alive, 1 still holds
    // its pre-outage snapshot): exactly one answer per interaction, always through Redis.
    let batch: Vec<_> = (1..=200)
        .map(|seq| {
            let user: u64 = rng.random();
            let claims = claim_with(tc.handles(&ALL), interaction(seq), user);
            async move { (user, claims.await) }
        })
        .collect();
    for (user, outcomes) in futures_join_all(batch).await {
        let answers = answering(&outcomes);
        assert_eq!(answers.len(), 1, "user {user}: {outcomes:?}");
        assert!(
            outcomes
                .iter()
                .all(|(_, o, _)| !matches!(o, ClaimOutcome::Degraded { answer: true, .. })),
            "Redis is up: no answer by the static rule: {outcomes:?}"
        );
    }
}

#[tokio::test]
async fn a_node_started_while_redis_is_down_serves_degraded_and_connects_later() {
    let mut redis = keyshard_testkit::RedisServer::start();
    redis.kill();
    let cluster = keyshard_cluster::Cluster::new(config(&redis.url(), "kstest", 2)).unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = cluster.spawn(shutdown.clone());

    // A few ticks against the dead port: still degraded, still serving.
    wait_for("a few failed ticks", PATIENCE, || {
        cluster.metrics().snapshot().redis_errors >= 3
    })
    .await;
    assert!(cluster.is_degraded() && !task.is_finished());
    let outcome = cluster.claim(interaction(0), user_of(2, 1), now_ms()).await;
    assert!(
        matches!(outcome, ClaimOutcome::Degraded { answer: true, .. }),
        "{outcome:?}"
    );
    assert!(cluster.redis_ping().await.is_err());

    redis.restart();
    wait_for("the node to connect by itself", PATIENCE, || {
        cluster.is_ready() && cluster.membership().get(2).unwrap().alive
    })
    .await;
    let outcome = cluster.claim(interaction(1), user_of(2, 1), now_ms()).await;
    assert!(matches!(outcome, ClaimOutcome::Won { .. }), "{outcome:?}");
    assert!(cluster.redis_ping().await.is_ok());
    shutdown.cancel();
    task.await.unwrap();
}

/// The owner answers, then Redis restarts empty while a fallback waits its turn: the claim
/// key is gone, but the fallback notices the new Redis and declines instead of answering a
/// second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_declines_after_an_empty_redis_restart() {
    let mut tc = TestCluster::start().await;
    let user = user_of(1, 11);
    let id = interaction(77);
    let owner = claim_with(tc.handles(&[1]), id, user).await;
    assert_eq!(answering(&owner), vec![1]);
    // The fallback received the interaction at the same time and is now waiting its grace.
    let fallback = tokio::spawn(claim_with(tc.handles(&[2]), id, user));
    tc.redis.kill();
    tc.redis.restart();
    let outcome = fallback.await.unwrap();
    assert!(
        answering(&outcome).is_empty(),
        "the fallback answered again: {outcome:?}"
    );
}

//! Heartbeats and load: a silent instance is dead within DEAD_AFTER_MS, a leaving one at
//! once, and published load and draining move users along the ladder.

use keyshard_cluster::{fetch_status, ClaimOutcome, Load, OverloadPolicy, Reason};
use keyshard_routing::effective_owner;

use crate::support::*;

#[tokio::test]
async fn stopped_heartbeat_is_seen_dead_within_dead_after_and_the_ladder_takes_over() {
    let tc = TestCluster::start().await;
    // A crash: the loops stop and nobody deletes the heartbeat.
    tc.nodes[2].task.abort();
    let survivors = [1, 2, 4];

    let took = wait_for(
        "instance 3 to be seen dead by all survivors",
        PATIENCE,
        || {
            survivors
                .iter()
                .all(|&id| !tc.node(id).membership().get(3).unwrap().alive)
        },
    )
    .await;
    // The key lives DEAD_AFTER from the last heartbeat (at most one HEARTBEAT before the
    // abort), and each survivor reads it within one SNAPSHOT_EVERY after it expires.
    assert!(took <= DEAD_AFTER + SNAPSHOT_EVERY + SLACK, "{took:?}");
    assert!(
        took >= DEAD_AFTER - HEARTBEAT - SNAPSHOT_EVERY,
        "too early to be the TTL: {took:?}"
    );

    // Users of 3 now belong to 4, the next alive instance on their ladder.
    let user = user_of(3, 11);
    let policy = OverloadPolicy::default();
    for id in survivors {
        let a = effective_owner(user, &tc.node(id).membership(), &policy);
        assert_eq!(
            (a.primary, a.owner, a.reason),
            (3, Some(4), Reason::PrimaryDown)
        );
    }
    let outcomes = tc.claim_on(&survivors, interaction(1), user).await;
    assert_eq!(answering(&outcomes), vec![4], "{outcomes:?}");
    let ClaimOutcome::Won {
        assignment, rank, ..
    } = &outcomes[2].1
    else {
        panic!("{outcomes:?}");
    };
    assert_eq!((assignment.reason, *rank), (Reason::PrimaryDown, None));
    assert_eq!(tc.node(4).metrics().snapshot().takeovers_down, 1);

    // The CLI view agrees.
    let status = fetch_status(&tc.redis.url(), &tc.name, N, &policy)
        .await
        .unwrap();
    assert_eq!(
        status.instances.iter().map(|s| s.alive).collect::<Vec<_>>(),
        vec![true, true, false, true]
    );
    for s in status.instances.iter().filter(|s| s.alive) {
        let age = s.heartbeat_age_ms.expect("alive instances have an age");
        assert!(age <= DEAD_AFTER.as_millis() as u64, "{s:?}");
    }
    assert_eq!(status.assign(user, &policy).owner, Some(4));
}

#[tokio::test]
async fn leaving_instance_is_taken_over_at_once() {
    let tc = TestCluster::start().await;
    let node = &tc.nodes[1];
    node.shutdown.cancel();
    node.cluster.leave().await;
    let took = wait_for("instance 2 to be seen gone", PATIENCE, || {
        !tc.node(1).membership().get(2).unwrap().alive
    })
    .await;
    assert!(
        took < DEAD_AFTER - HEARTBEAT,
        "leave deletes the key; no TTL wait: {took:?}"
    );
    // Nothing brings the heartbeat back.
    // Two heartbeat rounds of a peer: a stray heartbeat loop of 2 would have written by then.
    let seen = tc.node(1).metrics().snapshot().heartbeats;
    wait_for("two more heartbeats of instance 1", PATIENCE, || {
        tc.node(1).metrics().snapshot().heartbeats >= seen + 2
    })
    .await;
    let status = fetch_status(&tc.redis.url(), &tc.name, N, &OverloadPolicy::default())
        .await
        .unwrap();
    assert!(!status.instances[1].alive);
}

#[tokio::test]
async fn published_load_and_draining_move_users_along_the_ladder() {
    let tc = TestCluster::start().await;
    let policy = OverloadPolicy::default();
    // Instance 1 drains; instance 2 reports a 100 s queue (over the 20 s limit).
    tc.node(1).set_draining(true);
    tc.node(2).set_load(Load {
        queue_depth: 100,
        in_flight: 3,
        service_rate: 1.0,
        waiting: [("image".to_owned(), 100)].into(),
    });
    wait_for(
        "every node to see 1 draining and 2 loaded",
        PATIENCE,
        || {
            tc.nodes.iter().all(|n| {
                let m = n.cluster.membership();
                m.get(1).unwrap().draining
                    && m.get(2).unwrap().queue_depth == 100
                    && m.get(2).unwrap().waiting_of("image") == 100
            })
        },
    )
    .await;

    let status = fetch_status(&tc.redis.url(), &tc.name, N, &policy)
        .await
        .unwrap();
    let two = &status.instances[1];
    assert_eq!(
        (two.queue_depth, two.in_flight, two.estimated_wait_ms),
        (100, 3, 100_000)
    );
    assert!(two.overloaded && status.instances[0].overloaded && !status.instances[2].overloaded);

    // A user of 1 skips 1 (draining) and 2 (overloaded) and lands on 3.
    let user = user_of(1, 5);
    let outcomes = tc.claim_on(&[1, 2, 3, 4], interaction(1), user).await;
    assert_eq!(answering(&outcomes), vec![3], "{outcomes:?}");
    let ClaimOutcome::Won { assignment, .. } = &outcomes[2].1 else {
        panic!("{outcomes:?}");
    };
    assert_eq!(assignment.reason, Reason::PrimaryOverloaded);
    assert_eq!(tc.node(3).metrics().snapshot().takeovers_overload, 1);

    // Draining ends: the primary takes its users back.
    tc.node(1).set_draining(false);
    wait_for("every node to see 1 back", PATIENCE, || {
        tc.nodes
            .iter()
            .all(|n| !n.cluster.membership().get(1).unwrap().draining)
    })
    .await;
    let outcomes = tc.claim_on(&[1, 2, 3, 4], interaction(2), user).await;
    assert_eq!(answering(&outcomes), vec![1], "{outcomes:?}");
}

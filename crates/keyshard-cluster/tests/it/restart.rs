//! Redis restarted with its data kept (`docker restart redis` with a volume: saved on SIGTERM,
//! loaded at start). The generation key comes back unchanged, heartbeats that expired while
//! Redis was away do not, and a primary that could not reach it answered its users by the
//! static rule, with no claim key. An instance that saw no failure of its own (its calls fell
//! before and after the outage, or were retried on a fresh connection) must still notice the
//! restart, by the server's `run_id`, and not answer those users a second time; nor take a
//! claim that lapsed unconfirmed across the restart for its holder's death.

use std::time::Duration;

use keyshard_cluster::{ClaimOutcome, Cluster, ClusterConfig, InstanceId};

use crate::support::*;

/// Instance 2 writes its heartbeat rarely (and lives long), so that a short outage falls
/// between two of its heartbeats: apart from its membership reads, whose failed restart check
/// counts as no outage, it makes no call while Redis is away and sees no failure.
const QUIET: InstanceId = 2;
const QUIET_HEARTBEAT: Duration = Duration::from_secs(3);

fn quiet(id: InstanceId, cfg: ClusterConfig, grace: Duration) -> ClusterConfig {
    if id != QUIET {
        return cfg;
    }
    let mut cfg = ClusterConfig {
        heartbeat: QUIET_HEARTBEAT,
        dead_after: QUIET_HEARTBEAT * 3,
        ..cfg
    };
    cfg.claim.grace = grace;
    cfg
}

/// Returns right after the quiet instance wrote a heartbeat: the next one is
/// `QUIET_HEARTBEAT` away, time enough for an outage.
async fn just_after_a_heartbeat(node: &Cluster) {
    let before = node.metrics().snapshot().heartbeats;
    wait_for("a heartbeat of the quiet instance", PATIENCE, || {
        node.metrics().snapshot().heartbeats > before
    })
    .await;
}

/// Waits until `node` has read two snapshots from the restarted Redis: its connection is the
/// new one, and it has looked at the server at least once.
async fn wait_snapshots_after(node: &Cluster, before: u64) {
    wait_for("snapshots from the restarted Redis", PATIENCE, || {
        node.metrics().snapshot().snapshots >= before + 2
    })
    .await;
}

/// The primary answers by the static rule while Redis is away; Redis comes back with its data
/// while the first fallback waits its grace; the fallback saw no failure, and the generation
/// is unchanged, yet it must decline: no claim key exists for its `SET NX` to meet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_that_saw_no_failure_declines_after_redis_restarted_with_its_data() {
    // A long grace: the restart and the fallback's reconnect both fit inside it.
    let mut tc = TestCluster::start_with(|id, cfg| quiet(id, cfg, Duration::from_secs(1))).await;
    let user = user_of(1, 5);
    let id = interaction(1);
    just_after_a_heartbeat(tc.node(QUIET)).await;

    let fallback = tokio::spawn(claim_with(tc.handles(&[QUIET]), id, user));
    tc.redis.stop_saving();
    let owner = tc.claim_on(&[1], id, user).await;
    assert!(
        matches!(owner[0].1, ClaimOutcome::Degraded { answer: true, .. }),
        "the primary answers by the static rule while Redis is away: {owner:?}"
    );
    let snapshots = tc.node(QUIET).metrics().snapshot().snapshots;
    tc.redis.restart_with_data();
    wait_snapshots_after(tc.node(QUIET), snapshots).await;

    let outcome = fallback.await.unwrap();
    // The premise: the fallback itself saw nothing fail, so only the server's identity can
    // tell it Redis restarted.
    let m = tc.node(QUIET).metrics().snapshot();
    assert_eq!(m.redis_errors, 0, "the quiet instance saw a failure: {m:?}");
    assert!(
        answering(&outcome).is_empty(),
        "the fallback answered an interaction its primary answered while Redis was away: \
         {outcome:?}"
    );
}

/// The primary's heartbeat lapses while Redis is away (it is still answering its users by
/// the static rule, and has not noticed Redis is back: its loops are stopped). An instance
/// that saw no failure reads the restarted Redis and finds the primary missing: for one
/// heartbeat lifetime that is not a death, so it does not take the primary's users over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_whose_heartbeat_lapsed_in_a_restart_with_data_is_not_taken_over_at_once() {
    let mut tc = TestCluster::start_with(|id, cfg| quiet(id, cfg, TIMING.grace)).await;
    let user = user_of(1, 9);
    just_after_a_heartbeat(tc.node(QUIET)).await;

    tc.redis.stop_saving();
    tc.nodes[0].shutdown.cancel();
    wait_for("the loops of 1 to stop", PATIENCE, || {
        tc.nodes[0].task.is_finished()
    })
    .await;
    // Longer than instance 1's heartbeat lives: its key expires while Redis is down.
    tokio::time::sleep(DEAD_AFTER + SLACK).await;
    let snapshots = tc.node(QUIET).metrics().snapshot().snapshots;
    tc.redis.restart_with_data();
    wait_snapshots_after(tc.node(QUIET), snapshots).await;
    assert_eq!(
        redis_get(&tc.redis.url(), "kstest:hb:1").await,
        None,
        "instance 1's heartbeat lapsed during the outage"
    );

    let m = tc.node(QUIET).metrics().snapshot();
    assert_eq!(m.redis_errors, 0, "the quiet instance saw a failure: {m:?}");
    assert!(
        tc.node(QUIET).membership().get(1).is_some_and(|s| s.alive),
        "a heartbeat that lapsed while Redis was away is not a death"
    );
    let outcome = tc.claim_on(&[QUIET], interaction(2), user).await;
    assert!(
        answering(&outcome).is_empty(),
        "instance 2 took over a live primary's user right after the restart: {outcome:?}"
    );
}

/// The owner claims and answers, but Redis goes away before its confirmation, and comes back
/// with the pending claim, which then lapses. The first fallback, which found the claim
/// unconfirmed before the restart, must not take the lapse for the owner's death: across a
/// restart an unconfirmed claim says nothing about whether its holder answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_lapsed_unconfirmed_across_a_restart_with_data_is_not_swept() {
    let mut tc = TestCluster::start().await;
    let user = user_of(1, 13);
    let id = interaction(3);
    let received = now_ms();
    // The owner wins and answers; its confirmation is what the restart swallows.
    let owner = tc.node(1).claim(id, user, received).await;
    assert!(matches!(owner, ClaimOutcome::Won { .. }), "{owner:?}");
    let first = tc.node(2).clone();
    let fallback = tokio::spawn(async move { first.claim(id, user, received).await });
    // The fallback's first try (after its grace) finds the claim pending: it goes on to sweep.
    tokio::time::sleep(TIMING.grace + SLACK).await;
    assert!(
        !fallback.is_finished(),
        "the fallback should be waiting to sweep"
    );
    tc.redis.restart_with_data();
    let outcome = fallback.await.unwrap();
    assert!(
        !outcome.answers(),
        "the fallback swept a claim whose holder answered before the restart: {outcome:?}"
    );
}

/// Redis restarts with its data between a fallback's receipt and its claim, and the fallback
/// has not looked at the server since (its loops are stopped, so no membership tick can):
/// the look in its claim script finds the new `run_id`, and it claims nothing. With no claim
/// key from the primary (answering by the static rule meanwhile), a claim here would answer
/// a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_claims_nothing_on_a_restarted_redis_no_tick_has_seen() {
    let mut tc = TestCluster::start().await;
    let user = user_of(1, 17);
    let id = interaction(4);
    tc.nodes[QUIET as usize - 1].shutdown.cancel();
    wait_for("the loops of 2 to stop", PATIENCE, || {
        tc.nodes[QUIET as usize - 1].task.is_finished()
    })
    .await;
    let fallback = tc.node(QUIET).clone();
    // The control: on the server it saw, the same fallback claims what nobody else did.
    let before = interaction(5);
    let receipt = fallback.receive(before, user, now_ms());
    let outcome = fallback.claim_received(before, user, receipt).await;
    assert!(
        matches!(outcome, ClaimOutcome::Won { rank: Some(_), .. }),
        "a fallback claims what its owner did not: {outcome:?}"
    );

    let receipt = fallback.receive(id, user, now_ms());
    assert!(
        !receipt.delay().is_zero(),
        "instance 2 is a fallback for instance 1's user: {receipt:?}"
    );
    tc.redis.restart_with_data();

    let outcome = fallback.claim_received(id, user, receipt).await;
    assert!(
        matches!(outcome, ClaimOutcome::Degraded { answer: false, .. }),
        "the fallback claimed on a Redis that restarted since it last looked: {outcome:?}"
    );
    assert_eq!(
        redis_get(&tc.redis.url(), &format!("kstest:claim:{id}")).await,
        None,
        "the declining fallback left a claim key"
    );
}

//! The claim: exactly one instance wins each interaction, the owner when it is there, the
//! next instance on the ladder when it stalls; its confirmation, alone or with a ledger row or
//! a queued job.

use std::collections::HashMap;
use std::time::Duration;

use keyshard_cluster::{keys, ClaimOutcome, Reason};
use keyshard_routing::primary;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::support::*;

// Two worker threads, and at most 200 interactions in flight (the design's target rate of
// 200 interactions/s, each one claimed on all four handles): enough to race, while a debug
// build on a loaded 2-core CI box still answers within the claim budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_handles_race_and_each_interaction_is_claimed_once_by_its_owner() {
    let tc = TestCluster::start().await;
    let mut rng = SmallRng::seed_from_u64(0x6b65_7973);
    const INTERACTIONS: u32 = 1_000;
    const IN_FLIGHT: usize = 200;

    let mut running = tokio::task::JoinSet::new();
    let mut outcomes = Vec::new();
    let mut users = HashMap::new();
    for seq in 0..INTERACTIONS {
        // Snowflake-sized user ids, as Discord hands out.
        let user = rng.random_range(100_000_000_000_000_000..1_500_000_000_000_000_000u64);
        let id = interaction(seq);
        users.insert(id, user);
        if running.len() >= IN_FLIGHT {
            outcomes.push(running.join_next().await.unwrap().unwrap());
        }
        running.spawn({
            let claims = claim_with(tc.handles(&[1, 2, 3, 4]), id, user);
            async move { (id, claims.await) }
        });
    }
    outcomes.extend(running.join_all().await);

    let mut by_interaction: HashMap<u64, Vec<(u32, ClaimOutcome)>> = HashMap::new();
    for (id, claims) in outcomes {
        for (me, outcome, _) in claims {
            by_interaction.entry(id).or_default().push((me, outcome));
        }
    }
    assert_eq!(by_interaction.len(), INTERACTIONS as usize);
    let mut per_instance = [0u32; N as usize];
    for (id, outcomes) in &by_interaction {
        let user = users[id];
        let winners: Vec<_> = outcomes.iter().filter(|(_, o)| o.answers()).collect();
        assert_eq!(winners.len(), 1, "interaction {id}: {outcomes:?}");
        let (winner, outcome) = winners[0];
        assert_eq!(
            *winner,
            primary(user, N),
            "all alive and idle: the primary wins"
        );
        let ClaimOutcome::Won {
            assignment, rank, ..
        } = outcome
        else {
            panic!("Redis is up, yet {outcome:?}");
        };
        assert_eq!((assignment.reason, *rank), (Reason::Primary, None));
        // The others lost (or, on a starved machine, gave up by the static rule, which
        // declines for a non-primary): none of them answers.
        assert!(
            outcomes
                .iter()
                .filter(|(me, _)| me != winner)
                .all(|(_, o)| !o.answers()),
            "{outcomes:?}"
        );
        per_instance[*winner as usize - 1] += 1;
    }
    // Every instance got a share (uniform users: ~250 each).
    assert!(per_instance.iter().all(|&n| n > 150), "{per_instance:?}");

    // The claim key names the winner.
    let (&some_id, &some_user) = users.iter().next().unwrap();
    assert_eq!(
        tc.claim_holder(some_id).await,
        Some(primary(some_user, N).to_string())
    );

    let totals = tc
        .nodes
        .iter()
        .map(|n| n.cluster.metrics().snapshot())
        .fold((0, 0, 0), |acc, m| {
            (
                acc.0 + m.claims_won,
                acc.1 + m.claims_lost,
                acc.2 + m.degraded_decisions,
            )
        });
    assert_eq!(totals.0, 1_000);
    assert_eq!(totals.1 + totals.2, 3_000);
}

#[tokio::test]
async fn stalled_owner_is_replaced_by_the_next_instance_within_its_grace() {
    let tc = TestCluster::start().await;
    // Primary 2 is alive (its heartbeat runs) but never claims: stalled.
    let user = user_of(2, 7);
    let id = interaction(1);

    let outcomes = tc.claim_on(&[3, 4, 1], id, user).await;

    let (_, first, took) = &outcomes[0];
    let ClaimOutcome::Won {
        assignment, rank, ..
    } = first
    else {
        panic!("instance 3 should take over: {outcomes:?}");
    };
    assert_eq!(*rank, Some(0));
    assert_eq!(
        assignment.owner,
        Some(2),
        "the owner was 2; 3 answered as its first fallback"
    );
    assert!(
        *took >= TIMING.grace && *took < TIMING.grace + TIMING.step,
        "the first fallback claims after its grace, before the second one: {took:?}"
    );
    let (_, second, took_second) = &outcomes[1];
    assert_eq!(*second, ClaimOutcome::Lost);
    assert!(
        *took_second >= TIMING.grace + TIMING.step,
        "{took_second:?}"
    );
    assert_eq!(outcomes[2].1, ClaimOutcome::Lost);
    assert_eq!(answering(&outcomes), vec![3]);
    assert_eq!(tc.node(3).metrics().snapshot().fallback_wins, 1);

    // The stalled owner wakes up late: it must not answer too.
    assert_eq!(tc.claim_on(&[2], id, user).await[0].1, ClaimOutcome::Lost);
    assert_eq!(tc.claim_holder(id).await.as_deref(), Some("3"));
}

/// The receipt taken on arrival says how long each instance waits before its claim (the
/// owner not at all, fallbacks by their rank), and a claim on a receipt whose wait is done
/// does not wait again: the edge waits before the framework builds its state, not twice.
#[tokio::test]
async fn a_receipt_carries_the_fallbacks_wait_and_a_waited_one_claims_at_once() {
    let tc = TestCluster::start().await;
    tc.wait_all_see_all_alive().await;
    let user = user_of(2, 9);
    let id = interaction(7);
    let now = now_ms();
    assert_eq!(tc.node(2).receive(id, user, now).delay(), Duration::ZERO);
    assert_eq!(tc.node(3).receive(id, user, now).delay(), TIMING.grace);
    assert_eq!(
        tc.node(4).receive(id, user, now).delay(),
        TIMING.grace + TIMING.step
    );

    // Owner 2 stalls; fallback 3 has waited its turn already.
    let receipt = tc.node(3).receive(id, user, now_ms()).waited();
    let started = std::time::Instant::now();
    let outcome = tc.node(3).claim_received(id, user, receipt).await;
    let took = started.elapsed();
    assert!(
        matches!(outcome, ClaimOutcome::Won { rank: Some(0), .. }),
        "{outcome:?}"
    );
    assert!(
        took < TIMING.grace,
        "claimed at once, not after a second grace: {took:?}"
    );
    assert_eq!(tc.claim_on(&[2], id, user).await[0].1, ClaimOutcome::Lost);
}

/// The fallback claims an instance makes at one moment (its fallbacks wake on a shared tick)
/// go to Redis as one script call, and each still learns its own answer: won where the owner
/// never claimed, lost to the owner where it did.
#[tokio::test]
async fn a_moments_fallback_claims_share_one_round_trip_and_keep_their_answers() {
    let tc = TestCluster::start().await;
    tc.wait_all_see_all_alive().await;
    let url = tc.redis.url();
    // Instance 4 is second in line after owner 2 (no sweep: that is the first fallback's).
    let fallback = tc.node(4);
    let ids: Vec<u64> = (0..9).map(interaction).collect();
    let user = |seq: usize| user_of(2, seq as u64);
    let claim = |seq: usize| {
        let (id, user) = (ids[seq], user(seq));
        async move {
            let receipt = fallback.receive(id, user, now_ms()).waited();
            fallback.claim_received(id, user, receipt).await
        }
    };
    // A first claim starts the batcher and loads the script.
    assert!(claim(8).await.answers());
    // Owner 2 claimed the even ones and stalled on the odd ones.
    for seq in (0..8).step_by(2) {
        assert!(tc.claim_on(&[2], ids[seq], user(seq)).await[0].1.answers());
    }
    let before = redis_script_calls(&url).await;
    let outcomes = futures::future::join_all((0..8).map(claim)).await;
    assert_eq!(
        redis_script_calls(&url).await - before,
        1,
        "one call for eight claims"
    );
    for (seq, outcome) in outcomes.iter().enumerate() {
        if seq % 2 == 0 {
            assert_eq!(*outcome, ClaimOutcome::Lost, "claim {seq}");
            assert_eq!(tc.claim_holder(ids[seq]).await.as_deref(), Some("2"));
        } else {
            assert!(
                matches!(outcome, ClaimOutcome::Won { rank: Some(1), .. }),
                "claim {seq}: {outcome:?}"
            );
            assert_eq!(tc.claim_holder(ids[seq]).await.as_deref(), Some("4"));
        }
    }
}

/// With takeover off (the static rule, kept for benchmark comparisons) only the primary
/// answers, even while it is down: its users wait instead of moving to a peer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_off_answers_only_by_the_primary() {
    use keyshard_cluster::Cluster;
    use tokio_util::sync::CancellationToken;

    let redis = keyshard_testkit::RedisServer::start();
    let handles: Vec<Cluster> = (1..=N)
        .map(|id| {
            let mut cfg = crate::support::config(&redis.url(), "static", id);
            cfg.takeover = false;
            Cluster::new(cfg).unwrap()
        })
        .collect();
    let stop = CancellationToken::new();
    for h in &handles[1..] {
        h.spawn(stop.clone());
    }
    // Instance 1 never runs: it is down. Its user gets no answer; instance 2's user does.
    crate::support::wait_for("peers connected", PATIENCE, || {
        handles[1..].iter().all(|h| !h.is_degraded())
    })
    .await;
    let down = claim_with(handles[1..].to_vec(), interaction(1), user_of(1, 5)).await;
    assert!(
        answering(&down).is_empty(),
        "a peer answered for a down primary with takeover off"
    );
    let up = claim_with(handles[1..].to_vec(), interaction(2), user_of(2, 5)).await;
    assert_eq!(answering(&up), vec![2]);
    stop.cancel();
}

/// An owner that claims and dies before acknowledging never confirms: its claim lapses and the
/// first fallback's sweep answers, still before the ack deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_dying_between_claim_and_ack_is_replaced_by_the_sweep() {
    let tc = TestCluster::start().await;
    let user = user_of(1, 21);
    let id = interaction(21);
    let received = now_ms();
    // Instance 1 wins the claim and "dies": it never confirms.
    let owner = tc.node(1).claim(id, user, received).await;
    assert!(matches!(owner, ClaimOutcome::Won { rank: None, .. }));
    let start = std::time::Instant::now();
    let fallback = tc.node(2).claim(id, user, received).await;
    let took = start.elapsed();
    assert!(
        matches!(
            fallback,
            ClaimOutcome::Won {
                rank: Some(0),
                swept_from: Some(1),
                ..
            }
        ),
        "the sweep names the instance whose claim lapsed: {fallback:?}"
    );
    assert!(
        took >= TIMING.pending,
        "swept after the pending claim lapsed, took {took:?}"
    );
    assert!(
        took <= TIMING.sweep + SLACK,
        "within the sweep, before the deadline: {took:?}"
    );
}

/// A confirmed claim is final: the first fallback drops the interaction at its turn, without
/// waiting for a sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_claim_needs_no_sweep() {
    let tc = TestCluster::start().await;
    let user = user_of(3, 22);
    let id = interaction(22);
    let received = now_ms();
    assert!(tc.node(3).claim(id, user, received).await.answers());
    tc.node(3).confirm(id).await;
    let start = std::time::Instant::now();
    let fallback = tc.node(4).claim(id, user, received).await;
    assert!(matches!(fallback, ClaimOutcome::Lost), "{fallback:?}");
    assert!(
        start.elapsed() < TIMING.grace + SLACK,
        "took {:?}",
        start.elapsed()
    );
}

/// The confirmation of an answered interaction carries its ledger row: appended exactly when
/// the claim is (or becomes) this instance's, never when a fallback holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmation_records_the_row_only_for_the_holder_of_the_claim() {
    use keyshard_cluster::Confirmed;
    let tc = TestCluster::start().await;
    let url = tc.redis.url();
    let ledger = |id: u32| keys::ledger_stream(&tc.name, id);

    // Held by me: confirmed for the token's life, and the row is appended.
    let (user, id) = (user_of(3, 31), interaction(31));
    assert!(tc.node(3).claim(id, user, now_ms()).await.answers());
    let got = tc.node(3).confirm_recording(id, r#"{"row":1}"#).await;
    assert!(matches!(got, Confirmed::Recorded { .. }), "{got:?}");
    assert_eq!(redis_xlen(&url, &ledger(3)).await, 1);
    let ttl = tc.claim_ttl(id).await;
    assert!(ttl > TIMING.pending.as_millis() as i64, "confirmed: {ttl}");

    // Held by another instance (a fallback swept it): no row from me.
    let (user, id) = (user_of(1, 32), interaction(32));
    assert!(tc.node(1).claim(id, user, now_ms()).await.answers());
    let got = tc.node(2).confirm_recording(id, r#"{"row":2}"#).await;
    assert_eq!(got, Confirmed::NotHolder);
    assert_eq!(redis_xlen(&url, &ledger(2)).await, 0);
    assert_eq!(
        tc.claim_holder(id).await.as_deref(),
        Some("1"),
        "the holder keeps its claim"
    );

    // Lapsed and taken by nobody: this instance answered, so it takes the claim back and
    // records the row.
    let id = interaction(33);
    let got = tc.node(4).confirm_recording(id, r#"{"row":3}"#).await;
    assert!(matches!(got, Confirmed::Recorded { .. }), "{got:?}");
    assert_eq!(redis_xlen(&url, &ledger(4)).await, 1);
    assert_eq!(tc.claim_holder(id).await.as_deref(), Some("4"));
}

/// A job command's job is queued with its claim's confirmation, in one script: queued exactly
/// when the claim is (or becomes) this instance's, never when a fallback swept it (that
/// fallback queues the job).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_is_queued_only_by_the_holder_of_its_claim() {
    use keyshard_cluster::{JobKind, Jobs, Submitted};
    let tc = TestCluster::start().await;
    let url = tc.redis.url();
    // No workers: what is queued stays in the stream.
    let chats = |id: u32| keys::job_stream(&tc.name, id, JobKind::Chat);
    let jobs = |id: u32| Jobs::new(tc.node(id));

    // Held by me: queued, and the claim confirmed for the token's life.
    let (user, id) = (user_of(3, 41), interaction(41));
    assert!(tc.node(3).claim(id, user, now_ms()).await.answers());
    let got = jobs(3).submit_claimed(chat_job(id, user, 3)).await.unwrap();
    assert_eq!(got, Submitted::Queued);
    assert_eq!(redis_xlen(&url, &chats(3)).await, 1);
    let ttl = tc.claim_ttl(id).await;
    assert!(ttl > TIMING.pending.as_millis() as i64, "confirmed: {ttl}");

    // Held by another instance (a fallback swept it): nothing queued, the claim untouched.
    let (user, id) = (user_of(1, 42), interaction(42));
    assert!(tc.node(1).claim(id, user, now_ms()).await.answers());
    let got = jobs(2).submit_claimed(chat_job(id, user, 2)).await.unwrap();
    assert_eq!(got, Submitted::Swept);
    assert_eq!(redis_xlen(&url, &chats(2)).await, 0);
    assert_eq!(
        tc.claim_holder(id).await.as_deref(),
        Some("1"),
        "the holder keeps its claim"
    );
    let ttl = tc.claim_ttl(id).await;
    assert!(
        ttl <= TIMING.pending.as_millis() as i64,
        "not extended: {ttl}"
    );

    // Lapsed and taken by nobody: this instance acknowledged, so it takes the claim back for
    // its full life and queues the job.
    let id = interaction(43);
    let got = jobs(4)
        .submit_claimed(chat_job(id, user_of(4, 43), 4))
        .await
        .unwrap();
    assert_eq!(got, Submitted::Queued);
    assert_eq!(redis_xlen(&url, &chats(4)).await, 1);
    assert_eq!(tc.claim_holder(id).await.as_deref(), Some("4"));
}

//! The gateway's shared state against a real Redis: IDENTIFYs of one bucket a window apart
//! across instances, buckets independent, the day's reserve kept, the budget's readings
//! merged, the restart backoff, local spacing without Redis, and the command set registered
//! once.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use keyshard_cluster::gateway::identify::BudgetFuture;
use keyshard_cluster::{
    sync_commands, BudgetSource, Cluster, CommandSync, IdentifyQueue, IdentifyWait,
};
use keyshard_routing::{IdentifyPolicy, RestartPolicy, SessionBudget};
use keyshard_testkit::RedisServer;
use tokio::time::Instant;

use crate::support::{config, SLACK};

/// Discord's `GET /gateway/bot`, as a fixed reading, counting how often it is read.
struct Reading {
    budget: SessionBudget,
    fetches: AtomicU32,
}

impl Reading {
    fn new(remaining: u32, max_concurrency: u32) -> Arc<Reading> {
        Arc::new(Reading {
            budget: SessionBudget {
                total: 1_000,
                remaining,
                reset_after: Duration::from_secs(3_600),
                max_concurrency,
            },
            fetches: AtomicU32::new(0),
        })
    }
}

impl BudgetSource for Reading {
    fn fetch(&self) -> BudgetFuture<'_> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let b = self.budget;
        Box::pin(async move { Ok(b) })
    }
}

const RESTART: RestartPolicy = RestartPolicy {
    base: Duration::from_millis(200),
    max: Duration::from_millis(800),
};

fn queue(
    url: &str,
    id: u32,
    window_ms: u64,
    reserve: u32,
    reading: &Arc<Reading>,
) -> IdentifyQueue {
    let cluster = Cluster::new(config(url, "gwtest", id)).unwrap();
    IdentifyQueue::new(
        &cluster,
        IdentifyPolicy {
            window: Duration::from_millis(window_ms),
            reserve,
        },
        RESTART,
        reading.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identifies_of_one_bucket_go_a_window_apart_whichever_instance_sends_them() {
    let redis = RedisServer::start();
    let reading = Reading::new(500, 1);
    let hold = queue(&redis.url(), 1, 150, 10, &reading)
        .policy()
        .slot_hold();
    let queues: Vec<_> = (1..=4)
        .map(|id| queue(&redis.url(), id, 150, 10, &reading))
        .collect();
    // Four instances × two shards, all in bucket 0, asking at once.
    let asks = queues.iter().flat_map(|q| {
        (0..2).map(move |shard| async move {
            let g = q.acquire(shard).await;
            (Instant::now(), g)
        })
    });
    let mut grants = join_all(asks).await;
    grants.sort_by_key(|(at, _)| *at);
    assert_eq!(grants.len(), 8);
    for pair in grants.windows(2) {
        let gap = pair[1].0 - pair[0].0;
        // The slot is set a little before its take returns; a loaded box delays one return
        // more than another by a few milliseconds.
        assert!(
            gap + Duration::from_millis(20) >= hold,
            "{gap:?} between grants"
        );
        assert!(!pair[1].1.local);
    }
    assert_eq!(grants.last().unwrap().1.remaining, Some(492));
    let (left, resets) = queues[0].remaining().await.unwrap().unwrap();
    assert_eq!(left, 492);
    assert!(resets.unwrap() <= Duration::from_secs(3_600));
    // Nobody had stored the day's count: the first askers read it from "Discord", once each
    // at most (the bot stores it at start, so its askers find it).
    assert!((1..=8).contains(&reading.fetches.load(Ordering::SeqCst)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buckets_do_not_wait_for_each_other() {
    let redis = RedisServer::start();
    let reading = Reading::new(500, 4);
    let q = queue(&redis.url(), 1, 2_000, 10, &reading);
    q.seed(reading.budget).await.unwrap();
    let started = Instant::now();
    let grants = join_all((0..4).map(|shard| q.acquire(shard))).await;
    assert_eq!(grants.len(), 4);
    assert!(
        started.elapsed() < Duration::from_millis(1_000),
        "four buckets, no wait for a 2 s window: {:?}",
        started.elapsed()
    );
    // Shard 4 is bucket 0 again: it waits the window.
    let fifth = tokio::time::timeout(Duration::from_millis(500), q.acquire(4)).await;
    assert!(fifth.is_err(), "bucket 0 is held for the window");
    assert!(matches!(
        q.waits().get(&4),
        Some(IdentifyWait::Bucket { bucket: 0 })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_days_reserve_is_never_spent() {
    let redis = RedisServer::start();
    let reading = Reading::new(5, 16);
    let queues: Vec<_> = (1..=3)
        .map(|id| queue(&redis.url(), id, 10, 3, &reading))
        .collect();
    queues[0].seed(reading.budget).await.unwrap();
    // Six shards in six buckets ask at once; the budget above the reserve is two.
    let asks = queues.iter().enumerate().flat_map(|(i, q)| {
        (0..2).map(move |k| {
            let shard = (i * 2 + k) as u32;
            async move {
                tokio::time::timeout(Duration::from_millis(800), q.acquire(shard))
                    .await
                    .ok()
            }
        })
    });
    let results = join_all(asks).await;
    let granted = results.iter().filter(|g| g.is_some()).count();
    assert_eq!(granted, 2, "{results:?}");
    let (left, _) = queues[0].remaining().await.unwrap().unwrap();
    assert_eq!(left, 3, "the reserve is left");
    let waiting: Vec<IdentifyWait> = queues
        .iter()
        .flat_map(|q| q.waits().into_values())
        .collect();
    assert_eq!(waiting.len(), 4, "{waiting:?}");
    assert!(
        waiting.iter().all(|w| matches!(
            w,
            IdentifyWait::Reserve {
                remaining: 3,
                reserve: 3,
                ..
            }
        )),
        "{waiting:?}"
    );
}

#[tokio::test]
async fn a_lower_reading_wins_within_the_day_and_a_new_day_starts_afresh() {
    let redis = RedisServer::start();
    let reading = Reading::new(0, 1);
    let q = queue(&redis.url(), 1, 100, 0, &reading);
    let day = |remaining, reset_ms| SessionBudget {
        total: 1_000,
        remaining,
        reset_after: Duration::from_millis(reset_ms),
        max_concurrency: 1,
    };
    assert_eq!(q.seed(day(100, 60_000)).await.unwrap(), 100);
    assert_eq!(q.seed(day(120, 60_000)).await.unwrap(), 100, "only lower");
    assert_eq!(q.seed(day(90, 60_000)).await.unwrap(), 90);
    assert!(q.remaining().await.unwrap().unwrap().1.unwrap() > Duration::from_secs(59));

    let r2 = RedisServer::start();
    let q2 = queue(&r2.url(), 1, 100, 0, &reading);
    assert_eq!(q2.seed(day(5, 100)).await.unwrap(), 5);
    // Discord's day ends with the key: the next reading is the new day's.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(q2.remaining().await.unwrap(), None);
    assert_eq!(q2.seed(day(1_000, 60_000)).await.unwrap(), 1_000);
}

#[tokio::test]
async fn starts_after_a_crash_back_off_until_a_clean_stop() {
    let redis = RedisServer::start();
    let reading = Reading::new(100, 1);
    let q = queue(&redis.url(), 2, 10, 0, &reading);
    assert_eq!(q.register_start().await.unwrap(), (1, Duration::ZERO));
    // A new process of the same instance, without a clean stop in between.
    let q = queue(&redis.url(), 2, 10, 0, &reading);
    assert_eq!(
        q.register_start().await.unwrap(),
        (2, Duration::from_millis(200))
    );
    let started = Instant::now();
    let ask = tokio::spawn({
        let q = q.clone();
        async move { q.acquire(0).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(
        q.waits().get(&0),
        Some(IdentifyWait::Backoff { .. })
    ));
    ask.await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(200));
    let q = queue(&redis.url(), 2, 10, 0, &reading);
    assert_eq!(q.register_start().await.unwrap().0, 3);
    assert_eq!(q.register_start().await.unwrap().1, RESTART.max, "capped");
    // A clean stop (or a stable run) forgets the crashes; another instance never had any.
    q.clear_restarts().await.unwrap();
    assert_eq!(q.register_start().await.unwrap(), (1, Duration::ZERO));
    let other = queue(&redis.url(), 3, 10, 0, &reading);
    assert_eq!(other.register_start().await.unwrap().0, 1);
}

#[tokio::test]
async fn without_redis_one_identify_per_window_from_this_instance() {
    let reading = Reading::new(100, 1);
    // Port 1 on loopback: nothing listens, every call fails at once.
    let q = queue("redis://127.0.0.1:1", 1, 300, 0, &reading);
    assert!(q.register_start().await.is_err());
    let first = q.acquire(0).await;
    let at = Instant::now();
    let second = q.acquire(1).await;
    assert!(first.local && second.local);
    assert!(at.elapsed() + SLACK >= q.policy().slot_hold());
    assert_eq!(reading.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_set_is_registered_once_and_not_again_for_the_same_hash() {
    let redis = RedisServer::start();
    let clusters: Vec<Cluster> = (1..=4)
        .map(|id| Cluster::new(config(&redis.url(), "cmdtest", id)).unwrap())
        .collect();
    let puts = Arc::new(AtomicU32::new(0));
    let sync_all = |hash: &'static str| {
        let puts = puts.clone();
        join_all(clusters.iter().map(move |c| {
            let puts = puts.clone();
            async move {
                sync_commands(c, hash, || {
                    let puts = puts.clone();
                    async move {
                        puts.fetch_add(1, Ordering::SeqCst);
                        // A PUT takes a moment: the others must wait for it, not repeat it.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<(), String>(())
                    }
                })
                .await
                .unwrap()
            }
        }))
    };
    let cold = sync_all("v1").await;
    assert_eq!(puts.load(Ordering::SeqCst), 1, "{cold:?}");
    assert_eq!(
        cold.iter()
            .filter(|o| **o == CommandSync::Registered)
            .count(),
        1
    );
    // A rolling restart to the same version: nothing to register.
    let same = sync_all("v1").await;
    assert!(same.iter().all(|o| *o == CommandSync::AlreadyRegistered));
    assert_eq!(puts.load(Ordering::SeqCst), 1);
    // A changed set is registered once more.
    sync_all("v2").await;
    assert_eq!(puts.load(Ordering::SeqCst), 2);

    // A failed registration releases the lock: the next try registers.
    let failed = sync_commands(&clusters[0], "v3", || async { Err::<(), _>("500") }).await;
    assert_eq!(failed, Err("500"));
    let retried = sync_commands(&clusters[1], "v3", || async { Ok::<(), &str>(()) }).await;
    assert_eq!(retried, Ok(CommandSync::Registered));

    let offline = Cluster::new(config("redis://127.0.0.1:1", "cmdtest", 1)).unwrap();
    let alone = sync_commands(&offline, "v3", || async { Ok::<(), String>(()) }).await;
    assert_eq!(alone, Ok(CommandSync::RegisteredWithoutRedis));
}

//! The daily request counter in Redis: the count survives a restart of the process, the key
//! names the provider key by fingerprint and expires, and a dead Redis fails fast.

use std::time::{Duration, Instant};

use keyshard_cluster::requests_per_day::{BUDGET, DAY_KEY_TTL};
use keyshard_cluster::{Cluster, RequestsPerDay};
use keyshard_testkit::RedisServer;

use crate::support::{config, redis_get, SLACK};

const DAY: &str = "2025-11-23";

/// A fresh handle, as a new process of the same instance would build it.
fn counter(redis: &RedisServer) -> RequestsPerDay {
    RequestsPerDay::new(&Cluster::new(config(&redis.url(), "rpdtest", 1)).unwrap())
}

#[tokio::test]
async fn the_count_survives_a_restart_of_the_process() {
    let redis = RedisServer::start();
    let first = counter(&redis);
    assert_eq!(
        first.add("minimax", "0123abcd4567", DAY, 1).await.unwrap(),
        1
    );
    assert_eq!(
        first.add("minimax", "0123abcd4567", DAY, 1).await.unwrap(),
        2
    );
    drop(first);

    // A new process: the count goes on from Redis, not from zero.
    let second = counter(&redis);
    assert_eq!(
        second.add("minimax", "0123abcd4567", DAY, 1).await.unwrap(),
        3
    );
    assert_eq!(
        second
            .add("minimax", "0123abcd4567", DAY, -1)
            .await
            .unwrap(),
        2,
        "a refused request gives its slot back"
    );
    // Another key, another provider or another day is another count.
    assert_eq!(
        second.add("minimax", "ffff00001111", DAY, 1).await.unwrap(),
        1
    );
    assert_eq!(
        second.add("openai", "0123abcd4567", DAY, 1).await.unwrap(),
        1
    );
    assert_eq!(
        second
            .add("minimax", "0123abcd4567", "2025-11-24", 1)
            .await
            .unwrap(),
        1
    );

    // The key layout of ARCHITECTURE.md (and of the counts written before this crate kept
    // them), with an expiry that outlives the day.
    let key = "rpdtest:rpd:minimax:0123abcd4567:2025-11-23";
    assert_eq!(redis_get(&redis.url(), key).await.as_deref(), Some("2"));
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let ttl: u64 = redis::cmd("TTL")
        .arg(key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        ttl > DAY_KEY_TTL.as_secs() - 60 && ttl <= DAY_KEY_TTL.as_secs(),
        "{ttl}"
    );
    assert!(DAY_KEY_TTL > Duration::from_secs(86_400));
}

#[tokio::test]
async fn a_dead_redis_fails_within_the_budget_and_a_returning_one_is_used_again() {
    let mut redis = RedisServer::start();
    let c = counter(&redis);
    c.add("stability", "0123abcd4567", DAY, 1).await.unwrap();
    redis.kill();
    let started = Instant::now();
    let err = c
        .add("stability", "0123abcd4567", DAY, 1)
        .await
        .unwrap_err();
    assert!(err.is_redis_unavailable(), "{err}");
    assert!(
        started.elapsed() <= BUDGET + SLACK,
        "{:?}",
        started.elapsed()
    );

    redis.restart();
    // The first call after the restart may still meet the broken connection (and is not
    // retried: INCRBY is not idempotent); the connection heals by itself after it.
    let mut total = None;
    for _ in 0..20 {
        if let Ok(n) = c.add("stability", "0123abcd4567", DAY, 1).await {
            total = Some(n);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        total.is_some(),
        "Redis back, but the counter never reached it"
    );
}

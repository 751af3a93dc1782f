//! The quota script against a real Redis: four handles racing on one user never accept more
//! than the limit; a verdict is kept per interaction; a refund gives back once; overrides,
//! the guild's day and the cooldown; and the local counters while Redis is gone.

use keyshard_cluster::quota::QuotaAsk;
use keyshard_cluster::{Cluster, Quotas, Scope};
use keyshard_routing::{Limits, Override, QuotaCommand, QuotaZone, Rule, Verdict};
use keyshard_testkit::RedisServer;

use crate::support::{config, now_ms};

fn quotas(redis: &RedisServer, id: u32) -> Quotas {
    Quotas::new(&Cluster::new(config(&redis.url(), "qtest", id)).unwrap())
}

fn ask(id: u64, user: u64, guild: Option<u64>, limits: Limits, now: u64) -> QuotaAsk {
    QuotaAsk {
        interaction_id: id,
        user,
        guild,
        command: QuotaCommand::Image,
        defaults: limits,
        day: QuotaZone::new("Asia/Seoul").unwrap().day(now),
        now_ms: now,
    }
}

/// What is left of an acknowledgement window after the claim, roughly.
const BUDGET: std::time::Duration = std::time::Duration::from_millis(2_000);

const DAILY_10: Limits = Limits {
    cooldown_secs: 0,
    user_daily: 10,
    guild_daily: 0,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_requests_on_four_instances_accept_exactly_the_limit() {
    let redis = RedisServer::start();
    let handles: Vec<Quotas> = (1..=4).map(|i| quotas(&redis, i)).collect();
    let now = now_ms();
    let mut set = tokio::task::JoinSet::new();
    for n in 0..200u64 {
        let q = handles[(n % 4) as usize].clone();
        set.spawn(async move {
            q.admit(&ask(1_000 + n, 42, Some(7), DAILY_10, now), BUDGET)
                .await
        });
    }
    let decisions = set.join_all().await;
    assert!(decisions.iter().all(|d| !d.degraded), "{decisions:?}");
    let admitted = decisions
        .iter()
        .filter(|d| d.verdict == Verdict::Admit)
        .count();
    assert_eq!(admitted, 10);
    let next = QuotaZone::new("Asia/Seoul").unwrap().day(now).next_ms;
    for d in decisions.iter().filter(|d| d.verdict != Verdict::Admit) {
        assert_eq!(
            d.verdict,
            Verdict::Refuse {
                rule: Rule::UserDaily,
                limit: 10,
                until_ms: next
            }
        );
    }
}

#[tokio::test]
async fn a_verdict_is_kept_per_interaction_and_a_refund_gives_back_once() {
    let redis = RedisServer::start();
    let q = quotas(&redis, 1);
    let now = now_ms();
    let one = Limits {
        user_daily: 1,
        ..DAILY_10
    };
    assert_eq!(
        q.admit(&ask(1, 5, None, one, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    // Asked again (a retry, a second instance): the same verdict, nothing more taken.
    assert_eq!(
        q.admit(&ask(1, 5, None, one, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    let refused = q.admit(&ask(2, 5, None, one, now), BUDGET).await.verdict;
    assert!(matches!(
        refused,
        Verdict::Refuse {
            rule: Rule::UserDaily,
            ..
        }
    ));
    // A refused interaction stays refused when asked again, even after room is made.
    assert!(q.refund(1).await);
    assert!(!q.refund(1).await, "the second refund gives nothing back");
    assert!(!q.refund(2).await, "a refusal reserved nothing");
    assert_eq!(
        q.admit(&ask(2, 5, None, one, now), BUDGET).await.verdict,
        refused
    );
    assert_eq!(
        q.admit(&ask(3, 5, None, one, now), BUDGET).await.verdict,
        Verdict::Admit
    );
}

#[tokio::test]
async fn the_guild_day_the_cooldown_and_overrides() {
    let redis = RedisServer::start();
    let q = quotas(&redis, 1);
    let now = now_ms();
    let guild2 = Limits {
        cooldown_secs: 0,
        user_daily: 0,
        guild_daily: 2,
    };
    assert_eq!(
        q.admit(&ask(1, 5, Some(9), guild2, now), BUDGET)
            .await
            .verdict,
        Verdict::Admit
    );
    assert_eq!(
        q.admit(&ask(2, 6, Some(9), guild2, now), BUDGET)
            .await
            .verdict,
        Verdict::Admit
    );
    assert!(matches!(
        q.admit(&ask(3, 7, Some(9), guild2, now), BUDGET)
            .await
            .verdict,
        Verdict::Refuse {
            rule: Rule::GuildDaily,
            limit: 2,
            ..
        }
    ));
    // Another guild, and a DM, are not that guild's.
    assert_eq!(
        q.admit(&ask(4, 7, Some(10), guild2, now), BUDGET)
            .await
            .verdict,
        Verdict::Admit
    );
    assert_eq!(
        q.admit(&ask(5, 7, None, guild2, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    // An override raises the guild's limit at once.
    q.cache_override(
        Scope::Guild(9),
        QuotaCommand::Image,
        Override {
            daily: Some(3),
            cooldown_secs: None,
        },
    )
    .await
    .unwrap();
    assert_eq!(
        q.admit(&ask(6, 7, Some(9), guild2, now), BUDGET)
            .await
            .verdict,
        Verdict::Admit
    );

    let cd = Limits {
        cooldown_secs: 60,
        user_daily: 0,
        guild_daily: 0,
    };
    assert_eq!(
        q.admit(&ask(7, 8, None, cd, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    match q.admit(&ask(8, 8, None, cd, now), BUDGET).await.verdict {
        Verdict::Refuse {
            rule: Rule::Cooldown,
            limit: 60,
            until_ms,
        } => {
            assert!(
                until_ms > now + 55_000 && until_ms <= now + 60_000,
                "{until_ms}"
            );
        }
        other => panic!("{other:?}"),
    }
    // A user override of 0 lifts the cooldown for that user only.
    q.cache_override(
        Scope::User(8),
        QuotaCommand::Image,
        Override {
            daily: None,
            cooldown_secs: Some(0),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        q.admit(&ask(9, 8, None, cd, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    let standing = q
        .standing(
            8,
            None,
            &[cd, cd, cd],
            &QuotaZone::new("Asia/Seoul").unwrap().day(now),
            now,
        )
        .await
        .unwrap();
    let (_, image) = standing
        .iter()
        .find(|(c, _)| *c == QuotaCommand::Image)
        .unwrap();
    assert_eq!(image.used.user_today, 2);
    assert_eq!(image.limits.cooldown_secs, 0);
    // The reload replaces the cache and marks it loaded.
    assert!(!q.cache_loaded().await.unwrap());
    q.load_cache(vec![]).await.unwrap();
    assert!(q.cache_loaded().await.unwrap());
    assert!(matches!(
        q.admit(&ask(10, 8, None, cd, now), BUDGET).await.verdict,
        Verdict::Refuse {
            rule: Rule::Cooldown,
            ..
        }
    ));
}

#[tokio::test]
async fn without_redis_each_instance_limits_by_its_own_counters() {
    let mut redis = RedisServer::start();
    let q = quotas(&redis, 1);
    redis.kill();
    let now = now_ms();
    let two = Limits {
        user_daily: 2,
        ..DAILY_10
    };
    let d = q.admit(&ask(1, 5, None, two, now), BUDGET).await;
    assert!(d.degraded);
    assert_eq!(d.verdict, Verdict::Admit);
    assert_eq!(
        q.admit(&ask(2, 5, None, two, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    assert!(matches!(
        q.admit(&ask(3, 5, None, two, now), BUDGET).await.verdict,
        Verdict::Refuse {
            rule: Rule::UserDaily,
            ..
        }
    ));
    assert!(q.is_degraded());
    assert!(q.refund(2).await, "a local reservation is refunded locally");
    assert_eq!(
        q.admit(&ask(4, 5, None, two, now), BUDGET).await.verdict,
        Verdict::Admit
    );
    // Another user is not refused: degraded never means refusing everything.
    assert_eq!(
        q.admit(&ask(5, 6, None, two, now), BUDGET).await.verdict,
        Verdict::Admit
    );
}

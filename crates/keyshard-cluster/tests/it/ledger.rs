//! The ledger streams: push, read pending-then-new, acknowledge, an empty Redis restart
//! noticed by the read and by the generation, and one taker for a dead instance's stream.

use keyshard_cluster::ledger::{Entry, GROUP};
use keyshard_cluster::{Cluster, LedgerStream};
use keyshard_testkit::RedisServer;

use crate::support::*;

fn rows(entries: &[Entry]) -> Vec<String> {
    entries.iter().filter_map(|e| e.row.clone()).collect()
}

fn ids(entries: &[Entry]) -> Vec<String> {
    entries.iter().map(|e| e.id.clone()).collect()
}

/// A handle that never runs its loops: a dead instance as far as its peers can tell.
fn silent(url: &str, id: u32) -> LedgerStream {
    LedgerStream::new(&Cluster::new(config(url, "kstest", id)).unwrap())
}

#[tokio::test]
async fn rows_are_read_until_acknowledged_pending_first() {
    let redis = RedisServer::start();
    let s = silent(&redis.url(), 1);
    let key = s.key(1);

    let first = s.read(1, 10).await.unwrap();
    assert!(first.entries.is_empty() && first.drained);
    assert!(
        first.recreated,
        "a stream read for the first time has no group yet"
    );

    let pushed: Vec<String> = (0..5).map(|i| format!("{{\"n\":{i}}}")).collect();
    s.push_many(&pushed).await.unwrap();
    s.push("{\"n\":5}").await.unwrap();

    let a = s.read(1, 4).await.unwrap();
    assert_eq!(rows(&a.entries), pushed[..4].to_vec());
    assert!(!a.drained, "two more are waiting");
    assert!(!a.recreated);

    // Not acknowledged (a failed write): the same four come back first, then the rest.
    let b = s.read(1, 10).await.unwrap();
    assert_eq!(rows(&b.entries).len(), 6);
    assert_eq!(rows(&b.entries)[..4], pushed[..4]);
    assert_eq!(rows(&b.entries)[5], "{\"n\":5}");
    assert!(b.drained);

    s.ack(1, &ids(&b.entries[..3])).await.unwrap();
    assert_eq!(
        redis_xlen(&redis.url(), &key).await,
        3,
        "acknowledged entries are deleted"
    );
    let c = s.read(1, 10).await.unwrap();
    assert_eq!(
        rows(&c.entries),
        vec![pushed[3].clone(), pushed[4].clone(), "{\"n\":5}".to_owned()]
    );
    s.ack(1, &ids(&c.entries)).await.unwrap();
    assert_eq!(s.backlog(1).await.unwrap(), 0);
    let d = s.read(1, 10).await.unwrap();
    assert!(d.entries.is_empty() && d.drained && !d.recreated);
}

#[tokio::test]
async fn an_entry_that_is_not_a_row_is_read_without_one() {
    let redis = RedisServer::start();
    let s = silent(&redis.url(), 1);
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: String = redis::cmd("XADD")
        .arg(s.key(1))
        .arg("*")
        .arg("other")
        .arg("x")
        .query_async(&mut c)
        .await
        .unwrap();
    let batch = s.read(1, 10).await.unwrap();
    assert_eq!(batch.entries.len(), 1);
    assert_eq!(batch.entries[0].row, None);
}

#[tokio::test]
async fn an_empty_restart_is_seen_by_the_read_and_by_the_generation() {
    let mut redis = RedisServer::start();
    let s = silent(&redis.url(), 1);
    let g1 = s.generation().await.unwrap();
    assert_eq!(
        s.generation().await.unwrap(),
        g1,
        "stable while Redis lives"
    );
    s.push("{\"n\":1}").await.unwrap();
    assert_eq!(rows(&s.read(1, 10).await.unwrap().entries).len(), 1);

    redis.restart();
    // A row pushed into the new, empty Redis before anyone read: the stream exists again,
    // without its group.
    let mut pushed = false;
    for _ in 0..3 {
        // The first call after the restart may meet the broken connection.
        if s.push("{\"n\":2}").await.is_ok() {
            pushed = true;
            break;
        }
    }
    assert!(pushed, "push after the restart");
    let after = s.read(1, 10).await.unwrap();
    assert!(after.recreated, "the group was gone");
    assert_eq!(rows(&after.entries), vec!["{\"n\":2}".to_owned()]);
    assert_ne!(s.generation().await.unwrap(), g1);
}

#[tokio::test]
async fn one_live_peer_takes_over_a_dead_instances_stream() {
    let tc = TestCluster::start().await;
    let url = tc.redis.url();
    // Instance 4 stops for good; its stream keeps what it had not written.
    tc.nodes[3].shutdown.cancel();
    let dead = silent(&url, 4);
    dead.push_many(&["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"])
        .await
        .unwrap();
    // It had read one of them (pending under its own consumer) before dying.
    assert_eq!(dead.read(4, 1).await.unwrap().entries.len(), 1);

    let (one, two) = (LedgerStream::new(tc.node(1)), LedgerStream::new(tc.node(2)));
    wait_for("instance 4 to be seen dead", PATIENCE, || {
        [1, 2]
            .iter()
            .all(|&i| tc.node(i).membership().get(4).is_some_and(|s| !s.alive))
    })
    .await;
    assert_eq!(one.dead_with_backlog().await.unwrap(), vec![4]);
    assert!(one.lock_takeover(4).await.unwrap());
    assert!(one.lock_takeover(4).await.unwrap(), "the holder keeps it");
    assert!(!two.lock_takeover(4).await.unwrap(), "one taker at a time");

    let batch = one.read(4, 10).await.unwrap();
    assert_eq!(
        rows(&batch.entries),
        vec!["{\"n\":1}", "{\"n\":2}", "{\"n\":3}"],
        "the dead one's pending entry and the unread ones"
    );
    assert!(batch.drained);
    one.ack(4, &ids(&batch.entries)).await.unwrap();
    assert_eq!(one.backlog(4).await.unwrap(), 0);
    assert!(one.dead_with_backlog().await.unwrap().is_empty());
    // The live peers' own streams are not somebody else's to take.
    one.push("{\"n\":9}").await.unwrap();
    assert!(two.dead_with_backlog().await.unwrap().is_empty());
    assert_eq!(GROUP, "writers");
}

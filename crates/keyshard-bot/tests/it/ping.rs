//! `/핑` through four real instances.

use std::time::Duration;

use keyshard_routing::primary;
use keyshard_sim::discord::InteractionSpec;

use crate::support::TestCluster;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_ping_is_answered_once_by_the_users_primary() {
    let mut c = TestCluster::start(4).await;
    let users: Vec<u64> = (0..40u64)
        .map(|i| 1_150_000_000_000_000_000 + i * 7_919)
        .collect();
    let mut sent = Vec::new();
    for &u in &users {
        sent.push((
            u,
            c.discord.send_interaction(InteractionSpec::guild("핑", u)),
        ));
    }
    let all_done = c
        .discord
        .wait_for(
            |records| records.iter().filter(|r| r.is_completed()).count() >= users.len(),
            Duration::from_secs(10),
        )
        .await;
    assert!(all_done, "not every ping was answered");
    for (user, s) in &sent {
        let r = c.discord.interaction(s.id).expect("recorded");
        assert_eq!(
            r.acked_by(),
            Some(primary(*user, 4)),
            "user {user}: {:?}",
            r.ack().and_then(|a| a.content.clone())
        );
        assert_eq!(r.duplicate_acks(), 0);
        let content = r.ack().unwrap().content.clone().unwrap_or_default();
        assert!(content.starts_with("🏓 퐁!"), "{content}");
        assert!(
            content.contains(&format!("인스턴스 {}/4", primary(*user, 4))),
            "{content}"
        );
    }
    c.procs.shutdown().await;
}

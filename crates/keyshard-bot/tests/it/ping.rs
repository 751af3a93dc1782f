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

/// `HTTP_BIND` ports are picked free, but something else can take one before the instance
/// binds it (the CI flake this guards against). The orchestrator then starts the instance on
/// another port, and the instance serves its users as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_whose_http_port_was_taken_comes_up_on_another_and_answers() {
    let mut c = TestCluster::start(2).await;
    c.procs.kill(2).await.unwrap();
    let taken = c.procs.http_addr(2).expect("instance 2 exists");
    let _squatter = std::net::TcpListener::bind(taken).expect("the killed instance's port");

    c.procs
        .restart(2)
        .await
        .expect("instance 2 comes back on another port");
    let now = c.procs.http_addr(2).unwrap();
    assert_ne!(now, taken);
    let log = std::fs::read_to_string(c.procs.log_path(2).unwrap()).unwrap();
    assert!(
        log.contains(&format!("cannot listen on HTTP_BIND={taken}")),
        "the first try failed on the taken port: {log}"
    );

    c.wait_converged(2).await;
    let user = (1_150_000_000_000_000_000u64..)
        .find(|&u| primary(u, 2) == 2)
        .unwrap();
    let r = c.ask(InteractionSpec::guild("핑", user)).await;
    assert_eq!(r.acked_by(), Some(2));
    assert_eq!(r.duplicate_acks(), 0);
    c.procs.shutdown().await;
}

//! Secrets never reach a log line, whatever the filter: two instances at `RUST_LOG=debug`
//! serve every kind of command, then every instance log is searched for the Discord token,
//! every fake API key and every interaction token the fake Discord issued.
//!
//! Two instances, not four: a takeover and a moved job need only a peer, and an instance at
//! `debug` formats every request span (with its body) on every line, which is CPU that the
//! end-to-end tests running beside this one need for their own deadlines.

use std::collections::HashSet;
use std::time::Duration;

use keyshard_sim::cluster::{ADMIN_USER_ID, SIM_DISCORD_TOKEN};
use keyshard_sim::discord::InteractionSpec;
use keyshard_sim::providers::FailurePlan;
use keyshard_sim::scenario::ProviderFakes;
use keyshard_sim::wiring::ScenarioProviders;

use crate::support::{Setup, TestCluster};

const INSTANCES: u32 = 2;

/// A user whose primary is instance `p` of [`INSTANCES`] (the base is a multiple of it).
fn user_on(p: u32, k: u64) -> u64 {
    1_190_000_000_000_000_000 + k * u64::from(INSTANCES) + u64::from(p - 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line_at_debug() {
    let mut setup = Setup::new(INSTANCES).with_providers();
    // Everything at debug: serenity's request spans (the interaction token in every `Route`),
    // hyper, the gateway, our own lines.
    setup.rust_log = "debug".into();
    if let Some(p) = setup.providers.as_mut() {
        // Instance 1's OpenAI key is refused: its chats log a key problem and move to a peer.
        p.failures = FailurePlan {
            bad_keys: HashSet::from([ScenarioProviders::key("openai", 1)]),
            ..p.failures.clone()
        };
    }
    let mut c = TestCluster::setup(setup).await;

    let mut specs = Vec::new();
    for p in 1..=INSTANCES {
        let user = user_on(p, 1);
        specs.push(InteractionSpec::guild("핑", user));
        specs.push(InteractionSpec::guild("채팅", user).string("질문", "비밀이 새지 않나요?"));
        specs.push(InteractionSpec::guild("이미지", user).string("설명", "금고 속 열쇠"));
        specs.push(InteractionSpec::guild("비디오", user).string("설명", "잠긴 문"));
    }
    // Error paths log too: an empty prompt, a provider failure, an admin view.
    specs.push(InteractionSpec::guild("채팅", user_on(2, 2)).string("질문", "  "));
    specs.push(InteractionSpec::guild("이미지", user_on(1, 2)).string("설명", "fake:500 오류"));
    specs.push(InteractionSpec::guild("로드밸런서", ADMIN_USER_ID));
    let sent: Vec<_> = specs
        .into_iter()
        .map(|s| c.discord.send_interaction(s))
        .collect();
    for s in &sent {
        c.wait_final(s.id, Duration::from_secs(20)).await;
    }
    c.procs.shutdown().await;

    let mut secrets: Vec<(String, String)> =
        vec![("the Discord token".into(), SIM_DISCORD_TOKEN.into())];
    let providers = c.providers.as_ref().unwrap();
    for i in 1..=INSTANCES {
        for (name, value) in providers.instance_env(i) {
            if name.ends_with("_API_KEY") {
                secrets.push((format!("instance {i}'s {name}"), value));
            }
        }
    }
    assert_eq!(
        secrets.len(),
        1 + INSTANCES as usize * 3,
        "every fake key is searched for"
    );
    for s in &sent {
        secrets.push((
            format!("the token of interaction {}", s.id),
            s.token.clone(),
        ));
    }

    let mut masked_tokens = 0;
    for i in 1..=INSTANCES {
        let path = c.procs.log_path(i).unwrap();
        let log = std::fs::read_to_string(&path).unwrap();
        let debug_lines = log.lines().filter(|l| l.contains(" DEBUG ")).count();
        assert!(
            debug_lines > 0,
            "instance {i} logged at debug ({debug_lines} debug lines in {} bytes)",
            log.len()
        );
        for (what, secret) in &secrets {
            if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
                // Even a fake secret is not echoed: the line shows where it was.
                let line = line.replace(secret.as_str(), "<<HERE>>");
                panic!("{what} is in instance {i}'s log: {line}");
            }
        }
        assert!(
            !log.contains('\u{1b}'),
            "instance {i} wrote ANSI colour codes to a file"
        );
        masked_tokens += log.matches("token: \"***\"").count();
    }
    // The search above means something only if the tokens were there to find: serenity's
    // request spans name them on every debug line inside a request, masked.
    assert!(
        masked_tokens > 0,
        "no masked interaction token in any log: were serenity's request spans logged?"
    );
}

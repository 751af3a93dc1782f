//! Unit tests of `config::check`, beside it (moved out of the file to keep it readable).

use super::*;

const KEYS: &str = "DISCORD_TOKEN=MTAx.fake.token
OPENAI_API_KEY_1=sk-test-one
OPENAI_API_KEY_2=sk-test-two
";

fn run(text: &str, compose: Option<&str>) -> Report {
    check(&CheckInput {
        file_name: "t.env",
        text,
        others_may_read: false,
        compose: compose.map(|text| Compose {
            file_name: "compose.yml",
            text: Some(text),
        }),
    })
}

fn joined(r: &Report) -> String {
    format!("{r:?}")
}

const TWO: &str = "services:\n  keyshard-1:\n    x: 1\n  keyshard-2: # two\n    x: 2\n";

#[test]
fn a_good_file_is_ok() {
    let r = run(&format!("INSTANCE_COUNT=2\n{KEYS}"), Some(TWO));
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(r.instances, 2);
    // OpenAI set, the other two disabled: warnings, not problems.
    assert_eq!(r.warnings.len(), 2, "{r:?}");
    assert!(r.render().contains("t.env is ok (2 warning(s))"));
}

#[test]
fn the_parser_reads_what_dotenvy_and_compose_read() {
    let f = EnvFile::parse(
        "# c\n\nexport A=1\nB=\"two words\"\r\nC='x' # note\nD=plain # note\nE=a#b\nnot a line\n9X=1\n",
    );
    let got: Vec<(&str, &str)> = f
        .entries
        .iter()
        .map(|e| (e.key.as_str(), e.value.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("A", "1"),
            ("B", "two words"),
            ("C", "x"),
            ("D", "plain"),
            ("E", "a#b")
        ]
    );
    assert_eq!(f.bad_lines, vec![8, 9]);
}

#[test]
fn per_instance_problems_name_the_variable_and_appear_once() {
    let r = run(
        &format!("INSTANCE_COUNT=2\n{KEYS}OPENAI_RPM=fast\nOPENAI_TPM_2=lots\nHEARTBEAT_MS_2=0\n"),
        Some(TWO),
    );
    let text = joined(&r);
    assert_eq!(
        text.matches("OPENAI_RPM=\\\"fast\\\" is not a valid number")
            .count(),
        1,
        "{text}"
    );
    assert!(
        r.problems
            .iter()
            .any(|p| p.starts_with("OPENAI_TPM_2=\"lots\"")),
        "{text}"
    );
    assert!(
        r.problems
            .contains(&"HEARTBEAT_MS_2=0 must be at least 1".to_owned()),
        "{text}"
    );
}

#[test]
fn a_message_of_some_instances_says_which() {
    let merged = merge(
        vec![
            (1, "A".into()),
            (2, "A".into()),
            (2, "B".into()),
            (3, "X_3 is bad".into()),
            (3, "X_31 is bad".into()),
        ],
        3,
    );
    assert_eq!(
        merged,
        [
            "instances 1, 2: A",
            "instance 2: B",
            "X_3 is bad",
            "instance 3: X_31 is bad"
        ]
    );
}

#[test]
fn shared_and_missing_keys_are_problems_without_the_key() {
    let r = run(
        "INSTANCE_COUNT=3\nDISCORD_TOKEN=MTAx.fake\nOPENAI_API_KEY_1=sk-test-same\nOPENAI_API_KEY_3=sk-test-same\nMINIMAX_API_KEY=sk-test-shared\n",
        None,
    );
    let text = joined(&r);
    assert!(text.contains("OPENAI_API_KEY_2 is missing"), "{text}");
    assert!(
        text.contains("OPENAI_API_KEY_1 and OPENAI_API_KEY_3 hold the same key"),
        "{text}"
    );
    assert!(
        text.contains("MINIMAX_API_KEY is shared by 3 instances"),
        "{text}"
    );
    assert!(!text.contains("sk-test"), "{text}");
}

#[test]
fn two_bots_and_no_provider() {
    let r = run(
        "INSTANCE_COUNT=2\nDISCORD_TOKEN=MTAx.one\nDISCORD_TOKEN_2=MTk5.two\n",
        None,
    );
    let text = joined(&r);
    assert!(text.contains("different DISCORD_TOKEN"), "{text}");
    assert!(text.contains("no provider has keys"), "{text}");
    assert!(!text.contains("MTAx") && !text.contains("MTk5"), "{text}");
}

#[test]
fn instance_count_against_the_compose_services() {
    let r = run(&format!("INSTANCE_COUNT=3\n{KEYS}"), Some(TWO));
    assert!(
        r.problems
            .iter()
            .any(|p| p
                .contains("INSTANCE_COUNT=3 but compose.yml defines the services keyshard-{1,2}")),
        "{r:?}"
    );
    let missing = check(&CheckInput {
        file_name: "t.env",
        text: &format!("INSTANCE_COUNT=2\n{KEYS}"),
        others_may_read: true,
        compose: Some(Compose {
            file_name: "gone.yml",
            text: None,
        }),
    });
    assert!(missing.is_ok(), "{missing:?}");
    let text = joined(&missing);
    assert!(text.contains("gone.yml not found"), "{text}");
    assert!(text.contains("chmod 600 t.env"), "{text}");
}

#[test]
fn names_nothing_reads_are_warned_about() {
    let r = run(
        &format!(
            "INSTANCE_COUNT=2\n{KEYS}OPENAI_APIKEY_1=x\nOPENAI_RPM_2=10\nOPENAI_API_KEY_5=sk-test-five\nINSTANCE_COUNT_2=3\nREDIS_IMAGE=redis:7\nRUST_LOG=debug\nINSTANCE_ID=2\n"
        ),
        None,
    );
    assert!(r.is_ok(), "{r:?}");
    let text = joined(&r);
    for needle in [
        "OPENAI_APIKEY_1 is not a keyshard variable",
        "OPENAI_RPM_2 is read by natively started instances only",
        "OPENAI_API_KEY_5 is for instance 5, but INSTANCE_COUNT=2",
        // INSTANCE_COUNT is read before the instance is known: no per-instance form.
        "INSTANCE_COUNT_2 is not a keyshard variable",
        "INSTANCE_ID is set in t.env",
    ] {
        assert!(text.contains(needle), "{needle}: {text}");
    }
    assert!(!text.contains("REDIS_IMAGE") && !text.contains("RUST_LOG"));
}

#[test]
fn config_names_cover_every_provider_setting() {
    let (per_instance, plain) = config_names();
    for name in [
        "DISCORD_TOKEN",
        "OPENAI_API_KEY",
        "OPENAI_IMAGE_RPM",
        "MINIMAX_VIDEO_MODEL",
        "STABILITY_TIMEOUT_SECS",
        "REDIS_URL",
        "TAKEOVER",
    ] {
        assert!(per_instance.contains(name), "{name}: {per_instance:?}");
    }
    assert!(plain.contains("INSTANCE_COUNT") && plain.contains("INSTANCE_ID"));
    assert!(plain.iter().all(|n| !n.ends_with("_1")), "{plain:?}");
}

#[test]
fn a_postgres_password_fit_for_a_url() {
    let base = format!("INSTANCE_COUNT=2\n{KEYS}");
    assert!(run(&format!("{base}POSTGRES_PASSWORD=s3cr3t-pw\n"), None).is_ok());
    let r = run(&format!("{base}POSTGRES_PASSWORD=p@ss/word\n"), None);
    assert!(joined(&r).contains("characters a URL must escape"), "{r:?}");
    assert!(!joined(&r).contains("p@ss"));
    let r = run(&format!("{base}POSTGRES_PASSWORD=CHANGE_ME\n"), None);
    assert!(joined(&r).contains("POSTGRES_PASSWORD is still a placeholder"));
}

/// The contract the compose file and the example keep with the bot: every variable a
/// `Config` reads is documented in .env.multi.example and passed to the instances by
/// docker-compose.multi.yml. When config.rs reads a new one, this names the files to update.
#[test]
fn every_variable_the_bot_reads_is_documented_and_passed_by_compose() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let example = std::fs::read_to_string(format!("{root}/.env.multi.example")).unwrap();
    let compose = std::fs::read_to_string(format!("{root}/docker-compose.multi.yml")).unwrap();
    let (per_instance, plain) = config_names();
    let extra = OTHER_NAMES
        .iter()
        .filter(|(n, _)| matches!(*n, "RUST_LOG" | "DATABASE_URL"))
        .map(|(n, _)| (*n).to_owned());
    let mut gaps = Vec::new();
    for var in per_instance.into_iter().chain(plain).chain(extra) {
        if var == "INSTANCE_ID" {
            continue; // compose sets it per service; the example says not to
        }
        let documented = example.lines().any(|l| {
            l.strip_prefix(var.as_str())
                .is_some_and(|rest| rest.starts_with('=') || rest.starts_with("_1="))
        });
        if !documented {
            gaps.push(format!("{var}: not documented in .env.multi.example"));
        }
        let passed = compose.lines().any(|l| {
            l.starts_with("  ") && l.trim_start().strip_prefix(var.as_str()) == Some(":")
                || l.trim_start().starts_with(&format!("{var}: "))
        });
        if !passed {
            gaps.push(format!(
                "{var}: not passed to the instances by docker-compose.multi.yml"
            ));
        }
    }
    assert!(gaps.is_empty(), "{}", gaps.join("\n"));
}

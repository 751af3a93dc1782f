//! Unit tests of `config`, beside it (moved out of the file to keep it readable).

use super::*;
use keyshard_routing::{RestartPolicy, ShardSetting};

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn minimal_config_uses_defaults() {
    let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "2")])).unwrap();
    assert_eq!((c.instance_id, c.instance_count), (2, 4));
    assert_eq!(c.cluster_name, "keyshard");
    assert!(c.openai.is_none() && c.minimax.is_none() && c.stability.is_none());
    assert_eq!(c.http_bind.port(), 8080);
}

#[test]
fn per_instance_keys_win() {
    let c = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "3"),
        ("OPENAI_API_KEY", "sk-shared"),
        ("OPENAI_API_KEY_3", "sk-three"),
        ("OPENAI_RPM_3", "120"),
    ]))
    .unwrap();
    let openai = c.openai.unwrap();
    assert_eq!(openai.common.api_key.expose(), "sk-three");
    assert_eq!(openai.common.limits.rpm, 120);
}

#[test]
fn the_video_render_time_defaults_to_two_minutes_and_is_checked() {
    let base = [
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        ("MINIMAX_API_KEY", "mm-real-key"),
    ];
    let c = Config::from_map(&map(&base)).unwrap();
    let minimax = c.minimax.unwrap();
    assert_eq!(minimax.video_render, Duration::from_secs(120));
    assert_eq!(c.video_poll, Duration::from_secs(10));
    let with = |v: &str| {
        let mut pairs = base.to_vec();
        pairs.push(("MINIMAX_VIDEO_RENDER_SECS", v));
        Config::from_map(&map(&pairs))
    };
    let c = with("6.5").unwrap();
    assert_eq!(
        c.minimax.unwrap().video_render,
        Duration::from_millis(6_500)
    );
    for bad in ["0", "-3", "inf", "NaN", "a while"] {
        let err = with(bad).unwrap_err().to_string();
        assert!(err.contains("MINIMAX_VIDEO_RENDER_SECS"), "{bad}: {err}");
    }
}

#[test]
fn every_problem_is_listed_at_once() {
    let err = Config::from_map(&map(&[
        ("INSTANCE_ID", "5"),
        ("INSTANCE_COUNT", "4"),
        ("REDIS_URL", "http://nope"),
        ("OPENAI_API_KEY", "sk-real"),
        ("OPENAI_RPM", "lots"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 4, "{text}");
    for needle in [
        "INSTANCE_ID=5",
        "DISCORD_TOKEN is missing",
        "REDIS_URL",
        "OPENAI_RPM=\"lots\"",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn secrets_never_show() {
    let c = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "MTIz.secret-token"),
        ("INSTANCE_ID", "1"),
        ("OPENAI_API_KEY", "sk-very-secret"),
    ]))
    .unwrap();
    let debug = format!("{c:?}");
    assert!(
        !debug.contains("secret-token") && !debug.contains("sk-very-secret"),
        "{debug}"
    );
    assert!(debug.contains("***"));
}

#[test]
fn placeholders_are_rejected_by_name_without_echoing() {
    let err = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "your-discord-bot-token"),
        ("INSTANCE_ID", "1"),
        ("MINIMAX_API_KEY_1", "CHANGE_ME"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("DISCORD_TOKEN is still a placeholder"),
        "{text}"
    );
    assert!(
        text.contains("MINIMAX_API_KEY_1 is still a placeholder"),
        "{text}"
    );
    assert!(!text.contains("your-discord-bot-token"));
}

#[test]
fn a_problem_names_the_variable_as_written_and_zero_limits_are_refused() {
    let err = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "2"),
        ("OPENAI_API_KEY_2", "sk-real"),
        ("OPENAI_TIMEOUT_SECS_2", "0"),
        ("OPENAI_RPD", "0"),
        ("HEARTBEAT_MS_2", "soon"),
    ]))
    .unwrap_err();
    assert_eq!(
        err.problems,
        [
            "HEARTBEAT_MS_2=\"soon\" is not a valid number",
            "OPENAI_RPD=0 must be at least 1",
            "OPENAI_TIMEOUT_SECS_2=0 must be at least 1",
        ]
    );
}

#[test]
fn overload_wait_is_a_finite_number_of_seconds() {
    for bad in ["inf", "NaN", "-1"] {
        let err = Config::from_map(&map(&[
            ("DISCORD_TOKEN", "tok"),
            ("INSTANCE_ID", "1"),
            ("OVERLOAD_WAIT_SECS", bad),
        ]))
        .unwrap_err();
        assert!(
            err.problems[0].starts_with("OVERLOAD_WAIT_SECS="),
            "{bad}: {err}"
        );
    }
    let c = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        ("OVERLOAD_WAIT_SECS", "2.5"),
    ]))
    .unwrap();
    assert_eq!(c.overload.max_wait, Duration::from_millis(2_500));
}

#[test]
fn the_ledger_is_off_without_a_database_url_and_its_password_never_shows() {
    let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "1")])).unwrap();
    assert!(c.ledger.is_none());
    assert_eq!(c.quota_timezone, "Asia/Seoul");

    let c = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        (
            "DATABASE_URL",
            "postgres://keyshard:pg-s3cret@db:5432/keyshard",
        ),
        ("LEDGER_PRICES", "openai/*=in:1,out:2"),
        ("LEDGER_RAW_RETENTION_DAYS", "30"),
    ]))
    .unwrap();
    let ledger = c.ledger.as_ref().unwrap();
    assert_eq!(ledger.retention.raw, Duration::from_secs(30 * 86_400));
    assert!(ledger.prices.knows("openai", "some-new-model"));
    assert_eq!(
        ledger.redacted_url(),
        "postgres://keyshard:***@db:5432/keyshard"
    );
    let debug = format!("{c:?}");
    assert!(!debug.contains("pg-s3cret"), "{debug}");
    assert!(crate::logging::secrets(&c).contains(&"pg-s3cret".to_string()));
    assert_eq!(
        database_password("postgres://postgres@127.0.0.1:5432/x"),
        None
    );

    let err = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        ("DATABASE_URL", "mysql://u:pg-s3cret@h/db"),
        ("LEDGER_PRICES", "openai/x=bogus:1"),
        ("LEDGER_ROLLUP_RETENTION_DAYS", "10"),
    ]))
    .unwrap_err();
    let text = err.to_string();
    assert_eq!(err.problems.len(), 3, "{text}");
    assert!(!text.contains("pg-s3cret"), "{text}");
    for needle in [
        "DATABASE_URL must start",
        "LEDGER_PRICES",
        "LEDGER_ROLLUP_RETENTION_DAYS (10)",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let missing = LedgerConfig::from_lookup(|_| None).unwrap_err().to_string();
    assert!(missing.contains("DATABASE_URL is not set"), "{missing}");
}

#[test]
fn gateway_settings_default_to_discords_and_are_checked() {
    let c = Config::from_map(&map(&[("DISCORD_TOKEN", "tok"), ("INSTANCE_ID", "1")])).unwrap();
    assert_eq!(c.gateway.shards, ShardSetting::Auto);
    assert_eq!(c.gateway.identify.window, Duration::from_secs(5));
    assert_eq!(c.gateway.identify.reserve, 50);
    assert_eq!(c.gateway.restart, RestartPolicy::default());
    let c = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        ("SHARD_COUNT", "4"),
        ("IDENTIFY_WINDOW_MS", "500"),
        ("IDENTIFY_RESERVE", "0"),
    ]))
    .unwrap();
    assert_eq!(c.gateway.shards, ShardSetting::Fixed(4));
    assert_eq!(c.gateway.identify.window, Duration::from_millis(500));
    assert_eq!(c.gateway.identify.reserve, 0);
    let err = Config::from_map(&map(&[
        ("DISCORD_TOKEN", "tok"),
        ("INSTANCE_ID", "1"),
        ("SHARD_COUNT", "0"),
        ("RESTART_BACKOFF_MS", "9000"),
        ("RESTART_BACKOFF_MAX_MS", "1000"),
    ]))
    .unwrap_err();
    assert_eq!(err.problems.len(), 2, "{err}");
    assert!(err.to_string().contains("SHARD_COUNT=\"0\""), "{err}");
}

#[test]
fn view_config_needs_no_token() {
    let v = ViewConfig::from_lookup(|k| (k == "CLUSTER_NAME").then(|| "c1".to_string())).unwrap();
    assert_eq!((v.cluster_name.as_str(), v.instance_count), ("c1", 4));
}

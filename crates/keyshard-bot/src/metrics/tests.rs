//! Unit tests of `metrics`, beside it (moved out of the file to keep it readable).

use super::*;

/// Long but flat: one sample with every field set, then one assertion per series.
#[test]
fn renders_labelled_counters_and_histogram() {
    let m = Metrics::default();
    m.interactions.inc(&["핑", "answered"]);
    m.interactions.inc(&["핑", "answered"]);
    m.ack_latency.observe(Duration::from_millis(3));
    m.quota_refusals.inc(&["cooldown"]);
    m.observe_ack_round_trips(&["claim", "xadd"]);
    m.observe_ack_round_trips(&["claim"]);
    let text = m.render(&ClusterSample {
        claims_won: 2,
        claims_lost: 6,
        degraded_decisions: 0,
        takeovers_down: 1,
        takeovers_overload: 0,
        redis_errors: 0,
        degraded: false,
        alive_instances: 4,
        queue_depth: 0,
        in_flight: 0,
        jobs_finished: 3,
        jobs_rescued: 1,
        jobs_requeued: 0,
        jobs_moved: 0,
        providers: vec![keyshard_providers::ProviderStats {
            provider: keyshard_providers::ProviderKind::OpenAi,
            ok: 5,
            failed: Vec::new(),
            attempts: 5,
            retries: 0,
            provider_429: 0,
            rate_limit_wait: Duration::from_millis(1500),
            provider_pauses: 2,
        }],
        ledger: Some(keyshard_ledger::WriterStats {
            recorded: 5,
            buffered: 2,
            oldest_buffered_age_ms: Some(1_500),
            ..Default::default()
        }),
        quota: Some(QuotaSample {
            degraded: true,
            degraded_decisions: 4,
            refunds: 1,
            drift: 2,
        }),
        health: vec![keyshard_providers::HealthView {
            provider: keyshard_providers::ProviderKind::OpenAi,
            key: "ab12".into(),
            out_of_service: true,
            prober: true,
            circuit_open: false,
            outages: 1,
            circuit_opens: 0,
        }],
    });
    assert!(text.contains("keyshard_quota_drift 2"), "{text}");
    assert!(
        text.contains("keyshard_quota_refusals_total{rule=\"cooldown\"} 1"),
        "{text}"
    );
    assert!(text.contains("keyshard_quota_degraded 1"), "{text}");
    assert!(
        text.contains("keyshard_quota_local_decisions_total 4"),
        "{text}"
    );
    assert!(
        text.contains("keyshard_key_out_of_service{provider=\"openai\",key=\"ab12\"} 1"),
        "{text}"
    );
    assert!(text.contains("keyshard_provider_circuit_open{provider=\"openai\",key=\"ab12\"} 0"));
    assert!(
        text.contains(
            "keyshard_ack_redis_round_trips_sum 3\nkeyshard_ack_redis_round_trips_count 2"
        ),
        "{text}"
    );
    assert!(text.contains("keyshard_ack_redis_round_trips_by_op_total{op=\"claim\"} 2"));
    assert!(
        text.contains("keyshard_interactions_total{command=\"핑\",outcome=\"answered\"} 2"),
        "{text}"
    );
    assert!(text.contains("keyshard_ack_latency_seconds_bucket{le=\"0.0025\"} 0"));
    assert!(text.contains("keyshard_ack_latency_seconds_bucket{le=\"0.005\"} 1"));
    assert!(text.contains("keyshard_claims_total{result=\"lost\"} 6"));
    assert!(text.contains("keyshard_cluster_alive_instances 4"));
    assert!(
        text.contains("keyshard_jobs_total{event=\"rescued\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("keyshard_provider_pauses_total{provider=\"openai\"} 2"),
        "{text}"
    );
    assert!(text.contains("keyshard_rate_limit_wait_seconds_total{provider=\"openai\"} 1.5"));
    assert!(text.contains("keyshard_ledger_rows_total{event=\"recorded\"} 5"));
    assert!(text.contains("keyshard_ledger_buffered_rows 2"));
    assert!(text.contains("keyshard_ledger_oldest_buffered_age_seconds 1.5"));
}

#[test]
fn usage_counters_render_per_provider() {
    let m = Metrics::default();
    m.usage_cost_micros.add(&["openai"], 150);
    m.usage_tokens.add(&["openai", "in"], 900);
    let text = m.render_usage_only();
    assert!(
        text.contains("keyshard_usage_cost_microdollars_total{provider=\"openai\"} 150"),
        "{text}"
    );
    assert!(text.contains("keyshard_usage_tokens_total{provider=\"openai\",direction=\"in\"} 900"));
    assert!(
        !text.contains("keyshard_ledger_"),
        "no writer: no writer series"
    );
}

impl Metrics {
    fn render_usage_only(&self) -> String {
        let mut out = String::new();
        self.render_usage(&mut out, None);
        out
    }
}

#[test]
fn resident_memory_is_read_from_vm_rss() {
    let status = "Name:\tkeyshard\nVmPeak:\t  99999 kB\nVmRSS:\t   15452 kB\nThreads:\t3\n";
    assert_eq!(parse_vm_rss(status), Some(15452 * 1024));
    assert_eq!(parse_vm_rss("Name:\tkeyshard\n"), None);
    assert_eq!(parse_vm_rss("VmRSS:\tlots kB\n"), None);
    // On Linux the scrape carries this process's own figure, which is never 0.
    if cfg!(target_os = "linux") {
        assert!(resident_bytes().is_some_and(|b| b > 0));
    }
}

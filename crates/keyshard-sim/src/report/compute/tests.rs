//! Unit tests of `report::compute`, beside it (moved out of the file to keep it readable).

use super::*;
use crate::discord::{CallbackAttempt, InteractionRecord, MessageKind, MessageRecord};
use crate::judge::{DownInterval, Heartbeat, HeartbeatSample, OverloadRule, DEFAULT_OVERLOAD_WAIT};

fn rec(user: u64, sent_at: Instant, callbacks: Vec<(u32, f64, u16)>) -> InteractionRecord {
    let callbacks = callbacks
        .into_iter()
        .map(|(instance, after_ms, status)| {
            CallbackAttempt::plain(instance, after_ms, status, 4, "퐁")
        })
        .collect();
    InteractionRecord::ping(user * 10, user, sent_at, vec![1, 2, 3, 4], callbacks)
}

fn input<'a>(
    records: &'a [InteractionRecord],
    down: &'a [DownInterval],
    samples: &'a [HeartbeatSample],
    start: Instant,
) -> ReportInput<'a> {
    ReportInput {
        scenario: ScenarioSummary {
            duration_s: 60.0,
            ..ScenarioSummary::default()
        },
        instances: 4,
        records,
        ack_window: Duration::from_secs(3),
        observed: Observations {
            down,
            samples,
            lag: Duration::from_millis(300),
            period: Duration::from_millis(100),
            overload: OverloadRule {
                max_wait: DEFAULT_OVERLOAD_WAIT,
            },
        },
        start,
        end: start + Duration::from_secs(60),
        capacity_per_min: None,
        provider_429: 0,
        lanes: Vec::new(),
        gateway: HashMap::new(),
        ready_s: 0.0,
        command_puts: 0,
        session_starts_left: 0,
        token_reset: false,
        unattributed_messages: 0,
        unknown_routes: 0,
        drain_timed_out: false,
        ledger: None,
        noisy_user: None,
    }
}

#[test]
fn counts_and_routing() {
    let t0 = Instant::now();
    // Users 4 and 8 have primary 1, user 5 primary 2, user 6 primary 3, user 7 primary 4.
    let records = vec![
        rec(4, t0, vec![(1, 2.0, 204)]),
        rec(5, t0, vec![(3, 900.0, 204), (2, 950.0, 400)]),
        rec(6, t0 + Duration::from_secs(30), vec![(4, 800.0, 204)]),
        rec(7, t0, vec![(1, 5.0, 204)]),
        rec(8, t0, vec![]),
    ];
    let down = [DownInterval {
        instance: 2,
        from: t0,
        until: Some(t0 + Duration::from_secs(10)),
    }];
    let idle = |id| {
        Some(Heartbeat {
            id,
            ..Heartbeat::default()
        })
    };
    let mut overloaded = vec![idle(1), idle(2), idle(3), idle(4)];
    overloaded[2] = Some(Heartbeat {
        id: 3,
        queue_depth: 1_000,
        ..Heartbeat::default()
    });
    let samples = [HeartbeatSample {
        at: t0 + Duration::from_millis(30_600),
        instances: overloaded,
    }];
    let report = Report::compute(&input(&records, &down, &samples, t0));
    let ix = &report.interactions;
    assert_eq!((ix.sent, ix.acked, ix.lost), (5, 4, 1));
    assert_eq!((ix.duplicate_acks, ix.completed, ix.failed), (1, 4, 0));
    assert_eq!(
        report.routing,
        Routing {
            primary: 1,
            takeover_down: 1,
            takeover_overload: 1,
            misrouted: 1,
        }
    );
    assert_eq!(report.served[1][2], 1, "user of #2 served by #3");
    let p2 = &report.per_instance[1];
    assert_eq!((p2.killed, p2.extra_callback_attempts), (true, 1));
    assert_eq!(report.ack_latency_ms.max, 900.0);
    assert_eq!(
        (report.completion_latency_ms.max, report.last_completion_s),
        (900.0, 30.8)
    );
    assert_eq!(report.misrouted_examples[0].answered_by, 1);
    assert_eq!(report.lost_examples[0].user_id, 8);
    // Steady window 10 s .. 60 s: one interaction sent and answered in it.
    assert_eq!((report.steady_from_s, report.steady_to_s), (10.0, 60.0));
    assert_eq!(
        (report.sent_steady_per_min, report.throughput_per_min),
        (1.0, 1.0)
    );
}

#[test]
fn a_job_finished_elsewhere_counts_for_both_instances() {
    let t0 = Instant::now();
    // User 4 (primary 1): deferred by 1, answered by 3 (the job was stolen).
    let mut r = rec(4, t0, vec![(1, 2.0, 204)]);
    r.callbacks[0].kind = 5;
    r.messages.push(MessageRecord {
        instance: 3,
        after_ms: 1_500.0,
        kind: MessageKind::EditOriginal,
        status: 200,
        error_code: None,
        content: Some("답".into()),
        embeds: vec![],
        files: vec![],
    });
    let report = Report::compute(&input(&[r], &[], &[], t0));
    let (one, three) = (&report.per_instance[0], &report.per_instance[2]);
    assert_eq!(
        (one.acks, one.completions, one.answered_by_others),
        (1, 0, 1)
    );
    assert_eq!(
        (three.acks, three.completions, three.answered_for_others),
        (0, 1, 1)
    );
}

#[test]
fn a_deferred_interaction_never_answered_is_an_unanswered_example() {
    let t0 = Instant::now();
    // User 6: deferred by instance 3 and then nothing (its job lost after the ack).
    let mut r = rec(6, t0, vec![(3, 2.0, 204)]);
    r.callbacks[0].kind = 5;
    let report = Report::compute(&input(&[r], &[], &[], t0));
    assert_eq!(
        (report.interactions.acked, report.interactions.completed),
        (1, 0)
    );
    let e = &report.unanswered_examples;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(
        (e[0].interaction_id, e[0].user_id, e[0].acked_by),
        (60, 6, 3)
    );
    assert!(report
        .render()
        .contains("unanswered: interaction 60 of user 6"));
}

#[test]
fn refusals_are_answers_without_latency_and_fairness_splits_the_noisy_user() {
    let t0 = Instant::now();
    let answered = |user, ms| rec(user, t0, vec![(1, ms, 204)]);
    let mut refused = rec(6, t0, vec![(1, 5.0, 204)]);
    refused.callbacks[0].content = Some("🚦 지금은 요청이 많아요".into());
    let records = vec![
        answered(4, 100.0),
        answered(4, 300.0),
        answered(5, 200.0),
        answered(7, 50.0),
        refused,
    ];
    let mut with_noisy = input(&records, &[], &[], t0);
    with_noisy.noisy_user = Some(4);
    let report = Report::compute(&with_noisy);
    let ix = &report.interactions;
    assert_eq!((ix.completed, ix.failed, ix.refused_wait), (5, 0, 1));
    assert_eq!(report.completion_latency_ms.max, 300.0, "no refusal inside");
    let f = report.fairness.unwrap();
    assert_eq!((f.noisy_completed, f.others_completed), (2, 2));
    assert_eq!((f.noisy_p95_ms, f.noisy_share), (300.0, 0.5));
    assert!(f.others_p95_ms <= 200.0 && f.others_p95_ms >= 50.0);
    let ping = &report.by_command["핑"];
    assert_eq!((ping.refused_wait, ping.completion_max_ms), (1, 300.0));
    assert!(Report::compute(&input(&records, &[], &[], t0))
        .fairness
        .is_none());
}

//! Unit tests of `health`, beside it (moved out of the file to keep it readable).

use super::*;

const S: Duration = Duration::from_secs(1);

fn policy() -> HealthPolicy {
    HealthPolicy::default()
}

#[test]
fn a_key_problem_puts_the_key_out_until_a_probe_succeeds() {
    let p = policy();
    let mut k = KeyState::default();
    assert_eq!(k.gate(Duration::ZERO, &p), Gate::Pass);
    assert_eq!(k.record(S, Answer::KeyFailed, &p), Some(true));
    // Out: no call until the probe is due, then exactly one probe at a time.
    assert_eq!(k.gate(2 * S, &p), Gate::KeyOut);
    assert_eq!(k.gate(30 * S, &p), Gate::KeyOut);
    assert_eq!(k.gate(31 * S, &p), Gate::Probe);
    assert_eq!(k.gate(31 * S, &p), Gate::KeyOut, "one probe at a time");
    // Still broken: the next probe waits another period.
    assert_eq!(k.record(32 * S, Answer::KeyFailed, &p), None);
    assert_eq!(k.gate(61 * S, &p), Gate::KeyOut);
    assert_eq!(k.gate(62 * S, &p), Gate::Probe);
    // A 429 proves the key authenticates: back in service.
    assert_eq!(
        k.record(62 * S, Answer::of(Err(ErrorClass::RateLimited)), &p),
        Some(false)
    );
    assert_eq!(k.gate(63 * S, &p), Gate::Pass);
}

#[test]
fn a_probe_that_meets_a_server_error_or_never_reports_is_tried_again() {
    let p = policy();
    let mut k = KeyState::default();
    k.record(Duration::ZERO, Answer::KeyFailed, &p);
    assert_eq!(k.gate(30 * S, &p), Gate::Probe);
    assert_eq!(k.record(30 * S, Answer::ServerError, &p), None);
    assert_eq!(k.gate(31 * S, &p), Gate::Probe, "inconclusive: probe again");
    // This probe is cancelled and never reports: after a period another may go.
    assert_eq!(k.gate(40 * S, &p), Gate::KeyOut);
    assert_eq!(k.gate(61 * S, &p), Gate::Probe);
}

#[test]
fn a_mark_held_elsewhere_is_not_probed_here_and_its_clearing_restores_the_key() {
    let p = policy();
    let mut k = KeyState::default();
    assert!(k.marked_elsewhere(Duration::ZERO, &p));
    assert_eq!(
        k.gate(100 * S, &p),
        Gate::KeyOut,
        "the mark's holder probes"
    );
    assert!(!k.is_prober());
    assert!(k.mark_cleared());
    assert_eq!(k.gate(101 * S, &p), Gate::Pass);
    // The prober's own state is not cleared by the mark going (it clears the mark).
    k.record(102 * S, Answer::KeyFailed, &p);
    assert!(!k.mark_cleared());
    assert!(k.is_out());
}

#[test]
fn answers_are_classified_for_health() {
    use ErrorClass::*;
    for (r, a) in [
        (Ok(()), Answer::Fine),
        (Err(KeyProblem), Answer::KeyFailed),
        (Err(Retryable), Answer::ServerError),
        (Err(RateLimited), Answer::Fine),
        (Err(ContentRejected), Answer::Fine),
        (Err(BadRequest), Answer::Fine),
    ] {
        assert_eq!(Answer::of(r), a, "{r:?}");
    }
}

#[test]
fn five_server_errors_in_a_row_open_the_circuit_and_a_half_open_probe_closes_it() {
    let c = CircuitPolicy::default();
    let mut k = Circuit::default();
    for i in 0..4 {
        assert_eq!(k.record(i * S, Answer::ServerError, &c), None);
    }
    assert_eq!(k.gate(4 * S, &c), Gate::Pass);
    assert_eq!(k.record(4 * S, Answer::ServerError, &c), Some(true));
    assert_eq!(k.gate(5 * S, &c), Gate::CircuitOpen { retry_in: 29 * S });
    assert_eq!(k.gate(34 * S, &c), Gate::Probe);
    assert_eq!(k.gate(34 * S, &c), Gate::CircuitOpen { retry_in: S });
    // A failed probe opens it again, silently.
    assert_eq!(k.record(35 * S, Answer::ServerError, &c), None);
    assert_eq!(k.gate(36 * S, &c), Gate::CircuitOpen { retry_in: 29 * S });
    assert_eq!(k.gate(65 * S, &c), Gate::Probe);
    assert_eq!(k.record(65 * S, Answer::Fine, &c), Some(false));
    assert_eq!(k.gate(66 * S, &c), Gate::Pass);
}

#[test]
fn half_of_the_recent_answers_failing_opens_it_but_not_on_few_samples_or_old_ones() {
    let c = CircuitPolicy::default();
    // Alternating errors never make 5 in a row, but 50 % of 10 does.
    let mut k = Circuit::default();
    let mut opened = None;
    for i in 0..10u32 {
        let a = if i % 2 == 0 {
            Answer::Fine
        } else {
            Answer::ServerError
        };
        if k.record(i * S / 10, a, &c) == Some(true) {
            opened = Some(i);
        }
    }
    assert_eq!(opened, Some(9));
    // One error in two answers is not a storm.
    let mut k = Circuit::default();
    k.record(Duration::ZERO, Answer::Fine, &c);
    assert_eq!(k.record(Duration::ZERO, Answer::ServerError, &c), None);
    // Errors spread over minutes fall out of the window.
    let mut k = Circuit::default();
    for i in 0..20u32 {
        let a = if i % 2 == 0 {
            Answer::Fine
        } else {
            Answer::ServerError
        };
        assert_eq!(k.record(i * 10 * S, a, &c), None, "{i}");
    }
    // Key failures say nothing of the provider.
    let mut k = Circuit::default();
    for i in 0..10 {
        assert_eq!(k.record(i * S, Answer::KeyFailed, &c), None);
    }
    assert!(!k.is_open());
}

#[tokio::test(start_paused = true)]
async fn the_handle_gates_on_the_key_before_the_circuit_and_counts_outages() {
    let h = KeyHealth::new(ProviderKind::OpenAi, "fp".into(), policy());
    assert_eq!(h.gate(), Gate::Pass);
    h.record(Err(ErrorClass::KeyProblem), "401");
    assert_eq!(h.gate(), Gate::KeyOut);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(h.gate(), Gate::Probe);
    h.record(Ok(()), "ok");
    assert_eq!(h.gate(), Gate::Pass);
    let v = h.view();
    assert_eq!(
        (v.out_of_service, v.outages, v.circuit_open),
        (false, 1, false)
    );
}

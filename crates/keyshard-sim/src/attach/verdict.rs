//! The exactly-once verdict on a report: what `run --attach` (and so `deploy-multi.sh
//! rehearse`) fails on. Routing quality (`misrouted`) and failed answers are reported, not
//! judged here: a rehearsal proves that nothing is lost or doubled while the cluster is handled
//! the way operators handle it.

use crate::report::Report;

/// Every way `report` breaks exactly-once; empty when it holds.
pub fn exactly_once(report: &Report) -> Vec<String> {
    let ix = &report.interactions;
    let mut failures = Vec::new();
    if ix.sent == 0 {
        failures.push("no interaction was sent".to_owned());
    }
    if ix.lost > 0 {
        failures.push(format!(
            "lost {} (nobody acknowledged them in time)",
            ix.lost
        ));
    }
    if ix.duplicate_acks > 0 {
        failures.push(format!("duplicate_acks {}", ix.duplicate_acks));
    }
    if ix.duplicate_answers > 0 {
        failures.push(format!("duplicate_answers {}", ix.duplicate_answers));
    }
    if ix.completed != ix.sent {
        failures.push(format!("completed {} of {} sent", ix.completed, ix.sent));
    }
    if report.drain_timed_out {
        failures.push("the answers did not all arrive before the drain deadline".to_owned());
    }
    failures
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Interactions;

    #[test]
    fn holds_only_when_everything_sent_is_answered_once() {
        let ok = Report {
            interactions: Interactions {
                sent: 10,
                acked: 10,
                completed: 10,
                failed: 1,
                ..Interactions::default()
            },
            ..Report::default()
        };
        assert!(
            exactly_once(&ok).is_empty(),
            "a ⚠️ answer is still an answer"
        );
        let mut bad = ok.clone();
        bad.interactions.lost = 1;
        bad.interactions.completed = 9;
        bad.interactions.duplicate_answers = 2;
        bad.drain_timed_out = true;
        let f = exactly_once(&bad);
        assert_eq!(f.len(), 4, "{f:?}");
        assert!(f[0].starts_with("lost 1"));
        assert_eq!(f[2], "completed 9 of 10 sent");
        assert_eq!(
            exactly_once(&Report::default()),
            vec!["no interaction was sent".to_owned()]
        );
        let mut dup = ok;
        dup.interactions.duplicate_acks = 1;
        assert_eq!(exactly_once(&dup), vec!["duplicate_acks 1".to_owned()]);
    }
}

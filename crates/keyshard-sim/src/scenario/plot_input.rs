//! The series `--plot` draws, gathered from what a run recorded.

use std::time::Instant;

use super::*;
use crate::discord::InteractionRecord;

/// The series of `--plot`, from what the run recorded: the records (offered, answered), the
/// heartbeat samples (queue depth), the fakes' admissions (lane use, in 5 s buckets: the
/// keys' windows are a minute or 10 s, so shorter buckets only show their sliding-window
/// bursts) and the process events and chaos (marks). Long but flat: one series after
/// another, each a fold over what the run recorded.
pub(super) fn plot_data(
    cfg: &ScenarioConfig,
    records: &[InteractionRecord],
    samples: &[crate::judge::HeartbeatSample],
    events: &[crate::cluster::ProcessEvent],
    start: Instant,
    end: Instant,
) -> crate::report::plot::PlotData {
    use crate::cluster::ProcessEventKind;
    use crate::report::plot::{per_second, PlotData};
    let secs = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let span = secs(end).max(1.0);
    let offered = per_second(records.iter().map(|r| secs(r.sent_at)), span);
    let answers = (1..=cfg.instances)
        .map(|i| {
            per_second(
                records.iter().filter_map(|r| {
                    let c = r.completion()?;
                    (c.instance == i).then(|| secs(r.sent_at) + c.after_ms / 1000.0)
                }),
                span,
            )
        })
        .collect();
    let queue = samples
        .iter()
        .filter(|s| s.at >= start)
        .map(|s| {
            (
                secs(s.at),
                s.instances
                    .iter()
                    .map(|h| h.as_ref().map(|h| h.queue_depth))
                    .collect(),
            )
        })
        .collect();
    let bucket = Duration::from_secs(5);
    let mut lanes: Vec<(String, Vec<crate::report::plot::LaneBucket>)> = Vec::new();
    if let Some(p) = &cfg.providers {
        let mut from = start;
        while from < end {
            let to = (from + bucket).min(end);
            for u in p.lane_use(&cfg.mix, cfg.instances, from, to) {
                let used = if u.capacity > 0.0 {
                    u.requests as f64 / u.capacity
                } else {
                    0.0
                };
                let point = (secs(from), (to - from).as_secs_f64(), used);
                match lanes.iter_mut().find(|(l, _)| *l == u.lane) {
                    Some((_, v)) => v.push(point),
                    None => lanes.push((u.lane.clone(), vec![point])),
                }
            }
            from = to;
        }
    }
    let mut marks: Vec<(f64, String)> = events
        .iter()
        .filter(|e| e.at >= start)
        .filter_map(|e| {
            let what = match e.kind {
                ProcessEventKind::Killed => "kill",
                ProcessEventKind::Terminated => "term",
                ProcessEventKind::Started => "start",
                ProcessEventKind::Ready => return None,
            };
            Some((secs(e.at), format!("{what} #{}", e.instance)))
        })
        .collect();
    marks.extend(
        cfg.chaos
            .iter()
            .filter(|c| {
                !matches!(
                    c.action,
                    ChaosAction::Kill(_) | ChaosAction::Terminate(_) | ChaosAction::Restart(_)
                )
            })
            .map(|c| (c.at.as_secs_f64(), c.to_string())),
    );
    PlotData {
        title: format!(
            "{} instances, {} users, {:.0}/s, mix {}",
            cfg.instances, cfg.users, cfg.rate, cfg.mix
        ),
        span_s: span,
        offered,
        answers,
        queue,
        lanes,
        marks,
    }
}

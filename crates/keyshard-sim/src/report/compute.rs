//! [`Report::compute`]: the report as a pure function of the fake Discord's records and what
//! the simulator observed (process events, heartbeat samples), so every counting rule is
//! unit-tested without processes.
//!
//! One pass over the records feeds a [`Tally`]; [`Tally::finish`] turns it into the
//! [`Report`]. Routing is judged by [`crate::judge`].

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use super::model::{
    AckLatency, CommandReport, CompletionLatency, Fairness, GatewayReport, InstanceReport,
    Interactions, LaneUse, LedgerReport, LostExample, Report, RouteExample, Routing,
    ScenarioSummary, UnansweredExample,
};
use super::{quantile, r2, steady_window};
use crate::discord::{CallbackAttempt, Completion, GatewayStats, InteractionRecord};
use crate::judge::{primary, Observations, Route};

/// How many misrouted or lost interactions the report lists by id.
const MAX_EXAMPLES: usize = 10;

/// Everything the report is computed from.
pub struct ReportInput<'a> {
    pub scenario: ScenarioSummary,
    pub instances: u32,
    pub records: &'a [InteractionRecord],
    pub ack_window: Duration,
    /// What the simulator saw of the instances, to judge routing.
    pub observed: Observations<'a>,
    /// The first dispatch (the time origin of every `*_s` figure).
    pub start: Instant,
    pub end: Instant,
    pub capacity_per_min: Option<f64>,
    pub provider_429: u64,
    pub lanes: Vec<LaneUse>,
    pub gateway: HashMap<u32, GatewayStats>,
    /// Seconds from the first instance's start until every instance was ready.
    pub ready_s: f64,
    pub command_puts: u32,
    pub session_starts_left: u32,
    pub token_reset: bool,
    pub unattributed_messages: u64,
    pub unknown_routes: u64,
    pub drain_timed_out: bool,
    /// The ledger as judged after the drain ([`crate::ledger::judge`]); `None` when off.
    pub ledger: Option<LedgerReport>,
    /// With `--noisy-user`: the user who sent that share of the load, for `fairness.*`.
    pub noisy_user: Option<u64>,
}

impl Report {
    pub fn compute(input: &ReportInput<'_>) -> Report {
        let mut tally = Tally::new(input);
        for r in input.records {
            tally.add(r);
        }
        tally.finish()
    }
}

/// The running counts of one pass over the records.
struct Tally<'i, 'a> {
    input: &'i ReportInput<'a>,
    n: u32,
    ix: Interactions,
    routing: Routing,
    per: Vec<InstanceReport>,
    served: Vec<Vec<u64>>,
    /// Ack and completion latencies in ms, all interactions, then per route and per command.
    acks: Vec<f64>,
    completions: Vec<f64>,
    by_route: BTreeMap<&'static str, Vec<f64>>,
    by_command: BTreeMap<String, (CommandReport, Vec<f64>)>,
    last_completion: Option<Instant>,
    steady: (Instant, Instant),
    steady_sent: u64,
    steady_completions: u64,
    misrouted_examples: Vec<RouteExample>,
    lost_examples: Vec<LostExample>,
    unanswered_examples: Vec<UnansweredExample>,
    /// Completion latencies of queued jobs (refusals left out): the noisy user's, the others'.
    noisy: Vec<f64>,
    others: Vec<f64>,
    /// The slowest queued job's answer per command.
    slowest: BTreeMap<String, f64>,
}

impl<'i, 'a> Tally<'i, 'a> {
    fn new(input: &'i ReportInput<'a>) -> Self {
        let n = input.instances.max(1);
        let load = Duration::from_secs_f64(input.scenario.duration_s.max(0.0));
        Tally {
            input,
            n,
            ix: Interactions::default(),
            routing: Routing::default(),
            per: (1..=n)
                .map(|id| InstanceReport {
                    id,
                    ..Default::default()
                })
                .collect(),
            served: vec![vec![0u64; n as usize]; n as usize],
            acks: Vec::new(),
            completions: Vec::new(),
            by_route: BTreeMap::new(),
            by_command: BTreeMap::new(),
            last_completion: None,
            steady: steady_window(input.start, load),
            steady_sent: 0,
            steady_completions: 0,
            misrouted_examples: Vec::new(),
            lost_examples: Vec::new(),
            unanswered_examples: Vec::new(),
            noisy: Vec::new(),
            others: Vec::new(),
            slowest: BTreeMap::new(),
        }
    }

    /// Index into `per_instance` of instance `id` (0 and unknown ids count nowhere).
    fn slot(&self, id: u32) -> Option<usize> {
        (id >= 1 && id <= self.n).then(|| (id - 1) as usize)
    }

    fn in_steady(&self, t: Instant) -> bool {
        t >= self.steady.0 && t < self.steady.1
    }

    /// Seconds from the first dispatch, rounded for the JSON.
    fn secs(&self, t: Instant) -> f64 {
        r2(t.saturating_duration_since(self.input.start).as_secs_f64())
    }

    fn add(&mut self, r: &InteractionRecord) {
        self.ix.sent += 1;
        if self.in_steady(r.sent_at) {
            self.steady_sent += 1;
        }
        let p = primary(r.user_id, self.n);
        self.per[(p - 1) as usize].primary_for += 1;
        self.by_command.entry(r.command.clone()).or_default().0.sent += 1;
        self.callbacks(r);
        let Some(ack) = r.ack() else {
            self.lost(r, p);
            return;
        };
        self.acked(r, p, ack);
        if r.has_duplicate_answer() {
            self.ix.duplicate_answers += 1;
        }
        match r.completion() {
            Some(done) => self.completed(r, ack.instance, &done),
            None if self.unanswered_examples.len() < MAX_EXAMPLES => {
                self.unanswered_examples.push(UnansweredExample {
                    interaction_id: r.id,
                    user_id: r.user_id,
                    command: r.command.clone(),
                    acked_by: ack.instance,
                    sent_at_s: self.secs(r.sent_at),
                })
            }
            None => {}
        }
    }

    /// Duplicate and late callback attempts, and each instance's attempts that were not the
    /// accepted one.
    fn callbacks(&mut self, r: &InteractionRecord) {
        self.ix.duplicate_acks += r.duplicate_acks() as u64;
        self.ix.late_acks += r.late_acks(self.input.ack_window) as u64;
        let first_ok = r.callbacks.iter().position(CallbackAttempt::accepted);
        for (k, c) in r.callbacks.iter().enumerate() {
            if Some(k) != first_ok {
                if let Some(i) = self.slot(c.instance) {
                    self.per[i].extra_callback_attempts += 1;
                }
            }
        }
    }

    fn lost(&mut self, r: &InteractionRecord, p: u32) {
        self.ix.lost += 1;
        if self.lost_examples.len() < MAX_EXAMPLES {
            self.lost_examples.push(LostExample {
                interaction_id: r.id,
                user_id: r.user_id,
                primary: p,
                sent_at_s: self.secs(r.sent_at),
                attempts: r
                    .callbacks
                    .iter()
                    .map(|c| (c.instance, r2(c.after_ms), c.status))
                    .collect(),
            });
        }
    }

    /// Counts the acknowledgement and judges its route.
    fn acked(&mut self, r: &InteractionRecord, p: u32, ack: &CallbackAttempt) {
        self.ix.acked += 1;
        self.by_command
            .entry(r.command.clone())
            .or_default()
            .0
            .acked += 1;
        self.acks.push(ack.after_ms);
        if let Some(i) = self.slot(ack.instance) {
            self.per[i].acks += 1;
            self.served[(p - 1) as usize][i] += 1;
            if ack.instance == p {
                self.per[i].acks_as_primary += 1;
            } else {
                self.per[i].takeovers += 1;
            }
        }
        let ack_at = r.sent_at + Duration::from_secs_f64(ack.after_ms / 1000.0);
        let route = self.input.observed.classify(p, ack.instance, ack_at);
        self.by_route
            .entry(route.key())
            .or_default()
            .push(ack.after_ms);
        match route {
            Route::Primary => self.routing.primary += 1,
            Route::Down => self.routing.takeover_down += 1,
            Route::Overload => self.routing.takeover_overload += 1,
            Route::Misrouted => {
                self.routing.misrouted += 1;
                if self.misrouted_examples.len() < MAX_EXAMPLES {
                    self.misrouted_examples.push(RouteExample {
                        interaction_id: r.id,
                        user_id: r.user_id,
                        primary: p,
                        answered_by: ack.instance,
                        sent_at_s: self.secs(r.sent_at),
                        ack_after_ms: r2(ack.after_ms),
                    });
                }
            }
        }
    }

    /// Counts the final answer, for the run, the steady window, its command and its instance.
    fn completed(&mut self, r: &InteractionRecord, acked_by: u32, done: &Completion) {
        self.ix.completed += 1;
        if done.refused_wait {
            // Told at once and nothing ran: an answer, but no job's latency or throughput.
            self.ix.refused_wait += 1;
            let cmd = self.by_command.entry(r.command.clone()).or_default();
            cmd.0.completed += 1;
            cmd.0.refused_wait += 1;
            return;
        }
        let slowest = self.slowest.entry(r.command.clone()).or_default();
        *slowest = slowest.max(done.after_ms);
        if self.input.noisy_user == Some(r.user_id) {
            self.noisy.push(done.after_ms);
        } else {
            self.others.push(done.after_ms);
        }
        self.completions.push(done.after_ms);
        let at = r.sent_at + Duration::from_secs_f64(done.after_ms / 1000.0);
        self.last_completion = Some(self.last_completion.map_or(at, |l| l.max(at)));
        if self.in_steady(at) {
            self.steady_completions += 1;
        }
        let cmd = self.by_command.entry(r.command.clone()).or_default();
        cmd.0.completed += 1;
        cmd.1.push(done.after_ms);
        if done.failed {
            cmd.0.failed += 1;
            self.ix.failed += 1;
        }
        if let Some(i) = self.slot(done.instance) {
            self.per[i].completions += 1;
            self.per[i].failed += u64::from(done.failed);
            if done.instance != acked_by {
                self.per[i].answered_for_others += 1;
            }
        }
        if done.instance != acked_by {
            if let Some(i) = self.slot(acked_by) {
                self.per[i].answered_by_others += 1;
            }
        }
    }

    /// Kill times and gateway counts per instance.
    fn instance_events(&mut self) {
        for d in self.input.observed.down {
            if let Some(i) = self.slot(d.instance) {
                let at = self.secs(d.from);
                self.per[i].killed = true;
                self.per[i].killed_at_s.get_or_insert(at);
            }
        }
        for p in &mut self.per {
            if let Some(g) = self.input.gateway.get(&p.id) {
                p.identifies = g.identifies;
                p.resumes = g.resumes;
                p.invalid_sessions = g.invalid_sessions;
            }
        }
    }

    /// Assembles the report from the parts computed above. Long but flat: one field after
    /// another of the JSON model, in its order, with no decision of its own.
    fn finish(mut self) -> Report {
        self.instance_events();
        let input = self.input;
        let acks = sorted(self.acks);
        let completions = sorted(self.completions);
        let overall = self
            .last_completion
            .map(|l| l.saturating_duration_since(input.start))
            .unwrap_or_default()
            .as_secs_f64();
        let throughput_overall_per_min = per_min(self.ix.completed, overall);
        let steady = self
            .steady
            .1
            .saturating_duration_since(self.steady.0)
            .as_secs_f64();
        let throughput_per_min = if steady > 0.0 {
            per_min(self.steady_completions, steady)
        } else {
            throughput_overall_per_min
        };
        Report {
            scenario: input.scenario.clone(),
            interactions: self.ix,
            ack_latency_ms: latency(&acks),
            completion_latency_ms: CompletionLatency {
                p50: r2(quantile(&completions, 0.5)),
                p99: r2(quantile(&completions, 0.99)),
                max: r2(completions.last().copied().unwrap_or(0.0)),
            },
            ack_latency_by_route_ms: self
                .by_route
                .into_iter()
                .map(|(k, v)| (k.to_string(), latency(&sorted(v))))
                .collect(),
            throughput_per_min,
            sent_steady_per_min: per_min(self.steady_sent, steady),
            steady_from_s: r2(self
                .steady
                .0
                .saturating_duration_since(input.start)
                .as_secs_f64()),
            steady_to_s: r2(self
                .steady
                .1
                .saturating_duration_since(input.start)
                .as_secs_f64()),
            throughput_overall_per_min,
            last_completion_s: r2(overall),
            capacity_per_min: input.capacity_per_min,
            provider_429: input.provider_429,
            lanes: input.lanes.clone(),
            routing: self.routing,
            gateway: GatewayReport {
                identifies: input.gateway.values().map(|g| g.identifies).sum(),
                invalid_sessions: input.gateway.values().map(|g| g.invalid_sessions).sum(),
                resumes: input.gateway.values().map(|g| g.resumes).sum(),
                invalidated: input.gateway.values().map(|g| g.invalidated).sum(),
                ready_s: r2(input.ready_s),
                command_puts: input.command_puts,
                session_starts_left: input.session_starts_left,
                token_reset: input.token_reset,
            },
            per_instance: self.per,
            served: self.served,
            by_command: self
                .by_command
                .into_iter()
                .map(|(k, (mut c, lat))| {
                    c.completion_p50_ms = r2(quantile(&sorted(lat), 0.5));
                    c.completion_max_ms = r2(self.slowest.get(&k).copied().unwrap_or(0.0));
                    (k, c)
                })
                .collect(),
            fairness: input.noisy_user.map(|_| {
                let (noisy, others) = (sorted(self.noisy), sorted(self.others));
                let all = (noisy.len() + others.len()).max(1) as f64;
                Fairness {
                    others_p95_ms: r2(quantile(&others, 0.95)),
                    noisy_p95_ms: r2(quantile(&noisy, 0.95)),
                    noisy_share: r2(noisy.len() as f64 / all),
                    others_completed: others.len() as u64,
                    noisy_completed: noisy.len() as u64,
                }
            }),
            misrouted_examples: self.misrouted_examples,
            lost_examples: self.lost_examples,
            unanswered_examples: self.unanswered_examples,
            unattributed_messages: input.unattributed_messages,
            unknown_routes: input.unknown_routes,
            drain_timed_out: input.drain_timed_out,
            ledger: input.ledger.clone(),
            // Judged after the report, from the run's env (`crate::quota`).
            quota: None,
            // Judged after the report, from the run's env (`crate::waiting`).
            waiting: None,
            overload: None,
            elapsed_s: r2(input
                .end
                .saturating_duration_since(input.start)
                .as_secs_f64()),
            instance_metrics: None,
            revoked_keys: Vec::new(),
            memory: None,
        }
    }
}

/// A count over `secs` seconds as a whole number per minute; 0 for no time.
fn per_min(count: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        (count as f64 * 60.0 / secs).round()
    } else {
        0.0
    }
}

/// The summary of sorted latencies in ms (all 0 for none).
fn latency(sorted: &[f64]) -> AckLatency {
    AckLatency {
        p50: r2(quantile(sorted, 0.5)),
        p99: r2(quantile(sorted, 0.99)),
        max: r2(sorted.last().copied().unwrap_or(0.0)),
    }
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

#[cfg(test)]
mod tests;

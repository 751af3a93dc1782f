//! The scenario report: the JSON other tools read (DESIGN.md §6 field names) and a short
//! readable table.
//!
//! [`Report::compute`] is a pure function of the fake Discord's records, the process events
//! and the membership samples, so every counting rule is unit-tested without processes.
//!
//! Routing of each acknowledged interaction, against `primary(user) = user % N + 1`:
//! - `primary`: answered by the primary;
//! - `takeover_down`: the primary was down — killed or terminated by the simulator and not yet
//!   ready again, or without a heartbeat in a membership sample around the acknowledgement;
//! - `takeover_overload`: the primary was alive but overloaded or draining in such a sample;
//! - `misrouted`: anything else — a non-primary answered while the primary was alive and not
//!   overloaded.
//!
//! Samples count from `lag` before the acknowledgement (the instances decide on snapshots that
//! are up to a heartbeat old) to one sample period after it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use keyshard_routing::{primary, Membership, OverloadPolicy};
use serde::Serialize;

use crate::discord::{GatewayStats, InteractionRecord};

/// `interactions.*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Interactions {
    pub sent: u64,
    /// Interactions with an accepted (204) callback.
    pub acked: u64,
    /// Interactions nobody acknowledged in time.
    pub lost: u64,
    /// Callback attempts after the first accepted one, whatever the fake answered.
    pub duplicate_acks: u64,
    /// Callback attempts after the acknowledgement window with nobody having acked.
    pub late_acks: u64,
    /// Interactions with a final answer (type-4 callback, or the last edit/followup/channel
    /// message after a deferred one).
    pub completed: u64,
    /// Completed interactions whose final answer starts with "⚠️".
    pub failed: u64,
    /// Interactions answered more than once (see `InteractionRecord::has_duplicate_answer`).
    pub duplicate_answers: u64,
}

/// `ack_latency_ms.*`: dispatch → accepted callback.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AckLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

impl AckLatency {
    /// The summary of sorted latencies in ms (all 0 for none).
    fn of(sorted: &[f64]) -> Self {
        AckLatency {
            p50: r2(quantile(sorted, 0.5)),
            p99: r2(quantile(sorted, 0.99)),
            max: r2(sorted.last().copied().unwrap_or(0.0)),
        }
    }
}

/// `completion_latency_ms.*`: dispatch → final answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLatency {
    pub p50: f64,
    pub p99: f64,
}

/// `routing.*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub primary: u64,
    pub takeover_overload: u64,
    pub takeover_down: u64,
    pub misrouted: u64,
}

/// One entry of `per_instance[]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InstanceReport {
    pub id: u32,
    /// Accepted callbacks made by this instance.
    pub acks: u64,
    /// Final answers given by this instance.
    pub completions: u64,
    pub failed: u64,
    /// Acks for users whose primary is this instance.
    pub acks_as_primary: u64,
    /// Acks for other instances' users.
    pub takeovers: u64,
    /// Callback attempts by this instance that were not the accepted one.
    pub extra_callback_attempts: u64,
    /// Interactions whose user has this instance as primary.
    pub primary_for: u64,
    pub killed: bool,
    /// Seconds from the first dispatch to the first kill or termination by the simulator.
    pub killed_at_s: Option<f64>,
    pub identifies: u32,
    pub resumes: u32,
}

/// Counts for one command name.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CommandReport {
    pub sent: u64,
    pub acked: u64,
    pub completed: u64,
    pub failed: u64,
    pub completion_p50_ms: f64,
}

/// One interaction answered by someone it should not have been.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct RouteExample {
    pub interaction_id: u64,
    pub user_id: u64,
    pub primary: u32,
    pub answered_by: u32,
    /// Seconds from the first dispatch to this one.
    pub sent_at_s: f64,
    pub ack_after_ms: f64,
}

/// One interaction nobody acknowledged, with the callback attempts it did get.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LostExample {
    pub interaction_id: u64,
    pub user_id: u64,
    pub primary: u32,
    pub sent_at_s: f64,
    /// `(instance, ms after dispatch, status)` of each callback attempt.
    pub attempts: Vec<(u32, f64, u16)>,
}

/// How many misrouted or lost interactions the report lists by id.
const MAX_EXAMPLES: usize = 10;

/// What the scenario was, echoed into the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScenarioSummary {
    pub instances: u32,
    pub users: u32,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub mix: String,
    pub skew: String,
    pub seed: u64,
    pub chaos: Vec<String>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Report {
    pub scenario: ScenarioSummary,
    pub interactions: Interactions,
    pub ack_latency_ms: AckLatency,
    pub completion_latency_ms: CompletionLatency,
    /// Ack latency of the interactions answered by their primary, and of the taken-over ones
    /// (a takeover waits for the claim fallback or for the dead primary's heartbeat to expire).
    pub ack_latency_by_route_ms: BTreeMap<String, AckLatency>,
    /// Final answers per minute in the steady state of the load: answers that arrived between
    /// the end of a warm-up (a sixth of the load, at most 10 s) and the end of the load. At
    /// saturating load that is the pace the keys allow; the backlog drained afterwards and the
    /// render time of the last videos do not dilute it.
    pub throughput_per_min: f64,
    /// Final answers per minute over the whole run, from the first dispatch to the last answer.
    pub throughput_overall_per_min: f64,
    /// The sum of the fake keys' limits for the mix; `null` when no provider limit applies
    /// (a `/핑`-only mix) or the fake providers are not wired in.
    pub capacity_per_min: Option<f64>,
    pub provider_429: u64,
    /// Each provider lane the mix uses, over the steady window: requests the fake keys
    /// admitted against what they allow. Shows which lane holds throughput back.
    pub lanes: Vec<LaneUse>,
    pub routing: Routing,
    pub per_instance: Vec<InstanceReport>,
    /// `served[p-1][a-1]`: interactions of users with primary `p` acknowledged by instance `a`.
    pub served: Vec<Vec<u64>>,
    pub by_command: BTreeMap<String, CommandReport>,
    /// The first few misrouted interactions, to look them up in the instance logs.
    pub misrouted_examples: Vec<RouteExample>,
    /// The first few lost interactions.
    pub lost_examples: Vec<LostExample>,
    /// Channel messages that could not be tied to an interaction.
    pub unattributed_messages: u64,
    /// REST calls the fake had no route for (a fidelity gap, should be 0).
    pub unknown_routes: u64,
    /// Whether the run stopped waiting for answers at its drain deadline.
    pub drain_timed_out: bool,
    /// Seconds from the first dispatch to the end of the wait for answers.
    pub elapsed_s: f64,
}

/// When an instance was down by the simulator's hand: `[from, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownInterval {
    pub instance: u32,
    pub from: Instant,
    pub until: Option<Instant>,
}

impl DownInterval {
    fn contains(&self, t: Instant) -> bool {
        t >= self.from && self.until.is_none_or(|u| t < u)
    }
}

/// Everything the report is computed from.
pub struct ReportInput<'a> {
    pub scenario: ScenarioSummary,
    pub instances: u32,
    pub records: &'a [InteractionRecord],
    pub ack_window: Duration,
    pub down: &'a [DownInterval],
    /// Membership snapshots read from Redis during the run, in time order.
    pub samples: &'a [(Instant, Membership)],
    pub sample_lag: Duration,
    pub sample_period: Duration,
    pub overload: OverloadPolicy,
    /// The first dispatch (the time origin of `killed_at_s`).
    pub start: Instant,
    pub end: Instant,
    pub capacity_per_min: Option<f64>,
    pub provider_429: u64,
    pub lanes: Vec<LaneUse>,
    pub gateway: HashMap<u32, GatewayStats>,
    pub unattributed_messages: u64,
    pub unknown_routes: u64,
    pub drain_timed_out: bool,
}

/// One provider lane over the steady window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaneUse {
    /// `openai_chat`, `minimax_images`, … ([`crate::providers::FakeLane::name`])
    pub lane: String,
    /// Requests the fake admitted on this lane, all keys together.
    pub requests: u64,
    /// What the keys allow in the same time at their long-run rate (limit per window). Over
    /// less than a window a sliding window admits more, up to its whole limit at once, so a
    /// short run of keys with small limits can read above 100 %.
    pub capacity: f64,
    /// `requests / capacity`.
    pub utilization: f64,
}

/// The steady state of a load of `load` that started at `start`: from the end of a warm-up
/// (a sixth of the load, at most 10 s) to the end of the load.
pub fn steady_window(start: Instant, load: Duration) -> (Instant, Instant) {
    (
        start + (load / 6).min(Duration::from_secs(10)),
        start + load,
    )
}

/// The `q` quantile (nearest rank) of sorted values; 0 for none.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

/// Rounds to 0.01 ms so the JSON stays readable.
fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Primary,
    Down,
    Overload,
    Misrouted,
}

impl Report {
    pub fn compute(input: &ReportInput<'_>) -> Report {
        let n = input.instances.max(1);
        let mut ix = Interactions::default();
        let mut routing = Routing::default();
        let mut per: Vec<InstanceReport> = (1..=n)
            .map(|id| InstanceReport {
                id,
                ..Default::default()
            })
            .collect();
        let mut served = vec![vec![0u64; n as usize]; n as usize];
        let mut acks = Vec::new();
        let mut completions = Vec::new();
        let mut by_command: BTreeMap<String, (CommandReport, Vec<f64>)> = BTreeMap::new();
        let mut last_completion: Option<Instant> = None;
        // Steady state: from a warm-up of a sixth of the load (at most 10 s) to the end of the
        // load, when an overloaded cluster answers at its keys' pace.
        let load = Duration::from_secs_f64(input.scenario.duration_s.max(0.0));
        let (steady_from, steady_to) = steady_window(input.start, load);
        let mut steady_completions = 0u64;
        let mut misrouted_examples = Vec::new();
        let mut lost_examples = Vec::new();
        let mut by_route: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        let inst = |id: u32| (id >= 1 && id <= n).then(|| (id - 1) as usize);

        for r in input.records {
            ix.sent += 1;
            let p = primary(r.user_id, n);
            per[(p - 1) as usize].primary_for += 1;
            let cmd = &mut by_command.entry(r.command.clone()).or_default();
            cmd.0.sent += 1;
            ix.duplicate_acks += r.duplicate_acks() as u64;
            ix.late_acks += r.late_acks(input.ack_window) as u64;
            let first_ok = r.callbacks.iter().position(|c| c.accepted());
            for (k, c) in r.callbacks.iter().enumerate() {
                if Some(k) != first_ok {
                    if let Some(i) = inst(c.instance) {
                        per[i].extra_callback_attempts += 1;
                    }
                }
            }
            let Some(ack) = r.ack() else {
                ix.lost += 1;
                if lost_examples.len() < MAX_EXAMPLES {
                    lost_examples.push(LostExample {
                        interaction_id: r.id,
                        user_id: r.user_id,
                        primary: p,
                        sent_at_s: r2(r
                            .sent_at
                            .saturating_duration_since(input.start)
                            .as_secs_f64()),
                        attempts: r
                            .callbacks
                            .iter()
                            .map(|c| (c.instance, r2(c.after_ms), c.status))
                            .collect(),
                    });
                }
                continue;
            };
            ix.acked += 1;
            cmd.0.acked += 1;
            acks.push(ack.after_ms);
            let ack_at = r.sent_at + Duration::from_secs_f64(ack.after_ms / 1000.0);
            if let Some(i) = inst(ack.instance) {
                per[i].acks += 1;
                served[(p - 1) as usize][i] += 1;
                if ack.instance == p {
                    per[i].acks_as_primary += 1;
                } else {
                    per[i].takeovers += 1;
                }
            }
            let route = classify(input, p, ack.instance, ack_at);
            let key = match route {
                Route::Primary => "primary",
                Route::Down => "takeover_down",
                Route::Overload => "takeover_overload",
                Route::Misrouted => "misrouted",
            };
            by_route.entry(key).or_default().push(ack.after_ms);
            match route {
                Route::Primary => routing.primary += 1,
                Route::Down => routing.takeover_down += 1,
                Route::Overload => routing.takeover_overload += 1,
                Route::Misrouted => {
                    routing.misrouted += 1;
                    if misrouted_examples.len() < MAX_EXAMPLES {
                        misrouted_examples.push(RouteExample {
                            interaction_id: r.id,
                            user_id: r.user_id,
                            primary: p,
                            answered_by: ack.instance,
                            sent_at_s: r2(r
                                .sent_at
                                .saturating_duration_since(input.start)
                                .as_secs_f64()),
                            ack_after_ms: r2(ack.after_ms),
                        });
                    }
                }
            }
            if r.has_duplicate_answer() {
                ix.duplicate_answers += 1;
            }
            if let Some(done) = r.completion() {
                ix.completed += 1;
                cmd.0.completed += 1;
                completions.push(done.after_ms);
                cmd.1.push(done.after_ms);
                let at = r.sent_at + Duration::from_secs_f64(done.after_ms / 1000.0);
                last_completion = Some(last_completion.map_or(at, |l| l.max(at)));
                if at >= steady_from && at < steady_to {
                    steady_completions += 1;
                }
                if let Some(i) = inst(done.instance) {
                    per[i].completions += 1;
                    if done.failed {
                        per[i].failed += 1;
                    }
                }
                if done.failed {
                    ix.failed += 1;
                    cmd.0.failed += 1;
                }
            }
        }

        for d in input.down {
            if let Some(i) = inst(d.instance) {
                per[i].killed = true;
                let at = d.from.saturating_duration_since(input.start).as_secs_f64();
                per[i]
                    .killed_at_s
                    .get_or_insert((at * 100.0).round() / 100.0);
            }
        }
        for p in &mut per {
            if let Some(g) = input.gateway.get(&p.id) {
                p.identifies = g.identifies;
                p.resumes = g.resumes;
            }
        }

        let acks = sorted(acks);
        let completions = sorted(completions);
        let window = last_completion
            .map(|l| l.saturating_duration_since(input.start))
            .unwrap_or_default()
            .as_secs_f64();
        let throughput_overall_per_min = if window > 0.0 {
            (ix.completed as f64 * 60.0 / window).round()
        } else {
            0.0
        };
        let steady = steady_to
            .saturating_duration_since(steady_from)
            .as_secs_f64();
        let throughput_per_min = if steady > 0.0 {
            (steady_completions as f64 * 60.0 / steady).round()
        } else {
            throughput_overall_per_min
        };
        Report {
            scenario: input.scenario.clone(),
            interactions: ix,
            ack_latency_ms: AckLatency::of(&acks),
            completion_latency_ms: CompletionLatency {
                p50: r2(quantile(&completions, 0.5)),
                p99: r2(quantile(&completions, 0.99)),
            },
            ack_latency_by_route_ms: by_route
                .into_iter()
                .map(|(k, v)| (k.to_string(), AckLatency::of(&sorted(v))))
                .collect(),
            throughput_per_min,
            throughput_overall_per_min,
            capacity_per_min: input.capacity_per_min,
            provider_429: input.provider_429,
            lanes: input.lanes.clone(),
            routing,
            per_instance: per,
            served,
            by_command: by_command
                .into_iter()
                .map(|(k, (mut c, lat))| {
                    c.completion_p50_ms = r2(quantile(&sorted(lat), 0.5));
                    (k, c)
                })
                .collect(),
            misrouted_examples,
            lost_examples,
            unattributed_messages: input.unattributed_messages,
            unknown_routes: input.unknown_routes,
            drain_timed_out: input.drain_timed_out,
            elapsed_s: r2(input
                .end
                .saturating_duration_since(input.start)
                .as_secs_f64()),
        }
    }

    /// The readable table: totals, latency, routing, who served whom, per instance.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let sc = &self.scenario;
        let ix = &self.interactions;
        let _ = writeln!(
            s,
            "keyshard-sim: {} instances, {} users ({}), {}/s for {} s, mix {}, seed {}{}",
            sc.instances,
            sc.users,
            sc.skew,
            sc.rate_per_s,
            sc.duration_s,
            sc.mix,
            sc.seed,
            if sc.chaos.is_empty() {
                String::new()
            } else {
                format!(", chaos {}", sc.chaos.join(" "))
            }
        );
        let _ = writeln!(
            s,
            "interactions  sent {}  acked {}  lost {}  duplicate_acks {}  late_acks {}  completed {}  failed {}  duplicate_answers {}",
            ix.sent, ix.acked, ix.lost, ix.duplicate_acks, ix.late_acks, ix.completed, ix.failed, ix.duplicate_answers
        );
        let _ = writeln!(
            s,
            "ack latency   p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            self.ack_latency_ms.p50, self.ack_latency_ms.p99, self.ack_latency_ms.max
        );
        for (route, l) in &self.ack_latency_by_route_ms {
            let _ = writeln!(
                s,
                "  {route:<19} p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
                l.p50, l.p99, l.max
            );
        }
        let _ = writeln!(
            s,
            "completion    p50 {:.2} ms  p99 {:.2} ms",
            self.completion_latency_ms.p50, self.completion_latency_ms.p99
        );
        let _ = writeln!(
            s,
            "throughput    {}/min steady ({}/min overall)  capacity {}  provider 429s {}",
            self.throughput_per_min,
            self.throughput_overall_per_min,
            self.capacity_per_min
                .map_or("n/a".to_string(), |c| format!("{c}/min")),
            self.provider_429
        );
        for l in &self.lanes {
            let _ = writeln!(
                s,
                "  lane {:<17} {} requests, {:.0} at the keys' rate ({:.1} %)",
                l.lane,
                l.requests,
                l.capacity,
                l.utilization * 100.0
            );
        }
        let r = &self.routing;
        let _ = writeln!(
            s,
            "routing       primary {}  takeover_down {}  takeover_overload {}  misrouted {}",
            r.primary, r.takeover_down, r.takeover_overload, r.misrouted
        );
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "who served whom (row: the user's primary; column: the instance that answered)"
        );
        let mut header = format!("{:<10}", "primary");
        for a in 1..=self.served.len() {
            let _ = write!(header, "{:>8}", format!("#{a}"));
        }
        let _ = writeln!(s, "{header}{:>8}", "lost");
        let mut lost_by_primary = vec![0u64; self.served.len()];
        for p in &self.per_instance {
            let acked: u64 = self.served[(p.id - 1) as usize].iter().sum();
            lost_by_primary[(p.id - 1) as usize] = p.primary_for.saturating_sub(acked);
        }
        for (pi, row) in self.served.iter().enumerate() {
            let mut line = format!("{:<10}", format!("#{}", pi + 1));
            for v in row {
                let _ = write!(line, "{v:>8}");
            }
            let _ = writeln!(s, "{line}{:>8}", lost_by_primary[pi]);
        }
        let _ = writeln!(s);
        let _ = writeln!(
            s,
            "{:<9}{:>8}{:>9}{:>11}{:>8}{:>11}{:>10}{:>9}  state",
            "instance", "acks", "primary", "takeovers", "done", "failed", "extra cb", "resumes"
        );
        for p in &self.per_instance {
            let state = match p.killed_at_s {
                Some(t) => format!("killed at {t:.1} s"),
                None => "up".into(),
            };
            let _ = writeln!(
                s,
                "{:<9}{:>8}{:>9}{:>11}{:>8}{:>11}{:>10}{:>9}  {state}",
                format!("#{}", p.id),
                p.acks,
                p.acks_as_primary,
                p.takeovers,
                p.completions,
                p.failed,
                p.extra_callback_attempts,
                p.resumes
            );
        }
        if self.by_command.len() > 1 || self.by_command.keys().any(|k| k != "핑") {
            let _ = writeln!(s);
            for (name, c) in &self.by_command {
                let _ = writeln!(
                    s,
                    "/{name:<8} sent {:>6}  acked {:>6}  completed {:>6}  failed {:>5}  p50 {:.0} ms",
                    c.sent, c.acked, c.completed, c.failed, c.completion_p50_ms
                );
            }
        }
        for e in &self.misrouted_examples {
            let _ = writeln!(
                s,
                "misrouted: interaction {} of user {} (primary #{}) answered by #{} at {:.2} s (+{:.1} ms)",
                e.interaction_id, e.user_id, e.primary, e.answered_by, e.sent_at_s, e.ack_after_ms
            );
        }
        for e in &self.lost_examples {
            let _ = writeln!(
                s,
                "lost: interaction {} of user {} (primary #{}) sent at {:.2} s, callback attempts {:?}",
                e.interaction_id, e.user_id, e.primary, e.sent_at_s, e.attempts
            );
        }
        if self.drain_timed_out {
            let _ = writeln!(
                s,
                "\nnote: stopped waiting for answers at the drain deadline"
            );
        }
        if self.unknown_routes > 0 {
            let _ = writeln!(
                s,
                "note: {} REST calls hit routes the fake Discord does not know",
                self.unknown_routes
            );
        }
        let _ = writeln!(s, "elapsed {:.1} s", self.elapsed_s);
        s
    }
}

/// Whether `answered` answering for a user with primary `p` at `at` was right, and why.
fn classify(input: &ReportInput<'_>, p: u32, answered: u32, at: Instant) -> Route {
    if answered == p {
        return Route::Primary;
    }
    if input.down.iter().any(|d| d.instance == p && d.contains(at)) {
        return Route::Down;
    }
    let from = at.checked_sub(input.sample_lag).unwrap_or(at);
    let until = at + input.sample_period;
    let mut route = Route::Misrouted;
    for (_, m) in input
        .samples
        .iter()
        .filter(|(t, _)| *t >= from && *t <= until)
    {
        let Some(state) = m.get(p) else { continue };
        if !state.alive {
            return Route::Down;
        }
        if state.is_overloaded(&input.overload) {
            route = Route::Overload;
        }
    }
    route
}

/// Down intervals from the simulator's process events: down from a kill or termination until
/// the instance is ready again.
pub fn down_intervals(events: &[crate::cluster::ProcessEvent]) -> Vec<DownInterval> {
    use crate::cluster::ProcessEventKind as K;
    let mut out: Vec<DownInterval> = Vec::new();
    let mut open: HashSet<u32> = HashSet::new();
    for e in events {
        match e.kind {
            K::Killed | K::Terminated => {
                if open.insert(e.instance) {
                    out.push(DownInterval {
                        instance: e.instance,
                        from: e.at,
                        until: None,
                    });
                }
            }
            K::Ready => {
                if open.remove(&e.instance) {
                    if let Some(d) = out
                        .iter_mut()
                        .rev()
                        .find(|d| d.instance == e.instance && d.until.is_none())
                    {
                        d.until = Some(e.at);
                    }
                }
            }
            K::Started => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discord::{CallbackAttempt, InteractionRecord};
    use keyshard_routing::InstanceState;

    fn rec(user: u64, sent_at: Instant, callbacks: Vec<(u32, f64, u16)>) -> InteractionRecord {
        InteractionRecord {
            id: user * 10,
            command: "핑".into(),
            user_id: user,
            guild_id: None,
            channel_id: 1,
            sent_at,
            sent_unix_ms: 0,
            delivered_to: vec![1, 2, 3, 4],
            callbacks: callbacks
                .into_iter()
                .map(|(instance, after_ms, status)| CallbackAttempt {
                    instance,
                    after_ms,
                    status,
                    error_code: None,
                    kind: 4,
                    content: Some("퐁".into()),
                    embeds: vec![],
                    files: vec![],
                    ephemeral: false,
                })
                .collect(),
            messages: vec![],
        }
    }

    fn input<'a>(
        records: &'a [InteractionRecord],
        down: &'a [DownInterval],
        samples: &'a [(Instant, Membership)],
        start: Instant,
    ) -> ReportInput<'a> {
        ReportInput {
            scenario: ScenarioSummary::default(),
            instances: 4,
            records,
            ack_window: Duration::from_secs(3),
            down,
            samples,
            sample_lag: Duration::from_millis(300),
            sample_period: Duration::from_millis(100),
            overload: OverloadPolicy::default(),
            start,
            end: start + Duration::from_secs(60),
            capacity_per_min: None,
            provider_429: 0,
            lanes: Vec::new(),
            gateway: HashMap::new(),
            unattributed_messages: 0,
            unknown_routes: 0,
            drain_timed_out: false,
        }
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(quantile(&v, 0.5), 50.0);
        assert_eq!(quantile(&v, 0.99), 99.0);
        assert_eq!(quantile(&[], 0.5), 0.0);
        assert_eq!(quantile(&[7.0], 0.99), 7.0);
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
        let mut overloaded = Membership::all_idle(4);
        overloaded.set(InstanceState {
            queue_depth: 1_000,
            ..InstanceState::idle(3)
        });
        let samples = [(t0 + Duration::from_millis(30_600), overloaded)];
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
        assert!(report.render().contains("misrouted 1"));
    }

    #[test]
    fn down_until_ready_again() {
        use crate::cluster::{ProcessEvent, ProcessEventKind as K};
        let t = Instant::now();
        let ev = |instance, kind, s| ProcessEvent {
            instance,
            kind,
            at: t + Duration::from_secs(s),
        };
        let d = down_intervals(&[
            ev(3, K::Ready, 0),
            ev(3, K::Killed, 10),
            ev(3, K::Started, 12),
            ev(3, K::Ready, 13),
            ev(2, K::Killed, 20),
        ]);
        assert_eq!(d.len(), 2);
        assert!(d[0].contains(t + Duration::from_secs(11)));
        assert!(!d[0].contains(t + Duration::from_secs(14)));
        assert!(d[1].contains(t + Duration::from_secs(100)));
    }
}

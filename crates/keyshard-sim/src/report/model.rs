//! The report's data: what `--json` writes. Field names are a contract (DESIGN.md §6 lists the
//! ones other tools read: `interactions.*`, `ack_latency_ms.*`, `completion_latency_ms.*`,
//! `throughput_per_min`, `capacity_per_min`, `provider_429`, `routing.*`, `per_instance[]`,
//! `elapsed_s`); fields are only ever added.
//!
//! Every figure says which window it counts: the whole run (every interaction sent, and its
//! answer however late) or the steady window (from the end of a warm-up to the end of the
//! load, see [`super::steady_window`]).

use std::collections::BTreeMap;

use serde::Serialize;

/// `interactions.*`, over the whole run.
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
    /// Completed interactions told at once that their job was not queued, its expected wait
    /// being past the command's maximum (`MAX_WAIT_SECS_*`). Counted in `completed` (the user
    /// got an answer) but in no completion latency and no throughput: no job ran.
    pub refused_wait: u64,
}

/// `ack_latency_ms.*`: dispatch → accepted callback.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct AckLatency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// `completion_latency_ms.*`: dispatch → final answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompletionLatency {
    pub p50: f64,
    pub p99: f64,
    /// The slowest answer: a video that waited for its key's window, a job rescued late.
    pub max: f64,
}

/// `routing.*`: every acknowledged interaction, judged by the simulator (see
/// [`crate::judge`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Routing {
    pub primary: u64,
    pub takeover_overload: u64,
    pub takeover_down: u64,
    pub misrouted: u64,
}

/// One entry of `per_instance[]`, over the whole run.
///
/// `acks` and `completions` count different things, so they differ even in a healthy run:
/// `acks` are interactions this instance acknowledged, `completions` the final answers it
/// posted. A job acknowledged here can be finished elsewhere (a peer with room steals it, a
/// key problem moves it, a peer rescues it after a kill), so
/// `completions = acks − answered_by_others + answered_for_others − (acked, never answered)`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct InstanceReport {
    pub id: u32,
    /// Accepted callbacks made by this instance: interactions it acknowledged.
    pub acks: u64,
    /// Final answers posted by this instance: its direct replies and the jobs its workers
    /// finished, whoever acknowledged them.
    pub completions: u64,
    /// Of `completions`, those starting with "⚠️".
    pub failed: u64,
    /// Acks for users whose primary is this instance.
    pub acks_as_primary: u64,
    /// Acks for other instances' users.
    pub takeovers: u64,
    /// Final answers to interactions another instance acknowledged (a job stolen, moved or
    /// rescued to this one).
    pub answered_for_others: u64,
    /// Interactions this instance acknowledged whose final answer another instance posted.
    pub answered_by_others: u64,
    /// Callback attempts by this instance that were not the accepted one.
    pub extra_callback_attempts: u64,
    /// Interactions whose user has this instance as primary.
    pub primary_for: u64,
    pub killed: bool,
    /// Seconds from the first dispatch to the first kill or termination by the simulator.
    pub killed_at_s: Option<f64>,
    pub identifies: u32,
    pub resumes: u32,
    /// Op 9 this instance earned (see [`GatewayReport::invalid_sessions`]).
    pub invalid_sessions: u32,
}

/// `gateway.*`: the gateway sessions over the whole run, as the fake Discord counted them.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct GatewayReport {
    /// IDENTIFYs Discord accepted, every instance and shard (each spends one of the day's
    /// session starts).
    pub identifies: u32,
    /// Op 9 INVALID_SESSION the instances earned: an IDENTIFY over its bucket's rate, a RESUME
    /// of a session that was gone. The ones the scenario caused are in `invalidated`.
    pub invalid_sessions: u32,
    pub resumes: u32,
    /// Sessions the scenario invalidated on purpose (`--invalidate-session*`).
    pub invalidated: u32,
    /// Seconds from the first instance's start until every instance was ready.
    pub ready_s: f64,
    /// `PUT …/commands` calls (command registrations), every instance together.
    pub command_puts: u32,
    /// The day's session starts left when the run ended.
    pub session_starts_left: u32,
    /// Whether the day's session starts ran out (Discord then resets the token).
    pub token_reset: bool,
}

/// Counts for one command name, over the whole run.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CommandReport {
    pub sent: u64,
    pub acked: u64,
    pub completed: u64,
    pub failed: u64,
    pub completion_p50_ms: f64,
    /// Jobs not queued for their expected wait (see `interactions.refused_wait`).
    pub refused_wait: u64,
    /// The slowest answer of a job that was queued (refusals left out): with a maximum wait,
    /// compare it with `MAX_WAIT_SECS_*`.
    pub completion_max_ms: f64,
}

/// `fairness.*` (with `--noisy-user`): completion times of the noisy user's answers against
/// everyone else's, refusals left out.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Fairness {
    /// p95 completion of every user but the noisy one.
    pub others_p95_ms: f64,
    pub noisy_p95_ms: f64,
    /// The noisy user's share of the completions.
    pub noisy_share: f64,
    pub others_completed: u64,
    pub noisy_completed: u64,
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

/// An interaction acknowledged but never answered (a job lost after its acknowledgement).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UnansweredExample {
    pub interaction_id: u64,
    pub user_id: u64,
    pub command: String,
    pub acked_by: u32,
    pub sent_at_s: f64,
}

/// What the scenario was, echoed into the report.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ScenarioSummary {
    pub instances: u32,
    pub users: u32,
    pub rate_per_s: f64,
    pub duration_s: f64,
    pub mix: String,
    pub skew: String,
    /// `--noisy-user SHARE`, when given.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub noisy_user: Option<f64>,
    pub seed: u64,
    pub chaos: Vec<String>,
}

/// One provider lane over the steady window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LaneUse {
    /// `openai_chat`, `minimax_images`, … ([`crate::providers::FakeLane::name`])
    pub lane: String,
    /// Requests the fake admitted on this lane in the steady window, all keys together.
    pub requests: u64,
    /// What the keys allow in the same time at their long-run rate (limit per window).
    pub capacity: f64,
    /// `requests / capacity`. Above 1 only when the steady window is not a whole number of
    /// the keys' windows: a sliding window admits its whole limit at once, so over less than a
    /// window the keys can admit up to `ceiling`.
    pub utilization: f64,
    /// The most the keys' sliding windows can admit in the steady window: each key's limit
    /// once per window the steady window touches (`limit × ⌈steady ÷ window⌉` per key).
    pub ceiling: f64,
    /// The keys' window in seconds (the same for every key of a lane).
    pub key_window_s: f64,
}

/// `ledger.*`: the usage ledger read back after the drain and compared with the simulator's
/// own record of answered interactions (definitions in [`crate::ledger`]). `null` in a run
/// with the ledger off (`--no-ledger`).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct LedgerReport {
    /// Rows in the run's `ledger` table.
    pub rows: u64,
    /// Interactions the simulator saw a final answer for.
    pub answered: u64,
    /// Answered interactions without a row.
    pub missing: u64,
    /// Counts beyond one per interaction: rollup above the rows, rollup groups that disagree
    /// with their rows, rows for interactions never sent.
    pub duplicates: u64,
    /// Rows for interactions sent but never seen answered (the answer lost after its row was
    /// recorded); not a double count.
    pub unanswered: u64,
    /// Rows whose `served_by` is not the instance seen posting the final answer.
    pub wrong_instance: u64,
    /// `sum(interactions)` of the daily rollup.
    pub rollup_interactions: u64,
    pub rollup_mismatched_groups: u64,
    /// Milliseconds from the end of the drain until every answered interaction had its row
    /// (the buffer's lag; a Postgres outage near the end shows here).
    pub settle_ms: f64,
    pub missing_examples: Vec<u64>,
    pub unanswered_examples: Vec<u64>,
    /// `(interaction id, answered by, served_by in the row)`.
    pub wrong_instance_examples: Vec<(u64, u32, u32)>,
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
    /// Final answers per minute in the steady window (`steady_from_s`..`steady_to_s`): answers
    /// that arrived in it, whenever their interaction was sent, every command included. At
    /// saturating load that is the pace the keys allow; the backlog drained afterwards and the
    /// render time of the last videos do not dilute it.
    pub throughput_per_min: f64,
    /// Interactions sent per minute in the steady window: what throughput can follow at most
    /// in the long run. Answers can outpace it for a while when a backlog from the warm-up
    /// drains into the window.
    pub sent_steady_per_min: f64,
    /// The steady window, in seconds from the first dispatch: a warm-up of a sixth of the
    /// load (at most 10 s) to the end of the load.
    pub steady_from_s: f64,
    pub steady_to_s: f64,
    /// Final answers per minute over the whole run, from the first dispatch to the last answer.
    pub throughput_overall_per_min: f64,
    /// Seconds from the first dispatch to the last final answer (0 for none).
    pub last_completion_s: f64,
    /// The sum of the fake keys' limits for the mix at their long-run rate; `null` when no
    /// provider limit applies (a `/핑`-only mix) or the fake providers are not wired in.
    pub capacity_per_min: Option<f64>,
    pub provider_429: u64,
    /// Each provider lane the mix uses, over the steady window: requests the fake keys
    /// admitted against what they allow. Shows which lane holds throughput back.
    pub lanes: Vec<LaneUse>,
    pub routing: Routing,
    pub gateway: GatewayReport,
    pub per_instance: Vec<InstanceReport>,
    /// `served[p-1][a-1]`: interactions of users with primary `p` acknowledged by instance `a`.
    pub served: Vec<Vec<u64>>,
    pub by_command: BTreeMap<String, CommandReport>,
    /// The first few misrouted interactions, to look them up in the instance logs.
    pub misrouted_examples: Vec<RouteExample>,
    /// The first few lost interactions.
    pub lost_examples: Vec<LostExample>,
    /// The first few interactions acknowledged and never answered.
    pub unanswered_examples: Vec<UnansweredExample>,
    /// Channel messages that could not be tied to an interaction.
    pub unattributed_messages: u64,
    /// REST calls the fake had no route for (a fidelity gap, should be 0).
    pub unknown_routes: u64,
    /// Whether the run stopped waiting for answers at its drain deadline.
    pub drain_timed_out: bool,
    /// The usage ledger against what the simulator saw; `None` with the ledger off.
    pub ledger: Option<LedgerReport>,
    /// Quotas as the simulator judges them from its own records ([`crate::quota`]); `None`
    /// when the run sets no daily limit.
    pub quota: Option<crate::quota::QuotaReport>,
    /// Waiting edits of deferred replies ([`crate::waiting`]); `None` in a run without a
    /// provider command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<crate::waiting::WaitingReport>,
    /// Accepted against refused requests and the accepted ones' waits against their maxima
    /// ([`crate::waiting`]); `None` in a run without a provider command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overload: Option<crate::waiting::OverloadReport>,
    /// With `--noisy-user`: how the others fared against the noisy user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fairness: Option<Fairness>,
    /// Seconds from the first dispatch to the end of the wait for answers.
    pub elapsed_s: f64,
    /// What the instances running at the end said on `/metrics`; `None` when not scraped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_metrics: Option<InstanceMetrics>,
    /// Keys revoked during the run (`--revoke-key`) and when they were in use again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked_keys: Vec<RevokedKey>,
    /// The instances' and Redis's memory over the run; `None` when not sampled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryReport>,
}

/// Memory over the run, sampled every `every_s` from the end of the start phase.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemoryReport {
    pub every_s: f64,
    /// Each instance's peak resident memory in kB (`null`: never scraped).
    pub rss_kb_max: Vec<Option<u64>>,
    pub rss_kb_max_any: Option<u64>,
    pub redis_used_bytes_max: Option<u64>,
    /// The job streams' `MEMORY USAGE` divided by their entries, at the sample with the most
    /// queued jobs (`deepest_queue`); `None` when nothing was ever queued at a sample.
    pub bytes_per_queued_job: Option<f64>,
    pub deepest_queue: u64,
    /// Mean `MEMORY USAGE` of a conversation key, at the sample with the most conversations.
    pub bytes_per_conversation: Option<f64>,
    pub conversations_max: u64,
    pub samples: Vec<MemorySample>,
}

/// One memory sample.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemorySample {
    /// Seconds from the first dispatch.
    pub at_s: f64,
    /// Per instance (index = id − 1), kB; `null` when the scrape failed (e.g. killed).
    pub rss_kb: Vec<Option<u64>>,
    pub redis_used_bytes: Option<u64>,
    pub queued_jobs: u64,
    pub job_streams_bytes: u64,
    pub conversations: u64,
    pub conversations_weighed: u64,
    pub conversations_weighed_bytes: u64,
}

/// One key revoked during the run, as the fake providers saw it (seconds since the first
/// dispatch).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RevokedKey {
    /// `provider:instance`.
    pub key: String,
    pub revoked_s: f64,
    pub restored_s: Option<f64>,
    /// Requests the fake refused with 401 while the key was revoked: once the key is out of
    /// service, only its probes.
    pub refused: u64,
    /// From the restoration to the key's first answered request; `None`: not used again.
    pub back_in_use_after_s: Option<f64>,
}

/// The instances' own counters, summed over those running at the end of the run (an
/// instance restarted during the run counts from its restart).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InstanceMetrics {
    /// Instances scraped.
    pub scraped: u32,
    /// Redis round trips on the acknowledgement path, over `ack_measured` won interactions.
    pub ack_round_trips: u64,
    pub ack_measured: u64,
    pub ack_round_trips_by_op: BTreeMap<String, u64>,
    /// Times a key went out of service, keys still out at the end, circuits opened.
    pub key_outages: u64,
    pub keys_out_at_end: u64,
    pub circuit_opens: u64,
}

impl InstanceMetrics {
    /// Average Redis round trips per won interaction on the acknowledgement path.
    pub fn per_interaction(&self) -> Option<f64> {
        (self.ack_measured > 0).then(|| self.ack_round_trips as f64 / self.ack_measured as f64)
    }
}

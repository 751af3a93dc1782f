//! The simulator's own judgement of honest waiting (issue 14 §4; `waiting.*` and `overload.*`
//! in the report), from the fake Discord's records alone.
//!
//! - `waiting.*`: the waiting edits of deferred replies (an accepted `PATCH @original` whose
//!   text starts with [`WAITING_PREFIX`](crate::discord::WAITING_PREFIX)). They are progress,
//!   never an answer or a second answer (`record.rs` leaves every `⏳` edit out of both); an
//!   edit that reached Discord after the answer overwrote it and is counted apart.
//! - `overload.*`: which provider-backed requests were accepted (a deferred reply) and which
//!   refused for their expected wait (a `🚦` answer in the acknowledgement itself), how fast
//!   the refusals came, and how many accepted ones were answered later than their command's
//!   maximum wait plus 10 %. The maxima are read from the instance env the run passes
//!   (`MAX_WAIT_SECS_<KIND>`, or `--max-wait kind=SECS`), with the bot's defaults otherwise.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use crate::discord::InteractionRecord;
use crate::report::quantile;

/// The commands with a maximum wait: (registered name, env suffix, the bot's default in
/// seconds, as `.env.multi.example` documents them).
const COMMANDS: [(&str, &str, u64); 3] = [
    ("채팅", "CHAT", 60),
    ("이미지", "IMAGE", 180),
    ("비디오", "VIDEO", 600),
];

/// How far past its maximum an accepted job may be answered (issue 14: "+10 %"): the
/// estimate behind the refusal is a rate measured over the last 30 s, not a promise.
const SLACK: f64 = 1.10;

/// `waiting.*`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct WaitingReport {
    /// Waiting edits accepted by the fake Discord.
    pub edits: u64,
    /// Interactions whose reply got at least one.
    pub jobs_with_edits: u64,
    pub max_edits_per_job: u64,
    /// Waiting edits that reached Discord after the interaction's first final message.
    /// Must be 0.
    pub edits_after_answer: u64,
}

/// `overload.*`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct OverloadReport {
    /// Requests of a command with a maximum wait that were queued (a deferred reply).
    pub accepted: u64,
    /// Requests refused at once for their expected wait (`🚦`).
    pub refused: u64,
    /// Accepted requests answered later than their command's maximum wait + 10 %, or not at
    /// all. Must be 0.
    pub accepted_over_max_wait: u64,
    /// The same per command.
    pub over_max_wait_by_command: BTreeMap<String, u64>,
    /// How long a refused request waited for its refusal (the acknowledgement itself), ms.
    pub refusal_ack_p99_ms: f64,
    pub refusal_ack_max_ms: f64,
    /// The slowest accepted answer per command, ms, beside the command's maximum.
    pub slowest_ms: BTreeMap<String, f64>,
    /// The maxima judged against, seconds (0: none).
    pub max_wait_secs: BTreeMap<String, u64>,
}

/// Judges the waiting edits of `records`.
pub fn judge_waiting(records: &[InteractionRecord]) -> WaitingReport {
    let mut out = WaitingReport::default();
    for r in records {
        let n = r.waiting_edits().count() as u64;
        out.edits += n;
        if n > 0 {
            out.jobs_with_edits += 1;
        }
        out.max_edits_per_job = out.max_edits_per_job.max(n);
        out.edits_after_answer += r.waiting_edits_after_answer() as u64;
    }
    out
}

/// The maximum wait per command from the instance env (the last value of a name wins, as in
/// the instances' environment); a value that does not parse keeps the default, as the bot's
/// config check would refuse it.
pub fn max_waits(env: &[(String, String)]) -> HashMap<&'static str, u64> {
    COMMANDS
        .iter()
        .map(|&(name, suffix, default)| {
            let key = format!("MAX_WAIT_SECS_{suffix}");
            let secs = env
                .iter()
                .rev()
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.trim().parse().ok())
                .unwrap_or(default);
            (name, secs)
        })
        .collect()
}

/// Judges the accepted and refused requests of `records` against `max_waits` (seconds per
/// registered command name, 0: none).
pub fn judge_overload(
    records: &[InteractionRecord],
    max_waits: &HashMap<&'static str, u64>,
) -> OverloadReport {
    let mut out = OverloadReport {
        max_wait_secs: max_waits
            .iter()
            .map(|(k, v)| ((*k).to_owned(), *v))
            .collect(),
        ..OverloadReport::default()
    };
    let mut refusal_ms = Vec::new();
    for r in records {
        let Some(&max) = max_waits.get(r.command.as_str()) else {
            continue;
        };
        let Some(ack) = r.ack() else { continue };
        let done = r.completion();
        if done.as_ref().is_some_and(|d| d.refused_wait) {
            out.refused += 1;
            refusal_ms.push(ack.after_ms);
            continue;
        }
        if ack.kind != crate::discord::record::CALLBACK_DEFERRED {
            continue;
        }
        out.accepted += 1;
        let answered_ms = done.map(|d| d.after_ms);
        if let Some(ms) = answered_ms {
            let slowest = out.slowest_ms.entry(r.command.clone()).or_default();
            *slowest = slowest.max((ms * 100.0).round() / 100.0);
        }
        let limit_ms = max as f64 * 1000.0 * SLACK;
        if max > 0 && answered_ms.is_none_or(|ms| ms > limit_ms) {
            out.accepted_over_max_wait += 1;
            *out.over_max_wait_by_command
                .entry(r.command.clone())
                .or_default() += 1;
        }
    }
    refusal_ms.sort_by(f64::total_cmp);
    out.refusal_ack_p99_ms = (quantile(&refusal_ms, 0.99) * 100.0).round() / 100.0;
    out.refusal_ack_max_ms = refusal_ms
        .last()
        .map_or(0.0, |m| (m * 100.0).round() / 100.0);
    out
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::discord::{CallbackAttempt, MessageKind, MessageRecord};

    fn chat(id: u64, ack: CallbackAttempt, messages: Vec<(f64, &str)>) -> InteractionRecord {
        InteractionRecord {
            command: "채팅".into(),
            messages: messages
                .into_iter()
                .map(|(after_ms, text)| MessageRecord {
                    instance: 1,
                    after_ms,
                    kind: MessageKind::EditOriginal,
                    status: 200,
                    error_code: None,
                    content: Some(text.into()),
                    embeds: vec![],
                    files: vec![],
                })
                .collect(),
            ..InteractionRecord::ping(id, 7, Instant::now(), vec![1], vec![ack])
        }
    }

    #[test]
    fn maxima_come_from_the_env_with_the_bots_defaults() {
        let env = vec![
            ("MAX_WAIT_SECS_CHAT".to_owned(), "20".to_owned()),
            ("MAX_WAIT_SECS_VIDEO".to_owned(), "0".to_owned()),
        ];
        let m = max_waits(&env);
        assert_eq!((m["채팅"], m["이미지"], m["비디오"]), (20, 180, 0));
    }

    #[test]
    fn accepted_refused_and_late_are_told_apart() {
        let deferred = || CallbackAttempt::plain(1, 3.0, 204, 5, "");
        let records = vec![
            // On time, after two waiting edits.
            chat(
                1,
                deferred(),
                vec![
                    (4_000.0, "⏳ 대기 중이에요 · 앞에 1개"),
                    (9_000.0, "⏳ 대기 중이에요 · 곧 시작해요"),
                    (12_000.0, "answer"),
                ],
            ),
            // Answered past 20 s + 10 %; a waiting edit after its answer.
            chat(
                2,
                deferred(),
                vec![
                    (23_000.0, "answer"),
                    (23_500.0, "⏳ 대기 중이에요 · 곧 시작해요"),
                ],
            ),
            // Accepted, never answered.
            chat(3, deferred(), vec![]),
            // Refused at once.
            chat(
                4,
                CallbackAttempt::plain(1, 4.5, 204, 4, "🚦 지금은 …"),
                vec![],
            ),
        ];
        let env = vec![("MAX_WAIT_SECS_CHAT".to_owned(), "20".to_owned())];
        let o = judge_overload(&records, &max_waits(&env));
        assert_eq!((o.accepted, o.refused, o.accepted_over_max_wait), (3, 1, 2));
        assert_eq!(o.refusal_ack_p99_ms, 4.5);
        assert_eq!(o.slowest_ms["채팅"], 23_000.0);
        assert_eq!(o.over_max_wait_by_command["채팅"], 2);
        let w = judge_waiting(&records);
        assert_eq!(
            w,
            WaitingReport {
                edits: 3,
                jobs_with_edits: 2,
                max_edits_per_job: 2,
                edits_after_answer: 1
            }
        );
    }
}

//! The usage ledger judged by the simulator: after the drain it reads the rows back from
//! Postgres (with `psql`, as plain data: the simulator names no crate of the code under test)
//! and compares them with its own record of answered interactions.
//!
//! Definitions (`ledger.*` in the report):
//! - `answered`: interactions the fake Discord saw a final answer for (a type-4 callback, or
//!   the last accepted non-progress message after a deferred one; see
//!   [`InteractionRecord::completion`]).
//! - `rows`: rows in the run's `ledger` table (the run has a database of its own).
//! - `missing`: answered interactions without a row.
//! - `duplicates`: counts beyond one per interaction. The raw table is unique on the
//!   interaction id, so a double count can only be (a) the daily rollup counting more
//!   interactions than there are rows, (b) a rollup group whose count or cost differs from the
//!   sums of its rows, or (c) a row for an interaction id the simulator never sent. Their sum.
//! - `unanswered`: rows for interactions the simulator sent but never saw answered: the row
//!   was recorded (with the done marker) and the answer then lost, e.g. an instance killed
//!   between the two. Not a double count; reported so it is visible.
//! - `wrong_instance`: rows whose `served_by` is not the instance the simulator saw post the
//!   final answer.
//!
//! [`read`] does the I/O; [`judge`] is a pure function of the records and what was read.

use std::collections::HashMap;

use crate::discord::InteractionRecord;
use crate::report::LedgerReport;

/// How many examples of each kind the report names, to look them up in the instance logs.
const EXAMPLES: usize = 5;

/// What the simulator read back from the ledger.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reading {
    /// `(interaction id, served_by)` of every row.
    pub rows: Vec<(u64, u32)>,
    /// `sum(interactions)` of the daily rollup.
    pub rollup_interactions: u64,
    /// Rollup groups whose interaction count or cost differs from the sums of their rows (both
    /// directions).
    pub mismatched_groups: u64,
}

/// Every row's id and serving instance.
const ROWS_SQL: &str = "SELECT interaction_id, served_by FROM ledger";

/// The rollup's total, and its groups that disagree with the raw rows.
const ROLLUP_SQL: &str = "
SELECT (SELECT coalesce(sum(interactions), 0) FROM ledger_daily),
       (SELECT count(*) FROM (
          SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id,
                 coalesce(guild_id, 0) AS guild_id, command, coalesce(provider, '') AS provider,
                 coalesce(key_fp, 0) AS key_fp, served_by,
                 count(*)::int8 AS n, sum(cost_micros)::int8 AS cost
          FROM ledger GROUP BY 1, 2, 3, 4, 5, 6, 7) r
        FULL JOIN ledger_daily d
          ON (r.day, r.user_id, r.guild_id, r.command, r.provider, r.key_fp, r.served_by)
           = (d.day, d.user_id, d.guild_id, d.command, d.provider, d.key_fp, d.served_by)
        WHERE r.n IS DISTINCT FROM d.interactions OR r.cost IS DISTINCT FROM d.cost_micros)";

/// Reads the rows and the rollup's check from the database at `url` (blocking: `psql`).
pub fn read(url: &str) -> anyhow::Result<Reading> {
    let rows = keyshard_testkit::psql(url, ROWS_SQL)?
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (id, by) = l
                .split_once('|')
                .ok_or_else(|| anyhow::anyhow!("unexpected psql row {l:?}"))?;
            Ok((id.parse::<i64>()? as u64, by.parse::<u32>()?))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rollup = keyshard_testkit::psql(url, ROLLUP_SQL)?;
    let (total, mismatched) = rollup
        .trim()
        .split_once('|')
        .ok_or_else(|| anyhow::anyhow!("unexpected psql answer {rollup:?}"))?;
    Ok(Reading {
        rows,
        rollup_interactions: total.parse()?,
        mismatched_groups: mismatched.parse()?,
    })
}

/// How many answered interactions have no row yet (for the wait after the drain).
pub fn missing(records: &[InteractionRecord], reading: &Reading) -> u64 {
    judge(records, reading).missing
}

/// The `ledger.*` figures of the module docs.
pub fn judge(records: &[InteractionRecord], reading: &Reading) -> LedgerReport {
    let rows: HashMap<u64, u32> = reading.rows.iter().copied().collect();
    let mut out = LedgerReport {
        rows: reading.rows.len() as u64,
        rollup_interactions: reading.rollup_interactions,
        rollup_mismatched_groups: reading.mismatched_groups,
        ..LedgerReport::default()
    };
    let mut sent = std::collections::HashSet::with_capacity(records.len());
    for r in records {
        sent.insert(r.id);
        let served_by = rows.get(&r.id).copied();
        match (r.completion(), served_by) {
            (Some(done), Some(by)) => {
                out.answered += 1;
                if done.instance != by {
                    out.wrong_instance += 1;
                    if out.wrong_instance_examples.len() < EXAMPLES {
                        out.wrong_instance_examples.push((r.id, done.instance, by));
                    }
                }
            }
            (Some(_), None) => {
                out.answered += 1;
                out.missing += 1;
                if out.missing_examples.len() < EXAMPLES {
                    out.missing_examples.push(r.id);
                }
            }
            (None, Some(_)) => {
                out.unanswered += 1;
                if out.unanswered_examples.len() < EXAMPLES {
                    out.unanswered_examples.push(r.id);
                }
            }
            (None, None) => {}
        }
    }
    let never_sent = reading
        .rows
        .iter()
        .filter(|(id, _)| !sent.contains(id))
        .count() as u64;
    out.duplicates = out.rollup_interactions.saturating_sub(out.rows)
        + out.rollup_mismatched_groups
        + never_sent;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discord::CallbackAttempt;
    use std::time::Instant;

    fn record(id: u64, answered_by: Option<u32>) -> InteractionRecord {
        let callbacks = answered_by
            .map(|instance| CallbackAttempt::plain(instance, 1.0, 204, 4, "pong"))
            .into_iter()
            .collect();
        InteractionRecord::ping(id, 1, Instant::now(), vec![1, 2], callbacks)
    }

    #[test]
    fn every_answered_interaction_needs_one_row_from_its_answerer() {
        let records = [
            record(1, Some(1)),
            record(2, Some(2)),
            record(3, Some(3)),
            record(4, None),
            record(5, None),
        ];
        let reading = Reading {
            // 1 fine, 2 by the wrong instance, 3 missing, 4 recorded but not seen answered,
            // 99 never sent.
            rows: vec![(1, 1), (2, 4), (4, 1), (99, 2)],
            rollup_interactions: 4,
            mismatched_groups: 0,
        };
        let r = judge(&records, &reading);
        assert_eq!(
            (
                r.rows,
                r.answered,
                r.missing,
                r.unanswered,
                r.wrong_instance
            ),
            (4, 3, 1, 1, 1)
        );
        assert_eq!(r.duplicates, 1, "the row for an interaction never sent");
        assert_eq!(r.missing_examples, vec![3]);
        assert_eq!(r.wrong_instance_examples, vec![(2, 2, 4)]);
        assert_eq!(missing(&records, &reading), 1);
    }

    #[test]
    fn a_rollup_counting_more_than_the_rows_is_a_double_count() {
        let records = [record(1, Some(1))];
        let reading = Reading {
            rows: vec![(1, 1)],
            rollup_interactions: 2,
            mismatched_groups: 1,
        };
        let r = judge(&records, &reading);
        assert_eq!((r.missing, r.duplicates), (0, 2));
    }
}

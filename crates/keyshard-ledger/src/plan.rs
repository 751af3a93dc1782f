//! Which part of a usage query comes from the daily rollup and which from raw rows. Pure.
//!
//! The rollup is per UTC day. A span `[since, until)` reads the whole UTC days inside it from
//! `ledger_daily` and the partial days at its edges from `ledger` (at most two edges of less
//! than a day each, read through the time index). So any span, in any time zone, is exact:
//! "today in Asia/Seoul" is two partial UTC days of raw rows; "this month" is ~30 rollup days
//! plus two raw edges.
//!
//! Why UTC days rather than a configured zone: a rollup day is fixed when the row is written,
//! so a zone change would leave history bucketed two ways; UTC never changes, has no DST, and
//! with raw edges the zone of a question never matters.
//!
//! Raw rows are kept for a shorter time than the rollup. An edge older than the raw
//! retention (`raw_kept_since`) is read as its whole day from the rollup instead: the answer
//! then covers a little more than asked (rounded out to whole UTC days), never less.

/// A UTC day in milliseconds.
pub const DAY_MS: u64 = 86_400_000;

/// Where a span's numbers come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// Whole UTC days `[from, until)` read from the rollup, as day numbers since 1970-01-01.
    pub days: Option<(u64, u64)>,
    /// Millisecond ranges `[from, until)` read from raw rows (at most two).
    pub raw: Vec<(u64, u64)>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.days.is_none() && self.raw.is_empty()
    }
}

/// Splits `[since_ms, until_ms)` into rollup days and raw edges; `raw_kept_since_ms` is the
/// oldest instant raw rows are still kept for (`None`: all of them).
pub fn plan(since_ms: u64, until_ms: u64, raw_kept_since_ms: Option<u64>) -> Plan {
    if until_ms <= since_ms {
        return Plan::default();
    }
    let kept = raw_kept_since_ms.unwrap_or(0);
    // Whole days inside the span: [a, b).
    let mut a = since_ms.div_ceil(DAY_MS);
    let mut b = until_ms / DAY_MS;
    if a > b {
        // Inside one day, touching neither midnight.
        let day = since_ms / DAY_MS;
        return if since_ms < kept {
            Plan {
                days: Some((day, day + 1)),
                raw: Vec::new(),
            }
        } else {
            Plan {
                days: None,
                raw: vec![(since_ms, until_ms)],
            }
        };
    }
    let mut raw = Vec::new();
    if since_ms < a * DAY_MS {
        if since_ms < kept {
            a -= 1;
        } else {
            raw.push((since_ms, a * DAY_MS));
        }
    }
    if b * DAY_MS < until_ms {
        if b * DAY_MS < kept {
            b += 1;
        } else {
            raw.push((b * DAY_MS, until_ms));
        }
    }
    Plan {
        days: (a < b).then_some((a, b)),
        raw,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    const D: u64 = DAY_MS;
    const H: u64 = 3_600_000;

    #[test]
    fn whole_days_from_the_rollup_edges_from_raw_rows() {
        // 2 days + 3 h before the first midnight and 5 h after the last one.
        let p = plan(10 * D - 3 * H, 12 * D + 5 * H, None);
        assert_eq!(p.days, Some((10, 12)));
        assert_eq!(
            p.raw,
            vec![(10 * D - 3 * H, 10 * D), (12 * D, 12 * D + 5 * H)]
        );
        // Aligned on midnights: no raw rows at all.
        assert_eq!(
            plan(10 * D, 12 * D, None),
            Plan {
                days: Some((10, 12)),
                raw: vec![]
            }
        );
        // Within one day: raw only.
        assert_eq!(
            plan(10 * D + H, 10 * D + 2 * H, None).raw,
            vec![(10 * D + H, 10 * D + 2 * H)]
        );
        // "Today in Seoul" (UTC+9) at 20:00 local: two partial UTC days.
        let p = plan(10 * D - 9 * H, 10 * D + 11 * H, None);
        assert_eq!(p.days, None);
        assert_eq!(
            p.raw,
            vec![(10 * D - 9 * H, 10 * D), (10 * D, 10 * D + 11 * H)]
        );
        assert!(plan(5, 5, None).is_empty());
        assert!(plan(6, 5, None).is_empty());
    }

    #[test]
    fn edges_older_than_the_raw_retention_are_read_whole_from_the_rollup() {
        let p = plan(10 * D - 3 * H, 12 * D + 5 * H, Some(11 * D));
        assert_eq!(p.days, Some((9, 12)), "the old left edge is rounded out");
        assert_eq!(p.raw, vec![(12 * D, 12 * D + 5 * H)]);
        let p = plan(10 * D + H, 10 * D + 2 * H, Some(11 * D));
        assert_eq!(p.days, Some((10, 11)));
        assert!(p.raw.is_empty());
        let p = plan(10 * D - 3 * H, 12 * D + 5 * H, Some(20 * D));
        assert_eq!(p.days, Some((9, 13)));
        assert!(p.raw.is_empty());
    }

    /// The pieces of a plan as millisecond ranges.
    fn pieces(p: &Plan) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = p.raw.clone();
        if let Some((a, b)) = p.days {
            v.push((a * D, b * D));
        }
        v.sort();
        v
    }

    /// A fixed-seed runner: the same cases on every run and every machine.
    fn runner(cases: u32) -> TestRunner {
        let seed = *b"keyshard-ledger-plan-proptest!!!";
        TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        )
    }

    #[test]
    fn without_retention_the_pieces_tile_the_span_exactly() {
        runner(2_000)
            .run(&(0u64..40 * D, 0u64..10 * D), |(since, len)| {
                let until = since + len;
                let p = plan(since, until, None);
                let v = pieces(&p);
                if len == 0 {
                    prop_assert!(v.is_empty());
                    return Ok(());
                }
                prop_assert_eq!(v.first().unwrap().0, since);
                prop_assert_eq!(v.last().unwrap().1, until);
                for w in v.windows(2) {
                    prop_assert_eq!(w[0].1, w[1].0, "gap or overlap in {:?}", v);
                }
                prop_assert!(p.raw.len() <= 2);
                for (a, b) in &p.raw {
                    prop_assert!(a < b && b - a < D, "an edge is less than a day");
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn with_retention_raw_rows_are_only_read_where_kept_and_the_span_is_covered() {
        runner(2_000)
            .run(
                &(0u64..40 * D, 1u64..10 * D, 0u64..50 * D),
                |(since, len, kept)| {
                    let until = since + len;
                    let p = plan(since, until, Some(kept));
                    let v = pieces(&p);
                    prop_assert!(v.first().unwrap().0 <= since);
                    prop_assert!(v.last().unwrap().1 >= until);
                    for w in v.windows(2) {
                        prop_assert_eq!(w[0].1, w[1].0, "gap or overlap in {:?}", v);
                    }
                    for (a, _) in &p.raw {
                        prop_assert!(*a >= kept, "raw rows read before the retention cut");
                    }
                    // Rounding out never goes past the edge days.
                    prop_assert!(v.first().unwrap().0 >= since / D * D);
                    prop_assert!(v.last().unwrap().1 <= until.div_ceil(D) * D);
                    Ok(())
                },
            )
            .unwrap();
    }
}

//! Reading: every dimension and filter over spans with partial edge days equals what the raw
//! rows say; top N; a user's today and month in a time zone (DST included); edges past the
//! raw retention read whole rollup days.

use std::collections::BTreeMap;

use keyshard_ledger::{
    local_bounds, plan, prune, top, totals, usage, user_usage, write_batch, Dimension, LedgerError,
    LedgerRow, LocalBounds, Rank, Span, Status, Totals, UsageFilter, UsageLine, DAY_MS,
};

use crate::support::*;

/// The group key of a row, rendered as the SQL renders it.
fn key_of(r: &LedgerRow, by: Option<Dimension>) -> String {
    match by {
        None => String::new(),
        Some(Dimension::User) => r.user_id.to_string(),
        Some(Dimension::Guild) => r.guild_id.map(|g| g.to_string()).unwrap_or_default(),
        Some(Dimension::Command) => r.command.clone(),
        Some(Dimension::Provider) => r.provider.clone().unwrap_or_default(),
        Some(Dimension::Key) => r.key_fp.clone().unwrap_or_default(),
        Some(Dimension::Instance) => r.served_by.to_string(),
    }
}

fn matches(r: &LedgerRow, f: &UsageFilter) -> bool {
    f.user.is_none_or(|u| r.user_id == u)
        && f.guild.is_none_or(|g| r.guild_id.unwrap_or(0) == g)
        && f.command.as_ref().is_none_or(|c| &r.command == c)
        && f.provider
            .as_ref()
            .is_none_or(|p| r.provider.as_deref().unwrap_or("") == p)
        && f.key
            .as_ref()
            .is_none_or(|k| r.key_fp.as_deref().unwrap_or("") == k)
        && f.instance.is_none_or(|i| r.served_by == i)
}

/// What the raw rows say for rows created in any of `ranges`.
fn expected(
    rows: &[LedgerRow],
    ranges: &[(u64, u64)],
    by: Option<Dimension>,
    f: &UsageFilter,
) -> Vec<UsageLine> {
    let mut groups: BTreeMap<String, Totals> = BTreeMap::new();
    for r in rows {
        if !ranges.iter().any(|(a, b)| (*a..*b).contains(&r.created_ms)) || !matches(r, f) {
            continue;
        }
        let t = groups.entry(key_of(r, by)).or_default();
        t.interactions += 1;
        t.failed += u64::from(r.status != Status::Ok);
        t.tokens_in += u64::from(r.tokens_in);
        t.tokens_out += u64::from(r.tokens_out);
        t.images += u64::from(r.images);
        t.video_secs += u64::from(r.video_secs);
        t.cost_micros += r.cost_micros;
        if let (Some(s), Some(a)) = (r.started_ms, r.acked_ms) {
            t.queue_ms += s - a;
        }
        t.provider_ms += r.provider_ms.unwrap_or(0);
    }
    groups
        .into_iter()
        .map(|(key, totals)| UsageLine { key, totals })
        .collect()
}

async fn setup() -> (TestDb, Vec<LedgerRow>) {
    let db = TestDb::new().await;
    // Five days of rows, centred on BASE_MS.
    let all = rows(11, 3_000, BASE_MS - 48 * HOUR_MS, 5 * DAY_MS);
    for chunk in all.chunks(500) {
        write_batch(&db.pool, chunk).await.unwrap();
    }
    (db, all)
}

#[tokio::test]
async fn every_dimension_and_filter_equals_the_raw_rows_over_partial_days() {
    let (db, all) = setup().await;
    let since = BASE_MS - 30 * HOUR_MS + 17 * 60_000;
    let until = BASE_MS + 40 * HOUR_MS - 5 * 60_000;
    let p = plan(since, until, None);
    assert!(
        p.days.is_some() && p.raw.len() == 2,
        "{p:?}: rollup days and two raw edges"
    );
    let span = Span::new(since, until);
    let filters = [
        UsageFilter::default(),
        UsageFilter {
            user: Some(3),
            ..UsageFilter::default()
        },
        UsageFilter {
            guild: Some(0),
            provider: Some("minimax".into()),
            ..UsageFilter::default()
        },
        UsageFilter {
            guild: Some(555),
            command: Some("chat".into()),
            instance: Some(2),
            ..UsageFilter::default()
        },
        UsageFilter {
            provider: Some(String::new()),
            ..UsageFilter::default()
        },
        UsageFilter {
            key: Some(format!("{:012x}", 2 * 0x1111_1111u64)),
            ..UsageFilter::default()
        },
        UsageFilter {
            key: Some("not-a-key".into()),
            ..UsageFilter::default()
        },
    ];
    let mut nonempty = 0;
    for f in &filters {
        for by in Dimension::ALL.into_iter().map(Some).chain([None]) {
            let got = usage(&db.pool, &span, by, f).await.unwrap();
            let want = expected(&all, &[(since, until)], by, f);
            assert_eq!(got, want, "by {by:?} with {f:?}");
            nonempty += usize::from(!got.is_empty());
        }
    }
    assert!(nonempty > 30, "the filters select something");
    let t = totals(&db.pool, &span, &UsageFilter::default())
        .await
        .unwrap();
    assert_eq!(
        t,
        expected(&all, &[(since, until)], None, &UsageFilter::default())[0].totals
    );
    let empty = usage(
        &db.pool,
        &Span::new(until, since),
        None,
        &UsageFilter::default(),
    )
    .await
    .unwrap();
    assert!(empty.is_empty());
}

#[tokio::test]
async fn top_ranks_by_cost_or_by_interactions() {
    let (db, all) = setup().await;
    let span = Span::new(BASE_MS - 48 * HOUR_MS, BASE_MS + 72 * HOUR_MS);
    let mut want = expected(
        &all,
        &[(span.since_ms, span.until_ms)],
        Some(Dimension::User),
        &UsageFilter::default(),
    );
    want.sort_by(|a, b| {
        (b.totals.cost_micros, b.totals.interactions, &a.key).cmp(&(
            a.totals.cost_micros,
            a.totals.interactions,
            &b.key,
        ))
    });
    want.truncate(3);
    let got = top(
        &db.pool,
        &span,
        Dimension::User,
        &UsageFilter::default(),
        3,
        Rank::Cost,
    )
    .await
    .unwrap();
    assert_eq!(got, want);
    let by_count = top(
        &db.pool,
        &span,
        Dimension::Command,
        &UsageFilter::default(),
        10,
        Rank::Interactions,
    )
    .await
    .unwrap();
    assert_eq!(by_count.len(), 4);
    assert!(by_count
        .windows(2)
        .all(|w| w[0].totals.interactions >= w[1].totals.interactions));
}

#[tokio::test]
async fn local_days_and_months_follow_the_zone_and_its_dst() {
    let db = TestDb::new().await;
    // 2025-03-15 20:00 UTC is 05:00 on the 16th in Seoul.
    let seoul = local_bounds(&db.pool, BASE_MS, "Asia/Seoul").await.unwrap();
    assert_eq!(
        seoul,
        LocalBounds {
            day_start: 1_742_050_800_000,
            day_end: 1_742_137_200_000,
            month_start: 1_740_754_800_000,
            month_end: 1_743_433_200_000,
        }
    );
    // 2025-03-09 in New York has 23 hours (clocks go forward at 02:00).
    let ny = local_bounds(&db.pool, 1_741_521_600_000, "America/New_York")
        .await
        .unwrap();
    assert_eq!(
        (ny.day_start, ny.day_end),
        (1_741_496_400_000, 1_741_579_200_000)
    );
    assert_eq!(ny.day_end - ny.day_start, 23 * HOUR_MS);
    assert_eq!(
        (ny.month_start, ny.month_end),
        (1_740_805_200_000, 1_743_480_000_000)
    );
    let err = local_bounds(&db.pool, BASE_MS, "Mars/Olympus")
        .await
        .unwrap_err();
    assert!(
        matches!(err, LedgerError::InvalidTimezone(ref z) if z == "Mars/Olympus"),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_users_today_and_month() {
    let (db, all) = setup().await;
    let user = 5;
    let u = user_usage(&db.pool, user, BASE_MS, "Asia/Seoul", None)
        .await
        .unwrap();
    let f = UsageFilter {
        user: Some(user),
        ..UsageFilter::default()
    };
    let today = expected(&all, &[(u.day_start_ms, u.day_start_ms + DAY_MS)], None, &f);
    assert_eq!(u.today, today[0].totals);
    assert!(u.today.interactions > 0);
    let month = expected(&all, &[(u.month_start_ms, 1_743_433_200_000)], None, &f);
    assert_eq!(u.month, month[0].totals);
    assert!(u.month.interactions > u.today.interactions);
}

#[tokio::test]
async fn edges_past_the_raw_retention_are_read_whole_from_the_rollup() {
    let (db, all) = setup().await;
    // Raw rows before the middle of the second day are gone; the rollup keeps everything.
    let kept = BASE_MS - 20 * HOUR_MS;
    let pruned = prune(&db.pool, kept, 0).await.unwrap();
    assert!(pruned.raw_rows > 0 && pruned.rollup_rows == 0, "{pruned:?}");
    let since = BASE_MS - 40 * HOUR_MS;
    let until = BASE_MS + 40 * HOUR_MS + 7;
    let span = Span {
        since_ms: since,
        until_ms: until,
        raw_kept_since_ms: Some(kept),
    };
    let p = plan(since, until, Some(kept));
    let mut ranges: Vec<(u64, u64)> = p.raw.clone();
    let (a, b) = p.days.unwrap();
    ranges.push((a * DAY_MS, b * DAY_MS));
    assert!(a * DAY_MS < since, "the old edge is rounded out");
    for by in [None, Some(Dimension::Provider)] {
        let got = usage(&db.pool, &span, by, &UsageFilter::default())
            .await
            .unwrap();
        assert_eq!(got, expected(&all, &ranges, by, &UsageFilter::default()));
    }
}

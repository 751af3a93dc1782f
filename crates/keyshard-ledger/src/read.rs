//! Reading the ledger: usage over a span grouped by one [`Dimension`], the top N, and a
//! user's own today and this month in a time zone. Whole UTC days come from the rollup, the
//! partial edge days from raw rows ([`plan`](crate::plan)).
//!
//! Every query is built from the filters actually given (no `$1 IS NULL OR …`), so Postgres
//! plans each one with the index it needs: `ledger_daily`'s primary key for day ranges,
//! `ledger_daily_user_day`/`ledger_daily_guild_day` for one user or guild, and on raw rows
//! `ledger_user_created` for one user, the BRIN time index otherwise.

use std::time::Duration;

use keyshard_routing::InstanceId;
use serde::Serialize;
use sqlx::{PgPool, Postgres, QueryBuilder, Row};

use crate::error::within;
use crate::plan::{plan, Plan};
use crate::row::parse_key_fp;
use crate::LedgerError;

/// How long a read may take: a month of a busy cluster's rollup plus two raw edge days is a
/// few hundred milliseconds; a Discord reply must be sent within 15 minutes but a user
/// should not wait more than a few seconds, and the CLI can be rerun.
pub const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What usage is grouped by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dimension {
    User,
    Guild,
    Command,
    Provider,
    Key,
    Instance,
}

impl Dimension {
    pub const ALL: [Dimension; 6] = [
        Dimension::User,
        Dimension::Guild,
        Dimension::Command,
        Dimension::Provider,
        Dimension::Key,
        Dimension::Instance,
    ];

    /// The CLI's name (`--by user|guild|command|provider|key|instance`).
    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::User => "user",
            Dimension::Guild => "guild",
            Dimension::Command => "command",
            Dimension::Provider => "provider",
            Dimension::Key => "key",
            Dimension::Instance => "instance",
        }
    }

    pub fn parse(s: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// The group key on `ledger_daily` (sentinels 0 and '' mean "none").
    fn daily_key(self) -> &'static str {
        match self {
            Dimension::User => "user_id::text",
            Dimension::Guild => "CASE WHEN guild_id = 0 THEN '' ELSE guild_id::text END",
            Dimension::Command => "command",
            Dimension::Provider => "provider",
            Dimension::Key => "CASE WHEN key_fp = 0 THEN '' ELSE lpad(to_hex(key_fp), 12, '0') END",
            Dimension::Instance => "served_by::text",
        }
    }

    /// The same key on `ledger` (NULL means "none").
    fn raw_key(self) -> &'static str {
        match self {
            Dimension::User => "user_id::text",
            Dimension::Guild => "coalesce(guild_id::text, '')",
            Dimension::Command => "command",
            Dimension::Provider => "coalesce(provider, '')",
            Dimension::Key => "coalesce(lpad(to_hex(key_fp), 12, '0'), '')",
            Dimension::Instance => "served_by::text",
        }
    }
}

/// Which rows count. `guild: Some(0)`, `provider: Some("")` and `key: Some("")` select the
/// rows without one (DMs, no provider call).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageFilter {
    pub user: Option<u64>,
    pub guild: Option<u64>,
    pub command: Option<String>,
    pub provider: Option<String>,
    /// A key fingerprint (12 hex digits).
    pub key: Option<String>,
    /// The serving instance.
    pub instance: Option<InstanceId>,
}

/// A time span `[since_ms, until_ms)` of interaction creation times (Unix ms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub since_ms: u64,
    pub until_ms: u64,
    /// The oldest instant raw rows are still kept for ([`Retention::raw_kept_since`](crate::Retention::raw_kept_since)):
    /// edges before it are read as whole days from the rollup. `None`: raw rows are complete.
    pub raw_kept_since_ms: Option<u64>,
}

impl Span {
    pub fn new(since_ms: u64, until_ms: u64) -> Span {
        Span {
            since_ms,
            until_ms,
            raw_kept_since_ms: None,
        }
    }
}

/// Sums over a set of interactions. Averages: `queue_ms` and `provider_ms` divided by the
/// interactions that had a job or a provider call (all of them for provider commands).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Totals {
    pub interactions: u64,
    /// Interactions whose status is not ok.
    pub failed: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub images: u64,
    pub video_secs: u64,
    pub cost_micros: u64,
    pub queue_ms: u64,
    pub provider_ms: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.interactions += o.interactions;
        self.failed += o.failed;
        self.tokens_in += o.tokens_in;
        self.tokens_out += o.tokens_out;
        self.images += o.images;
        self.video_secs += o.video_secs;
        self.cost_micros += o.cost_micros;
        self.queue_ms += o.queue_ms;
        self.provider_ms += o.provider_ms;
    }
}

/// One group of a usage answer. `key` is the user, guild or instance id, the command or
/// provider name, or the key fingerprint, as text; `""` means none (a DM, no provider call).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UsageLine {
    pub key: String,
    #[serde(flatten)]
    pub totals: Totals,
}

/// How [`top`] ranks groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rank {
    /// Highest estimated cost first (then most interactions).
    Cost,
    /// Most interactions first (then highest cost).
    Interactions,
}

/// Usage over `span` by `by` (or one line of totals with key `""` when `None`), every
/// group, ordered by key.
pub async fn usage(
    pool: &PgPool,
    span: &Span,
    by: Option<Dimension>,
    filter: &UsageFilter,
) -> Result<Vec<UsageLine>, LedgerError> {
    lines(pool, span, by, filter, "k", None).await
}

/// The `n` largest groups over `span` by `by`.
pub async fn top(
    pool: &PgPool,
    span: &Span,
    by: Dimension,
    filter: &UsageFilter,
    n: usize,
    rank: Rank,
) -> Result<Vec<UsageLine>, LedgerError> {
    let order = match rank {
        Rank::Cost => "cost_micros DESC, interactions DESC, k",
        Rank::Interactions => "interactions DESC, cost_micros DESC, k",
    };
    lines(pool, span, Some(by), filter, order, Some(n)).await
}

/// The totals over `span`.
pub async fn totals(
    pool: &PgPool,
    span: &Span,
    filter: &UsageFilter,
) -> Result<Totals, LedgerError> {
    let mut out = Totals::default();
    for line in usage(pool, span, None, filter).await? {
        out.add(&line.totals);
    }
    Ok(out)
}

/// A user's own usage (`/사용량`): today and this month in `tz`, up to their ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct UserUsage {
    /// Local midnight today, Unix ms.
    pub day_start_ms: u64,
    /// Local midnight on the 1st of this month, Unix ms.
    pub month_start_ms: u64,
    pub today: Totals,
    pub month: Totals,
}

/// `user`'s usage today and this month, where "today" is the calendar day of `now_ms` in
/// time zone `tz` (an IANA name such as `Asia/Seoul`, as Postgres knows it; DST is handled
/// by Postgres's zone data). `raw_kept_since_ms` as in [`Span`].
pub async fn user_usage(
    pool: &PgPool,
    user: u64,
    now_ms: u64,
    tz: &str,
    raw_kept_since_ms: Option<u64>,
) -> Result<UserUsage, LedgerError> {
    let b = local_bounds(pool, now_ms, tz).await?;
    let filter = UsageFilter {
        user: Some(user),
        ..UsageFilter::default()
    };
    let span = |since_ms, until_ms| Span {
        since_ms,
        until_ms,
        raw_kept_since_ms,
    };
    Ok(UserUsage {
        day_start_ms: b.day_start,
        month_start_ms: b.month_start,
        today: totals(pool, &span(b.day_start, b.day_end), &filter).await?,
        month: totals(pool, &span(b.month_start, b.month_end), &filter).await?,
    })
}

/// Local day and month boundaries of an instant, Unix ms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LocalBounds {
    pub day_start: u64,
    pub day_end: u64,
    pub month_start: u64,
    pub month_end: u64,
}

/// The local day and month around `now_ms` in `tz`, computed by Postgres (its zone data,
/// so no time-zone crate in the binary). [`LedgerError::InvalidTimezone`] for a name Postgres
/// does not know: call it at start to validate a configured zone.
pub async fn local_bounds(
    pool: &PgPool,
    now_ms: u64,
    tz: &str,
) -> Result<LocalBounds, LedgerError> {
    // `local` is the wall time in `tz`; `x AT TIME ZONE tz` turns a wall time back into an
    // instant (a midnight that DST skips or repeats resolves as Postgres documents).
    const SQL: &str = "
        WITH t AS (SELECT (timestamptz 'epoch' + $1::int8 * interval '1 millisecond')
                          AT TIME ZONE $2 AS local),
        b AS (SELECT date_trunc('day', local) AS d0,
                     date_trunc('day', local) + interval '1 day' AS d1,
                     date_trunc('month', local) AS m0,
                     date_trunc('month', local) + interval '1 month' AS m1
              FROM t)
        SELECT (extract(epoch FROM d0 AT TIME ZONE $2) * 1000)::int8,
               (extract(epoch FROM d1 AT TIME ZONE $2) * 1000)::int8,
               (extract(epoch FROM m0 AT TIME ZONE $2) * 1000)::int8,
               (extract(epoch FROM m1 AT TIME ZONE $2) * 1000)::int8
        FROM b";
    let row = within("ledger time zone", READ_TIMEOUT, async {
        sqlx::query(SQL)
            .bind(clamp(now_ms))
            .bind(tz)
            .fetch_one(pool)
            .await
            .map_err(|e| match e.as_database_error().and_then(|d| d.code()) {
                // invalid_parameter_value: "time zone … not recognized".
                Some(c) if c == "22023" => LedgerError::InvalidTimezone(tz.to_owned()),
                _ => LedgerError::db("ledger time zone")(e),
            })
    })
    .await?;
    let get = |i: usize| row.try_get::<i64, _>(i).map(|v| v.max(0) as u64);
    Ok(LocalBounds {
        day_start: get(0).map_err(LedgerError::db("ledger time zone"))?,
        day_end: get(1).map_err(LedgerError::db("ledger time zone"))?,
        month_start: get(2).map_err(LedgerError::db("ledger time zone"))?,
        month_end: get(3).map_err(LedgerError::db("ledger time zone"))?,
    })
}

/// A consistency check of the whole ledger: rows, the rollup's count of them, and the groups
/// where the rollup disagrees with the sums of the rows. Scans both tables: for tests, the
/// simulator's report and an operator's quiet hour, not for a request path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub rows: u64,
    pub rollup_interactions: u64,
    /// Rollup groups (day × user × guild × command × provider × key × instance) whose sums
    /// differ from the rows', counted in both directions: 0 when every row is counted once.
    /// Only meaningful while no raw rows have been pruned.
    pub mismatched_groups: u64,
}

/// See [`Audit`].
pub async fn audit(pool: &PgPool) -> Result<Audit, LedgerError> {
    const SQL: &str = "
        WITH raw AS (
            SELECT (created_at AT TIME ZONE 'UTC')::date AS day, user_id,
                   coalesce(guild_id, 0) AS guild_id, command,
                   coalesce(provider, '') AS provider, coalesce(key_fp, 0) AS key_fp,
                   served_by, count(*)::int8 AS interactions,
                   (count(*) FILTER (WHERE status <> 0))::int8 AS failed,
                   sum(tokens_in)::int8 AS tokens_in, sum(tokens_out)::int8 AS tokens_out,
                   sum(images)::int8 AS images, sum(video_secs)::int8 AS video_secs,
                   sum(cost_micros)::int8 AS cost_micros,
                   coalesce(sum(start_ms - ack_ms), 0)::int8 AS queue_ms,
                   coalesce(sum(provider_ms), 0)::int8 AS provider_ms
            FROM ledger GROUP BY 1, 2, 3, 4, 5, 6, 7),
        daily AS (
            SELECT day, user_id, guild_id, command, provider, key_fp, served_by,
                   interactions, failed, tokens_in, tokens_out, images, video_secs,
                   cost_micros, queue_ms, provider_ms
            FROM ledger_daily)
        SELECT (SELECT count(*) FROM ledger),
               (SELECT coalesce(sum(interactions), 0)::int8 FROM ledger_daily),
               (SELECT count(*) FROM (SELECT * FROM raw EXCEPT SELECT * FROM daily) a)
             + (SELECT count(*) FROM (SELECT * FROM daily EXCEPT SELECT * FROM raw) b)";
    let (rows, rollup, mismatched): (i64, i64, i64) = within("ledger audit", READ_TIMEOUT, async {
        sqlx::query_as(SQL)
            .fetch_one(pool)
            .await
            .map_err(LedgerError::db("ledger audit"))
    })
    .await?;
    Ok(Audit {
        rows: rows.max(0) as u64,
        rollup_interactions: rollup.max(0) as u64,
        mismatched_groups: mismatched.max(0) as u64,
    })
}

/// Which of `ids` (interaction ids) have a ledger row: the simulator's `ledger.missing` is
/// its answered interactions minus these.
pub async fn present(pool: &PgPool, ids: &[u64]) -> Result<Vec<u64>, LedgerError> {
    let ids: Vec<i64> = ids.iter().map(|i| *i as i64).collect();
    let found: Vec<i64> = within("ledger lookup", READ_TIMEOUT, async {
        sqlx::query_scalar(
            "SELECT interaction_id FROM ledger WHERE interaction_id = ANY($1) ORDER BY 1",
        )
        .bind(ids)
        .fetch_all(pool)
        .await
        .map_err(LedgerError::db("ledger lookup"))
    })
    .await?;
    Ok(found.into_iter().map(|i| i as u64).collect())
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

async fn lines(
    pool: &PgPool,
    span: &Span,
    by: Option<Dimension>,
    filter: &UsageFilter,
    order: &str,
    limit: Option<usize>,
) -> Result<Vec<UsageLine>, LedgerError> {
    let p = plan(span.since_ms, span.until_ms, span.raw_kept_since_ms);
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = build(&p, by, filter);
    q.push(" GROUP BY k ORDER BY ").push(order);
    if let Some(n) = limit {
        q.push(" LIMIT ").push_bind(n.min(i64::MAX as usize) as i64);
    }
    let rows = within("ledger read", READ_TIMEOUT, async {
        q.build()
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("ledger read"))
    })
    .await?;
    rows.iter()
        .map(|r| {
            let n = |c: &str| r.try_get::<i64, _>(c).map(|v| v.max(0) as u64);
            Ok(UsageLine {
                key: r.try_get("k")?,
                totals: Totals {
                    interactions: n("interactions")?,
                    failed: n("failed")?,
                    tokens_in: n("tokens_in")?,
                    tokens_out: n("tokens_out")?,
                    images: n("images")?,
                    video_secs: n("video_secs")?,
                    cost_micros: n("cost_micros")?,
                    queue_ms: n("queue_ms")?,
                    provider_ms: n("provider_ms")?,
                },
            })
        })
        .collect::<Result<_, sqlx::Error>>()
        .map_err(LedgerError::db("ledger read"))
}

const MEASURES: [&str; 9] = [
    "interactions",
    "failed",
    "tokens_in",
    "tokens_out",
    "images",
    "video_secs",
    "cost_micros",
    "queue_ms",
    "provider_ms",
];

/// `SELECT k, sums FROM (rollup days UNION ALL raw edges)` with the filters bound.
fn build<'a>(p: &Plan, by: Option<Dimension>, f: &'a UsageFilter) -> QueryBuilder<'a, Postgres> {
    let mut q = QueryBuilder::new("SELECT k");
    for m in MEASURES {
        q.push(format!(", sum({m})::int8 AS {m}"));
    }
    q.push(" FROM (");
    let mut first = true;
    if let Some((a, b)) = p.days {
        first = false;
        q.push("SELECT ")
            .push(by.map_or("''", Dimension::daily_key))
            .push(" AS k, ")
            .push(MEASURES.join(", "))
            .push(" FROM ledger_daily WHERE day >= date '1970-01-01' + ")
            .push_bind(a.min(i32::MAX as u64) as i32)
            .push(" AND day < date '1970-01-01' + ")
            .push_bind(b.min(i32::MAX as u64) as i32);
        filters(&mut q, f, true);
    }
    for (from, until) in &p.raw {
        if !first {
            q.push(" UNION ALL ");
        }
        first = false;
        q.push("SELECT ")
            .push(by.map_or("''", Dimension::raw_key))
            .push(
                // Named like the rollup's columns: the first SELECT of a UNION names them.
                " AS k, 1::int8 AS interactions, (status <> 0)::int::int8 AS failed, \
                 tokens_in::int8 AS tokens_in, tokens_out::int8 AS tokens_out, \
                 images::int8 AS images, video_secs::int8 AS video_secs, cost_micros, \
                 coalesce(start_ms - ack_ms, 0)::int8 AS queue_ms, \
                 coalesce(provider_ms, 0)::int8 AS provider_ms \
                 FROM ledger WHERE created_at >= timestamptz 'epoch' + interval '1 millisecond' * ",
            )
            .push_bind(clamp(*from))
            .push(" AND created_at < timestamptz 'epoch' + interval '1 millisecond' * ")
            .push_bind(clamp(*until));
        filters(&mut q, f, false);
    }
    q.push(") u");
    q
}

/// `AND …` for each filter given; `daily` picks the rollup's sentinels over NULLs.
fn filters<'a>(q: &mut QueryBuilder<'a, Postgres>, f: &'a UsageFilter, daily: bool) {
    if let Some(u) = f.user {
        q.push(" AND user_id = ").push_bind(u as i64);
    }
    match f.guild {
        Some(0) if !daily => {
            q.push(" AND guild_id IS NULL");
        }
        Some(g) => {
            q.push(" AND guild_id = ").push_bind(g as i64);
        }
        None => {}
    }
    if let Some(c) = &f.command {
        q.push(" AND command = ").push_bind(c.as_str());
    }
    match f.provider.as_deref() {
        Some("") if !daily => {
            q.push(" AND provider IS NULL");
        }
        Some(p) => {
            q.push(" AND provider = ").push_bind(p);
        }
        None => {}
    }
    match f.key.as_deref() {
        None => {}
        Some("") if daily => {
            q.push(" AND key_fp = 0");
        }
        Some("") => {
            q.push(" AND key_fp IS NULL");
        }
        Some(hex) => match parse_key_fp(hex) {
            Some(code) => {
                q.push(" AND key_fp = ").push_bind(code);
            }
            // Not a fingerprint: it matches no row.
            None => {
                q.push(" AND false");
            }
        },
    }
    if let Some(i) = f.instance {
        q.push(" AND served_by = ")
            .push_bind(i16::try_from(i).unwrap_or(i16::MAX));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dimensions_have_cli_names() {
        for d in Dimension::ALL {
            assert_eq!(Dimension::parse(d.as_str()), Some(d));
        }
        assert_eq!(Dimension::parse("model"), None);
    }

    #[test]
    fn only_the_given_filters_are_in_the_query() {
        let p = plan(0, 3 * crate::plan::DAY_MS + 5, None);
        let none = build(&p, Some(Dimension::User), &UsageFilter::default())
            .sql()
            .to_owned();
        assert!(!none.contains("user_id ="), "{none}");
        let f = UsageFilter {
            user: Some(5),
            guild: Some(0),
            key: Some("zz".into()),
            ..UsageFilter::default()
        };
        let sql = build(&p, Some(Dimension::Key), &f).sql().to_owned();
        assert!(sql.contains("user_id = $"), "{sql}");
        assert!(
            sql.contains("guild_id = $") && sql.contains("guild_id IS NULL"),
            "{sql}"
        );
        assert!(
            sql.contains("AND false"),
            "a bad fingerprint matches nothing: {sql}"
        );
        assert!(sql.contains("UNION ALL"), "{sql}");
    }
}

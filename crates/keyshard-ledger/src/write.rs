//! [`write_batch`]: rows into `ledger` and their sums into `ledger_daily`, exactly once, in
//! one statement.
//!
//! The statement inserts the rows with `ON CONFLICT (interaction_id) DO NOTHING … RETURNING`
//! and adds only the returned rows (the ones this statement inserted) to the rollup with
//! `ON CONFLICT … DO UPDATE SET n = n + EXCLUDED.n`. One statement is one transaction, so a
//! batch written twice (a crash after the commit and before the buffer's acknowledgement, a
//! row pushed again after a Redis restart, two instances writing one stream) inserts nothing
//! and adds nothing the second time, and the rollup can never disagree with the rows.
//!
//! Concurrent writers are sorted so they cannot deadlock: each takes its row locks in
//! ascending interaction id (a writer inserting an id another writer inserted but has not
//! committed waits for it) and then its rollup locks in ascending primary-key order. All raw
//! inserts of a statement finish before its first rollup update (the rollup groups the
//! inserted rows), so a writer waiting on a raw row holds no rollup lock, and within each
//! phase everyone locks in the same order: no cycle can form.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::within;
use crate::{LedgerError, LedgerRow};

/// How long one batch may take. A few hundred rows take milliseconds; a Postgres that takes
/// longer than this is in trouble, and the batch stays buffered for the next try (if it did
/// commit meanwhile, the next try inserts nothing).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

const WRITE_SQL: &str = r"
WITH input AS (
    SELECT * FROM UNNEST(
        $1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[], $7::int8[],
        $8::int4[], $9::int4[], $10::int4[], $11::int4[], $12::int4[], $13::int4[],
        $14::int2[], $15::int2[], $16::int2[], $17::int2[], $18::int2[], $19::int2[],
        $20::bool[], $21::bool[], $22::bool[],
        $23::text[], $24::text[], $25::text[], $26::text[]
    ) AS t(interaction_id, user_id, guild_id, channel_id, key_fp, cost_micros, created_ms,
           tokens_in, tokens_out, ack_ms, start_ms, finish_ms, provider_ms,
           images, video_secs, primary_instance, served_by, reason, status,
           rescued, stolen, moved,
           command, provider, model, error_class)
),
ins AS (
    INSERT INTO ledger (interaction_id, user_id, guild_id, channel_id, key_fp, cost_micros,
                        created_at, tokens_in, tokens_out, ack_ms, start_ms, finish_ms,
                        provider_ms, images, video_secs, primary_instance, served_by, reason,
                        status, rescued, stolen, moved, command, provider, model, error_class)
    SELECT interaction_id, user_id, guild_id, channel_id, key_fp, cost_micros,
           timestamptz 'epoch' + created_ms * interval '1 millisecond',
           tokens_in, tokens_out, ack_ms, start_ms, finish_ms,
           provider_ms, images, video_secs, primary_instance, served_by, reason,
           status, rescued, stolen, moved, command, provider, model, error_class
    FROM input
    ORDER BY interaction_id
    ON CONFLICT (interaction_id) DO NOTHING
    RETURNING created_at, user_id, guild_id, key_fp, served_by, command, provider, status,
              tokens_in, tokens_out, images, video_secs, cost_micros, ack_ms, start_ms,
              provider_ms
),
rollup AS (
    INSERT INTO ledger_daily AS d (day, user_id, guild_id, command, provider, key_fp,
                                   served_by, interactions, failed, tokens_in, tokens_out,
                                   images, video_secs, cost_micros, queue_ms, provider_ms)
    SELECT (created_at AT TIME ZONE 'UTC')::date, user_id, coalesce(guild_id, 0), command,
           coalesce(provider, ''), coalesce(key_fp, 0), served_by,
           count(*),
           count(*) FILTER (WHERE status <> 0),
           sum(tokens_in)::int8, sum(tokens_out)::int8, sum(images)::int8,
           sum(video_secs)::int8, sum(cost_micros)::int8,
           coalesce(sum(start_ms - ack_ms), 0)::int8,
           coalesce(sum(provider_ms), 0)::int8
    FROM ins
    GROUP BY 1, 2, 3, 4, 5, 6, 7
    ORDER BY 1, 2, 3, 4, 5, 6, 7
    ON CONFLICT (day, user_id, guild_id, command, provider, key_fp, served_by) DO UPDATE SET
        interactions = d.interactions + EXCLUDED.interactions,
        failed       = d.failed + EXCLUDED.failed,
        tokens_in    = d.tokens_in + EXCLUDED.tokens_in,
        tokens_out   = d.tokens_out + EXCLUDED.tokens_out,
        images       = d.images + EXCLUDED.images,
        video_secs   = d.video_secs + EXCLUDED.video_secs,
        cost_micros  = d.cost_micros + EXCLUDED.cost_micros,
        queue_ms     = d.queue_ms + EXCLUDED.queue_ms,
        provider_ms  = d.provider_ms + EXCLUDED.provider_ms
    RETURNING 1
)
SELECT count(*) FROM ins
";

/// Longest text kept per column: a command, provider, model or error class is a short name;
/// a longer one is a bug upstream, and the bound keeps one from bloating every row.
const MAX_TEXT: usize = 64;

/// Writes `rows` and their rollup; returns how many were new (the rest were already in the
/// ledger). Idempotent: writing the same rows again returns 0 and changes nothing.
pub async fn write_batch(pool: &PgPool, rows: &[LedgerRow]) -> Result<u64, LedgerError> {
    let mut sorted: Vec<&LedgerRow> = rows.iter().collect();
    sorted.sort_by_key(|r| r.interaction_id);
    // One row per interaction within the batch: the first, as Postgres keeps the first.
    sorted.dedup_by_key(|r| r.interaction_id);
    if sorted.is_empty() {
        return Ok(0);
    }
    let c = Columns::from_rows(&sorted);
    let query = sqlx::query_scalar::<_, i64>(WRITE_SQL)
        .bind(c.interaction_id)
        .bind(c.user_id)
        .bind(c.guild_id)
        .bind(c.channel_id)
        .bind(c.key_fp)
        .bind(c.cost_micros)
        .bind(c.created_ms)
        .bind(c.tokens_in)
        .bind(c.tokens_out)
        .bind(c.ack_ms)
        .bind(c.start_ms)
        .bind(c.finish_ms)
        .bind(c.provider_ms)
        .bind(c.images)
        .bind(c.video_secs)
        .bind(c.primary_instance)
        .bind(c.served_by)
        .bind(c.reason)
        .bind(c.status)
        .bind(c.rescued)
        .bind(c.stolen)
        .bind(c.moved)
        .bind(c.command)
        .bind(c.provider)
        .bind(c.model)
        .bind(c.error_class);
    let inserted = within("ledger write", WRITE_TIMEOUT, async {
        query
            .fetch_one(pool)
            .await
            .map_err(LedgerError::db("ledger write"))
    })
    .await?;
    Ok(inserted.max(0) as u64)
}

/// The batch as one array per column (what `UNNEST` takes).
#[derive(Default)]
struct Columns {
    interaction_id: Vec<i64>,
    user_id: Vec<i64>,
    guild_id: Vec<Option<i64>>,
    channel_id: Vec<i64>,
    key_fp: Vec<Option<i64>>,
    cost_micros: Vec<i64>,
    created_ms: Vec<i64>,
    tokens_in: Vec<i32>,
    tokens_out: Vec<i32>,
    ack_ms: Vec<Option<i32>>,
    start_ms: Vec<Option<i32>>,
    finish_ms: Vec<i32>,
    provider_ms: Vec<Option<i32>>,
    images: Vec<i16>,
    video_secs: Vec<i16>,
    primary_instance: Vec<i16>,
    served_by: Vec<i16>,
    reason: Vec<i16>,
    status: Vec<i16>,
    rescued: Vec<bool>,
    stolen: Vec<bool>,
    moved: Vec<bool>,
    command: Vec<String>,
    provider: Vec<Option<String>>,
    model: Vec<Option<String>>,
    error_class: Vec<Option<String>>,
}

impl Columns {
    fn from_rows(rows: &[&LedgerRow]) -> Columns {
        let mut c = Columns::default();
        for r in rows {
            // Snowflakes and Discord ids are below 2^63, and `as` round-trips any u64 anyway.
            c.interaction_id.push(r.interaction_id as i64);
            c.user_id.push(r.user_id as i64);
            c.guild_id.push(r.guild_id.map(|g| g as i64));
            c.channel_id.push(r.channel_id as i64);
            c.key_fp.push(r.key_fp_code());
            c.cost_micros.push(clamp_i64(r.cost_micros));
            c.created_ms.push(clamp_i64(r.created_ms));
            c.tokens_in.push(clamp_i32(r.tokens_in.into()));
            c.tokens_out.push(clamp_i32(r.tokens_out.into()));
            c.ack_ms.push(r.acked_ms.map(|t| r.offset(t)));
            c.start_ms.push(r.started_ms.map(|t| r.offset(t)));
            c.finish_ms.push(r.offset(r.finished_ms));
            c.provider_ms.push(r.provider_ms.map(clamp_i32));
            c.images.push(clamp_i16(r.images.into()));
            c.video_secs.push(clamp_i16(r.video_secs.into()));
            c.primary_instance.push(clamp_i16(r.primary.into()));
            c.served_by.push(clamp_i16(r.served_by.into()));
            c.reason.push(r.reason.code());
            c.status.push(r.status.code());
            c.rescued.push(r.rescued);
            c.stolen.push(r.stolen);
            c.moved.push(r.moved);
            c.command.push(short(&r.command));
            c.provider.push(r.provider.as_deref().map(short));
            c.model.push(r.model.as_deref().map(short));
            c.error_class.push(r.error_class.as_deref().map(short));
        }
        c
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn clamp_i32(v: u64) -> i32 {
    i32::try_from(v).unwrap_or(i32::MAX)
}

fn clamp_i16(v: u64) -> i16 {
    i16::try_from(v).unwrap_or(i16::MAX)
}

/// `s` cut to [`MAX_TEXT`] bytes at a character boundary.
fn short(s: &str) -> String {
    if s.len() <= MAX_TEXT {
        return s.to_owned();
    }
    let mut end = MAX_TEXT;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_text_is_cut_at_a_character_boundary() {
        assert_eq!(short("chat"), "chat");
        let korean = "사".repeat(30); // 90 bytes
        let cut = short(&korean);
        assert!(cut.len() <= MAX_TEXT && cut.len() > MAX_TEXT - 3);
        assert!(korean.starts_with(&cut));
    }

    #[test]
    fn numbers_are_clamped_not_wrapped() {
        assert_eq!(clamp_i16(70_000), i16::MAX);
        assert_eq!(clamp_i32(u64::MAX), i32::MAX);
        assert_eq!(clamp_i64(u64::MAX), i64::MAX);
        assert_eq!(clamp_i16(7), 7);
    }
}

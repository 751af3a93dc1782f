//! The admins' quota overrides in Postgres (`quota_overrides`, migration 0003): set, list,
//! clear, and read all (to reload the Redis cache the quota script reads); and the answered
//! rows per user and command in a span, for the reconciliation of the quota counters.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::Row;

use crate::error::within;
use crate::{LedgerError, PgPool};

/// An `/한도` statement runs while the admin waits on a deferred reply: a few seconds at most.
const OVERRIDE_TIMEOUT: Duration = Duration::from_secs(5);

/// Whom an override is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OverrideScope {
    User(u64),
    Guild(u64),
}

impl OverrideScope {
    fn parts(self) -> (&'static str, i64) {
        match self {
            OverrideScope::User(u) => ("u", u as i64),
            OverrideScope::Guild(g) => ("g", g as i64),
        }
    }
}

/// One stored override (`None`: the default applies).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverrideRow {
    pub scope: OverrideScope,
    /// The command's stable name (`chat`, `image`, `video`).
    pub command: String,
    pub daily: Option<u32>,
    pub cooldown_secs: Option<u32>,
}

/// Sets the given fields of an override (a field left `None` keeps what is stored) and
/// returns the row as stored.
pub async fn set_override(
    pool: &PgPool,
    scope: OverrideScope,
    command: &str,
    daily: Option<u32>,
    cooldown_secs: Option<u32>,
    set_by: u64,
) -> Result<OverrideRow, LedgerError> {
    const SQL: &str = "
        INSERT INTO quota_overrides (scope, target_id, command, daily, cooldown_secs, set_by)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (scope, target_id, command) DO UPDATE SET
            daily = COALESCE(EXCLUDED.daily, quota_overrides.daily),
            cooldown_secs = COALESCE(EXCLUDED.cooldown_secs, quota_overrides.cooldown_secs),
            set_by = EXCLUDED.set_by,
            set_at = now()
        RETURNING daily, cooldown_secs";
    let (s, id) = scope.parts();
    let row = within("quota override set", OVERRIDE_TIMEOUT, async {
        sqlx::query(SQL)
            .bind(s)
            .bind(id)
            .bind(command)
            .bind(daily.map(|v| v.min(i32::MAX as u32) as i32))
            .bind(cooldown_secs.map(|v| v.min(i32::MAX as u32) as i32))
            .bind(set_by as i64)
            .fetch_one(pool)
            .await
            .map_err(LedgerError::db("quota override set"))
    })
    .await?;
    Ok(OverrideRow {
        scope,
        command: command.to_owned(),
        daily: opt_u32(&row, 0),
        cooldown_secs: opt_u32(&row, 1),
    })
}

/// Removes the overrides of `scope` (of one command, or all); returns how many.
pub async fn clear_overrides(
    pool: &PgPool,
    scope: OverrideScope,
    command: Option<&str>,
) -> Result<u64, LedgerError> {
    const SQL: &str = "DELETE FROM quota_overrides
        WHERE scope = $1 AND target_id = $2 AND ($3::text IS NULL OR command = $3)";
    let (s, id) = scope.parts();
    within("quota override clear", OVERRIDE_TIMEOUT, async {
        sqlx::query(SQL)
            .bind(s)
            .bind(id)
            .bind(command)
            .execute(pool)
            .await
            .map(|r| r.rows_affected())
            .map_err(LedgerError::db("quota override clear"))
    })
    .await
}

/// The overrides of one user or guild (`Some`), or every override (`None`).
pub async fn list_overrides(
    pool: &PgPool,
    scope: Option<OverrideScope>,
) -> Result<Vec<OverrideRow>, LedgerError> {
    const SQL: &str = "SELECT scope, target_id, command, daily, cooldown_secs
        FROM quota_overrides
        WHERE ($1::text IS NULL OR (scope = $1 AND target_id = $2))
        ORDER BY scope, target_id, command";
    let (s, id) = match scope.map(OverrideScope::parts) {
        Some((s, id)) => (Some(s), id),
        None => (None, 0),
    };
    let rows = within("quota override list", OVERRIDE_TIMEOUT, async {
        sqlx::query(SQL)
            .bind(s)
            .bind(id)
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("quota override list"))
    })
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let scope: String = r.try_get(0).ok()?;
            let id: i64 = r.try_get(1).ok()?;
            let scope = match scope.as_str() {
                "u" => OverrideScope::User(id as u64),
                _ => OverrideScope::Guild(id as u64),
            };
            Some(OverrideRow {
                scope,
                command: r.try_get(2).ok()?,
                daily: opt_u32(r, 3),
                cooldown_secs: opt_u32(r, 4),
            })
        })
        .collect())
}

/// Rows answered with status ok per (user, command) among the interactions created in
/// `[since_ms, until_ms)`: what the quota counters of that span should hold.
pub async fn answered_by_user(
    pool: &PgPool,
    since_ms: u64,
    until_ms: u64,
) -> Result<HashMap<(u64, String), u64>, LedgerError> {
    const SQL: &str = "SELECT user_id, command, count(*)::int8 FROM ledger
        WHERE status = 0 AND command IN ('chat', 'image', 'video')
          AND created_at >= timestamptz 'epoch' + $1::int8 * interval '1 millisecond'
          AND created_at <  timestamptz 'epoch' + $2::int8 * interval '1 millisecond'
        GROUP BY user_id, command";
    let rows = within("quota reconcile read", crate::read::READ_TIMEOUT, async {
        sqlx::query(SQL)
            .bind(since_ms.min(i64::MAX as u64) as i64)
            .bind(until_ms.min(i64::MAX as u64) as i64)
            .fetch_all(pool)
            .await
            .map_err(LedgerError::db("quota reconcile read"))
    })
    .await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            let user: i64 = r.try_get(0).ok()?;
            let command: String = r.try_get(1).ok()?;
            let n: i64 = r.try_get(2).ok()?;
            Some(((user as u64, command), n.max(0) as u64))
        })
        .collect())
}

fn opt_u32(row: &sqlx::postgres::PgRow, i: usize) -> Option<u32> {
    row.try_get::<Option<i32>, _>(i)
        .ok()
        .flatten()
        .map(|v| v.max(0) as u32)
}

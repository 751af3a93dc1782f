//! `keyshard status` and `keyshard assign <user_id>`: the cluster view from Redis, as readable
//! tables or as JSON (`--json`) for scripts. `keyshard config check`: an env file checked as
//! every instance will read it (`config::check`), before anything starts. `keyshard migrate`
//! and `keyshard usage`: the usage ledger in Postgres (`DATABASE_URL`).

use std::io::ErrorKind;
use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use keyshard_cluster::{fetch_status, AssignReport, ClusterStatus};
use keyshard_ledger::{Dimension, Span, Totals, UsageFilter, UsageLine};
use keyshard_routing::UserId;

use crate::config::check::{check, CheckInput, Compose};
use crate::config::{LedgerConfig, ViewConfig};

/// Checks `env_file` (and `INSTANCE_COUNT` against `compose`'s services), prints every problem
/// and warning, and says whether it is fit to start a cluster with.
pub fn config_check(env_file: &Path, compose: Option<&Path>) -> anyhow::Result<bool> {
    let name = env_file.display().to_string();
    let text = match std::fs::read_to_string(env_file) {
        Ok(text) => text,
        Err(e) if e.kind() == ErrorKind::NotFound => anyhow::bail!(
            "{name} not found. Create it from the example: cp .env.multi.example {name}"
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {name}")),
    };
    let others_may_read = others_may_read(env_file);
    let compose_name = compose.map(|p| p.display().to_string());
    let compose_text = match compose {
        None => None,
        Some(path) => match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        },
    };
    let report = check(&CheckInput {
        file_name: &name,
        text: &text,
        others_may_read,
        compose: compose_name.as_deref().map(|file_name| Compose {
            file_name,
            text: compose_text.as_deref(),
        }),
    });
    print!("{}", report.render());
    Ok(report.is_ok())
}

#[cfg(unix)]
fn others_may_read(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o007 != 0)
}

#[cfg(not(unix))]
fn others_may_read(_: &Path) -> bool {
    false
}

async fn read(view: &ViewConfig) -> anyhow::Result<ClusterStatus> {
    fetch_status(
        &view.redis_url,
        &view.cluster_name,
        view.instance_count,
        &view.overload,
    )
    .await
    .map_err(|e| anyhow::anyhow!("cannot read the cluster view from Redis: {e}"))
}

/// Prints every instance: alive or not, heartbeat age, load.
pub async fn status(view: &ViewConfig, json: bool) -> anyhow::Result<()> {
    let status = read(view).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render_table());
    }
    Ok(())
}

/// Prints the user's primary instance, its effective owner now, and why.
pub async fn assign(view: &ViewConfig, user: UserId, json: bool) -> anyhow::Result<()> {
    let status = read(view).await?;
    let report = status.assign_report(user, &view.overload);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&assignment_json(&report))?
        );
    } else {
        print!("{}", report.render_table());
    }
    Ok(())
}

/// `keyshard migrate`: applies the embedded `migrations/` that the database lacks, under
/// Postgres's advisory lock (safe while instances start and do the same).
pub async fn migrate(ledger: &LedgerConfig) -> anyhow::Result<()> {
    let url = ledger.redacted_url();
    let pool = keyshard_ledger::connect_lazy(ledger.database_url.expose())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    keyshard_ledger::migrate(&pool)
        .await
        .map_err(|e| anyhow::anyhow!("applying the ledger migrations to {url} failed: {e}"))?;
    let versions: Vec<String> = keyshard_ledger::MIGRATOR
        .iter()
        .map(|m| format!("{:04}_{}", m.version, m.description.replace(' ', "_")))
        .collect();
    println!(
        "ledger schema up to date at {url}: {} migration(s) applied ({})",
        versions.len(),
        versions.join(", ")
    );
    Ok(())
}

/// `keyshard usage --since 24h [--by DIMENSION] [--json]`: usage over the last `since`,
/// grouped by `by` (or the totals), from the ledger's rollup and raw rows.
pub async fn usage(
    ledger: &LedgerConfig,
    since: Duration,
    by: Option<Dimension>,
    json: bool,
) -> anyhow::Result<()> {
    let url = ledger.redacted_url();
    let pool = keyshard_ledger::connect_lazy(ledger.database_url.expose())
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let now = crate::clock::unix_ms();
    let span = Span {
        since_ms: now.saturating_sub(u64::try_from(since.as_millis()).unwrap_or(u64::MAX)),
        until_ms: now + 1,
        raw_kept_since_ms: Some(ledger.retention.raw_kept_since(now)),
    };
    let lines = keyshard_ledger::usage(&pool, &span, by, &UsageFilter::default())
        .await
        .map_err(|e| anyhow::anyhow!("reading usage from {url} failed: {e}"))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&usage_json(&span, by, &lines))?
        );
    } else {
        print!("{}", usage_table(since, by, &lines));
    }
    Ok(())
}

/// `24h`, `7d`, `30m`, `90s`: a span for `--since`.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 24h or 7d"))?;
    let secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{s:?}: the unit must be s, m, h or d (24h, 7d)")),
    };
    if n == 0 {
        return Err(format!("{s:?}: must be longer than zero"));
    }
    Ok(Duration::from_secs(n.saturating_mul(secs)))
}

/// `--by`'s values.
pub fn parse_dimension(s: &str) -> Result<Dimension, String> {
    Dimension::parse(s).ok_or_else(|| {
        let all: Vec<&str> = Dimension::ALL.iter().map(|d| d.as_str()).collect();
        format!("{s:?}: expected one of {}", all.join(", "))
    })
}

/// The JSON shape of `usage --json`: the span (Unix ms), the grouping, one object per group
/// (`key` as text: snowflakes overflow JavaScript numbers; cost in micro-dollars) and the
/// totals.
fn usage_json(span: &Span, by: Option<Dimension>, lines: &[UsageLine]) -> serde_json::Value {
    let mut total = Totals::default();
    for l in lines {
        let t = &l.totals;
        total.interactions += t.interactions;
        total.failed += t.failed;
        total.tokens_in += t.tokens_in;
        total.tokens_out += t.tokens_out;
        total.images += t.images;
        total.video_secs += t.video_secs;
        total.cost_micros += t.cost_micros;
        total.queue_ms += t.queue_ms;
        total.provider_ms += t.provider_ms;
    }
    serde_json::json!({
        "since_ms": span.since_ms,
        "until_ms": span.until_ms,
        "by": by.map(Dimension::as_str),
        "lines": lines,
        "totals": total,
    })
}

fn usage_table(since: Duration, by: Option<Dimension>, lines: &[UsageLine]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let name = by.map_or("total", Dimension::as_str);
    let _ = writeln!(out, "usage over the last {} by {name}", humantime(since));
    let _ = writeln!(
        out,
        "{:<22} {:>10} {:>8} {:>12} {:>12} {:>7} {:>8} {:>12}",
        name, "requests", "failed", "tokens in", "tokens out", "images", "video s", "cost USD"
    );
    for l in lines {
        let t = &l.totals;
        let key = if l.key.is_empty() { "(none)" } else { &l.key };
        let _ = writeln!(
            out,
            "{:<22} {:>10} {:>8} {:>12} {:>12} {:>7} {:>8} {:>12.4}",
            key,
            t.interactions,
            t.failed,
            t.tokens_in,
            t.tokens_out,
            t.images,
            t.video_secs,
            t.cost_micros as f64 / 1e6
        );
    }
    if lines.is_empty() {
        let _ = writeln!(out, "(no usage recorded)");
    }
    out
}

fn humantime(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The JSON shape of `assign --json`: the report's fields, with `effective` naming the owner
/// and the user id as a string (snowflakes overflow JavaScript numbers).
fn assignment_json(r: &AssignReport) -> serde_json::Value {
    serde_json::json!({
        "user_id": r.user.to_string(),
        "primary": r.primary,
        "effective": r.owner,
        "reason": r.reason,
        "explanation": r.reason_text,
        "ladder": r.ladder,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshard_routing::Reason;

    #[test]
    fn assign_json_names_primary_and_effective() {
        let r = AssignReport {
            user: 12345,
            primary: 2,
            owner: Some(3),
            reason: Reason::PrimaryDown,
            reason_text: Reason::PrimaryDown.describe().to_owned(),
            ladder: Vec::new(),
        };
        let v = assignment_json(&r);
        assert_eq!(v["user_id"], "12345");
        assert_eq!(v["primary"], 2);
        assert_eq!(v["effective"], 3);
        assert_eq!(v["reason"], "primary_down");
    }

    #[test]
    fn since_and_by_parse_and_say_what_is_wrong() {
        assert_eq!(parse_since("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_since("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_since("90s"), Ok(Duration::from_secs(90)));
        assert!(parse_since("24").unwrap_err().contains("unit"));
        assert!(parse_since("h").is_err());
        assert!(parse_since("0h").is_err());
        assert_eq!(parse_dimension("key"), Ok(Dimension::Key));
        assert!(parse_dimension("model")
            .unwrap_err()
            .contains("user, guild"));
        assert_eq!(humantime(Duration::from_secs(86_400)), "1d");
    }

    #[test]
    fn usage_json_has_string_keys_and_totals() {
        let line = |key: &str, n| UsageLine {
            key: key.into(),
            totals: Totals {
                interactions: n,
                cost_micros: 10 * n,
                ..Totals::default()
            },
        };
        let lines = [line("1170000000000000042", 3), line("", 2)];
        let v = usage_json(&Span::new(1, 2), Some(Dimension::User), &lines);
        assert_eq!(v["by"], "user");
        assert_eq!(v["lines"][0]["key"], "1170000000000000042");
        assert_eq!(v["lines"][0]["interactions"], 3);
        assert_eq!(v["totals"]["interactions"], 5);
        assert_eq!(v["totals"]["cost_micros"], 50);
        let table = usage_table(Duration::from_secs(86_400), Some(Dimension::User), &lines);
        assert!(table.contains("usage over the last 1d by user"), "{table}");
        assert!(table.contains("(none)"), "{table}");
    }
}

//! `keyshard status` and `keyshard assign <user_id>`: the cluster view from Redis, as readable
//! tables or as JSON (`--json`) for scripts. `keyshard config check`: an env file checked as
//! every instance will read it (`config::check`), before anything starts.

use std::io::ErrorKind;
use std::path::Path;

use anyhow::Context;
use keyshard_cluster::{fetch_status, AssignReport, ClusterStatus};
use keyshard_routing::UserId;

use crate::config::check::{check, CheckInput, Compose};
use crate::config::ViewConfig;

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
}

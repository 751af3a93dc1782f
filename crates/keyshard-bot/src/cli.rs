//! `keyshard status` and `keyshard assign <user_id>`: the cluster view from Redis, as readable
//! tables or as JSON (`--json`) for scripts.

use keyshard_cluster::{fetch_status, AssignReport, ClusterStatus};
use keyshard_routing::UserId;

use crate::config::ViewConfig;

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

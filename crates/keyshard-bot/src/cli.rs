//! `keyshard status` and `keyshard assign <user_id>`: the cluster view from Redis, as readable
//! tables or as JSON (`--json`) for scripts.

use keyshard_cluster::{fetch_status, ClusterStatus};
use keyshard_routing::{Assignment, UserId};

use crate::config::ViewConfig;

async fn read(view: &ViewConfig) -> anyhow::Result<ClusterStatus> {
    fetch_status(&view.redis_url, &view.cluster_name, view.instance_count, &view.overload)
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
    let assignment = status.assign(user, &view.overload);
    if json {
        println!("{}", serde_json::to_string_pretty(&assignment_json(&assignment))?);
    } else {
        print!("{}", render_assignment(&assignment));
    }
    Ok(())
}

fn assignment_json(a: &Assignment) -> serde_json::Value {
    serde_json::json!({
        "user_id": a.user.to_string(),
        "primary": a.primary,
        "effective": a.owner,
        "reason": a.reason,
        "explanation": a.reason.describe(),
    })
}

fn render_assignment(a: &Assignment) -> String {
    let effective = a.owner.map_or_else(|| "none".to_owned(), |o| o.to_string());
    format!(
        "user       {}\nprimary    instance {}\neffective  instance {}\nreason     {}\n",
        a.user,
        a.primary,
        effective,
        a.reason.describe()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshard_routing::Reason;

    #[test]
    fn assignment_renders_both_ways() {
        let a = Assignment {
            user: 12345,
            primary: 2,
            owner: Some(3),
            reason: Reason::PrimaryDown,
        };
        let v = assignment_json(&a);
        assert_eq!(v["primary"], 2);
        assert_eq!(v["effective"], 3);
        assert_eq!(v["reason"], "primary_down");
        let text = render_assignment(&a);
        assert!(text.contains("primary    instance 2") && text.contains("effective  instance 3"), "{text}");
    }
}

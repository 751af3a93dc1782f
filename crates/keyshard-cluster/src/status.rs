//! The cluster view read from Redis: per-instance status, the routing [`Membership`] built
//! from it, and the read-only `status` / `assign` views for the CLI and the simulator.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::Duration;

use keyshard_routing::{
    effective_owner, ladder, Assignment, InstanceId, InstanceState, Membership, OverloadPolicy,
    Reason, UserId,
};
use redis::aio::ConnectionLike;
use redis::{RedisResult, Value};
use serde::Serialize;

use crate::conn::open_client;
use crate::heartbeat::Heartbeat;
use crate::{keys, ClusterError};

/// What the cluster looks like in Redis at one moment.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub cluster_name: String,
    pub instance_count: u32,
    /// `OVERLOAD_WAIT_SECS` as used for `overloaded` below, in milliseconds.
    pub max_wait_ms: u64,
    /// One entry per instance, in id order.
    pub instances: Vec<InstanceStatus>,
}

/// One instance as seen in Redis.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InstanceStatus {
    pub id: InstanceId,
    /// Its heartbeat key exists.
    pub alive: bool,
    /// Time since its last heartbeat, from the key's TTL (`dead_after - PTTL`); `None` when
    /// dead or when the key has no TTL.
    pub heartbeat_age_ms: Option<u64>,
    pub draining: bool,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub service_rate: f64,
    /// Jobs waiting per job kind; empty for a dead instance or one too old to publish it.
    pub waiting: BTreeMap<String, u64>,
    /// Queue ÷ service rate (saturating at `u64::MAX` for "never").
    pub estimated_wait_ms: u64,
    pub overloaded: bool,
    /// The software version in its heartbeat.
    pub version: Option<String>,
}

impl InstanceStatus {
    fn dead(id: InstanceId) -> Self {
        Self {
            id,
            alive: false,
            heartbeat_age_ms: None,
            draining: false,
            queue_depth: 0,
            in_flight: 0,
            service_rate: 0.0,
            waiting: BTreeMap::new(),
            estimated_wait_ms: 0,
            overloaded: false,
            version: None,
        }
    }

    /// The routing view of this instance.
    pub fn state(&self) -> InstanceState {
        InstanceState {
            id: self.id,
            alive: self.alive,
            draining: self.draining,
            queue_depth: self.queue_depth,
            in_flight: self.in_flight,
            service_rate: self.service_rate,
            waiting: self.waiting.clone(),
        }
    }
}

impl ClusterStatus {
    /// The routing snapshot: every instance's liveness and load.
    pub fn membership(&self) -> Membership {
        let mut m = Membership::new(self.instance_count);
        for s in &self.instances {
            m.set(s.state());
        }
        m
    }

    /// Number of live instances.
    pub fn alive_count(&self) -> usize {
        self.instances.iter().filter(|s| s.alive).count()
    }

    /// Who answers `user` right now, and why.
    pub fn assign(&self, user: UserId, policy: &OverloadPolicy) -> Assignment {
        effective_owner(user, &self.membership(), policy)
    }

    /// [`assign`](Self::assign) with the ladder spelled out, for `keyshard assign`.
    pub fn assign_report(&self, user: UserId, policy: &OverloadPolicy) -> AssignReport {
        let a = self.assign(user, policy);
        let ladder = ladder(user, self.instance_count)
            .filter_map(|id| self.instances.iter().find(|s| s.id == id))
            .map(|s| LadderRung {
                id: s.id,
                alive: s.alive,
                overloaded: s.alive && s.overloaded,
                estimated_wait_ms: s.estimated_wait_ms,
            })
            .collect();
        AssignReport {
            user,
            primary: a.primary,
            owner: a.owner,
            reason: a.reason,
            reason_text: a.reason.describe().to_owned(),
            ladder,
        }
    }

    /// A table for humans, one row per instance.
    pub fn render_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "cluster {} · {} instances · {} alive · overloaded above {} wait",
            self.cluster_name,
            self.instance_count,
            self.alive_count(),
            fmt_ms(self.max_wait_ms)
        );
        let _ = writeln!(
            out,
            "{:>3}  {:<5}  {:>8}  {:<8}  {:>6}  {:>9}  {:>7}  {:>9}  {:<10}  version",
            "id",
            "alive",
            "hb age",
            "draining",
            "queue",
            "in-flight",
            "rate/s",
            "est. wait",
            "overloaded",
        );
        for s in &self.instances {
            if !s.alive {
                let _ = writeln!(
                    out,
                    "{:>3}  {:<5}  {:>8}  {:<8}  {:>6}  {:>9}  {:>7}  {:>9}  {:<10}  -",
                    s.id, "DEAD", "-", "-", "-", "-", "-", "-", "-"
                );
                continue;
            }
            let age = s.heartbeat_age_ms.map_or("?".to_owned(), fmt_ms);
            let _ = writeln!(
                out,
                "{:>3}  {:<5}  {:>8}  {:<8}  {:>6}  {:>9}  {:>7.2}  {:>9}  {:<10}  {}",
                s.id,
                "yes",
                age,
                yes_no(s.draining),
                s.queue_depth,
                s.in_flight,
                s.service_rate,
                fmt_ms(s.estimated_wait_ms),
                yes_no(s.overloaded),
                s.version.as_deref().unwrap_or("?")
            );
        }
        out
    }
}

impl fmt::Display for ClusterStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_table())
    }
}

/// The answer of `keyshard assign <user>`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AssignReport {
    pub user: UserId,
    pub primary: InstanceId,
    /// `None` when no instance is alive.
    pub owner: Option<InstanceId>,
    pub reason: Reason,
    pub reason_text: String,
    /// The user's ladder, primary first.
    pub ladder: Vec<LadderRung>,
}

/// One instance on a user's ladder.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LadderRung {
    pub id: InstanceId,
    pub alive: bool,
    pub overloaded: bool,
    pub estimated_wait_ms: u64,
}

impl AssignReport {
    pub fn render_table(&self) -> String {
        let owner = self
            .owner
            .map_or("none".to_owned(), |id| format!("instance {id}"));
        let ladder: Vec<String> = self
            .ladder
            .iter()
            .map(|r| match (r.alive, r.overloaded) {
                (false, _) => format!("{} (dead)", r.id),
                (true, true) => format!(
                    "{} (overloaded, wait {})",
                    r.id,
                    fmt_ms(r.estimated_wait_ms)
                ),
                (true, false) => format!("{} (alive)", r.id),
            })
            .collect();
        format!(
            "user     {}\nprimary  instance {}\nowner    {} — {}\nladder   {}\n",
            self.user,
            self.primary,
            owner,
            self.reason_text,
            ladder.join(" → ")
        )
    }
}

impl fmt::Display for AssignReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.render_table())
    }
}

fn yes_no(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "no"
    }
}

fn fmt_ms(ms: u64) -> String {
    match ms {
        u64::MAX => "never".to_owned(),
        0..1_000 => format!("{ms} ms"),
        _ => format!("{:.1} s", ms as f64 / 1000.0),
    }
}

/// How long the CLI views wait for Redis to connect and answer: an operator's command, where
/// a couple of seconds is better than a false "Redis is down" over a slow link.
const VIEW_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads the cluster view from Redis (one pipelined round trip), for `keyshard status` and the
/// simulator. Needs no [`Cluster`](crate::Cluster).
pub async fn fetch_status(
    redis_url: &str,
    cluster_name: &str,
    instance_count: u32,
    policy: &OverloadPolicy,
) -> Result<ClusterStatus, ClusterError> {
    if instance_count == 0 {
        return Err(ClusterError::InvalidConfig(
            "instance_count must be at least 1".into(),
        ));
    }
    let client = open_client(redis_url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(VIEW_TIMEOUT))
        .set_response_timeout(Some(VIEW_TIMEOUT));
    let work = async {
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|source| ClusterError::Redis {
                op: "connect",
                source,
            })?;
        read_status(&mut conn, cluster_name, instance_count, policy)
            .await
            .map_err(|source| ClusterError::Redis {
                op: "status",
                source,
            })
    };
    // Connect plus one round trip, each bounded above; this bounds the sum.
    let budget = VIEW_TIMEOUT * 2;
    tokio::time::timeout(budget, work)
        .await
        .unwrap_or(Err(ClusterError::Timeout {
            op: "status",
            timeout: budget,
        }))
}

/// [`fetch_status`] reduced to the routing snapshot.
pub async fn fetch_membership(
    redis_url: &str,
    cluster_name: &str,
    instance_count: u32,
    policy: &OverloadPolicy,
) -> Result<Membership, ClusterError> {
    Ok(
        fetch_status(redis_url, cluster_name, instance_count, policy)
            .await?
            .membership(),
    )
}

/// `GET` + `PTTL` of every heartbeat key, in one pipeline.
pub(crate) async fn read_status(
    conn: &mut impl ConnectionLike,
    cluster_name: &str,
    instance_count: u32,
    policy: &OverloadPolicy,
) -> RedisResult<ClusterStatus> {
    let mut pipe = redis::pipe();
    for id in 1..=instance_count {
        let key = keys::heartbeat(cluster_name, id);
        pipe.cmd("GET").arg(&key).cmd("PTTL").arg(&key);
    }
    let values: Vec<Value> = pipe.query_async(conn).await?;
    let mut instances = Vec::with_capacity(instance_count as usize);
    for (id, pair) in (1..=instance_count).zip(values.chunks(2)) {
        let [get, pttl] = pair else {
            instances.push(InstanceStatus::dead(id));
            continue;
        };
        let value: Option<String> = redis::from_redis_value_ref(get)?;
        let pttl: i64 = redis::from_redis_value_ref(pttl)?;
        instances.push(match value {
            Some(json) => instance_from_heartbeat(id, &json, pttl, policy),
            None => InstanceStatus::dead(id),
        });
    }
    Ok(ClusterStatus {
        cluster_name: cluster_name.to_owned(),
        instance_count,
        max_wait_ms: millis(policy.max_wait),
        instances,
    })
}

/// An alive instance from its heartbeat JSON and the key's remaining TTL.
fn instance_from_heartbeat(
    id: InstanceId,
    json: &str,
    pttl: i64,
    policy: &OverloadPolicy,
) -> InstanceStatus {
    let hb = match serde_json::from_str::<Heartbeat>(json) {
        Ok(hb) => Some(hb),
        Err(e) => {
            // The key exists, so the instance is alive; its load is unknown (an incompatible
            // writer). Treat it as idle rather than dead, so it is not taken over needlessly.
            tracing::debug!(id, error = %e, "unreadable heartbeat");
            None
        }
    };
    let state = InstanceState {
        id,
        alive: true,
        draining: hb.as_ref().is_some_and(|h| h.draining),
        queue_depth: hb.as_ref().map_or(0, |h| h.queue_depth),
        in_flight: hb.as_ref().map_or(0, |h| h.in_flight),
        service_rate: hb.as_ref().map_or(0.0, |h| h.service_rate),
        waiting: hb.as_ref().map(|h| h.waiting.clone()).unwrap_or_default(),
    };
    let heartbeat_age_ms = match (&hb, pttl) {
        (Some(h), remaining) if remaining >= 0 => {
            Some(h.dead_after_ms.saturating_sub(remaining as u64))
        }
        // -2: the key expired between GET and PTTL; it was as old as it can get.
        (Some(h), -2) => Some(h.dead_after_ms),
        // -1: no TTL (written by hand); no age can be derived.
        _ => None,
    };
    InstanceStatus {
        id,
        alive: true,
        heartbeat_age_ms,
        draining: state.draining,
        queue_depth: state.queue_depth,
        in_flight: state.in_flight,
        service_rate: state.service_rate,
        estimated_wait_ms: millis(state.estimated_wait(policy)),
        overloaded: state.is_overloaded(policy),
        version: hb.map(|h| h.version),
        waiting: state.waiting,
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ClusterStatus {
        let p = OverloadPolicy::default();
        let hb = |id, queue| {
            serde_json::to_string(&Heartbeat {
                id,
                draining: false,
                queue_depth: queue,
                in_flight: 1,
                service_rate: 1.0,
                waiting: [("chat".to_owned(), queue)].into(),
                dead_after_ms: 3000,
                version: "0.1.0".into(),
            })
            .unwrap()
        };
        ClusterStatus {
            cluster_name: "ks".into(),
            instance_count: 4,
            max_wait_ms: 20_000,
            instances: vec![
                instance_from_heartbeat(1, &hb(1, 0), 2_900, &p),
                InstanceStatus::dead(2),
                instance_from_heartbeat(3, &hb(3, 100), 2_500, &p),
                instance_from_heartbeat(4, "not json", -1, &p),
            ],
        }
    }

    #[test]
    fn age_comes_from_the_ttl() {
        let s = status();
        assert_eq!(s.instances[0].heartbeat_age_ms, Some(100));
        assert_eq!(s.instances[2].heartbeat_age_ms, Some(500));
        assert_eq!(s.instances[3].heartbeat_age_ms, None);
        assert!(
            s.instances[3].alive,
            "an unreadable heartbeat still means alive"
        );
    }

    #[test]
    fn waiting_per_kind_reaches_the_routing_snapshot() {
        let m = status().membership();
        let three = m.get(3).unwrap();
        assert_eq!(
            (three.waiting_of("chat"), three.waiting_of("video")),
            (100, 0)
        );
        // Unreadable heartbeat: no figures and no queue, so nothing to steal there.
        assert_eq!(m.get(4).unwrap().waiting_of("chat"), 0);
    }

    #[test]
    fn assign_skips_dead_and_overloaded_instances() {
        let s = status();
        let p = OverloadPolicy::default();
        // 12345 % 4 + 1 = 2, which is dead; 3 is overloaded (100 s wait); 4 is next.
        let r = s.assign_report(12345, &p);
        assert_eq!(
            (r.primary, r.owner, r.reason),
            (2, Some(4), Reason::PrimaryDown)
        );
        assert_eq!(
            r.ladder.iter().map(|r| r.id).collect::<Vec<_>>(),
            vec![2, 3, 4, 1]
        );
        assert!(r.ladder[1].overloaded);
        let text = r.render_table();
        assert!(text.contains("primary  instance 2"), "{text}");
        assert!(text.contains("2 (dead) → 3 (overloaded"), "{text}");
    }

    #[test]
    fn table_has_a_row_per_instance() {
        let text = status().render_table();
        assert!(
            text.starts_with("cluster ks · 4 instances · 3 alive"),
            "{text}"
        );
        assert_eq!(text.lines().count(), 2 + 4, "{text}");
        assert!(
            text.lines().any(|l| l.trim_start().starts_with("2  DEAD")),
            "{text}"
        );
    }
}

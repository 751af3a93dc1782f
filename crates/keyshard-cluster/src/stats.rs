//! Cluster statistics in Redis time buckets, so any instance can answer for the whole cluster
//! (`/로드밸런서`, `/성능`).
//!
//! Each instance counts events in memory and flushes them once a second as `HINCRBY`s on the
//! minute's hash `{c}:stats:{unix_minute}`, so the interaction path never waits on a stats
//! write. A reader sums the hashes of the last 1, 5 or 60 minutes.
//!
//! Fields: `handled:{instance}`, `takeover:{instance}`, `done:{instance}:{command}`,
//! `failed:{instance}:{command}`, `provider:{instance}:{provider}`,
//! `lat:{command}:{bucket}` (completion latency histogram, buckets in [`LATENCY_BOUNDS_MS`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use keyshard_routing::InstanceId;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::conn::Redis;
use crate::task::run_every;
use crate::{keys, Cluster, ClusterError};

/// A minute's hash outlives the longest window read (60 min) with room for clock skew.
const BUCKET_TTL_MS: u64 = 2 * 60 * 60 * 1000;

/// How often counts are flushed to Redis: often enough that `/성능` is current, rarely
/// enough to cost one pipeline a second.
const FLUSH_EVERY: Duration = Duration::from_secs(1);

/// Upper bounds of the completion-latency buckets, in milliseconds (the last is open-ended).
pub const LATENCY_BOUNDS_MS: [u64; 14] = [
    50,
    100,
    250,
    500,
    1_000,
    2_000,
    4_000,
    8_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    u64::MAX,
];

fn minute_of(ms: u64) -> u64 {
    ms / 60_000
}

/// Records this instance's events and flushes them to Redis.
#[derive(Clone)]
pub struct Stats {
    redis: Arc<Redis>,
    prefix: String,
    me: InstanceId,
    /// minute → field → count. A std Mutex: updates take microseconds and never await.
    pending: Arc<Mutex<BTreeMap<u64, HashMap<String, i64>>>>,
}

impl Stats {
    pub fn new(cluster: &Cluster) -> Stats {
        let cfg = cluster.config();
        Stats {
            redis: cluster.redis(),
            prefix: cfg.cluster_name.clone(),
            me: cfg.instance_id,
            pending: Arc::default(),
        }
    }

    fn add(&self, field: String, n: i64) {
        let minute = minute_of(now_ms());
        *self
            .pending
            .lock()
            .expect("stats lock")
            .entry(minute)
            .or_default()
            .entry(field)
            .or_default() += n;
    }

    /// This instance answered an interaction; `takeover` when it was another instance's user.
    pub fn handled(&self, takeover: bool) {
        self.add(format!("handled:{}", self.me), 1);
        if takeover {
            self.add(format!("takeover:{}", self.me), 1);
        }
    }

    /// A command finished (`ok` or with an error message), `latency` after the interaction.
    pub fn completed(&self, command: &str, ok: bool, latency: Duration) {
        let what = if ok { "done" } else { "failed" };
        self.add(format!("{what}:{}:{command}", self.me), 1);
        let ms = latency.as_millis() as u64;
        let bucket = LATENCY_BOUNDS_MS
            .iter()
            .position(|b| ms <= *b)
            .unwrap_or(LATENCY_BOUNDS_MS.len() - 1);
        self.add(format!("lat:{command}:{bucket}"), 1);
    }

    /// This instance refused a request by quota `rule` (`user_daily`, `guild_daily`,
    /// `cooldown`).
    pub fn quota_refused(&self, rule: &str) {
        self.add(format!("quota:{}:{rule}", self.me), 1);
    }

    /// A provider request succeeded on this instance's key.
    pub fn provider_request(&self, provider: &str) {
        self.add(format!("provider:{}:{provider}", self.me), 1);
    }

    /// Writes the counts gathered so far; on failure they stay for the next flush.
    pub async fn flush(&self) -> Result<(), ClusterError> {
        let batch = std::mem::take(&mut *self.pending.lock().expect("stats lock"));
        if batch.is_empty() {
            return Ok(());
        }
        let prefix = self.prefix.clone();
        let to_send = batch.clone();
        let result = self
            .redis
            .run(
                "stats flush",
                Duration::from_millis(500),
                move |mut c| async move {
                    let mut pipe = redis::pipe();
                    for (minute, fields) in &to_send {
                        let key = keys::stats(&prefix, *minute);
                        for (field, n) in fields {
                            pipe.cmd("HINCRBY").arg(&key).arg(field).arg(*n).ignore();
                        }
                        pipe.cmd("PEXPIRE").arg(&key).arg(BUCKET_TTL_MS).ignore();
                    }
                    pipe.query_async::<()>(&mut c).await
                },
            )
            .await;
        if result.is_err() {
            // Put the counts back so an outage delays statistics instead of losing them.
            let mut pending = self.pending.lock().expect("stats lock");
            for (minute, fields) in batch {
                let slot = pending.entry(minute).or_default();
                for (field, n) in fields {
                    *slot.entry(field).or_default() += n;
                }
            }
        }
        result
    }

    /// Flushes every [`FLUSH_EVERY`] until `shutdown`, then once more.
    pub fn spawn(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let stats = self.clone();
        tokio::spawn(async move {
            let s = stats.clone();
            run_every("stats flush", FLUSH_EVERY, shutdown, None, move || {
                let s = s.clone();
                async move { s.flush().await }
            })
            .await;
            let _ = stats.flush().await;
        })
    }
}

/// The sums of the cluster's statistics over the last `minutes` minutes.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Window {
    pub minutes: u64,
    pub fields: HashMap<String, i64>,
}

impl Window {
    fn get(&self, field: &str) -> u64 {
        self.fields.get(field).copied().unwrap_or(0).max(0) as u64
    }

    pub fn handled(&self, instance: InstanceId) -> u64 {
        self.get(&format!("handled:{instance}"))
    }

    pub fn takeovers(&self, instance: InstanceId) -> u64 {
        self.get(&format!("takeover:{instance}"))
    }

    /// Completions of `instance` (every command, success or error).
    pub fn completed_by(&self, instance: InstanceId) -> u64 {
        let ok = format!("done:{instance}:");
        let failed = format!("failed:{instance}:");
        self.fields
            .iter()
            .filter(|(k, _)| k.starts_with(&ok) || k.starts_with(&failed))
            .map(|(_, v)| (*v).max(0) as u64)
            .sum()
    }

    /// Quota refusals by rule, summed over the instances.
    pub fn quota_refusals(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for (field, n) in &self.fields {
            if let Some(rest) = field.strip_prefix("quota:") {
                if let Some((_, rule)) = rest.split_once(':') {
                    *out.entry(rule.to_owned()).or_default() += (*n).max(0) as u64;
                }
            }
        }
        out
    }

    /// Successful provider requests, by `(instance, provider)`.
    pub fn provider_requests(&self) -> BTreeMap<(InstanceId, String), u64> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.fields {
            let mut parts = k.splitn(3, ':');
            if let (Some("provider"), Some(id), Some(provider)) =
                (parts.next(), parts.next(), parts.next())
            {
                if let Ok(id) = id.parse() {
                    *out.entry((id, provider.to_owned())).or_default() += (*v).max(0) as u64;
                }
            }
        }
        out
    }

    /// The `q` quantile (0..=1) of a command's completion latency, as the upper bound of the
    /// bucket it falls in; `None` without samples.
    pub fn latency_quantile_ms(&self, command: &str, q: f64) -> Option<u64> {
        let counts: Vec<u64> = (0..LATENCY_BOUNDS_MS.len())
            .map(|b| self.get(&format!("lat:{command}:{b}")))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, n) in counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return Some(LATENCY_BOUNDS_MS[b]);
            }
        }
        LATENCY_BOUNDS_MS.last().copied()
    }

    /// Commands that have latency samples.
    pub fn commands(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .fields
            .keys()
            .filter_map(|k| k.strip_prefix("lat:"))
            .filter_map(|rest| rest.rsplit_once(':').map(|(c, _)| c.to_owned()))
            .collect();
        out.sort();
        out.dedup();
        out
    }
}

/// Sums the last `minutes` minute buckets (the current one included).
pub async fn read_window(cluster: &Cluster, minutes: u64) -> Result<Window, ClusterError> {
    let prefix = cluster.config().cluster_name.clone();
    let now = minute_of(now_ms());
    let keys: Vec<String> = (0..minutes.max(1))
        .map(|m| keys::stats(&prefix, now - m))
        .collect();
    let hashes: Vec<HashMap<String, i64>> = cluster
        .redis()
        .run(
            "stats read",
            Duration::from_millis(800),
            move |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("HGETALL").arg(k);
                }
                pipe.query_async(&mut c).await
            },
        )
        .await?;
    let mut fields: HashMap<String, i64> = HashMap::new();
    for h in hashes {
        for (k, v) in h {
            *fields.entry(k).or_default() += v;
        }
    }
    Ok(Window {
        minutes: minutes.max(1),
        fields,
    })
}

/// Publishes a JSON document about this instance (e.g. its remaining key budget) at
/// `{c}:info:{id}`, expiring after `ttl` so a dead instance's document disappears with it.
pub async fn publish_info(
    cluster: &Cluster,
    info: &serde_json::Value,
    ttl: Duration,
) -> Result<(), ClusterError> {
    let cfg = cluster.config();
    let key = keys::info(&cfg.cluster_name, cfg.instance_id);
    let value = info.to_string();
    let ttl = ttl.as_millis() as u64;
    cluster
        .redis()
        .run(
            "info write",
            Duration::from_millis(500),
            move |mut c| async move {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(value)
                    .arg("PX")
                    .arg(ttl)
                    .query_async::<()>(&mut c)
                    .await
            },
        )
        .await
}

/// Every instance's published document, by instance id (missing ones are absent).
pub async fn read_info(
    cluster: &Cluster,
) -> Result<BTreeMap<InstanceId, serde_json::Value>, ClusterError> {
    let cfg = cluster.config();
    let ids: Vec<InstanceId> = (1..=cfg.instance_count).collect();
    let keys: Vec<String> = ids
        .iter()
        .map(|id| keys::info(&cfg.cluster_name, *id))
        .collect();
    let values: Vec<Option<String>> = cluster
        .redis()
        .run(
            "info read",
            Duration::from_millis(500),
            move |mut c| async move { redis::cmd("MGET").arg(&keys).query_async(&mut c).await },
        )
        .await?;
    Ok(ids
        .into_iter()
        .zip(values)
        .filter_map(|(id, v)| Some((id, serde_json::from_str(&v?).ok()?)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(pairs: &[(&str, i64)]) -> Window {
        Window {
            minutes: 5,
            fields: pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
        }
    }

    #[test]
    fn quantiles_come_from_bucket_bounds() {
        // 90 samples ≤ 1 s (bucket 4), 10 samples ≤ 8 s (bucket 7).
        let w = window(&[("lat:chat:4", 90), ("lat:chat:7", 10)]);
        assert_eq!(w.latency_quantile_ms("chat", 0.5), Some(1_000));
        assert_eq!(w.latency_quantile_ms("chat", 0.95), Some(8_000));
        assert_eq!(w.latency_quantile_ms("image", 0.5), None);
        assert_eq!(w.commands(), vec!["chat".to_string()]);
    }

    #[test]
    fn per_instance_sums() {
        let w = window(&[
            ("done:2:chat", 4),
            ("failed:2:image", 1),
            ("done:3:chat", 7),
            ("provider:2:openai", 5),
            ("provider:3:openai", 6),
            ("handled:2", 5),
        ]);
        assert_eq!(w.completed_by(2), 5);
        assert_eq!(w.handled(2), 5);
        assert_eq!(w.provider_requests()[&(3, "openai".to_string())], 6);
    }
}

//! Memory under load: every `--memory-every` seconds, each instance's resident memory (its
//! `process_resident_memory_bytes` on `/metrics`, the figure an operator's Prometheus sees)
//! and Redis's (`INFO memory`), with what Redis holds for queued jobs (the job streams'
//! `MEMORY USAGE` against their entries) and for conversations (`{c}:conv:*`). Read from
//! outside, as plain text and plain Redis, like the heartbeats.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::report::{MemoryReport, MemorySample};

/// One scrape's or one Redis read's time budget: loopback answers in milliseconds; a slower one
/// is an instance being killed or Redis restarting (chaos), and that sample goes without it.
const READ_BUDGET: Duration = Duration::from_secs(2);

/// How many conversation keys a sample weighs with `MEMORY USAGE` (all are counted): enough
/// for a stable mean, few enough that a sample stays a few milliseconds of Redis time.
const CONVERSATIONS_WEIGHED: usize = 200;

/// Where to read from.
pub struct MemoryProbe {
    pub instances: Vec<(u32, SocketAddr)>,
    pub redis_url: String,
    pub cluster_name: String,
}

/// Samples every `every` until `stop`, then once more (the end of the load).
pub async fn sample(
    probe: MemoryProbe,
    start: Instant,
    every: Duration,
    stop: CancellationToken,
) -> Vec<MemorySample> {
    let http = reqwest::Client::new();
    let redis = redis::Client::open(probe.redis_url.as_str()).ok();
    let mut out = Vec::new();
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            () = stop.cancelled() => true,
        };
        out.push(one(&probe, &http, redis.as_ref(), start).await);
        if last {
            return out;
        }
    }
}

async fn one(
    probe: &MemoryProbe,
    http: &reqwest::Client,
    redis: Option<&redis::Client>,
    start: Instant,
) -> MemorySample {
    let mut rss_kb = Vec::with_capacity(probe.instances.len());
    for (_, addr) in &probe.instances {
        rss_kb.push(instance_rss_kb(http, *addr).await);
    }
    let mut sample = MemorySample {
        at_s: start.elapsed().as_secs_f64(),
        rss_kb,
        ..MemorySample::default()
    };
    if let Some(client) = redis {
        let read = tokio::time::timeout(READ_BUDGET, redis_side(client, &probe.cluster_name));
        if let Ok(Ok(r)) = read.await {
            sample.redis_used_bytes = Some(r.used);
            sample.queued_jobs = r.queued_jobs;
            sample.job_streams_bytes = r.job_streams_bytes;
            sample.conversations = r.conversations;
            sample.conversations_weighed = r.weighed;
            sample.conversations_weighed_bytes = r.weighed_bytes;
        }
    }
    sample
}

async fn instance_rss_kb(http: &reqwest::Client, addr: SocketAddr) -> Option<u64> {
    let text = http
        .get(format!("http://{addr}/metrics"))
        .timeout(READ_BUDGET)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    rss_kb_from_metrics(&text)
}

/// `process_resident_memory_bytes N` → kB.
pub fn rss_kb_from_metrics(text: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|b| (b / 1024.0).round() as u64)
}

/// `used_memory:N` of `INFO memory`.
pub fn used_memory(info: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
}

struct RedisSide {
    used: u64,
    queued_jobs: u64,
    job_streams_bytes: u64,
    conversations: u64,
    weighed: u64,
    weighed_bytes: u64,
}

async fn redis_side(client: &redis::Client, cluster: &str) -> anyhow::Result<RedisSide> {
    let mut c = client.get_multiplexed_async_connection().await?;
    let info: String = redis::cmd("INFO").arg("memory").query_async(&mut c).await?;
    let used = used_memory(&info).ok_or_else(|| anyhow::anyhow!("no used_memory in INFO"))?;
    let (mut queued_jobs, mut job_streams_bytes) = (0, 0);
    // `{c}:jobs:{instance}:{kind}`, ARCHITECTURE.md's Redis table.
    for key in scan(&mut c, &format!("{cluster}:jobs:*")).await? {
        let len: u64 = redis::cmd("XLEN").arg(&key).query_async(&mut c).await?;
        queued_jobs += len;
        job_streams_bytes += memory_usage(&mut c, &key).await?;
    }
    let conversations = scan(&mut c, &format!("{cluster}:conv:*")).await?;
    let (mut weighed, mut weighed_bytes) = (0, 0);
    for key in conversations.iter().take(CONVERSATIONS_WEIGHED) {
        weighed += 1;
        weighed_bytes += memory_usage(&mut c, key).await?;
    }
    Ok(RedisSide {
        used,
        queued_jobs,
        job_streams_bytes,
        conversations: conversations.len() as u64,
        weighed,
        weighed_bytes,
    })
}

async fn scan(
    c: &mut redis::aio::MultiplexedConnection,
    pattern: &str,
) -> redis::RedisResult<Vec<String>> {
    let mut keys = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(c)
            .await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// `MEMORY USAGE key SAMPLES 0`: every element counted, not an estimate from a few.
async fn memory_usage(
    c: &mut redis::aio::MultiplexedConnection,
    key: &str,
) -> redis::RedisResult<u64> {
    let bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(key)
        .arg("SAMPLES")
        .arg(0)
        .query_async(c)
        .await?;
    Ok(bytes.unwrap_or(0))
}

/// The samples summed up: each instance's peak, Redis's peak, and the per-job and
/// per-conversation figures.
pub fn summarize(every: Duration, samples: Vec<MemorySample>) -> MemoryReport {
    let n = samples.iter().map(|s| s.rss_kb.len()).max().unwrap_or(0);
    let rss_kb_max = (0..n)
        .map(|i| samples.iter().filter_map(|s| *s.rss_kb.get(i)?).max())
        .collect::<Vec<_>>();
    // The deepest queue gives the per-job figure with the least of a stream's fixed overhead
    // (its radix tree's first node, the consumer group) in it.
    let deepest = samples
        .iter()
        .filter(|s| s.queued_jobs > 0)
        .max_by_key(|s| s.queued_jobs);
    let bytes_per_queued_job = deepest.map(|s| s.job_streams_bytes as f64 / s.queued_jobs as f64);
    let (weighed, bytes) = samples
        .iter()
        .max_by_key(|s| s.conversations)
        .map_or((0, 0), |s| {
            (s.conversations_weighed, s.conversations_weighed_bytes)
        });
    MemoryReport {
        every_s: every.as_secs_f64(),
        rss_kb_max_any: rss_kb_max.iter().flatten().copied().max(),
        rss_kb_max,
        redis_used_bytes_max: samples.iter().filter_map(|s| s.redis_used_bytes).max(),
        bytes_per_queued_job,
        deepest_queue: deepest.map_or(0, |s| s.queued_jobs),
        bytes_per_conversation: (weighed > 0).then(|| bytes as f64 / weighed as f64),
        conversations_max: samples.iter().map(|s| s.conversations).max().unwrap_or(0),
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_are_read_from_the_exposition_and_info() {
        let metrics = "# HELP x\nkeyshard_queue_depth 3\nprocess_resident_memory_bytes 15822848\n";
        assert_eq!(rss_kb_from_metrics(metrics), Some(15_452));
        assert_eq!(rss_kb_from_metrics("keyshard_queue_depth 3\n"), None);
        let info = "# Memory\r\nused_memory:1048576\r\nused_memory_human:1.00M\r\n";
        assert_eq!(used_memory(info), Some(1_048_576));
        assert_eq!(used_memory("# Memory\r\n"), None);
    }

    #[test]
    fn the_summary_takes_peaks_and_the_deepest_queue() {
        let s = |at_s, rss: Vec<Option<u64>>, queued, bytes, convs| MemorySample {
            at_s,
            rss_kb: rss,
            redis_used_bytes: Some(at_s as u64 * 1000),
            queued_jobs: queued,
            job_streams_bytes: bytes,
            conversations: convs,
            conversations_weighed: convs.min(2),
            conversations_weighed_bytes: convs.min(2) * 500,
        };
        let r = summarize(
            Duration::from_secs(10),
            vec![
                s(10.0, vec![Some(15_000), Some(16_000)], 4, 4_000, 1),
                s(20.0, vec![None, Some(18_000)], 100, 50_000, 3),
                s(30.0, vec![Some(17_000), Some(17_500)], 0, 300, 3),
            ],
        );
        assert_eq!(r.rss_kb_max, vec![Some(17_000), Some(18_000)]);
        assert_eq!(r.rss_kb_max_any, Some(18_000));
        assert_eq!(r.redis_used_bytes_max, Some(30_000));
        assert_eq!(
            (r.deepest_queue, r.bytes_per_queued_job),
            (100, Some(500.0))
        );
        assert_eq!(
            (r.conversations_max, r.bytes_per_conversation),
            (3, Some(500.0))
        );
        assert_eq!(r.samples.len(), 3);
    }
}

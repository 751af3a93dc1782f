//! The provider-level benchmark harness: one key at `rpm` requests per window on the fake
//! OpenAI chat endpoint, `callers` concurrent callers for `duration`; how much of the limit
//! gets done, and how many 429s the fake had to send.
//!
//! The client under test is plugged in through [`BenchClient`]: keyshard-sim does not depend
//! on keyshard-providers (the dependency goes the other way, for its tests), so the runnable
//! benchmark is keyshard-providers' `provider_bench` example, which passes its real client to
//! [`run_with`]. [`run`] benchmarks a naive client without any limiter, as a baseline that
//! shows what the fake does to a client that ignores the limits.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::time::Instant;

use super::{FakeLimits, FakeProviders, FakeProvidersConfig, LatencyDist, WindowLimit};

#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Requests per `window` the key may make.
    pub rpm: u32,
    pub callers: usize,
    pub duration: Duration,
    /// The rate window (60 s: real minutes).
    pub window: Duration,
    pub latency: LatencyDist,
    pub seed: u64,
    /// The fake reports (and enforces) a burst allowance of this many requests instead of
    /// the window's remaining, as a proxy may ([`super::FakeProvidersConfig::burst_allowance`]).
    pub burst_allowance: Option<u32>,
}

impl Default for BenchArgs {
    /// The benchmark: 120 requests/min, 16 callers, 60 s; latency 50–250 ms.
    fn default() -> Self {
        BenchArgs {
            rpm: 120,
            callers: 16,
            duration: Duration::from_secs(60),
            window: Duration::from_secs(60),
            latency: LatencyDist::Uniform {
                min: Duration::from_millis(50),
                max: Duration::from_millis(250),
            },
            seed: 42,
            burst_allowance: None,
        }
    }
}

/// Where the client under test must send its requests.
#[derive(Debug, Clone)]
pub struct BenchTarget {
    /// async-openai style base URL (`…/openai/v1`).
    pub openai_base: String,
    pub key: String,
    pub rpm: u32,
    pub window: Duration,
}

/// The client under test: one chat completion per call.
pub trait BenchClient: Send + Sync + 'static {
    fn call(&self) -> BoxFuture<'_, Result<(), String>>;
}

#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BenchReport {
    /// Calls that completed successfully within the run.
    pub completed: u64,
    /// The most the fake can admit over the run: `rpm × ⌈duration ÷ window⌉` (a sliding window
    /// admits `rpm` in each of the run's windows, the last one possibly partial).
    pub limit: u64,
    /// `completed ÷ limit`.
    pub ratio: f64,
    /// 429s the fake sent (its own count).
    pub provider_429: u64,
    /// Calls that ended in an error within the run.
    pub failed: u64,
    pub rpm: u32,
    pub callers: usize,
    pub duration_s: f64,
    pub window_s: f64,
    pub client: String,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "provider bench ({}): 1 key at {} req / {:.0} s, {} callers, {:.0} s",
            self.client, self.rpm, self.window_s, self.callers, self.duration_s
        )?;
        writeln!(f, "  completed      {}", self.completed)?;
        writeln!(f, "  limit          {}", self.limit)?;
        writeln!(f, "  completed/limit {:.1} %", self.ratio * 100.0)?;
        writeln!(f, "  provider_429   {}", self.provider_429)?;
        write!(f, "  failed         {}", self.failed)
    }
}

/// Starts the fake with one key at `args.rpm`, runs `args.callers` callers of the client that
/// `make` builds for the target, and reports.
pub async fn run_with<C, F>(args: BenchArgs, make: F) -> anyhow::Result<BenchReport>
where
    C: BenchClient,
    F: FnOnce(&BenchTarget) -> anyhow::Result<(C, String)>,
{
    anyhow::ensure!(
        args.rpm > 0 && args.callers > 0,
        "rpm and callers must be above zero"
    );
    let cfg = FakeProvidersConfig {
        latency: args.latency.clone(),
        limits: FakeLimits {
            openai_chat: WindowLimit {
                limit: args.rpm,
                window: args.window,
            },
            openai_chat_tokens: None,
            ..FakeLimits::uniform(args.rpm, args.window)
        },
        stream_gap: Duration::from_millis(2),
        seed: args.seed,
        burst_allowance: args.burst_allowance,
        ..FakeProvidersConfig::default()
    };
    let fake = FakeProviders::start(cfg).await?;
    let target = BenchTarget {
        openai_base: fake.openai_base(),
        key: "sk-bench-key-0001".into(),
        rpm: args.rpm,
        window: args.window,
    };
    let (client, name) = make(&target)?;
    let client = Arc::new(client);
    let completed = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + args.duration;
    let mut callers = Vec::new();
    for _ in 0..args.callers {
        let (client, completed, failed) = (client.clone(), completed.clone(), failed.clone());
        callers.push(tokio::spawn(async move {
            while Instant::now() < deadline {
                tokio::select! {
                    r = client.call() => match r {
                        Ok(()) if Instant::now() <= deadline => { completed.fetch_add(1, Ordering::Relaxed); }
                        Ok(()) => {}
                        Err(e) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(error = %e, "bench call failed");
                        }
                    },
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
        }));
    }
    for c in callers {
        c.await?;
    }
    let stats = fake.stats();
    fake.shutdown().await;
    let windows = (args.duration.as_secs_f64() / args.window.as_secs_f64() - 1e-9).ceil();
    let limit = (f64::from(args.rpm) * windows.max(1.0)) as u64;
    let completed = completed.load(Ordering::Relaxed);
    Ok(BenchReport {
        completed,
        limit,
        ratio: if limit == 0 {
            0.0
        } else {
            completed as f64 / limit as f64
        },
        provider_429: stats.total_429,
        failed: failed.load(Ordering::Relaxed),
        rpm: args.rpm,
        callers: args.callers,
        duration_s: args.duration.as_secs_f64(),
        window_s: args.window.as_secs_f64(),
        client: name,
    })
}

/// A client with no limiter at all: POSTs a non-streamed chat completion and retries a 429
/// after a fixed 1 s pause. The baseline that shows the fake enforcing the limit.
struct NaiveClient {
    http: reqwest::Client,
    url: String,
    key: String,
}

impl BenchClient for NaiveClient {
    fn call(&self) -> BoxFuture<'_, Result<(), String>> {
        Box::pin(async move {
            loop {
                let r = self
                    .http
                    .post(&self.url)
                    .bearer_auth(&self.key)
                    .json(&serde_json::json!({
                        "model": "gpt-4o-mini",
                        "messages": [{"role": "user", "content": "hello"}],
                    }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                match r.status().as_u16() {
                    200 => return Ok(()),
                    // Fixed pause: the naive client does not read Retry-After.
                    429 => tokio::time::sleep(Duration::from_secs(1)).await,
                    s => return Err(format!("HTTP {s}")),
                }
            }
        })
    }
}

/// The baseline benchmark with [`NaiveClient`] (see the module docs for the real one).
pub async fn run(args: BenchArgs) -> anyhow::Result<BenchReport> {
    run_with(args, |t| {
        Ok((
            NaiveClient {
                http: crate::http_client(),
                url: format!("{}/chat/completions", t.openai_base),
                key: t.key.clone(),
            },
            "naive, no limiter".to_owned(),
        ))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn naive_client_trips_the_fake_and_the_report_adds_up() {
        let args = BenchArgs {
            rpm: 5,
            callers: 4,
            duration: Duration::from_millis(1500),
            window: Duration::from_secs(1),
            latency: LatencyDist::None,
            seed: 1,
            burst_allowance: None,
        };
        let report = run(args).await.unwrap();
        assert_eq!(report.limit, 10); // 5 per 1 s window, two windows started in 1.5 s
        assert!(report.provider_429 > 0, "{report}");
        assert!(
            report.completed <= 10,
            "the fake never admits more than the windows allow: {report}"
        );
        assert!(report.to_string().contains("provider_429"));
    }
}

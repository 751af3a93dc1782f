//! The Prometheus series this instance exports on `/metrics`.
//!
//! A handful of labelled counters and one histogram do not justify a metrics framework: the
//! series are atomics and small maps rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use keyshard_providers::HealthView;

/// Counters keyed by their label values, in a fixed label order.
#[derive(Default)]
pub struct CounterVec {
    labels: &'static [&'static str],
    values: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl CounterVec {
    pub fn new(labels: &'static [&'static str]) -> Self {
        Self {
            labels,
            values: Mutex::default(),
        }
    }

    pub fn inc(&self, label_values: &[&str]) {
        self.add(label_values, 1);
    }

    pub fn add(&self, label_values: &[&str], n: u64) {
        debug_assert_eq!(label_values.len(), self.labels.len());
        let key = label_values.iter().map(|s| s.to_string()).collect();
        // A std Mutex is right here: the critical section is a map update, never held across an await.
        *self
            .values
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default() += n;
    }

    pub fn get(&self, label_values: &[&str]) -> u64 {
        let key: Vec<String> = label_values.iter().map(|s| s.to_string()).collect();
        self.values
            .lock()
            .expect("metrics lock")
            .get(&key)
            .copied()
            .unwrap_or(0)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (values, n) in self.values.lock().expect("metrics lock").iter() {
            let labels: Vec<String> = self
                .labels
                .iter()
                .zip(values)
                .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
                .collect();
            let _ = writeln!(out, "{name}{{{}}} {n}", labels.join(","));
        }
    }
}

/// A latency histogram with fixed buckets (seconds).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            if secs <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            let _ = writeln!(
                out,
                "{name}_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Every series of the instance, besides those kept by the cluster handle.
pub struct Metrics {
    /// `command`, `outcome` (answered, not_ours, error).
    pub interactions: CounterVec,
    /// From the claim decision to the acknowledgement sent.
    pub ack_latency: Histogram,
    /// Usage-ledger rows this instance recorded, by `provider` (`none` without a provider
    /// call) and `status` (ok, failed, refused).
    pub usage_rows: CounterVec,
    /// Estimated cost of those rows in micro-dollars, by `provider`.
    pub usage_cost_micros: CounterVec,
    /// Tokens of those rows, by `provider` and `direction` (in, out).
    pub usage_tokens: CounterVec,
    /// Images of those rows, by `provider`.
    pub usage_images: CounterVec,
    /// Seconds of video of those rows, by `provider`.
    pub usage_video_secs: CounterVec,
    /// Quota refusals by `rule` (user_daily, guild_daily, cooldown).
    pub quota_refusals: CounterVec,
    /// Redis round trips on the acknowledgement path of won interactions (claim, queueing,
    /// confirmation), by the operation's name.
    pub ack_round_trips: CounterVec,
    /// Won interactions whose round trips are counted in `ack_round_trips`.
    pub ack_measured: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            interactions: CounterVec::new(&["command", "outcome"]),
            ack_latency: Histogram::new(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ]),
            usage_rows: CounterVec::new(&["provider", "status"]),
            usage_cost_micros: CounterVec::new(&["provider"]),
            usage_tokens: CounterVec::new(&["provider", "direction"]),
            usage_images: CounterVec::new(&["provider"]),
            usage_video_secs: CounterVec::new(&["provider"]),
            quota_refusals: CounterVec::new(&["rule"]),
            ack_round_trips: CounterVec::new(&["op"]),
            ack_measured: AtomicU64::new(0),
        }
    }
}

/// The cluster handle's counters and gauges at one moment, as `/metrics` shows them.
pub struct ClusterSample {
    pub claims_won: u64,
    pub claims_lost: u64,
    pub degraded_decisions: u64,
    pub takeovers_down: u64,
    pub takeovers_overload: u64,
    pub redis_errors: u64,
    pub degraded: bool,
    pub alive_instances: usize,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub jobs_finished: u64,
    pub jobs_rescued: u64,
    pub jobs_moved: u64,
    /// Jobs queued again from this process's copies after Redis restarted empty.
    pub jobs_requeued: u64,
    pub providers: Vec<keyshard_providers::ProviderStats>,
    /// The ledger writer's counters; `None` while the ledger is off.
    pub ledger: Option<keyshard_ledger::WriterStats>,
    /// The health of this instance's keys (out of service, circuit).
    pub health: Vec<keyshard_providers::HealthView>,
    /// The quotas' state; `None` when the probe has no quota handle.
    pub quota: Option<QuotaSample>,
}

/// The quota mechanism's state at one moment.
#[derive(Clone, Copy, Debug, Default)]
pub struct QuotaSample {
    /// The last decision came from this instance's own counters (Redis failed).
    pub degraded: bool,
    pub degraded_decisions: u64,
    pub refunds: u64,
    /// The last reconciliation's |reserved − answered| summed over users and commands today.
    pub drift: u64,
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`, in kB there), read at each
/// scrape; `None` where there is no procfs (then the series is left out, not shown as 0).
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

/// `VmRSS:   15452 kB` → bytes.
fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

impl Metrics {
    /// Counts one interaction's acknowledgement-path round trips (`ops`: one name each).
    pub fn observe_ack_round_trips(&self, ops: &[&str]) {
        for op in ops {
            self.ack_round_trips.inc(&[op]);
        }
        self.ack_measured.fetch_add(1, Ordering::Relaxed);
    }

    /// The whole exposition text. Long but flat: one series after another, in the order
    /// the dashboard shows them, with no decision of its own.
    pub fn render(&self, cluster: &ClusterSample) -> String {
        let mut out = String::with_capacity(4096);
        self.interactions.render(
            &mut out,
            "keyshard_interactions_total",
            "Interactions seen, by command and outcome.",
        );
        self.ack_latency.render(
            &mut out,
            "keyshard_ack_latency_seconds",
            "From the claim decision to the acknowledgement sent to Discord.",
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        let _ = writeln!(
            out,
            "# HELP keyshard_claims_total Claim attempts, by result.\n# TYPE keyshard_claims_total counter\n\
             keyshard_claims_total{{result=\"won\"}} {}\nkeyshard_claims_total{{result=\"lost\"}} {}\nkeyshard_claims_total{{result=\"degraded\"}} {}",
            cluster.claims_won, cluster.claims_lost, cluster.degraded_decisions
        );
        let _ = writeln!(
            out,
            "# HELP keyshard_takeovers_total Interactions this instance answered for another instance's user.\n# TYPE keyshard_takeovers_total counter\n\
             keyshard_takeovers_total{{reason=\"down\"}} {}\nkeyshard_takeovers_total{{reason=\"overload\"}} {}",
            cluster.takeovers_down, cluster.takeovers_overload
        );
        let _ = writeln!(
            out,
            "# HELP keyshard_redis_errors_total Redis calls that failed or timed out.\n# TYPE keyshard_redis_errors_total counter\nkeyshard_redis_errors_total {}",
            cluster.redis_errors
        );
        if let Some(bytes) = resident_bytes() {
            gauge(
                &mut out,
                "process_resident_memory_bytes",
                "Resident memory size in bytes (VmRSS), the name Prometheus' process collectors use.",
                bytes.to_string(),
            );
        }
        gauge(
            &mut out,
            "keyshard_redis_degraded",
            "1 while Redis is unreachable and the static rule is in force.",
            u8::from(cluster.degraded).to_string(),
        );
        gauge(
            &mut out,
            "keyshard_cluster_alive_instances",
            "Instances whose heartbeat this instance sees.",
            cluster.alive_instances.to_string(),
        );
        gauge(
            &mut out,
            "keyshard_queue_depth",
            "Jobs waiting in this instance's queue.",
            cluster.queue_depth.to_string(),
        );
        gauge(
            &mut out,
            "keyshard_jobs_in_flight",
            "Jobs this instance is running.",
            cluster.in_flight.to_string(),
        );
        let _ = writeln!(
            out,
            "# HELP keyshard_jobs_total Jobs this instance finished, rescued from dead peers, moved to a peer, or queued again after Redis restarted empty.\n# TYPE keyshard_jobs_total counter\n\
             keyshard_jobs_total{{event=\"finished\"}} {}\nkeyshard_jobs_total{{event=\"rescued\"}} {}\nkeyshard_jobs_total{{event=\"moved\"}} {}\nkeyshard_jobs_total{{event=\"requeued\"}} {}",
            cluster.jobs_finished, cluster.jobs_rescued, cluster.jobs_moved, cluster.jobs_requeued
        );
        let _ = writeln!(out, "# HELP keyshard_provider_requests_total Provider calls, by provider and result class.\n# TYPE keyshard_provider_requests_total counter");
        for p in &cluster.providers {
            let _ = writeln!(
                out,
                "keyshard_provider_requests_total{{provider=\"{}\",class=\"ok\"}} {}",
                p.provider.as_str(),
                p.ok
            );
            for (class, n) in &p.failed {
                let _ = writeln!(
                    out,
                    "keyshard_provider_requests_total{{provider=\"{}\",class=\"{}\"}} {n}",
                    p.provider.as_str(),
                    class.as_str()
                );
            }
        }
        let _ = writeln!(out, "# HELP keyshard_provider_429_total 429 answers received from providers (0 while the limiter and the provider agree).\n# TYPE keyshard_provider_429_total counter");
        for p in &cluster.providers {
            let _ = writeln!(
                out,
                "keyshard_provider_429_total{{provider=\"{}\"}} {}",
                p.provider.as_str(),
                p.provider_429
            );
        }
        let _ = writeln!(out, "# HELP keyshard_provider_pauses_total Pauses a provider imposed on a key (Retry-After, a 429, its remaining run out below the configured limits), counted when each starts.\n# TYPE keyshard_provider_pauses_total counter");
        for p in &cluster.providers {
            let _ = writeln!(
                out,
                "keyshard_provider_pauses_total{{provider=\"{}\"}} {}",
                p.provider.as_str(),
                p.provider_pauses
            );
        }
        let _ = writeln!(out, "# HELP keyshard_rate_limit_wait_seconds_total Time provider calls waited for key capacity.\n# TYPE keyshard_rate_limit_wait_seconds_total counter");
        for p in &cluster.providers {
            let _ = writeln!(
                out,
                "keyshard_rate_limit_wait_seconds_total{{provider=\"{}\"}} {}",
                p.provider.as_str(),
                p.rate_limit_wait.as_secs_f64()
            );
        }
        self.render_health(&mut out, &cluster.health);
        self.render_ack_round_trips(&mut out);
        self.render_usage(&mut out, cluster.ledger.as_ref());
        self.quota_refusals.render(
            &mut out,
            "keyshard_quota_refusals_total",
            "Requests this instance refused by quota, by rule (user_daily, guild_daily, cooldown).",
        );
        if let Some(q) = cluster.quota {
            gauge(
                &mut out,
                "keyshard_quota_degraded",
                "1 while quota decisions come from this instance's own counters (Redis failed).",
                u8::from(q.degraded).to_string(),
            );
            let _ = writeln!(
                out,
                "# HELP keyshard_quota_local_decisions_total Quota decisions taken by this instance's own counters while Redis failed.\n# TYPE keyshard_quota_local_decisions_total counter\nkeyshard_quota_local_decisions_total {}",
                q.degraded_decisions
            );
            let _ = writeln!(
                out,
                "# HELP keyshard_quota_refunds_total Reservations given back (failed jobs, jobs never queued).\n# TYPE keyshard_quota_refunds_total counter\nkeyshard_quota_refunds_total {}",
                q.refunds
            );
            gauge(
                &mut out,
                "keyshard_quota_drift",
                "Reserved daily counts minus the ledger's answered rows, absolute, summed over users and commands today (last reconciliation; goal 0).",
                q.drift.to_string(),
            );
        }
        out
    }

    /// Keys out of service and open circuits, as gauges, and how often each happened.
    fn render_health(&self, out: &mut String, health: &[HealthView]) {
        type Series = (
            &'static str,
            &'static str,
            &'static str,
            fn(&HealthView) -> u64,
        );
        let series: [Series; 4] = [
            ("keyshard_key_out_of_service", "gauge", "1 while this instance's key of the provider is out of service (auth, quota or balance errors) until a probe finds it working.", |h| u64::from(h.out_of_service)),
            ("keyshard_key_outages_total", "counter", "Times this instance's key of the provider went out of service.", |h| h.outages),
            ("keyshard_provider_circuit_open", "gauge", "1 while the provider's circuit is open (or half-open) after a storm of server errors.", |h| u64::from(h.circuit_open)),
            ("keyshard_provider_circuit_opens_total", "counter", "Times the provider's circuit opened.", |h| h.circuit_opens),
        ];
        for (name, kind, help, value) in series {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for h in health {
                let _ = writeln!(
                    out,
                    "{name}{{provider=\"{}\",key=\"{}\"}} {}",
                    h.provider.as_str(),
                    h.key,
                    value(h)
                );
            }
        }
    }

    /// Redis round trips per won interaction on the acknowledgement path: a summary (sum and
    /// count, so sum ÷ count is the average) and the sum by operation.
    fn render_ack_round_trips(&self, out: &mut String) {
        let name = "keyshard_ack_redis_round_trips";
        let by_op = self
            .ack_round_trips
            .values
            .lock()
            .expect("metrics lock")
            .clone();
        let sum: u64 = by_op.values().sum();
        let count = self.ack_measured.load(Ordering::Relaxed);
        let _ = writeln!(out, "# HELP {name} Redis round trips on the acknowledgement path of won interactions (claim, queueing, confirmation).\n# TYPE {name} summary\n{name}_sum {sum}\n{name}_count {count}");
        self.ack_round_trips.render(
            out,
            "keyshard_ack_redis_round_trips_by_op_total",
            "Redis round trips on the acknowledgement path, by operation.",
        );
    }

    /// The usage counters per provider and the ledger writer's state.
    fn render_usage(&self, out: &mut String, writer: Option<&keyshard_ledger::WriterStats>) {
        self.usage_rows.render(
            out,
            "keyshard_usage_rows_total",
            "Usage-ledger rows this instance recorded, by provider (none: no provider call) and status.",
        );
        self.usage_cost_micros.render(
            out,
            "keyshard_usage_cost_microdollars_total",
            "Estimated cost of the recorded rows in micro-dollars (LEDGER_PRICES), by provider.",
        );
        self.usage_tokens.render(
            out,
            "keyshard_usage_tokens_total",
            "Tokens of the recorded rows, by provider and direction.",
        );
        self.usage_images.render(
            out,
            "keyshard_usage_images_total",
            "Images of the recorded rows, by provider.",
        );
        self.usage_video_secs.render(
            out,
            "keyshard_usage_video_seconds_total",
            "Seconds of video of the recorded rows, by provider.",
        );
        let Some(w) = writer else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP keyshard_ledger_rows_total Ledger rows by what happened to them in this instance's writer.\n# TYPE keyshard_ledger_rows_total counter"
        );
        for (event, n) in [
            ("recorded", w.recorded),
            ("written", w.written),
            ("already_written", w.duplicates),
            ("taken_over", w.taken_over),
            ("repushed", w.repushed),
            ("dropped", w.dropped),
            ("unprotected", w.unprotected),
            ("malformed", w.malformed),
        ] {
            let _ = writeln!(out, "keyshard_ledger_rows_total{{event=\"{event}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP keyshard_ledger_failures_total Failed ledger writes (Postgres) and pushes (Redis).\n# TYPE keyshard_ledger_failures_total counter\n\
             keyshard_ledger_failures_total{{kind=\"write\"}} {}\nkeyshard_ledger_failures_total{{kind=\"push\"}} {}",
            w.write_failures, w.push_failures
        );
        let gauge = |out: &mut String, name: &str, help: &str, v: String| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        };
        gauge(
            out,
            "keyshard_ledger_buffered_rows",
            "Ledger rows held in memory, not yet known to be in Postgres.",
            w.buffered.to_string(),
        );
        gauge(
            out,
            "keyshard_ledger_unpushed_rows",
            "Of those, rows not yet in Redis either.",
            w.not_in_redis.to_string(),
        );
        gauge(
            out,
            "keyshard_ledger_oldest_buffered_age_seconds",
            "How long ago the oldest buffered ledger row was recorded (0 when none).",
            (w.oldest_buffered_age_ms.unwrap_or(0) as f64 / 1000.0).to_string(),
        );
        gauge(
            out,
            "keyshard_ledger_postgres_failing",
            "1 while ledger writes to Postgres fail.",
            u8::from(w.postgres_failing).to_string(),
        );
    }
}

#[cfg(test)]
mod tests;

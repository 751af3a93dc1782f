//! `/healthz`, `/readyz` and `/metrics` on `HTTP_BIND`, for docker healthchecks, rolling
//! restarts and Prometheus.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use keyshard_cluster::{Cluster, Jobs};
use keyshard_providers::Providers;
use tokio_util::sync::CancellationToken;

use crate::context::EdgeState;
use crate::ledger::Ledger;
use crate::metrics::{ClusterSample, Metrics};

/// What the HTTP endpoints read.
#[derive(Clone)]
pub struct Probe {
    pub state: Arc<EdgeState>,
    pub cluster: Cluster,
    pub jobs: Jobs,
    pub providers: Providers,
    pub metrics: Arc<Metrics>,
    /// The usage ledger; `None` when off.
    pub ledger: Option<Arc<Ledger>>,
    /// The quotas' degraded state, refunds and drift; `None` in probes built without them.
    pub quotas: Option<keyshard_cluster::Quotas>,
    /// Redis has answered at least once since start.
    redis_seen: Arc<AtomicBool>,
}

impl Probe {
    pub fn new(
        state: Arc<EdgeState>,
        cluster: Cluster,
        jobs: Jobs,
        providers: Providers,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            state,
            cluster,
            jobs,
            providers,
            metrics,
            ledger: None,
            quotas: None,
            redis_seen: Arc::default(),
        }
    }

    /// With the quotas' counters in `/metrics`.
    pub fn with_quotas(mut self, quotas: keyshard_cluster::Quotas) -> Self {
        self.quotas = Some(quotas);
        self
    }

    /// With the usage ledger's state in `/readyz` and its counters in `/metrics`.
    pub fn with_ledger(mut self, ledger: Option<Arc<Ledger>>) -> Self {
        self.ledger = ledger;
        self
    }

    /// Ready: every shard's gateway session is up, the commands are registered, a membership
    /// snapshot has been read from Redis at least once since start (later outages are served
    /// in degraded mode, so they do not make the instance unready), and it is not draining.
    /// While a shard's IDENTIFY waits (the restart backoff, the bucket, the day's reserve),
    /// `waiting` and `detail` say for what.
    pub fn readiness(&self) -> Readiness {
        if self.cluster.is_ready() {
            self.redis_seen.store(true, Ordering::Release);
        }
        let shards = &self.state.shards;
        let waiting = shards.waiting();
        let r = Readiness {
            shards: shards.count(),
            shards_up: shards.up_count(),
            waiting: waiting.as_ref().map(|w| w.kind()),
            detail: waiting.as_ref().map(ToString::to_string),
            gateway: self.state.gateway_ready.load(Ordering::Acquire),
            commands: self.state.commands_registered.load(Ordering::Acquire),
            redis: self.redis_seen.load(Ordering::Acquire),
            redis_degraded: self.cluster.is_degraded(),
            draining: self.state.is_draining(),
            alive_instances: self.cluster.membership().alive_count(),
            serving_instances: self.cluster.membership().serving_count(),
            ledger: self.ledger_state(),
            ready: false,
        };
        Readiness {
            ready: r.gateway && r.commands && r.redis && !r.draining,
            ..r
        }
    }

    /// The ledger in a word, for `/readyz` (it never makes the instance unready: rows wait in
    /// Redis while Postgres is away).
    fn ledger_state(&self) -> &'static str {
        match &self.ledger {
            None => "off",
            Some(l) => {
                let s = l.writer().stats();
                if !l.writer().schema_ready() {
                    "waiting_for_schema"
                } else if s.postgres_failing {
                    "postgres_unreachable"
                } else {
                    "on"
                }
            }
        }
    }

    pub fn sample(&self) -> ClusterSample {
        let m = self.cluster.metrics().snapshot();
        let jobs = self.jobs.stats();
        ClusterSample {
            claims_won: m.claims_won,
            claims_lost: m.claims_lost,
            degraded_decisions: m.degraded_decisions,
            takeovers_down: m.takeovers_down,
            takeovers_overload: m.takeovers_overload,
            redis_errors: m.redis_errors,
            degraded: self.cluster.is_degraded(),
            alive_instances: self.cluster.membership().alive_count(),
            queue_depth: jobs.queue_depth,
            in_flight: jobs.in_flight,
            jobs_finished: jobs.finished,
            jobs_rescued: jobs.rescued,
            jobs_moved: jobs.moved,
            jobs_requeued: jobs.requeued,
            providers: self.providers.stats(),
            ledger: self.ledger.as_ref().map(|l| l.writer().stats()),
            quota: self.quotas.as_ref().map(|q| {
                use std::sync::atomic::Ordering::Relaxed;
                crate::metrics::QuotaSample {
                    degraded: q.is_degraded(),
                    degraded_decisions: q.stats.degraded_decisions.load(Relaxed),
                    refunds: q.stats.refunds.load(Relaxed),
                    drift: q.stats.drift.load(Relaxed),
                }
            }),
            health: self.providers.health().iter().map(|h| h.view()).collect(),
        }
    }
}

#[derive(serde::Serialize)]
pub struct Readiness {
    pub ready: bool,
    pub gateway: bool,
    pub commands: bool,
    pub redis: bool,
    pub redis_degraded: bool,
    pub draining: bool,
    /// Instances alive in this instance's snapshot (lets a test wait for a converged view).
    pub alive_instances: usize,
    /// Of those, the ones taking new users (not draining). An instance drains until every
    /// shard is up and says so in its next heartbeat, so a peer's view has converged once this
    /// equals the instance count: what a test waits for before its first interaction.
    pub serving_instances: usize,
    /// The usage ledger: `off` (no `DATABASE_URL`), `waiting_for_schema` (Postgres not
    /// reached yet; rows wait in Redis), `postgres_unreachable` (writes failing; rows wait) or
    /// `on`. Never makes the instance unready.
    pub ledger: &'static str,
    /// The shards this instance runs, and how many of them are up.
    pub shards: u32,
    pub shards_up: u32,
    /// What a shard's IDENTIFY waits for (`backoff`, `bucket`, `reserve`, `budget`, `local`),
    /// and the same for a person.
    pub waiting: Option<&'static str>,
    pub detail: Option<String>,
}

pub fn router(probe: Probe) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(probe)
}

async fn readyz(State(probe): State<Probe>) -> impl IntoResponse {
    let r = probe.readiness();
    let status = if r.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(r))
}

async fn metrics(State(probe): State<Probe>) -> impl IntoResponse {
    let body = probe.metrics.render(&probe.sample());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}

/// Binds `addr` (failing fast if it is taken) and serves until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    probe: Probe,
    shutdown: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on HTTP_BIND={addr}: {e}"))?;
    tracing::info!(%addr, "serving /healthz /readyz /metrics");
    Ok(tokio::spawn(async move {
        let result = axum::serve(listener, router(probe))
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await;
        if let Err(e) = result {
            tracing::warn!("HTTP server stopped: {e}");
        }
    }))
}

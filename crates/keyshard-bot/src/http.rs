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
use crate::metrics::{ClusterSample, Metrics};

/// What the HTTP endpoints read.
#[derive(Clone)]
pub struct Probe {
    pub state: Arc<EdgeState>,
    pub cluster: Cluster,
    pub jobs: Jobs,
    pub providers: Providers,
    pub metrics: Arc<Metrics>,
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
            redis_seen: Arc::default(),
        }
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
            ready: false,
        };
        Readiness {
            ready: r.gateway && r.commands && r.redis && !r.draining,
            ..r
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
            providers: self.providers.stats(),
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

//! `run(config, shutdown)`: one keyshard instance from start to graceful stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use keyshard_cluster::Cluster;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::edge::{self, Data, EdgeState, DRAIN_TIMEOUT};
use crate::http::{self, Probe};
use crate::metrics::Metrics;

/// Runs the instance until `shutdown` fires, then drains: it stops claiming (peers see the
/// draining flag at once and take its users), finishes the interactions in hand, deletes its
/// heartbeat and closes the gateway session.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    tracing::info!(
        instance = config.instance_id,
        of = config.instance_count,
        cluster = %config.cluster_name,
        "starting keyshard instance"
    );
    let cluster = Cluster::new(config.cluster()).context("cluster setup")?;
    // The cluster loops outlive the gateway session: the heartbeat must keep saying
    // "draining" until the in-flight work is done.
    let cluster_stop = CancellationToken::new();
    let cluster_loops = cluster.spawn(cluster_stop.clone());

    let state = Arc::new(EdgeState::default());
    let metrics = Arc::new(Metrics::default());
    let http_stop = CancellationToken::new();
    let http_task = http::serve(
        config.http_bind,
        Probe::new(state.clone(), cluster.clone(), metrics.clone()),
        http_stop.clone(),
    )
    .await?;

    let data = Data {
        config: config.clone(),
        cluster: cluster.clone(),
        metrics,
        state: state.clone(),
    };
    let mut client = edge::build_client(data).await?;
    let shard_manager = client.shard_manager.clone();
    let mut gateway = tokio::spawn(async move { client.start().await });

    let gateway_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        result = &mut gateway => Some(result),
    };

    tracing::info!("draining: no new interactions, finishing the ones in hand");
    state.draining.store(true, Ordering::Release);
    cluster.set_draining(true);
    let started = Instant::now();
    while state.in_flight.load(Ordering::Acquire) > 0 && started.elapsed() < DRAIN_TIMEOUT {
        // Interactions finish in milliseconds to seconds; a short poll keeps shutdown prompt
        // without another notification path through poise.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let left = state.in_flight.load(Ordering::Acquire);
    if left > 0 {
        tracing::warn!(left, "drain timeout: leaving with interactions in hand");
    }
    cluster_stop.cancel();
    let _ = cluster_loops.await;
    cluster.leave().await;
    shard_manager.shutdown_all().await;
    http_stop.cancel();
    let _ = http_task.await;

    match gateway_result {
        None => {
            tracing::info!("stopped");
            Ok(())
        }
        Some(Ok(Ok(()))) => anyhow::bail!("the gateway session ended unexpectedly"),
        Some(Ok(Err(e))) => Err(anyhow::anyhow!(
            "the Discord client stopped: {}",
            crate::redact::redact(&e.to_string())
        )),
        Some(Err(join)) => Err(anyhow::anyhow!("the Discord client task failed: {join}")),
    }
}

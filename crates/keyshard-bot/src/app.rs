//! `run(config, shutdown)`: one keyshard instance from start to graceful stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use keyshard_cluster::{
    publish_info, run_every, Cluster, IdentifyQueue, JobKind, Jobs, Memory, Quotas, RequestsPerDay,
    Stats,
};
use keyshard_providers::Providers;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::context::{Data, EdgeState};
use crate::daily_store::ClusterDailyStore;
use crate::edge::{self, DRAIN_TIMEOUT};
use crate::gateway::relay::{self, Relay};
use crate::gateway::{self, DiscordBudget};
use crate::http::{self, Probe};
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use crate::waiting::WaitingEdits;
use crate::work::{Catalog, WorkTiming, Worker, WorkerSetup};

/// How often the instance publishes its remaining key budget for `/로드밸런서` and `/성능`,
/// and how long a published budget stays (a dead instance's budget disappears with it).
const INFO_EVERY: Duration = Duration::from_secs(5);
const INFO_TTL: Duration = Duration::from_secs(15);

/// Runs the instance until `shutdown` fires, then drains: it stops claiming (peers see the
/// draining flag at once and take its users), finishes the interactions in hand, deletes its
/// heartbeat and closes every shard's session (a close handshake each, all at once). Queued
/// jobs stay in its stream: a restarted instance resumes them, and a peer rescues them if it
/// does not come back.
///
/// Every shard IDENTIFYs through the cluster's queue (`gateway::relay`); until all of them are
/// up the instance is draining in its heartbeat, so peers answer its users.
///
/// Long because it is the instance's life in order: every part started, the gateway served,
/// then every part stopped in the order the drain needs (work, then the ledger, then the
/// heartbeat, then the sessions); the order is the point, and it reads top to bottom. The
/// steps with logic of their own are the functions below.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let config = Arc::new(config);
    tracing::info!(
        instance = config.instance_id,
        of = config.instance_count,
        cluster = %config.cluster_name,
        "starting keyshard instance"
    );
    let cluster = Cluster::new(config.cluster()).context("cluster setup")?;
    // Draining until every shard is up (`follow_shards`): an instance without its gateway
    // sessions sees none of its users' interactions, so peers must take them from the first
    // heartbeat on.
    cluster.set_draining(true);
    // The cluster loops outlive the gateway session: the heartbeat must keep saying
    // "draining" until the in-flight work is done.
    let cluster_stop = CancellationToken::new();
    let cluster_loops = cluster.spawn(cluster_stop.clone());

    // Requests per day go through the cluster's one Redis connection (`{c}:rpd:…`).
    let daily_store = ClusterDailyStore(RequestsPerDay::new(&cluster));
    let providers = Providers::new(
        config.openai.clone(),
        config.minimax.clone(),
        config.stability.clone(),
        Some(Arc::new(daily_store)),
    )
    .map_err(|e| anyhow::anyhow!("provider setup: {e}"))?;
    let jobs = Jobs::new(&cluster);
    // A job waiting past half its command's maximum goes first, oldest first.
    for kind in JobKind::ALL {
        jobs.set_max_wait(kind, config.max_wait.of(kind));
    }
    let stats = Stats::new(&cluster);
    let quotas = Quotas::new(&cluster);
    let work_stop = CancellationToken::new();
    let stats_task = stats.spawn(work_stop.clone());

    let state = Arc::new(EdgeState::default());
    let metrics = Arc::new(Metrics::default());
    // The ledger's loops outlive the work: the rows of the last answers are recorded after
    // them, and its stop writes what is left.
    let ledger_stop = CancellationToken::new();
    let (ledger, ledger_tasks) = start_ledger(&config, &cluster, &metrics, &ledger_stop)?;
    let http_stop = CancellationToken::new();
    let http_task = http::serve(
        config.http_bind,
        Probe::new(
            state.clone(),
            cluster.clone(),
            jobs.clone(),
            providers.clone(),
            metrics.clone(),
        )
        .with_ledger(ledger.clone())
        .with_quotas(quotas.clone()),
        http_stop.clone(),
    )
    .await?;

    let data = Data {
        config: config.clone(),
        cluster: cluster.clone(),
        jobs: jobs.clone(),
        stats: stats.clone(),
        providers: providers.clone(),
        metrics,
        state: state.clone(),
        ledger: ledger.clone(),
        quotas: quotas.clone(),
    };
    // The overrides cache and the reconciliation against the ledger (with a ledger only).
    let quota_tasks = crate::quota::spawn_loops(data.clone(), work_stop.clone());

    // The gateway: the shard plan from Discord, the cluster's IDENTIFY queue, the relay every
    // shard connects through, and one client per shard.
    let Gateway {
        shards,
        queue,
        relay,
        mut clients,
    } = start_gateway(&config, &cluster, &state, data).await?;
    let serving_task = tokio::spawn(follow_shards(
        state.clone(),
        cluster.clone(),
        queue.clone(),
        work_stop.clone(),
    ));

    // Honest waiting: the waiting replies edited with their place and expected wait.
    let waiting = WaitingEdits::new(jobs.clone(), clients[0].http.clone(), config.instance_id);
    let waiting_task = waiting.spawn(work_stop.clone());
    let worker = Worker::new(
        clients[0].http.clone(),
        providers.clone(),
        Memory::new(&cluster, config.chat_memory_turns, config.chat_memory_ttl),
        stats.clone(),
        WorkerSetup {
            instance: config.instance_id,
            instance_count: config.instance_count,
            timing: WorkTiming {
                video_poll: config.video_poll,
                ..WorkTiming::default()
            },
            catalog: Catalog::from_config(&config),
            ledger,
            quotas: quotas.clone(),
            waiting: Some(waiting),
        },
    );
    let worker_tasks = jobs.spawn(
        Arc::new(worker),
        &Worker::slots(&providers),
        work_stop.clone(),
    );
    let health_task = tokio::spawn(crate::key_health::run(
        cluster.clone(),
        providers.clone(),
        jobs.clone(),
        work_stop.clone(),
    ));
    let info_task = tokio::spawn(publish_budget(
        cluster.clone(),
        providers.clone(),
        state.clone(),
        work_stop.clone(),
    ));

    let shard_managers: Vec<_> = clients.iter().map(|c| c.shard_manager.clone()).collect();
    let mut gateways = tokio::task::JoinSet::new();
    for (shard, mut client) in clients.drain(..).enumerate() {
        let total = shards;
        gateways.spawn(async move { client.start_shard(shard as u32, total).await });
    }

    let gateway_result = tokio::select! {
        _ = shutdown.cancelled() => None,
        Some(result) = gateways.join_next() => Some(result),
    };

    tracing::info!("draining: no new interactions, finishing the ones in hand");
    state.draining.store(true, Ordering::Release);
    cluster.set_draining(true);
    finish_in_hand(&state, &jobs).await;
    work_stop.cancel();
    for t in worker_tasks {
        let _ = t.await;
    }
    let _ = info_task.await;
    let _ = waiting_task.await;
    let _ = health_task.await;
    let _ = stats_task.await;
    for t in quota_tasks {
        let _ = t.await;
    }
    // Every answer is in: the writer pushes and writes what it holds, within a few seconds.
    ledger_stop.cancel();
    for t in ledger_tasks {
        let _ = t.await;
    }
    let _ = serving_task.await;
    cluster_stop.cancel();
    let _ = cluster_loops.await;
    cluster.leave().await;
    close_gateway(&shard_managers, &relay).await;
    gateways.abort_all();
    if gateway_result.is_none() {
        // A clean stop: the next start of this instance is a normal one, not a crash's.
        if let Err(e) = queue.clear_restarts().await {
            tracing::debug!(error = %e, "could not clear the restart count");
        }
    }
    http_stop.cancel();
    let _ = http_task.await;

    outcome(gateway_result)
}

/// The gateway as this instance runs it: how many shards, the cluster's IDENTIFY queue, the
/// relay every shard connects through, and one serenity client per shard (not started yet).
struct Gateway {
    shards: u32,
    queue: IdentifyQueue,
    relay: Relay,
    clients: Vec<poise::serenity_prelude::Client>,
}

/// Reads the shard plan from Discord, seeds the cluster's IDENTIFY queue with the day's
/// session budget, counts this start for the restart backoff, and builds the relay and the
/// clients.
async fn start_gateway(
    config: &Config,
    cluster: &Cluster,
    state: &Arc<EdgeState>,
    data: Data,
) -> anyhow::Result<Gateway> {
    let discord = Arc::new(edge::http(config));
    let plan = gateway::read_plan(&discord, config.gateway.shards).await?;
    tracing::info!(
        shards = plan.shards,
        recommended = plan.recommended,
        remaining = plan.budget.remaining,
        max_concurrency = plan.budget.max_concurrency,
        "gateway plan"
    );
    state.shards.plan(plan.shards);
    let queue = IdentifyQueue::new(
        cluster,
        config.gateway.identify,
        config.gateway.restart,
        Arc::new(DiscordBudget(discord.clone())),
    );
    if let Err(e) = queue.seed(plan.budget).await {
        tracing::warn!(error = %e, "could not store the session start limit in Redis");
    }
    match queue.register_start().await {
        Ok((n, delay)) if !delay.is_zero() => tracing::warn!(
            starts_in_a_row = n,
            "restarted without a clean stop: first IDENTIFY in {delay:?} (restart backoff)"
        ),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "could not count this start in Redis: no restart backoff")
        }
    }
    state.shards.set_queue(queue.clone());
    // The edge's sieve keeps, in the relay, the interactions this instance only waits for.
    let sieve = edge::Sieve::new(data.clone());
    let relay = Relay::start(
        plan.url.clone(),
        Arc::new(queue.clone()),
        state.shards.clone(),
        Some(Arc::new(sieve.clone())),
    )
    .await
    .context("starting the gateway relay")?;
    let clients = edge::build_clients(data, plan.shards, &relay.url(), &sieve).await?;
    state
        .shards
        .set_managers(clients.iter().map(|c| c.shard_manager.clone()).collect());
    Ok(Gateway {
        shards: plan.shards,
        queue,
        relay,
        clients,
    })
}

/// Waits until the interactions and jobs in hand are done, at most [`DRAIN_TIMEOUT`].
async fn finish_in_hand(state: &EdgeState, jobs: &Jobs) {
    let started = Instant::now();
    while (state.in_flight.load(Ordering::Acquire) > 0 || jobs.stats().in_flight > 0)
        && started.elapsed() < DRAIN_TIMEOUT
    {
        // Interactions and running jobs finish in milliseconds to seconds; a short poll keeps
        // shutdown prompt without another notification path through poise and the workers.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = state.in_flight.load(Ordering::Acquire) as u64 + jobs.stats().in_flight;
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout: leaving with work in hand (a peer or a restart finishes it)"
        );
    }
}

/// The instance's exit: a requested stop is `Ok`, a gateway that ended by itself an error.
fn outcome(
    gateway_result: Option<
        Result<Result<(), poise::serenity_prelude::Error>, tokio::task::JoinError>,
    >,
) -> anyhow::Result<()> {
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

/// The ledger handle (`None` when off) and the tasks to wait for at shutdown.
type LedgerParts = (Option<Arc<Ledger>>, Vec<tokio::task::JoinHandle<()>>);

/// The usage ledger, when `DATABASE_URL` is set: the pool (connecting on first use), the
/// writer, the migrations applied in the background under the advisory lock (the instance
/// serves Discord while Postgres is down; the writer holds its rows in Redis until the schema
/// is there), and the pruner once it is. Without `DATABASE_URL` the ledger is off, said once
/// here and in `/readyz`.
fn start_ledger(
    config: &Config,
    cluster: &Cluster,
    metrics: &Arc<Metrics>,
    stop: &CancellationToken,
) -> anyhow::Result<LedgerParts> {
    let Some(cfg) = &config.ledger else {
        tracing::warn!(
            "DATABASE_URL is not set: the usage ledger is off (no usage rows, /사용량 unavailable)"
        );
        return Ok((None, Vec::new()));
    };
    tracing::info!(database = %cfg.redacted_url(), "usage ledger on");
    let ledger = Arc::new(
        Ledger::new(cluster, cfg, metrics.clone())
            .map_err(|e| anyhow::anyhow!("usage ledger setup: {e}"))?,
    );
    let (migrated_tx, migrated_rx) = tokio::sync::oneshot::channel::<()>();
    let migrator = {
        let (pool, stop, retention) = (ledger.pool().clone(), stop.clone(), cfg.retention);
        tokio::spawn(async move {
            if keyshard_ledger::migrate_until_done(&pool, &stop).await {
                let _ = migrated_tx.send(());
                // Retention runs once the schema is there; it stops with the ledger.
                let _ = keyshard_ledger::spawn_pruner(pool, retention, stop).await;
            }
        })
    };
    let writer = ledger.writer().spawn_when(stop.clone(), async move {
        if migrated_rx.await.is_err() {
            // Dropped without a send: shutdown came first (the writer's gate sees it too),
            // and the schema was never applied.
            std::future::pending::<()>().await;
        }
    });
    Ok((Some(ledger), vec![migrator, writer]))
}

/// How long the shards' close handshakes may take at a stop: each is one round trip through
/// the relay to Discord and back (the relay answers itself after `CLOSE_ECHO`), all shards at
/// once. Longer than that, a stuck runner is left behind rather than hold up a rolling restart.
const SHARD_CLOSE: Duration = Duration::from_secs(3);

/// Closes every shard: serenity's runners send their close frames through the relay (every
/// shard at once, one client each), then the relay ends whatever is still open.
async fn close_gateway(managers: &[Arc<poise::serenity_prelude::ShardManager>], relay: &Relay) {
    let all = futures::future::join_all(managers.iter().map(|m| m.shutdown_all()));
    if tokio::time::timeout(SHARD_CLOSE, all).await.is_err() {
        tracing::warn!("shards still closing after {SHARD_CLOSE:?}; leaving");
    }
    relay.close_all(relay::CLOSE_ECHO).await;
}

/// How long every shard must stay up before this start counts as stable and its restart count
/// is cleared: a process that crashes within ten minutes of its start, again and again, is
/// crash-looping and keeps backing off (at most 144 starts a day); one that ran longer and
/// then crashed restarts without waiting (Kubernetes resets its CrashLoopBackOff after ten
/// minutes too).
const STABLE_AFTER: Duration = Duration::from_secs(600);

/// Follows the shard table until `stop`: the instance serves (its heartbeat is not draining,
/// `/readyz` counts the gateway ready) only while every shard is up, since with one down it
/// misses that shard's interactions and peers must answer its users; and once every shard has
/// stayed up for [`STABLE_AFTER`], the restart count is cleared.
async fn follow_shards(
    state: Arc<EdgeState>,
    cluster: Cluster,
    queue: IdentifyQueue,
    stop: CancellationToken,
) {
    let mut all_up = state.shards.watch_all_up();
    let mut stable_cleared = false;
    loop {
        let up = *all_up.borrow_and_update();
        state.gateway_ready.store(up, Ordering::Release);
        if !state.is_draining() {
            cluster.set_draining(!up);
        }
        let stable = async {
            if up && !stable_cleared {
                tokio::time::sleep(STABLE_AFTER).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = all_up.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = stable => {
                stable_cleared = true;
                match queue.clear_restarts().await {
                    Ok(()) => tracing::debug!("stable: restart count cleared"),
                    Err(e) => tracing::debug!(error = %e, "could not clear the restart count"),
                }
            }
        }
    }
}

/// Publishes the remaining key budget and the shards (up, latency, what an IDENTIFY waits for)
/// every [`INFO_EVERY`] until `stop` (a failed publish is logged at debug level by `run_every`
/// and tried again on the next tick).
async fn publish_budget(
    cluster: Cluster,
    providers: Providers,
    state: Arc<EdgeState>,
    stop: CancellationToken,
) {
    run_every("key budget", INFO_EVERY, stop, None, move || {
        let (cluster, providers, state) = (cluster.clone(), providers.clone(), state.clone());
        async move {
            let shards = state.shards.views().await;
            let info = serde_json::json!({
                "budget": providers.budget(),
                "health": providers.health().iter().map(|h| h.view()).collect::<Vec<_>>(),
                "gateway": crate::shards::published(&shards),
            });
            publish_info(&cluster, &info, INFO_TTL).await
        }
    })
    .await;
}

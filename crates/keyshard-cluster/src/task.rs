//! The one shape every background loop has: a name, an interval, a shutdown token; a failed
//! tick is logged and the loop goes on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::ClusterError;

/// Runs `tick` every `interval` (the first tick at once) until `shutdown` is cancelled.
/// `wake`, when given, runs a tick early (e.g. to publish a state change at once).
///
/// A failing tick is logged at debug level only: the mechanism logs the degraded-mode
/// transitions once at warn/info, and a loop failing every 250 ms while Redis is down must not
/// flood the log.
pub(crate) async fn run_every<F, Fut>(
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    wake: Option<Arc<Notify>>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ClusterError>>,
{
    let mut ticker = tokio::time::interval(interval);
    // After a slow tick (Redis timing out) start counting afresh instead of firing a burst of
    // catch-up ticks at a Redis that is struggling.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    tracing::debug!(task = name, ?interval, "background loop started");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
            // `notify_one` keeps a permit when nobody waits, so a wake-up sent while a tick
            // runs is not lost: it starts the next tick at once.
            _ = woken(&wake) => {}
        }
        let result = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            r = tick() => r,
        };
        if let Err(e) = result {
            tracing::debug!(task = name, error = %e, "tick failed; retrying next interval");
        }
    }
    tracing::debug!(task = name, "background loop stopped");
}

async fn woken(wake: &Option<Arc<Notify>>) {
    match wake {
        Some(n) => n.notified().await,
        None => std::future::pending().await,
    }
}

//! The one shape every background loop has: a name, an interval, a shutdown token; a failed
//! tick is logged and the loop goes on.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

/// Runs `tick` every `interval` (the first tick at once) until `shutdown` is cancelled.
/// Public so the loops of crates built on this one (the ledger writer) keep the same shape.
/// `wake`, when given, runs a tick early (e.g. to publish a state change at once).
///
/// A failing tick is logged at debug level only: the mechanism logs the degraded-mode
/// transitions once at warn/info, and a loop failing every 250 ms while Redis is down must not
/// flood the log.
pub async fn run_every<F, Fut, E>(
    name: &'static str,
    interval: Duration,
    shutdown: CancellationToken,
    wake: Option<Arc<Notify>>,
    mut tick: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ClusterError;
    use std::sync::atomic::{AtomicU32, Ordering};

    // Paused time: the loop's interval is driven by Tokio's clock, so the test needs no
    // real waiting and the tick counts are exact.
    #[tokio::test(start_paused = true)]
    async fn failed_ticks_do_not_stop_the_loop_and_shutdown_does() {
        let ticks = Arc::new(AtomicU32::new(0));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_every(
            "test",
            Duration::from_millis(100),
            shutdown.clone(),
            None,
            {
                let ticks = ticks.clone();
                move || {
                    let n = ticks.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n.is_multiple_of(2) {
                            Err(ClusterError::InvalidConfig("boom".into()))
                        } else {
                            Ok(())
                        }
                    }
                }
            },
        ));
        // Ticks at 0, 100, ..., 500 ms: six, half of them failing.
        tokio::time::sleep(Duration::from_millis(550)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 6);
        shutdown.cancel();
        task.await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(ticks.load(Ordering::SeqCst), 6, "no tick after shutdown");
    }

    #[tokio::test(start_paused = true)]
    async fn a_wake_up_runs_a_tick_at_once() {
        let ticks = Arc::new(AtomicU32::new(0));
        let wake = Arc::new(Notify::new());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run_every(
            "test",
            Duration::from_secs(10),
            shutdown.clone(),
            Some(wake.clone()),
            {
                let ticks = ticks.clone();
                move || {
                    ticks.fetch_add(1, Ordering::SeqCst);
                    async { Ok::<(), ClusterError>(()) }
                }
            },
        ));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            1,
            "the first tick runs at once"
        );
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(
            ticks.load(Ordering::SeqCst),
            2,
            "woken long before the 10 s interval"
        );
        shutdown.cancel();
        task.await.unwrap();
    }
}

//! The instances' `/readyz`, watched from the simulator's side for as long as the service
//! runs: whether each instance is ready, how many instances its own view sees alive, and every
//! change (a [`Transition`]), which closes the down interval a kill or stop note opened.
//!
//! The instances are reached by the URL template given to `serve` (`http://keyshard-{n}:8080`,
//! compose's service names), so a recreated container with a new address is found again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::notes::Transition;

/// How often each instance is probed. A restart takes seconds (a process start, a gateway
/// session, command registration), so a quarter second catches the down time of any restart,
/// while 4 × 4 requests a second cost the instances nothing.
pub const PROBE_EVERY: Duration = Duration::from_millis(250);

/// One probe's time budget: a healthy instance answers in a millisecond; one that needs longer
/// is busy or gone, and counts as not ready (docker's own healthcheck allows 5 s, but it
/// decides health, not the moment an instance came back).
const PROBE_BUDGET: Duration = Duration::from_secs(1);

/// The last probe of one instance.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Probe {
    pub ready: bool,
    /// `alive_instances` from the `/readyz` body: instances alive in its own view.
    pub alive_instances: Option<u64>,
}

#[derive(Default)]
struct Inner {
    last: Vec<Option<Probe>>,
    transitions: Vec<Transition>,
}

/// The watcher's findings, shared with the runs.
#[derive(Clone)]
pub struct Readiness {
    inner: Arc<Mutex<Inner>>,
}

impl Readiness {
    /// Starts one probe loop per instance (`url_template` with `{n}` replaced by 1..=N), until
    /// `stop`.
    pub fn watch(instances: u32, url_template: &str, stop: CancellationToken) -> Readiness {
        let readiness = Readiness {
            inner: Arc::new(Mutex::new(Inner {
                last: vec![None; instances as usize],
                transitions: Vec::new(),
            })),
        };
        // Pooled connections would outlive a recreated container; every probe connects anew.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .timeout(PROBE_BUDGET)
            .build()
            .expect("building a reqwest client with an installed crypto provider");
        for n in 1..=instances {
            let url = format!(
                "{}/readyz",
                url_template
                    .replace("{n}", &n.to_string())
                    .trim_end_matches('/')
            );
            tokio::spawn(probe_loop(
                n,
                url,
                client.clone(),
                readiness.clone(),
                stop.clone(),
            ));
        }
        readiness
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, instance: u32, probe: Probe, at: Instant) {
        let mut inner = self.lock();
        let slot = &mut inner.last[(instance - 1) as usize];
        let changed = slot.is_none_or(|p| p.ready != probe.ready);
        *slot = Some(probe);
        if changed {
            inner.transitions.push(Transition {
                instance,
                ready: probe.ready,
                at,
            });
            tracing::info!(
                instance,
                ready = probe.ready,
                "instance {}",
                if probe.ready { "ready" } else { "not ready" }
            );
        }
    }

    /// Every change so far, in time order.
    pub fn transitions(&self) -> Vec<Transition> {
        self.lock().transitions.clone()
    }

    /// The last probe of each instance (`None` before the first answer or failure).
    pub fn last(&self) -> Vec<Option<Probe>> {
        self.lock().last.clone()
    }
}

/// Instances not ready, or whose own view does not see all `n` alive, by number.
pub fn not_converged(last: &[Option<Probe>], n: u32) -> Vec<u32> {
    (1..=n)
        .filter(|&i| {
            !last
                .get((i - 1) as usize)
                .copied()
                .flatten()
                .is_some_and(|p| p.ready && p.alive_instances == Some(u64::from(n)))
        })
        .collect()
}

async fn probe_loop(
    instance: u32,
    url: String,
    client: reqwest::Client,
    readiness: Readiness,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let probe = match client.get(&url).send().await {
            Ok(resp) => {
                let ready = resp.status().is_success();
                let body = resp.json::<serde_json::Value>().await.ok();
                Probe {
                    ready,
                    alive_instances: body.and_then(|b| b["alive_instances"].as_u64()),
                }
            }
            Err(_) => Probe::default(),
        };
        readiness.record(instance, probe, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn converged_means_ready_and_seeing_everyone() {
        let p = |ready, alive| {
            Some(Probe {
                ready,
                alive_instances: alive,
            })
        };
        let last = [p(true, Some(3)), p(true, Some(2)), p(false, None)];
        assert_eq!(not_converged(&last, 3), vec![2, 3]);
        assert_eq!(not_converged(&last[..1], 3), vec![2, 3]);
        assert!(not_converged(&[p(true, Some(1))], 1).is_empty());
    }

    #[test]
    fn only_changes_are_transitions() {
        let r = Readiness {
            inner: Arc::new(Mutex::new(Inner {
                last: vec![None; 2],
                transitions: Vec::new(),
            })),
        };
        let t = Instant::now();
        let up = Probe {
            ready: true,
            alive_instances: Some(2),
        };
        r.record(1, Probe::default(), t);
        r.record(1, Probe::default(), t);
        r.record(1, up, t);
        r.record(1, up, t);
        r.record(2, up, t);
        let tr: Vec<(u32, bool)> = r
            .transitions()
            .iter()
            .map(|t| (t.instance, t.ready))
            .collect();
        assert_eq!(tr, vec![(1, false), (1, true), (2, true)]);
        assert_eq!(r.last()[0], Some(up));
    }
}

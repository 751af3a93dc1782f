//! Attach mode: the fakes as a long-lived service, for `keyshard` instances the simulator did
//! not start (the `keyshard-N` services of `docker-compose.multi.yml`, as operators run them).
//!
//! `keyshard-sim serve --control ADDR` starts a [`Service`]: the fake Discord and the fake
//! providers listening inside the compose network under the name they advertise (`sim`), a
//! watcher of every instance's `/readyz`, and a small control API. The instances connect to the
//! fakes through the env overlay the service writes ([`Service::env_overlay`]); the operator
//! script starts, kills, stops and restarts them through the Docker engine.
//!
//! The driver runs inside the service process, against the very fake Discord the instances
//! are connected to: a run's records never leave the process that holds them. `keyshard-sim
//! run --attach URL` is a thin client that asks for a run and prints what comes back.
//!
//! - [`control`]: the control API (`GET /env`, `POST /notes`, `POST /runs`) and its client.
//! - [`drive`]: one attached run: wait until every instance is ready → load → drain → report.
//! - [`notes`]: chaos done from outside, told with its time, and the down intervals it implies.
//! - [`watch`]: the instances' `/readyz`, probed for as long as the service runs.
//! - [`overlay`]: the env file in the shape the compose file reads.
//! - [`verdict`]: what a run fails on (exactly-once).

pub mod control;
pub mod drive;
pub mod notes;
pub mod overlay;
pub mod verdict;
pub mod watch;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::discord::{DiscordConfig, FakeDiscord};
use crate::judge::DEFAULT_OVERLOAD_WAIT;
use crate::providers::FakeProvidersConfig;
use crate::scenario::ProviderFakes;
use crate::wiring::ScenarioProviders;

pub use notes::{Note, Noted};

/// How the service is set up.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// `INSTANCE_COUNT`: the compose file's `keyshard-1` … `keyshard-N`.
    pub instances: u32,
    /// Where the fake Discord listens; the fake providers take the next port (or any free
    /// port when this one is 0).
    pub bind: SocketAddr,
    /// The host name the instances reach the fakes by (`sim`, the compose service).
    pub advertise: Option<String>,
    /// The cluster's Redis, where the heartbeats are read (`redis://redis:6379`).
    pub redis_url: String,
    /// `CLUSTER_NAME` written into the overlay, so the heartbeats are found under it.
    pub cluster_name: String,
    /// Each instance's HTTP address, `{n}` for its number (`http://keyshard-{n}:8080`).
    pub instance_url: String,
    /// `HEARTBEAT_MS` and `DEAD_AFTER_MS` written into the overlay: the operator defaults, so
    /// the rehearsal runs the timing operators run; the judge's lag follows from them.
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    /// `OVERLOAD_WAIT_SECS`, written into the overlay so the judge and the instances use one
    /// number.
    pub overload_wait: Duration,
}

impl ServiceConfig {
    pub fn new(instances: u32, bind: SocketAddr, redis_url: String) -> Self {
        Self {
            instances,
            bind,
            advertise: None,
            redis_url,
            cluster_name: "rehearse".into(),
            instance_url: "http://keyshard-{n}:8080".into(),
            // The bot's defaults (`keyshard-bot::config`).
            heartbeat_ms: 1_000,
            dead_after_ms: 3_000,
            overload_wait: DEFAULT_OVERLOAD_WAIT,
        }
    }
}

/// The running service: fakes, watcher, notes. Shared by the control API's handlers.
pub struct Service {
    cfg: ServiceConfig,
    discord: FakeDiscord,
    providers: Arc<dyn ProviderFakes>,
    readiness: watch::Readiness,
    notes: Mutex<Vec<Noted>>,
    /// One run at a time: two would share the fake's records and the instances' capacity.
    run_lock: Arc<tokio::sync::Mutex<()>>,
    stop: CancellationToken,
}

impl Service {
    /// Starts the fakes and the watcher.
    pub async fn start(cfg: ServiceConfig) -> anyhow::Result<Arc<Service>> {
        anyhow::ensure!(cfg.instances > 0, "the service needs at least one instance");
        let advertise = cfg.advertise.as_deref();
        let discord = FakeDiscord::start_on(DiscordConfig::default(), cfg.bind, advertise).await?;
        let mut providers_bind = cfg.bind;
        if providers_bind.port() != 0 {
            providers_bind.set_port(providers_bind.port() + 1);
        }
        let providers =
            ScenarioProviders::start_on(FakeProvidersConfig::default(), providers_bind, advertise)
                .await?;
        tracing::info!(
            discord = %discord.base_url(),
            providers = %providers.fakes().addr(),
            instances = cfg.instances,
            "fakes listening"
        );
        let stop = CancellationToken::new();
        let readiness = watch::Readiness::watch(cfg.instances, &cfg.instance_url, stop.clone());
        Ok(Arc::new(Service {
            cfg,
            discord,
            providers: providers.shared(),
            readiness,
            notes: Mutex::new(Vec::new()),
            run_lock: Arc::new(tokio::sync::Mutex::new(())),
            stop,
        }))
    }

    pub fn config(&self) -> &ServiceConfig {
        &self.cfg
    }

    pub fn discord(&self) -> &FakeDiscord {
        &self.discord
    }

    /// Everything instance `k` needs to run against the fakes (before compose adds its own).
    pub fn instance_env(&self, k: u32) -> Vec<(String, String)> {
        let c = &self.cfg;
        let mut env = vec![
            (
                "DISCORD_TOKEN".to_string(),
                crate::cluster::SIM_DISCORD_TOKEN.to_string(),
            ),
            ("INSTANCE_COUNT".into(), c.instances.to_string()),
            ("CLUSTER_NAME".into(), c.cluster_name.clone()),
            (
                "ADMIN_USER_IDS".into(),
                crate::cluster::ADMIN_USER_ID.to_string(),
            ),
            ("DISCORD_API_BASE".into(), self.discord.api_base(k)),
            ("HEARTBEAT_MS".into(), c.heartbeat_ms.to_string()),
            ("DEAD_AFTER_MS".into(), c.dead_after_ms.to_string()),
            (
                "OVERLOAD_WAIT_SECS".into(),
                c.overload_wait.as_secs_f64().to_string(),
            ),
        ];
        env.extend(self.providers.instance_env(k));
        env
    }

    /// The env file that points the compose services at this service ([`overlay::env_file`]).
    pub fn env_overlay(&self) -> anyhow::Result<String> {
        let envs: Vec<_> = (1..=self.cfg.instances)
            .map(|k| self.instance_env(k))
            .collect();
        overlay::env_file(
            &envs,
            &format!(
                "Written by keyshard-sim serve: the keyshard-N services against the fake Discord and\n\
                 fake providers at {} (a fake token and fake keys; nothing here is secret).",
                self.discord.base_url()
            ),
        )
    }

    /// Records chaos notes; a note without a time is stamped now.
    pub fn note(&self, notes: &[Note]) {
        let now = Instant::now();
        let unix = crate::discord::unix_ms();
        let mut all = self.notes.lock().unwrap_or_else(|e| e.into_inner());
        for n in notes {
            tracing::info!(note = %n, "chaos note");
            all.push(Noted::place(n, now, unix));
        }
        all.sort_by_key(|n| n.at);
    }

    /// The notes so far, in time order.
    pub fn notes(&self) -> Vec<Noted> {
        self.notes.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn providers(&self) -> &Arc<dyn ProviderFakes> {
        &self.providers
    }

    pub fn readiness(&self) -> &watch::Readiness {
        &self.readiness
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

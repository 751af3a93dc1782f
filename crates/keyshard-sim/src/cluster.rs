//! N real `keyshard` processes: their environment, readiness, SIGKILL / SIGTERM / restart, and
//! per-instance log files in a run directory.
//!
//! Children are spawned with `kill_on_drop`, and [`ProcessCluster`]'s own `Drop` kills them
//! too, so a panicking test or a failed scenario leaves no orphan instances behind.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use crate::discord::FakeDiscord;

/// The bot token every instance is given: one bot, N sessions (the fake accepts any token).
pub const SIM_DISCORD_TOKEN: &str = "sim-discord-token";

/// Extra environment for one instance, e.g. the fake providers' base URLs and that
/// instance's own fake keys: `instance → [(name, value)]`.
pub type InstanceEnv = Arc<dyn Fn(u32) -> Vec<(String, String)> + Send + Sync>;

/// Variables passed through from the simulator's own environment; everything else is cleared
/// so that an operator's real keys (`OPENAI_API_KEY_3`, …) never reach a simulated instance.
const PASSTHROUGH_ENV: &[&str] = &["PATH", "HOME", "TMPDIR", "LANG", "LC_ALL", "RUST_BACKTRACE"];

/// How often readiness is probed: an instance gets ready in well under a second on loopback,
/// and 50 ms adds little to a cluster start while not spinning.
const READY_PROBE_EVERY: Duration = Duration::from_millis(50);

/// What `keyshard` prints when its `HTTP_BIND` cannot be bound (see `keyshard_bot::http::serve`).
const BIND_FAILED: &str = "cannot listen on HTTP_BIND=";

/// The instances' `RUST_LOG` unless told otherwise: the bot's own default filter
/// (`keyshard-bot`'s `logging::DEFAULT_FILTER`). A bare `info` would also turn on serenity's
/// and poise's `info` spans, which format every gateway event they dispatch, a cost no
/// operator on the defaults pays: with 4 instances at 1,000 interactions/s a bare `info`
/// gave an ack p50 of 1.65 ms and p99 of 9.0 ms, this filter 1.20 and 6.1 ms.
pub const INSTANCE_LOG: &str = "info,serenity=warn,poise=warn";

/// How to start the instances.
#[derive(Clone)]
pub struct ProcessConfig {
    /// The `keyshard` binary.
    pub keyshard_bin: PathBuf,
    /// `INSTANCE_COUNT`.
    pub instances: u32,
    pub redis_url: String,
    /// `DATABASE_URL`: the usage ledger's Postgres; `None` runs the instances with the ledger
    /// off.
    pub database_url: Option<String>,
    /// `CLUSTER_NAME`: the Redis key prefix, unique per run so runs never see each other.
    pub cluster_name: String,
    /// Where `instance-{k}.log` files go.
    pub run_dir: PathBuf,
    pub admin_user_ids: Vec<u64>,
    /// `RUST_LOG` for the instances.
    pub rust_log: String,
    pub heartbeat_ms: u64,
    pub dead_after_ms: u64,
    pub overload_wait_secs: Option<f64>,
    /// Extra variables for every instance.
    pub env: Vec<(String, String)>,
    /// Extra variables per instance (the fake providers hook).
    pub instance_env: Option<InstanceEnv>,
    /// How long one instance may take to answer `/readyz` with 200.
    pub ready_deadline: Duration,
}

impl ProcessConfig {
    /// Defaults for a simulator run: logs at `info` (starts, stops, takeovers; nothing per
    /// interaction, so the ack path is not slowed), a fast heartbeat so a killed instance is
    /// noticed quickly (well inside the 3 s acknowledgement window), and a unique cluster name.
    pub fn new(keyshard_bin: PathBuf, instances: u32, redis_url: String, run_dir: PathBuf) -> Self {
        Self {
            keyshard_bin,
            instances,
            redis_url,
            database_url: None,
            cluster_name: format!("sim{}x{}", std::process::id(), crate::discord::unix_ms()),
            run_dir,
            admin_user_ids: vec![ADMIN_USER_ID],
            rust_log: INSTANCE_LOG.into(),
            heartbeat_ms: 250,
            dead_after_ms: 1_000,
            overload_wait_secs: None,
            env: Vec::new(),
            instance_env: None,
            ready_deadline: Duration::from_secs(30),
        }
    }
}

/// The admin user the simulator's instances are given (`ADMIN_USER_IDS`).
pub const ADMIN_USER_ID: u64 = 1_170_000_000_000_000_042;

/// What happened to a process, with when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProcessEventKind {
    Started,
    Ready,
    Killed,
    Terminated,
}

#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    pub instance: u32,
    pub kind: ProcessEventKind,
    pub at: Instant,
}

struct Instance {
    child: Option<Child>,
    http_bind: SocketAddr,
    log_path: PathBuf,
}

/// The running instances.
pub struct ProcessCluster {
    cfg: ProcessConfig,
    api_bases: Vec<String>,
    /// The fake Discord's IDENTIFY window, given to every instance as `IDENTIFY_WINDOW_MS` so
    /// the cluster's queue and the fake's rule are the same number.
    identify_window_ms: u64,
    instances: Vec<Instance>,
    events: Vec<ProcessEvent>,
    http: reqwest::Client,
}

impl ProcessCluster {
    /// Spawns every instance against `discord` and waits until all of them are ready.
    pub async fn start(cfg: ProcessConfig, discord: &FakeDiscord) -> anyhow::Result<Self> {
        let mut cluster = Self::launch(cfg, discord)?;
        for id in 1..=cluster.cfg.instances {
            cluster.wait_ready(id).await?;
        }
        Ok(cluster)
    }

    /// Spawns every instance against `discord` without waiting for any to be ready (for a
    /// test about an instance that does not get ready).
    pub fn launch(cfg: ProcessConfig, discord: &FakeDiscord) -> anyhow::Result<Self> {
        if !cfg.keyshard_bin.is_file() {
            bail!(
                "keyshard binary not found at {} (build it with `cargo build -p keyshard-bot`, or pass --keyshard-bin)",
                cfg.keyshard_bin.display()
            );
        }
        std::fs::create_dir_all(&cfg.run_dir)
            .with_context(|| format!("creating run dir {}", cfg.run_dir.display()))?;
        let mut cluster = ProcessCluster {
            api_bases: (0..=cfg.instances).map(|i| discord.api_base(i)).collect(),
            identify_window_ms: (discord.config().gateway.identify_window.as_millis() as u64)
                .max(1),
            instances: (1..=cfg.instances)
                .map(|id| Instance {
                    child: None,
                    http_bind: loopback_free_port(),
                    log_path: cfg.run_dir.join(format!("instance-{id}.log")),
                })
                .collect(),
            events: Vec::new(),
            http: crate::http_client(),
            cfg,
        };
        for id in 1..=cluster.cfg.instances {
            cluster.spawn(id)?;
        }
        Ok(cluster)
    }

    /// The number of instances.
    pub fn count(&self) -> u32 {
        self.cfg.instances
    }

    pub fn config(&self) -> &ProcessConfig {
        &self.cfg
    }

    fn slot(&mut self, id: u32) -> anyhow::Result<&mut Instance> {
        let count = self.cfg.instances;
        self.instances
            .get_mut((id as usize).wrapping_sub(1))
            .with_context(|| format!("no instance {id} (1..={count})"))
    }

    /// The environment instance `id` runs with (secrets are fake).
    pub fn env_for(&self, id: u32) -> Vec<(String, String)> {
        let inst = &self.instances[(id - 1) as usize];
        let c = &self.cfg;
        let mut env = vec![
            ("DISCORD_TOKEN".into(), SIM_DISCORD_TOKEN.into()),
            ("INSTANCE_ID".into(), id.to_string()),
            ("INSTANCE_COUNT".into(), c.instances.to_string()),
            ("REDIS_URL".into(), c.redis_url.clone()),
            ("CLUSTER_NAME".into(), c.cluster_name.clone()),
            (
                "DISCORD_API_BASE".into(),
                self.api_bases[id as usize].clone(),
            ),
            ("HTTP_BIND".into(), inst.http_bind.to_string()),
            (
                "ADMIN_USER_IDS".into(),
                c.admin_user_ids
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            ("RUST_LOG".into(), c.rust_log.clone()),
            // Logs go to a file: no colour codes in it (https://no-color.org).
            ("NO_COLOR".into(), "1".into()),
            ("HEARTBEAT_MS".into(), c.heartbeat_ms.to_string()),
            (
                "IDENTIFY_WINDOW_MS".into(),
                self.identify_window_ms.to_string(),
            ),
            ("DEAD_AFTER_MS".into(), c.dead_after_ms.to_string()),
            // A `.env.multi` in the working directory must not leak real settings in.
            (
                "KEYSHARD_ENV_FILE".into(),
                c.run_dir.join("no-env-file").display().to_string(),
            ),
        ];
        if let Some(w) = c.overload_wait_secs {
            env.push(("OVERLOAD_WAIT_SECS".into(), w.to_string()));
        }
        if let Some(url) = &c.database_url {
            env.push(("DATABASE_URL".into(), url.clone()));
        }
        // The run's own settings come last, so they win over the providers' defaults.
        if let Some(hook) = &c.instance_env {
            env.extend(hook(id));
        }
        env.extend(c.env.iter().cloned());
        env
    }

    /// Starts instance `id` (it must not be running).
    pub fn spawn(&mut self, id: u32) -> anyhow::Result<()> {
        let env = self.env_for(id);
        let bin = self.cfg.keyshard_bin.clone();
        let inst = self.slot(id)?;
        if inst.child.is_some() {
            bail!("instance {id} is already running");
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(&inst.log_path)
            .with_context(|| format!("opening {}", inst.log_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.env_clear();
        for key in PASSTHROUGH_ENV {
            if let Some(v) = std::env::var_os(key) {
                cmd.env(key, v);
            }
        }
        cmd.envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        inst.child = Some(child);
        self.events.push(ProcessEvent {
            instance: id,
            kind: ProcessEventKind::Started,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Polls `GET /readyz` until it answers 200; fails early when the process exits. An
    /// instance whose `HTTP_BIND` port was taken in the meantime is started again on another
    /// port (up to [`keyshard_testkit::PORT_ATTEMPTS`] in all).
    pub async fn wait_ready(&mut self, id: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + self.cfg.ready_deadline;
        let mut attempt = 1;
        let mut url = format!("http://{}/readyz", self.slot(id)?.http_bind);
        loop {
            let inst = self.slot(id)?;
            let log_path = inst.log_path.clone();
            match inst.child.as_mut().map(Child::try_wait) {
                None => bail!("instance {id} is not running"),
                Some(Ok(Some(status))) => {
                    inst.child = None;
                    // The exiting process's fatal error is its last line.
                    let port_taken = log_tail(&log_path, 1).contains(BIND_FAILED);
                    if port_taken && attempt < keyshard_testkit::PORT_ATTEMPTS {
                        attempt += 1;
                        inst.http_bind = loopback_free_port();
                        url = format!("http://{}/readyz", inst.http_bind);
                        self.spawn(id)?;
                        continue;
                    }
                    bail!(
                        "instance {id} exited during start ({status}); last log lines:\n{}",
                        log_tail(&log_path, 15)
                    )
                }
                _ => {}
            }
            let probe = self
                .http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if probe.is_ok_and(|r| r.status().is_success()) {
                self.events.push(ProcessEvent {
                    instance: id,
                    kind: ProcessEventKind::Ready,
                    at: Instant::now(),
                });
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "instance {id} was not ready within {:?}; last log lines:\n{}",
                    self.cfg.ready_deadline,
                    log_tail(&log_path, 15)
                );
            }
            tokio::time::sleep(READY_PROBE_EVERY).await;
        }
    }

    /// Waits until every running instance's `/readyz` says its own snapshot sees `alive`
    /// instances: a snapshot is refreshed inside the instance and is not visible in Redis, so
    /// this is how the first interactions avoid meeting a peer that has not yet seen the last
    /// starter.
    pub async fn wait_converged(&mut self, alive: usize, deadline: Duration) -> anyhow::Result<()> {
        let until = Instant::now() + deadline;
        for id in 1..=self.cfg.instances {
            if !self.is_running(id) {
                continue;
            }
            let url = format!("http://{}/readyz", self.slot(id)?.http_bind);
            loop {
                let seen = match self
                    .http
                    .get(&url)
                    .timeout(Duration::from_secs(1))
                    .send()
                    .await
                {
                    Ok(r) => r.json::<serde_json::Value>().await.ok().and_then(|v| {
                        // Serving (alive and not draining) where the instance says so.
                        v["serving_instances"]
                            .as_u64()
                            .or_else(|| v["alive_instances"].as_u64())
                    }),
                    Err(_) => None,
                };
                if seen == Some(alive as u64) {
                    break;
                }
                if Instant::now() >= until {
                    bail!("instance {id} never saw {alive} instances alive within {deadline:?} (last: {seen:?})");
                }
                tokio::time::sleep(READY_PROBE_EVERY).await;
            }
        }
        Ok(())
    }

    /// SIGKILL, like a crash, and reap the process.
    pub async fn kill(&mut self, id: u32) -> anyhow::Result<()> {
        let inst = self.slot(id)?;
        let Some(mut child) = inst.child.take() else {
            bail!("instance {id} is not running");
        };
        // Record the moment the signal goes out: from then on the primary counts as down.
        let at = Instant::now();
        child.start_kill().ok();
        child.wait().await.ok();
        self.events.push(ProcessEvent {
            instance: id,
            kind: ProcessEventKind::Killed,
            at,
        });
        Ok(())
    }

    /// SIGTERM and wait for a graceful exit (SIGKILL after `deadline`).
    pub async fn terminate(&mut self, id: u32, deadline: Duration) -> anyhow::Result<ExitStatus> {
        let inst = self.slot(id)?;
        let Some(mut child) = inst.child.take() else {
            bail!("instance {id} is not running");
        };
        let at = Instant::now();
        if let Some(pid) = child.id() {
            // std has no SIGTERM and the workspace forbids `unsafe` (libc::kill): `kill(1)`
            // is on every machine that runs the bot.
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            if !sent.is_ok_and(|s| s.success()) {
                tracing::warn!(instance = id, "kill -TERM failed; killing instead");
                child.start_kill().ok();
            }
        }
        let status = match tokio::time::timeout(deadline, child.wait()).await {
            Ok(status) => status?,
            Err(_) => {
                tracing::warn!(
                    instance = id,
                    "no exit after SIGTERM within {deadline:?}; SIGKILL"
                );
                child.start_kill().ok();
                child.wait().await?
            }
        };
        self.events.push(ProcessEvent {
            instance: id,
            kind: ProcessEventKind::Terminated,
            at,
        });
        Ok(status)
    }

    /// Kills instance `id` if it runs, starts it again, and waits until it is ready.
    pub async fn restart(&mut self, id: u32) -> anyhow::Result<()> {
        if self.is_running(id) {
            self.kill(id).await?;
        }
        self.spawn(id)?;
        self.wait_ready(id).await
    }

    /// Whether instance `id`'s process is running.
    pub fn is_running(&mut self, id: u32) -> bool {
        let Ok(inst) = self.slot(id) else {
            return false;
        };
        match inst.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                inst.child = None;
                false
            }
            None => false,
        }
    }

    /// The OS process id of instance `id`.
    pub fn pid(&self, id: u32) -> Option<u32> {
        self.instances
            .get((id as usize).wrapping_sub(1))?
            .child
            .as_ref()?
            .id()
    }

    /// `HTTP_BIND` of instance `id` (health, readiness, metrics).
    pub fn http_addr(&self, id: u32) -> Option<SocketAddr> {
        Some(self.instances.get((id as usize).wrapping_sub(1))?.http_bind)
    }

    /// Instance `id`'s log file.
    pub fn log_path(&self, id: u32) -> Option<PathBuf> {
        Some(
            self.instances
                .get((id as usize).wrapping_sub(1))?
                .log_path
                .clone(),
        )
    }

    /// Starts, readiness, kills and terminations so far, in order.
    pub fn events(&self) -> Vec<ProcessEvent> {
        self.events.clone()
    }

    /// Kills every instance still running.
    pub async fn shutdown(&mut self) {
        for inst in &mut self.instances {
            if let Some(mut child) = inst.child.take() {
                child.start_kill().ok();
                child.wait().await.ok();
            }
        }
    }
}

impl Drop for ProcessCluster {
    fn drop(&mut self) {
        for inst in &mut self.instances {
            if let Some(child) = inst.child.as_mut() {
                child.start_kill().ok();
            }
        }
    }
}

fn loopback_free_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], keyshard_testkit::free_port()))
}

/// The last `n` lines of a log file, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(no log at {}: {e})", path.display()),
    }
}

/// The `keyshard` binary next to the current executable (where cargo puts both).
pub fn default_keyshard_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    // Test binaries live in `target/<profile>/deps`; the binary is one level up.
    let candidates = [dir.join("keyshard"), dir.join("../keyshard")];
    candidates
        .iter()
        .find(|p| p.is_file())
        .cloned()
        .unwrap_or_else(|| candidates[0].clone())
}

//! One attached run: the instances are someone else's (compose services), so the run waits for
//! them rather than starting them, learns of chaos through notes rather than causing it, and
//! counts only the interactions it sent itself (the service's fake Discord lives on across
//! runs).
//!
//! Phases, as a scenario run's: ready (every instance's `/readyz` 200 and seeing all N alive,
//! N gateway sessions, N heartbeats in Redis) → load (open-loop Poisson arrivals, seeded) →
//! drain (every acknowledged interaction answered) → report (the judge with the notes'
//! down intervals and the heartbeats sampled during the run).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::notes::down_intervals;
use super::watch::not_converged;
use super::{verdict, Service};
use crate::discord::{InteractionRecord, RegisteredCommand};
use crate::judge::{Observations, OverloadRule};
use crate::report::{steady_window, Report, ReportInput, ScenarioSummary};
use crate::scenario::observe::{sample_heartbeats, HeartbeatReader, Samples};
use crate::scenario::{build_spec, make_users, Mix, Skew, UserPicker};

/// What `run --attach` asks for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRequest {
    pub users: u32,
    /// Interactions per second (open loop).
    pub rate: f64,
    /// Seconds of load, at least.
    pub duration_s: f64,
    /// The load goes on past `duration_s` until a note with this `what` arrives (the end of
    /// the operator's chaos schedule), for at most `max_extra_s` more.
    pub until_note: Option<String>,
    pub max_extra_s: f64,
    /// `ping=3,chat=3,…`; commands the instances did not register are left out.
    pub mix: String,
    /// `uniform` or `zipf:S`.
    pub skew: String,
    pub seed: u64,
    /// Seconds to wait for the last answers after the load.
    pub drain_s: f64,
    /// Seconds to wait for every instance to be ready before the load.
    pub ready_timeout_s: f64,
}

impl Default for RunRequest {
    fn default() -> Self {
        Self {
            users: 40,
            rate: 4.0,
            duration_s: 60.0,
            until_note: None,
            // A rolling restart of four instances takes about a minute on a loaded machine;
            // three cover a slow one without letting a hung schedule run forever.
            max_extra_s: 180.0,
            mix: "ping=1".into(),
            skew: "uniform".into(),
            seed: 1,
            drain_s: 120.0,
            ready_timeout_s: 180.0,
        }
    }
}

/// What a run tells its client as it goes, one JSON object per line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Still waiting for the instances before the load.
    Waiting { what: String },
    /// The first interaction goes out now (Unix ms): chaos times count from here.
    LoadStarted { unix_ms: u64 },
    /// Every few seconds while the load runs.
    Progress { line: String },
    /// The load is over; the answers are awaited.
    LoadDone { sent: u64, load_s: f64 },
    /// The end: the report, its text, and what breaks exactly-once (empty: nothing).
    Report {
        report: serde_json::Value,
        text: String,
        failures: Vec<String>,
    },
    /// The run could not be done.
    Error { message: String },
}

/// Where a run's events go; a closed channel (the client went away) is not an error here.
#[derive(Clone)]
pub struct Events(pub mpsc::UnboundedSender<Event>);

impl Events {
    fn send(&self, e: Event) {
        let _ = self.0.send(e);
    }
}

/// How often the heartbeats are read for the judge, as in a scenario run.
const SAMPLE_PERIOD: Duration = Duration::from_millis(100);

/// How often the readiness conditions are looked at while waiting: the watcher probes every
/// quarter second, so looking more often finds nothing new.
const READY_POLL: Duration = Duration::from_millis(250);

/// A progress line every 5 s: often enough that a run never looks stuck, rarely enough to read.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// How long the answers must stay quiet before the drain counts as done (a streamed answer
/// edits its reply several times), as in a scenario run.
const SETTLE: Duration = Duration::from_millis(500);

/// Runs `req` against the service's instances and returns the report. Long because it is
/// one attached run in order (wait for the instances, drive, wait for the chaos notes, drain,
/// judge), each phase reading what the one before left.
pub async fn run(svc: &Arc<Service>, req: &RunRequest, events: &Events) -> anyhow::Result<Report> {
    let mut mix: Mix = req.mix.parse()?;
    let skew: Skew = req.skew.parse()?;
    if req.users == 0 || !(req.rate.is_finite() && req.rate > 0.0) {
        bail!("a run needs at least one user and a positive rate");
    }
    let load = Duration::try_from_secs_f64(req.duration_s).context("duration_s")?;
    let n = svc.cfg.instances;
    wait_ready(svc, req, events).await?;
    let registered = narrow_mix(&mut mix, &svc.discord.commands())?;

    let stop = CancellationToken::new();
    let _stop_watchers = stop.clone().drop_guard();
    let samples = Samples::default();
    let reader = HeartbeatReader::new(&svc.cfg.redis_url, &svc.cfg.cluster_name, n)?;
    tokio::spawn(sample_heartbeats(
        reader,
        SAMPLE_PERIOD,
        samples.clone(),
        stop.clone(),
    ));
    // Only this run's interactions count: the fake's records (and counters) live as long as
    // the service.
    let first = svc.discord.inspect_records(<[InteractionRecord]>::len);
    let before_429 = svc.providers.provider_429();
    let before_unattributed = svc.discord.unattributed_messages().len();
    let before_unknown = svc.discord.unknown_routes().len();

    let mut rng = SmallRng::seed_from_u64(req.seed);
    let users = make_users(&mut rng, req.users);
    let picker = UserPicker::new(users.len(), skew);
    let start = Instant::now();
    events.send(Event::LoadStarted {
        unix_ms: crate::discord::unix_ms(),
    });
    tracing::info!(
        "load: {}/s for {:.0} s, mix {mix}",
        req.rate,
        req.duration_s
    );
    tokio::spawn(progress(
        svc.clone(),
        first,
        start,
        samples.clone(),
        events.clone(),
        stop.clone(),
    ));
    let hard_end = start + load + Duration::from_secs_f64(req.max_extra_s.max(0.0));
    let mut next = start;
    let mut last_sent = start;
    loop {
        let due = next >= start + load
            && req
                .until_note
                .as_ref()
                .is_none_or(|what| svc.notes().iter().any(|n| &n.what == what && n.at >= start));
        if due || next >= hard_end {
            break;
        }
        tokio::time::sleep_until(next.into()).await;
        let user = users[picker.pick(&mut rng)];
        let kind = mix.pick(&mut rng);
        let dm = rng.random_bool(0.1);
        let spec = build_spec(
            kind,
            registered.get(kind.name()),
            user,
            dm,
            &users,
            &mut rng,
        );
        last_sent = svc.discord.send_interaction(spec).sent_at;
        let u: f64 = rng.random::<f64>();
        next += Duration::from_secs_f64(-(1.0 - u).ln() / req.rate);
    }
    let load_s = last_sent.saturating_duration_since(start).as_secs_f64();
    let sent = svc.discord.inspect_records(|r| r.len() - first) as u64;
    events.send(Event::LoadDone { sent, load_s });
    tracing::info!(sent, "load done; waiting for the last answers");

    let drained = drain(svc, first, last_sent, req.drain_s).await;
    let finished = Instant::now();
    stop.cancel();

    let records = svc.discord.records().split_off(first);
    let notes: Vec<_> = svc
        .notes()
        .into_iter()
        .filter(|n| n.at >= start && n.at <= finished)
        .collect();
    let down = down_intervals(&notes, &svc.readiness.transitions());
    let samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let duration_s = (req.duration_s).max(load_s);
    let providers = &svc.providers;
    let report = Report::compute(&ReportInput {
        scenario: ScenarioSummary {
            instances: n,
            users: req.users,
            rate_per_s: req.rate,
            duration_s,
            mix: mix.to_string(),
            skew: skew.to_string(),
            seed: req.seed,
            chaos: notes.iter().map(|n| n.render(start)).collect(),
            noisy_user: None,
        },
        instances: n,
        noisy_user: None,
        records: &records,
        ack_window: svc.discord.config().ack_window,
        observed: Observations {
            down: &down,
            samples: &samples,
            // As in a scenario run: a decision rests on a view up to a heartbeat old, of
            // heartbeats written up to a heartbeat earlier, read up to a period later.
            lag: Duration::from_millis(svc.cfg.heartbeat_ms * 2) + SAMPLE_PERIOD,
            period: SAMPLE_PERIOD,
            overload: OverloadRule {
                max_wait: svc.cfg.overload_wait,
            },
        },
        start,
        end: finished,
        capacity_per_min: providers.capacity_per_min(&mix, n),
        provider_429: providers.provider_429().saturating_sub(before_429),
        lanes: {
            let (from, to) = steady_window(start, Duration::from_secs_f64(duration_s));
            providers.lane_use(&mix, n, from, to)
        },
        // Since the service started: a rehearsal's IDENTIFYs are its starts and restarts.
        gateway: (1..=n).map(|i| (i, svc.discord.gateway_stats(i))).collect(),
        // The instances were started by the operator before this run, so there is no start to
        // time here; the rehearsal reports how long they took to become healthy.
        ready_s: 0.0,
        // Since the service started, like `gateway`.
        command_puts: svc.discord.command_puts_total(),
        session_starts_left: svc.discord.session_start_limit().remaining,
        token_reset: svc.discord.token_reset(),
        unattributed_messages: svc
            .discord
            .unattributed_messages()
            .len()
            .saturating_sub(before_unattributed) as u64,
        unknown_routes: svc
            .discord
            .unknown_routes()
            .len()
            .saturating_sub(before_unknown) as u64,
        drain_timed_out: !drained,
        // The instances' ledger is the compose Postgres, which this process does not read (no
        // psql in the image); the rehearsal checks it from the host.
        ledger: None,
    });
    tracing::info!(
        failures = verdict::exactly_once(&report).len(),
        "run finished"
    );
    Ok(report)
}

/// Waits until every instance is ready and sees all N alive, has its gateway session, and has
/// its heartbeat in Redis; tells the client what it still waits for whenever that changes.
async fn wait_ready(svc: &Service, req: &RunRequest, events: &Events) -> anyhow::Result<()> {
    let n = svc.cfg.instances;
    let deadline = Instant::now() + Duration::try_from_secs_f64(req.ready_timeout_s)?;
    let mut reader = HeartbeatReader::new(&svc.cfg.redis_url, &svc.cfg.cluster_name, n)?;
    let mut told = String::new();
    loop {
        let mut missing = Vec::new();
        let not_ready = not_converged(&svc.readiness.last(), n);
        if !not_ready.is_empty() {
            missing.push(format!("not ready or not seeing all {n}: {not_ready:?}"));
        }
        let sessions = svc.discord.sessions();
        let without: Vec<u32> = (1..=n)
            .filter(|i| !sessions.iter().any(|s| s.instance == *i && s.connected))
            .collect();
        if !without.is_empty() {
            missing.push(format!("no gateway session: {without:?}"));
        }
        match reader.read().await {
            Ok(s) if s.alive_count() == n as usize => {}
            Ok(s) => missing.push(format!("heartbeats in Redis: {} of {n}", s.alive_count())),
            Err(e) => missing.push(format!("heartbeats unreadable: {e:#}")),
        }
        if missing.is_empty() {
            return Ok(());
        }
        let what = missing.join("; ");
        if Instant::now() >= deadline {
            bail!(
                "the instances were not ready within {} s: {what}",
                req.ready_timeout_s
            );
        }
        if what != told {
            events.send(Event::Waiting { what: what.clone() });
            told = what;
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

/// The registered commands by name; the mix loses those not registered (a rehearsal runs
/// whatever commands the image's bot has), and fails when none is left.
fn narrow_mix(
    mix: &mut Mix,
    commands: &[RegisteredCommand],
) -> anyhow::Result<HashMap<String, RegisteredCommand>> {
    let registered: HashMap<String, RegisteredCommand> = commands
        .iter()
        .filter(|c| c.guild_id.is_none())
        .map(|c| (c.name.clone(), c.clone()))
        .collect();
    mix.0.retain(|(k, _)| registered.contains_key(k.name()));
    if mix.0.is_empty() {
        let names: Vec<&String> = registered.keys().collect();
        bail!("none of the mix's commands is registered (registered: {names:?})");
    }
    Ok(registered)
}

/// Waits for the answers of this run's interactions (records from `first`), up to `drain_s`
/// after the last acknowledgement window closed: as a scenario run's drain, over this run's
/// records only.
async fn drain(svc: &Service, first: usize, last_sent: Instant, drain_s: f64) -> bool {
    let discord = &svc.discord;
    let deadline = Duration::from_secs_f64(drain_s.max(0.0));
    // Anything not acknowledged once the last window has closed is lost for good; the 50 ms
    // cover a callback in flight as the window closes.
    let windows_closed = last_sent + discord.config().ack_window + Duration::from_millis(50);
    tokio::time::sleep_until(windows_closed.into()).await;
    discord.drain(first, deadline, SETTLE).await
}

/// A progress line every few seconds: sent, acknowledged and answered so far in this run,
/// and what the last heartbeat sample shows.
async fn progress(
    svc: Arc<Service>,
    first: usize,
    start: Instant,
    samples: Samples,
    events: Events,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval_at((start + PROGRESS_EVERY).into(), PROGRESS_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (sent, acked, completed) = svc.discord.inspect_records(|recs| {
            let mine = recs.get(first..).unwrap_or_default();
            (
                mine.len(),
                mine.iter().filter(|r| r.ack().is_some()).count(),
                mine.iter().filter(|r| r.is_completed()).count(),
            )
        });
        let jobs = samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map_or("no heartbeat read yet".to_owned(), |s| {
                format!(
                    "jobs queued {}  running {}  instances alive {}",
                    s.queued(),
                    s.in_flight(),
                    s.alive_count()
                )
            });
        let line = format!(
            "{:>6.1} s  sent {sent}  acked {acked}  completed {completed}  {jobs}",
            start.elapsed().as_secs_f64()
        );
        tracing::info!("{line}");
        events.send(Event::Progress { line });
    }
}

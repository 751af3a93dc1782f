//! Key health: whether a key may be used at all, and whether its provider is answering.
//!
//! - [`KeyState`]: a key that answered with an auth, quota or balance error
//!   ([`ErrorClass::KeyProblem`]) goes *out of service*: calls fail at once with `KeyProblem`
//!   (so the job moves to a peer, or the image fallback tries the next provider) without
//!   touching the provider, until a *probe* (the key's own next call after
//!   [`HealthPolicy::probe_every`]) gets an answer that proves the key works again.
//! - [`Circuit`]: a storm of 5xx (or timeouts) from one provider opens its circuit: calls wait
//!   for it (or give up once their `max_wait` cannot cover it) instead of hammering a provider
//!   that is down; after [`CircuitPolicy::open_for`] one half-open call probes it.
//!
//! Both are pure state machines over a time passed in (a `Duration` since an origin the
//! caller picks), tested with tables below. [`KeyHealth`] is the mechanism: the one handle
//! every lane of a key shares, with the clock, the log lines (once when a key goes out or a
//! circuit opens, once when it comes back) and the view the bot publishes. The cluster-wide
//! mark ("this key is out of service", in Redis) is the bot's: it calls
//! [`KeyHealth::marked_elsewhere`] / [`KeyHealth::mark_cleared`] with what Redis says.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::error::{ErrorClass, ProviderKind};

/// When a key out of service is probed, and when a circuit opens.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthPolicy {
    /// How long a key stays out of service before its next call probes it. 30 s: a revoked or
    /// unpaid key is fixed by a person, in minutes; probing every 30 s costs at most two
    /// calls a minute and puts a restored key back in use well within a minute.
    pub probe_every: Duration,
    pub circuit: CircuitPolicy,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        HealthPolicy {
            probe_every: Duration::from_secs(30),
            circuit: CircuitPolicy::default(),
        }
    }
}

/// When a provider's circuit opens, and for how long.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CircuitPolicy {
    /// Opens after this many server errors in a row (5: one unlucky request, or two, is
    /// normal on a busy API; five in a row is an outage).
    pub consecutive: u32,
    /// … or when at least `ratio` of the last `last` answers within `within` were server
    /// errors, once there are `min_samples` of them (so a quiet key's one error among two
    /// answers does not count as 50 %).
    pub last: usize,
    pub ratio: f64,
    pub min_samples: usize,
    pub within: Duration,
    /// How long an open circuit refuses calls before one half-open call probes it (30 s:
    /// provider incidents last minutes; a shorter wait only adds load to a struggling API).
    pub open_for: Duration,
}

impl Default for CircuitPolicy {
    fn default() -> Self {
        CircuitPolicy {
            consecutive: 5,
            last: 20,
            ratio: 0.5,
            min_samples: 10,
            within: Duration::from_secs(30),
            open_for: Duration::from_secs(30),
        }
    }
}

/// What the state machines say about the next call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Call as usual.
    Pass,
    /// Call: this call probes the key or the circuit, and its outcome decides.
    Probe,
    /// The key is out of service: fail with `KeyProblem` without calling.
    KeyOut,
    /// The provider's circuit is open: try again in `retry_in` (or give up).
    CircuitOpen { retry_in: Duration },
}

/// How a call ended, as key health sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// Any answer that proves the key authenticates and the provider works: success, but
    /// also a 429, a refused prompt or a bad request.
    Fine,
    /// Auth, quota or balance: the key cannot serve.
    KeyFailed,
    /// 5xx, timeout, broken connection: the provider is struggling; says nothing of the key.
    ServerError,
}

impl Answer {
    pub fn of(result: Result<(), ErrorClass>) -> Answer {
        match result {
            Ok(()) => Answer::Fine,
            Err(ErrorClass::KeyProblem) => Answer::KeyFailed,
            Err(ErrorClass::Retryable) => Answer::ServerError,
            Err(ErrorClass::RateLimited | ErrorClass::ContentRejected | ErrorClass::BadRequest) => {
                Answer::Fine
            }
        }
    }
}

/// Whether one key may be used (pure; see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KeyState {
    out: Option<OutOfService>,
}

#[derive(Clone, Debug, PartialEq)]
struct OutOfService {
    since: Duration,
    next_probe: Duration,
    /// A probe call is under way since then (a second one waits). A probe that never reports
    /// (its caller was cancelled) stops counting after `probe_every`, so the key is not stuck.
    probing: Option<Duration>,
    /// This instance probes the key; `false` while another instance holds the cluster-wide
    /// mark (it probes, and its mark going away brings the key back here).
    prober: bool,
}

impl KeyState {
    pub fn is_out(&self) -> bool {
        self.out.is_some()
    }

    /// Whether this instance probes the key (`false` when in service).
    pub fn is_prober(&self) -> bool {
        self.out.as_ref().is_some_and(|o| o.prober)
    }

    /// Out of service since, when it is.
    pub fn out_since(&self) -> Option<Duration> {
        self.out.as_ref().map(|o| o.since)
    }

    /// `Pass`, `Probe` (this call probes), or `KeyOut`.
    pub fn gate(&mut self, now: Duration, policy: &HealthPolicy) -> Gate {
        let Some(out) = &mut self.out else {
            return Gate::Pass;
        };
        let probe_stale = out
            .probing
            .is_none_or(|since| now >= since + policy.probe_every);
        if out.prober && probe_stale && now >= out.next_probe {
            out.probing = Some(now);
            Gate::Probe
        } else {
            Gate::KeyOut
        }
    }

    /// Records a call's answer; `Some(true)`: the key just went out of service,
    /// `Some(false)`: it just came back.
    pub fn record(&mut self, now: Duration, answer: Answer, policy: &HealthPolicy) -> Option<bool> {
        match (answer, &mut self.out) {
            (Answer::KeyFailed, None) => {
                self.out = Some(OutOfService {
                    since: now,
                    next_probe: now + policy.probe_every,
                    probing: None,
                    prober: true,
                });
                Some(true)
            }
            (Answer::KeyFailed, Some(out)) => {
                out.probing = None;
                out.next_probe = now + policy.probe_every;
                None
            }
            // A call admitted before the key went out (or a probe) came back fine.
            (Answer::Fine, Some(_)) => {
                self.out = None;
                Some(false)
            }
            // A probe that met a server error proved nothing: the next call probes again.
            (Answer::ServerError, Some(out)) => {
                out.probing = None;
                None
            }
            (Answer::Fine | Answer::ServerError, None) => None,
        }
    }

    /// Another instance holds the cluster-wide mark for this key (it probes): out here too,
    /// not probing. `true` when the key was in service here until now.
    pub fn marked_elsewhere(&mut self, now: Duration, policy: &HealthPolicy) -> bool {
        match &mut self.out {
            Some(out) => {
                out.prober = false;
                out.probing = None;
                false
            }
            None => {
                self.out = Some(OutOfService {
                    since: now,
                    next_probe: now + policy.probe_every,
                    probing: None,
                    prober: false,
                });
                true
            }
        }
    }

    /// This instance's own mark survived its restart: out, and this instance probes.
    pub fn adopt_mark(&mut self, now: Duration, policy: &HealthPolicy) {
        if self.out.is_none() {
            self.out = Some(OutOfService {
                since: now,
                next_probe: now + policy.probe_every,
                probing: None,
                prober: true,
            });
        }
    }

    /// The cluster-wide mark went away (its prober found the key working, or the mark
    /// expired): back in service unless this instance is the prober. `true` when it came back.
    pub fn mark_cleared(&mut self) -> bool {
        if self.out.as_ref().is_some_and(|o| !o.prober) {
            self.out = None;
            return true;
        }
        false
    }
}

/// The circuit of one provider (pure; see the module docs).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Circuit {
    state: CircuitState,
    /// The last answers (time, was a server error), oldest first.
    recent: VecDeque<(Duration, bool)>,
    consecutive: u32,
}

/// Where a circuit stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    #[default]
    Closed,
    /// Refusing calls until `until`.
    Open { until: Duration },
    /// One call probes; `since` it started (`None`: the next call probes).
    HalfOpen { since: Option<Duration> },
}

impl Circuit {
    pub fn state(&self) -> CircuitState {
        self.state
    }

    pub fn is_open(&self) -> bool {
        self.state != CircuitState::Closed
    }

    pub fn gate(&mut self, now: Duration, policy: &CircuitPolicy) -> Gate {
        match self.state {
            CircuitState::Closed => Gate::Pass,
            CircuitState::Open { until } if now < until => Gate::CircuitOpen {
                retry_in: until - now,
            },
            CircuitState::Open { .. } | CircuitState::HalfOpen { since: None } => {
                self.state = CircuitState::HalfOpen { since: Some(now) };
                Gate::Probe
            }
            // A probe that never reports (cancelled) stops counting after `open_for`.
            CircuitState::HalfOpen { since: Some(s) } if now >= s + policy.open_for => {
                self.state = CircuitState::HalfOpen { since: Some(now) };
                Gate::Probe
            }
            // The probe is out; its answer comes within an attempt timeout. Look again in a
            // second rather than after a whole `open_for`.
            CircuitState::HalfOpen { .. } => Gate::CircuitOpen {
                retry_in: Duration::from_secs(1),
            },
        }
    }

    /// Records an answer (`Fine` or `ServerError`; a key failure says nothing of the
    /// provider). `Some(true)`: the circuit just opened; `Some(false)`: it just closed. A
    /// failed half-open probe opens it again without a transition (it never closed).
    pub fn record(
        &mut self,
        now: Duration,
        answer: Answer,
        policy: &CircuitPolicy,
    ) -> Option<bool> {
        let failed = match answer {
            Answer::ServerError => true,
            Answer::Fine => false,
            Answer::KeyFailed => return None,
        };
        self.recent.push_back((now, failed));
        while self.recent.len() > policy.last
            || self
                .recent
                .front()
                .is_some_and(|(t, _)| now.saturating_sub(*t) > policy.within)
        {
            self.recent.pop_front();
        }
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        let open = CircuitState::Open {
            until: now + policy.open_for,
        };
        match self.state {
            CircuitState::HalfOpen { .. } if failed => {
                self.state = open;
                None
            }
            CircuitState::HalfOpen { .. } => {
                self.state = CircuitState::Closed;
                self.recent.clear();
                self.consecutive = 0;
                Some(false)
            }
            CircuitState::Closed => {
                let failures = self.recent.iter().filter(|(_, f)| *f).count();
                let storm = self.recent.len() >= policy.min_samples
                    && failures as f64 >= policy.ratio * self.recent.len() as f64;
                if failed && (self.consecutive >= policy.consecutive || storm) {
                    self.state = open;
                    Some(true)
                } else {
                    None
                }
            }
            // Answers of calls admitted before it opened.
            CircuitState::Open { .. } => None,
        }
    }
}

/// What the bot shows and publishes of one key's health.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct HealthView {
    pub provider: ProviderKind,
    /// The key's fingerprint (never the key).
    pub key: String,
    pub out_of_service: bool,
    /// This instance probes the key (it holds the cluster-wide mark).
    pub prober: bool,
    pub circuit_open: bool,
    /// Times the key went out of service and circuits opened since start.
    pub outages: u64,
    pub circuit_opens: u64,
}

/// The shared health of one key: every lane of the key holds it. Cheap to clone.
#[derive(Clone)]
pub struct KeyHealth {
    inner: Arc<HealthInner>,
}

struct HealthInner {
    provider: ProviderKind,
    key: String,
    policy: HealthPolicy,
    /// The origin of the times given to the state machines. tokio's clock, so tests that
    /// pause it drive probes and circuits.
    origin: tokio::time::Instant,
    /// A std Mutex: held for microseconds, never across an await.
    state: Mutex<Both>,
}

#[derive(Default)]
struct Both {
    key: KeyState,
    circuit: Circuit,
    outages: u64,
    circuit_opens: u64,
}

impl std::fmt::Debug for KeyHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyHealth")
            .field("provider", &self.inner.provider)
            .field("key", &self.inner.key)
            .finish_non_exhaustive()
    }
}

impl KeyHealth {
    pub fn new(provider: ProviderKind, key_fingerprint: String, policy: HealthPolicy) -> Self {
        KeyHealth {
            inner: Arc::new(HealthInner {
                provider,
                key: key_fingerprint,
                policy,
                origin: tokio::time::Instant::now(),
                state: Mutex::new(Both::default()),
            }),
        }
    }

    pub fn provider(&self) -> ProviderKind {
        self.inner.provider
    }

    /// The key's fingerprint.
    pub fn key(&self) -> &str {
        &self.inner.key
    }

    fn now(&self) -> Duration {
        self.inner.origin.elapsed()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Both> {
        self.inner.state.lock().expect("key health lock")
    }

    /// What the next call may do: the key first (a key out of service is not called at all),
    /// then the circuit.
    pub fn gate(&self) -> Gate {
        let now = self.now();
        let policy = &self.inner.policy;
        let mut s = self.lock();
        match s.key.gate(now, policy) {
            Gate::KeyOut => Gate::KeyOut,
            key => match (key, s.circuit.gate(now, &policy.circuit)) {
                (_, Gate::CircuitOpen { retry_in }) => {
                    // The key probe was not spent: give it back.
                    if key == Gate::Probe {
                        if let Some(out) = &mut s.key.out {
                            out.probing = None;
                        }
                    }
                    Gate::CircuitOpen { retry_in }
                }
                (Gate::Probe, _) | (_, Gate::Probe) => Gate::Probe,
                _ => Gate::Pass,
            },
        }
    }

    /// Records how a call ended, and logs a key going out or coming back and a circuit
    /// opening or closing (once each).
    pub fn record(&self, result: Result<(), ErrorClass>, detail: &str) {
        let now = self.now();
        let answer = Answer::of(result);
        let policy = &self.inner.policy;
        let (key, circuit) = {
            let mut s = self.lock();
            let key = s.key.record(now, answer, policy);
            let circuit = s.circuit.record(now, answer, &policy.circuit);
            s.outages += u64::from(key == Some(true));
            s.circuit_opens += u64::from(circuit == Some(true));
            (key, circuit)
        };
        let (provider, fp) = (self.inner.provider, &self.inner.key);
        match key {
            Some(true) => {
                tracing::warn!(%provider, key = %fp, "key out of service ({detail}); its work goes to peers, probed every {:?}", policy.probe_every)
            }
            Some(false) => tracing::info!(%provider, key = %fp, "key back in service"),
            None => {}
        }
        match circuit {
            Some(true) => {
                tracing::warn!(%provider, "circuit open after a storm of server errors ({detail}); calls wait {:?}", policy.circuit.open_for)
            }
            Some(false) => tracing::info!(%provider, "circuit closed: the provider answers again"),
            None => {}
        }
    }

    /// Another instance holds the cluster-wide mark for this key.
    pub fn marked_elsewhere(&self) {
        let now = self.now();
        let went_out = {
            let mut s = self.lock();
            let went = s.key.marked_elsewhere(now, &self.inner.policy);
            s.outages += u64::from(went);
            went
        };
        if went_out {
            tracing::warn!(provider = %self.inner.provider, key = %self.inner.key, "key out of service (marked by another instance)");
        }
    }

    /// This instance's own mark outlived its restart: out, probed from here.
    pub fn adopt_mark(&self) {
        let now = self.now();
        let mut s = self.lock();
        if !s.key.is_out() {
            s.outages += 1;
            tracing::warn!(provider = %self.inner.provider, key = %self.inner.key, "key out of service (marked before a restart)");
        }
        s.key.adopt_mark(now, &self.inner.policy);
    }

    /// The cluster-wide mark is gone.
    pub fn mark_cleared(&self) {
        if self.lock().key.mark_cleared() {
            tracing::info!(provider = %self.inner.provider, key = %self.inner.key, "key back in service (cleared by its prober)");
        }
    }

    pub fn view(&self) -> HealthView {
        let s = self.lock();
        HealthView {
            provider: self.inner.provider,
            key: self.inner.key.clone(),
            out_of_service: s.key.is_out(),
            prober: s.key.is_prober(),
            circuit_open: s.circuit.is_open(),
            outages: s.outages,
            circuit_opens: s.circuit_opens,
        }
    }

    pub fn is_out(&self) -> bool {
        self.lock().key.is_out()
    }
}

#[cfg(test)]
mod tests;

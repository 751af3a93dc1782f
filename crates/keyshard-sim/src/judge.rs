//! The simulator as its own judge: whether each answer came from the instance that should have
//! given it, decided from what the simulator observed for itself and its own reading of
//! DESIGN.md §2, never by calling the code under test (a bug in the bot's routing or in its
//! Redis view would otherwise make the bot and its judge wrong in the same way).
//!
//! What it observes:
//! - the process events it caused and saw (`kill`, `terminate`, start, `/readyz` 200), turned
//!   into [`DownInterval`]s by [`down_intervals`];
//! - the heartbeats it reads from Redis as plain data ([`Heartbeat`], parsed from the JSON of
//!   `{c}:hb:{id}` as ARCHITECTURE.md's Redis table describes it), a [`HeartbeatSample`] every
//!   sample period.
//!
//! Its reading of the spec: `primary(u) = u % N + 1` ([`primary`]); an instance is alive while
//! its heartbeat key exists; it is overloaded when it drains or when its estimated wait, jobs
//! waiting ÷ its service rate, exceeds `OVERLOAD_WAIT_SECS` ([`OverloadRule`]).
//!
//! Everything here is pure: times are parameters, so every rule is unit-tested.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::cluster::{ProcessEvent, ProcessEventKind};

/// The instance that owns user `u` in an `n`-instance cluster: `u % N + 1` (DESIGN.md §2).
pub fn primary(user: u64, n: u32) -> u32 {
    let n = u64::from(n.max(1));
    (user % n) as u32 + 1
}

/// An instance's heartbeat as the simulator reads it: the JSON value of `{c}:hb:{id}`.
///
/// Read leniently, so the judge keeps working while the bot's heartbeat grows: unknown fields
/// are ignored and missing ones default (a missing `queue_depth` reads as an empty queue).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    pub id: u32,
    /// A draining instance takes no new users.
    pub draining: bool,
    /// Jobs waiting in the instance's queue, not yet taken by a worker.
    pub queue_depth: u64,
    /// Jobs its workers are running.
    pub in_flight: u64,
    /// Jobs finished per second, as the instance measured it; 0 before it has measured one.
    pub service_rate: f64,
}

impl Heartbeat {
    /// Parses a heartbeat value. A value that is not a JSON object reads as an idle, alive
    /// instance: the key exists, so the instance is alive, and with its load unknown the
    /// judge counts a takeover from it as misrouted, which brings the bad heartbeat to light.
    pub fn parse(json: &str) -> Heartbeat {
        serde_json::from_str(json).unwrap_or_default()
    }
}

/// Every instance's heartbeat at one moment: `instances[id - 1]` is `None` when the key did
/// not exist (the instance counts as dead).
#[derive(Clone, Debug, PartialEq)]
pub struct HeartbeatSample {
    /// When the reply from Redis arrived.
    pub at: Instant,
    pub instances: Vec<Option<Heartbeat>>,
}

impl HeartbeatSample {
    /// Instance `id`'s heartbeat; `None` for a missing key or an id outside the cluster.
    pub fn get(&self, id: u32) -> Option<&Heartbeat> {
        self.instances.get((id as usize).checked_sub(1)?)?.as_ref()
    }

    /// Whether instance `id`'s heartbeat key existed.
    pub fn alive(&self, id: u32) -> bool {
        self.get(id).is_some()
    }

    /// Instances with a heartbeat.
    pub fn alive_count(&self) -> usize {
        self.instances.iter().flatten().count()
    }

    /// Jobs waiting across the live instances.
    pub fn queued(&self) -> u64 {
        self.instances.iter().flatten().map(|h| h.queue_depth).sum()
    }

    /// Jobs being run across the live instances.
    pub fn in_flight(&self) -> u64 {
        self.instances.iter().flatten().map(|h| h.in_flight).sum()
    }
}

/// DESIGN.md §2's overload rule as the simulator reads it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OverloadRule {
    /// `OVERLOAD_WAIT_SECS`, as the simulator passed it to the instances.
    pub max_wait: Duration,
}

/// `OVERLOAD_WAIT_SECS` when a run does not set it: the bot's documented default, which the
/// simulator passes to every instance explicitly so that judge and instances use one number.
pub const DEFAULT_OVERLOAD_WAIT: Duration = Duration::from_secs(20);

/// Jobs per second the judge assumes for an instance that has not measured its rate yet.
/// DESIGN.md divides by the *measured* rate and says nothing of an instance that has none; a
/// fresh instance with a queue is not infinitely slow, and one job a second is the modest guess
/// the bot makes too. Written here, not imported, so a change on either side shows up as
/// misrouted answers instead of silently moving both.
pub const ASSUMED_RATE: f64 = 1.0;

impl OverloadRule {
    /// How long a job queued now would wait: jobs waiting ÷ service rate.
    pub fn estimated_wait(&self, hb: &Heartbeat) -> Duration {
        if hb.queue_depth == 0 {
            return Duration::ZERO;
        }
        let rate = if hb.service_rate > 0.0 && hb.service_rate.is_finite() {
            hb.service_rate
        } else {
            ASSUMED_RATE
        };
        Duration::try_from_secs_f64(hb.queue_depth as f64 / rate).unwrap_or(Duration::MAX)
    }

    /// Draining, or an estimated wait over `max_wait`.
    pub fn is_overloaded(&self, hb: &Heartbeat) -> bool {
        hb.draining || self.estimated_wait(hb) > self.max_wait
    }
}

/// When an instance was down by the simulator's hand: `[from, until)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownInterval {
    pub instance: u32,
    pub from: Instant,
    pub until: Option<Instant>,
}

impl DownInterval {
    pub fn contains(&self, t: Instant) -> bool {
        t >= self.from && self.until.is_none_or(|u| t < u)
    }
}

/// Down intervals from the simulator's process events: down from a kill or termination until
/// the instance is ready again.
pub fn down_intervals(events: &[ProcessEvent]) -> Vec<DownInterval> {
    use ProcessEventKind as K;
    let mut out: Vec<DownInterval> = Vec::new();
    let mut open: HashSet<u32> = HashSet::new();
    for e in events {
        match e.kind {
            K::Killed | K::Terminated => {
                if open.insert(e.instance) {
                    out.push(DownInterval {
                        instance: e.instance,
                        from: e.at,
                        until: None,
                    });
                }
            }
            K::Ready => {
                if open.remove(&e.instance) {
                    if let Some(d) = out
                        .iter_mut()
                        .rev()
                        .find(|d| d.instance == e.instance && d.until.is_none())
                    {
                        d.until = Some(e.at);
                    }
                }
            }
            K::Started => {}
        }
    }
    out
}

/// How an acknowledged interaction was routed, against its user's primary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Answered by the primary.
    Primary,
    /// The primary was down: stopped by the simulator and not yet ready again, or without a
    /// heartbeat in a sample around the acknowledgement.
    Down,
    /// The primary was alive but overloaded or draining in such a sample.
    Overload,
    /// A non-primary answered while the primary was alive and not overloaded.
    Misrouted,
}

impl Route {
    /// The `routing.*` / `ack_latency_by_route_ms` key.
    pub fn key(self) -> &'static str {
        match self {
            Route::Primary => "primary",
            Route::Down => "takeover_down",
            Route::Overload => "takeover_overload",
            Route::Misrouted => "misrouted",
        }
    }
}

/// What the judge knows of a run.
pub struct Observations<'a> {
    pub down: &'a [DownInterval],
    /// Heartbeat samples in time order.
    pub samples: &'a [HeartbeatSample],
    /// How far before an acknowledgement a sample still counts: instances decide on snapshots
    /// that are up to a heartbeat (and a refresh) old.
    pub lag: Duration,
    /// How far after it: the sample that follows may be the first to show what the instances
    /// already saw.
    pub period: Duration,
    pub overload: OverloadRule,
}

impl Observations<'_> {
    /// Whether `answered` acknowledging, at `at`, an interaction of a user whose primary is
    /// `p` was right, and why.
    pub fn classify(&self, p: u32, answered: u32, at: Instant) -> Route {
        if answered == p {
            return Route::Primary;
        }
        if self.down.iter().any(|d| d.instance == p && d.contains(at)) {
            return Route::Down;
        }
        let from = at.checked_sub(self.lag).unwrap_or(at);
        let until = at + self.period;
        let mut route = Route::Misrouted;
        for s in self
            .samples
            .iter()
            .filter(|s| s.at >= from && s.at <= until)
        {
            match s.get(p) {
                None => return Route::Down,
                Some(hb) if self.overload.is_overloaded(hb) => route = Route::Overload,
                Some(_) => {}
            }
        }
        route
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: u32, queue_depth: u64, service_rate: f64) -> Heartbeat {
        Heartbeat {
            id,
            queue_depth,
            service_rate,
            ..Heartbeat::default()
        }
    }

    #[test]
    fn primary_is_user_mod_n_plus_one() {
        assert_eq!(primary(4, 4), 1);
        assert_eq!(primary(7, 4), 4);
        assert_eq!(primary(175_928_847_299_117_063, 4), 4);
        assert_eq!(primary(9, 1), 1);
    }

    #[test]
    fn heartbeats_parse_leniently() {
        let full = Heartbeat::parse(
            r#"{"id":2,"draining":true,"queue_depth":7,"in_flight":3,"service_rate":1.5,
                "dead_after_ms":1000,"version":"0.1.0","waiting":{"chat":7},"future":[1]}"#,
        );
        assert_eq!(
            full,
            Heartbeat {
                id: 2,
                draining: true,
                queue_depth: 7,
                in_flight: 3,
                service_rate: 1.5,
            }
        );
        assert_eq!(Heartbeat::parse(r#"{"id":3}"#), hb(3, 0, 0.0));
        assert_eq!(Heartbeat::parse("not json"), Heartbeat::default());
    }

    #[test]
    fn overload_is_draining_or_waiting_longer_than_allowed() {
        let rule = OverloadRule {
            max_wait: Duration::from_secs(5),
        };
        // 10 jobs at 2/s wait 5 s: not over the limit; 11 are.
        assert!(!rule.is_overloaded(&hb(1, 10, 2.0)));
        assert!(rule.is_overloaded(&hb(1, 11, 2.0)));
        // Nothing measured yet: one job a second is assumed.
        assert_eq!(rule.estimated_wait(&hb(1, 4, 0.0)), Duration::from_secs(4));
        assert!(rule.is_overloaded(&hb(1, 6, 0.0)));
        assert!(!rule.is_overloaded(&hb(1, 0, 0.0)));
        let draining = Heartbeat {
            draining: true,
            ..hb(1, 0, 5.0)
        };
        assert!(rule.is_overloaded(&draining));
    }

    #[test]
    fn down_until_ready_again() {
        let t = Instant::now();
        let ev = |instance, kind, s| ProcessEvent {
            instance,
            kind,
            at: t + Duration::from_secs(s),
        };
        use ProcessEventKind as K;
        let d = down_intervals(&[
            ev(3, K::Ready, 0),
            ev(3, K::Killed, 10),
            ev(3, K::Started, 12),
            ev(3, K::Ready, 13),
            ev(2, K::Killed, 20),
        ]);
        assert_eq!(d.len(), 2);
        assert!(d[0].contains(t + Duration::from_secs(11)));
        assert!(!d[0].contains(t + Duration::from_secs(14)));
        assert!(d[1].contains(t + Duration::from_secs(100)));
    }

    #[test]
    fn classifies_from_kills_and_samples_around_the_ack() {
        let t0 = Instant::now();
        let s = |secs_ms: u64, instances: Vec<Option<Heartbeat>>| HeartbeatSample {
            at: t0 + Duration::from_millis(secs_ms),
            instances,
        };
        let all = |q3: u64| {
            vec![
                Some(hb(1, 0, 1.0)),
                Some(hb(2, 0, 1.0)),
                Some(hb(3, q3, 1.0)),
                Some(hb(4, 0, 1.0)),
            ]
        };
        let samples = [
            s(1_000, all(0)),
            s(
                2_000,
                vec![Some(hb(1, 0, 1.0)), None, Some(hb(3, 0, 1.0)), None],
            ),
            s(3_000, all(1_000)),
        ];
        let down = [DownInterval {
            instance: 4,
            from: t0 + Duration::from_secs(5),
            until: None,
        }];
        let judge = Observations {
            down: &down,
            samples: &samples,
            lag: Duration::from_millis(300),
            period: Duration::from_millis(100),
            overload: OverloadRule {
                max_wait: DEFAULT_OVERLOAD_WAIT,
            },
        };
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(judge.classify(1, 1, at(0)), Route::Primary);
        // Instance 1 alive and idle in the 1 s sample: answering for it is wrong.
        assert_eq!(judge.classify(1, 2, at(1_050)), Route::Misrouted);
        // No heartbeat of 2 in the sample just after the ack.
        assert_eq!(judge.classify(2, 3, at(1_950)), Route::Down);
        // Queue of 1000 at one job a second: overloaded.
        assert_eq!(judge.classify(3, 4, at(3_100)), Route::Overload);
        // Killed by the simulator: down whatever the samples say.
        assert_eq!(judge.classify(4, 1, at(6_000)), Route::Down);
        // No sample near the ack and the primary never stopped: nothing excuses it.
        assert_eq!(judge.classify(1, 2, at(9_000)), Route::Misrouted);
    }
}

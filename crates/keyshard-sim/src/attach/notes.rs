//! Chaos notes: what was done to the cluster from outside the simulator, and when.
//!
//! In attach mode the simulator cannot touch the instances: `deploy-multi.sh rehearse` kills a
//! bot process, stops a container or restarts Redis through the Docker engine, and tells the
//! simulator what it did with the wall-clock time it did it (`kill:2@1764512345678`). The judge
//! needs those times: a killed instance's heartbeat lives on for `DEAD_AFTER_MS`, and without
//! the note a peer taking its users meanwhile would count as misrouted.
//!
//! A note is free text (`WHAT[@UNIX_MS]`), so the chaos list can grow on the operator's side
//! without a change here; only `kill:N` and `stop:N` mean something to the judge (the instance
//! is down from then until its `/readyz` answers 200 again). Everything else is listed in the
//! report as it was told.
//!
//! Pure: times are parameters.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::judge::DownInterval;

/// One chaos action done from outside, at a wall-clock time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    /// `kill:2`, `stop:3`, `start:3`, `restart:redis`, `rolling-restart`, …
    pub what: String,
    /// When it was done, in Unix milliseconds; `None` for "now" (stamped on arrival).
    pub at_unix_ms: Option<u64>,
}

impl Note {
    /// The instance this note takes down: `kill:N` (the bot process killed) and `stop:N` (the
    /// container stopped, which drains it first).
    pub fn down_instance(&self) -> Option<u32> {
        let (verb, target) = self.what.split_once(':')?;
        matches!(verb, "kill" | "stop")
            .then(|| target.parse().ok())
            .flatten()
    }
}

impl FromStr for Note {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Note> {
        let s = s.trim();
        let (what, at) = match s.rsplit_once('@') {
            Some((w, at)) => (
                w,
                Some(
                    at.parse::<u64>()
                        .with_context(|| format!("{s:?}: the time after @ is not Unix ms"))?,
                ),
            ),
            None => (s, None),
        };
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.');
        if what.is_empty() || !what.chars().all(allowed) {
            bail!("{s:?}: expected WHAT[@UNIX_MS], WHAT of letters, digits and : - _ .");
        }
        Ok(Note {
            what: what.to_owned(),
            at_unix_ms: at,
        })
    }
}

impl fmt::Display for Note {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.at_unix_ms {
            Some(at) => write!(f, "{}@{at}", self.what),
            None => f.write_str(&self.what),
        }
    }
}

/// A note placed on this process's clock.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Noted {
    pub at: Instant,
    pub what: String,
}

impl Noted {
    /// `note` on the monotonic clock, given one reading of both clocks (`now`, `now_unix_ms`);
    /// a note without a time happened at `now`. The host and the containers share one kernel
    /// clock, so a wall-clock time from the host lines up with this process's.
    pub fn place(note: &Note, now: Instant, now_unix_ms: u64) -> Noted {
        let at = match note.at_unix_ms {
            None => now,
            Some(ms) if ms <= now_unix_ms => now
                .checked_sub(Duration::from_millis(now_unix_ms - ms))
                .unwrap_or(now),
            Some(ms) => now + Duration::from_millis(ms - now_unix_ms),
        };
        Noted {
            at,
            what: note.what.clone(),
        }
    }

    /// As the report's `scenario.chaos` lists it: `kill:2@20.1`, seconds from the first
    /// dispatch.
    pub fn render(&self, start: Instant) -> String {
        let secs = if self.at >= start {
            (self.at - start).as_secs_f64()
        } else {
            -(start - self.at).as_secs_f64()
        };
        format!("{}@{secs:.1}", self.what)
    }

    fn down_instance(&self) -> Option<u32> {
        Note {
            what: self.what.clone(),
            at_unix_ms: None,
        }
        .down_instance()
    }
}

/// A change of an instance's `/readyz`, as the watcher saw it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Transition {
    pub instance: u32,
    pub ready: bool,
    pub at: Instant,
}

/// Down intervals from the notes: an instance is down from a `kill:N` or `stop:N` note until
/// the first time after it that its `/readyz` turned to 200 (still open when it never did).
///
/// Only changes are recorded, so a probe that still saw the instance ready just after the note
/// (the kill was on its way) does not end the interval: the instance must have been seen not
/// ready, then ready again.
pub fn down_intervals(notes: &[Noted], transitions: &[Transition]) -> Vec<DownInterval> {
    notes
        .iter()
        .filter_map(|n| {
            let instance = n.down_instance()?;
            let until = transitions
                .iter()
                .filter(|t| t.instance == instance && t.ready && t.at > n.at)
                .map(|t| t.at)
                .min();
            Some(DownInterval {
                instance,
                from: n.at,
                until,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_and_when() {
        let n: Note = "kill:2@1764512345678".parse().unwrap();
        assert_eq!(n.what, "kill:2");
        assert_eq!(n.at_unix_ms, Some(1_764_512_345_678));
        assert_eq!(n.down_instance(), Some(2));
        assert_eq!(n.to_string(), "kill:2@1764512345678");
        let n: Note = "restart:redis".parse().unwrap();
        assert_eq!((n.at_unix_ms, n.down_instance()), (None, None));
        assert_eq!("stop:3@1".parse::<Note>().unwrap().down_instance(), Some(3));
        assert_eq!("start:3@1".parse::<Note>().unwrap().down_instance(), None);
        assert_eq!("kill:redis".parse::<Note>().unwrap().down_instance(), None);
        for bad in ["", "@12", "kill:2@soon", "rm -rf /", "kill:2@-1"] {
            assert!(bad.parse::<Note>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn wall_clock_times_land_on_the_monotonic_clock() {
        let now = Instant::now();
        let unix = 1_000_000;
        let at = |ms| {
            Noted::place(
                &Note {
                    what: "x".into(),
                    at_unix_ms: ms,
                },
                now,
                unix,
            )
            .at
        };
        assert_eq!(at(Some(unix - 1_500)), now - Duration::from_millis(1_500));
        assert_eq!(at(Some(unix + 200)), now + Duration::from_millis(200));
        assert_eq!(at(None), now);
        let n = Noted {
            at: now + Duration::from_millis(20_140),
            what: "kill:2".into(),
        };
        assert_eq!(n.render(now), "kill:2@20.1");
    }

    #[test]
    fn down_from_the_note_until_seen_ready_again() {
        let t0 = Instant::now();
        let s = |secs: f64| t0 + Duration::from_secs_f64(secs);
        let notes = [
            Noted {
                at: s(20.0),
                what: "kill:2".into(),
            },
            Noted {
                at: s(30.0),
                what: "restart:redis".into(),
            },
            Noted {
                at: s(40.0),
                what: "stop:3".into(),
            },
        ];
        let tr = |instance, ready, secs| Transition {
            instance,
            ready,
            at: s(secs),
        };
        let transitions = [
            tr(2, true, 1.0),
            tr(2, false, 20.4),
            tr(2, true, 26.0),
            tr(3, true, 1.0),
            tr(3, false, 40.2),
        ];
        let d = down_intervals(&notes, &transitions);
        assert_eq!(d.len(), 2, "only kill and stop take an instance down");
        assert_eq!(
            (d[0].instance, d[0].from, d[0].until),
            (2, s(20.0), Some(s(26.0)))
        );
        assert!(d[0].contains(s(20.1)) && !d[0].contains(s(26.0)));
        // Never ready again within the run: down to the end.
        assert_eq!((d[1].instance, d[1].until), (3, None));
        assert!(d[1].contains(s(1_000.0)));
    }
}

//! Honest waiting (issue 14 §4): where a waiting job stands in its queue ([`fair_order`]),
//! what its deferred reply says about it ([`Notice`]), and whether that reply is edited now
//! ([`WaitingPolicy::should_edit`]). Plain functions, the time passed in; the bot's
//! `waiting` module reads the queue and sends the edits.
//!
//! The position is the job's rank in the order the fair pick would take the queue's waiting
//! jobs if nothing new arrived: each pick counts one more job in hand for its user, as the
//! take does, so a heavy user's jobs interleave with everybody else's. The estimate is the
//! same arithmetic as the max-wait rule ([`estimate_wait`](crate::estimate_wait)): the jobs
//! ahead over the rate at which the instance finishes the kind, then the job's own run.

use std::time::Duration;

use crate::fair::{fair_pick, Waiting};

/// For each job of `waiting` (oldest first, as [`fair_pick`] reads it), how many of the
/// others the fair pick would take before it: repeated picks over the list, each counting
/// one more job in hand for the picked user and stamping it as just served. O(n²) for n
/// jobs; the stream view is capped at a few hundred, read once per pass.
pub fn fair_order(waiting: &[Waiting]) -> Vec<u64> {
    let mut rest: Vec<(usize, Waiting)> = waiting.iter().copied().enumerate().collect();
    let mut ranks = vec![0; waiting.len()];
    // Later than every stamp in the view, as the take's sequence number would be.
    let mut seq = waiting.iter().map(|w| w.last_served).max().unwrap_or(0);
    let mut rank = 0;
    while !rest.is_empty() {
        let view: Vec<Waiting> = rest.iter().map(|(_, w)| *w).collect();
        let Some(i) = fair_pick(&view) else { break };
        let (index, picked) = rest.remove(i);
        ranks[index] = rank;
        rank += 1;
        seq += 1;
        for (_, w) in rest.iter_mut().filter(|(_, w)| w.user == picked.user) {
            w.in_hand += 1;
            w.last_served = seq;
        }
    }
    ranks
}

/// What a waiting job's reply says: the jobs ahead of it and its expected wait, both rounded
/// so that the queue moving by one job, or a small change in the measured rate, makes no edit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Notice {
    /// Rounded up ([`round_ahead`]): exact under 10.
    pub ahead: u64,
    /// Seconds, rounded up ([`round_estimate`]); `None` while no rate is known.
    pub estimate_secs: Option<u64>,
}

impl Notice {
    pub fn new(ahead: u64, estimate: Option<Duration>) -> Notice {
        Notice {
            ahead: round_ahead(ahead),
            estimate_secs: estimate.map(round_estimate),
        }
    }
}

/// The jobs ahead as the user reads them: exact under 10, then rounded up to 5 under 50, to
/// 10 under 200 and to 50 beyond. "287 ahead" and "290 ahead" tell the user the same; exact
/// counts deep in a queue would change at every pass and cost an edit each.
pub fn round_ahead(n: u64) -> u64 {
    let step = match n {
        0..10 => 1,
        10..50 => 5,
        50..200 => 10,
        _ => 50,
    };
    n.div_ceil(step) * step
}

/// An estimate as the user reads it, rounded up: to 10 s under a minute, to 30 s under ten
/// minutes, to the minute beyond. Finer steps would change with every pass and cost an edit
/// each without telling the user anything.
pub fn round_estimate(d: Duration) -> u64 {
    let secs = d.as_secs_f64().ceil() as u64;
    let step = match secs {
        0..60 => 10,
        60..600 => 30,
        _ => 60,
    };
    secs.div_ceil(step).max(1) * step
}

/// The last edit a job's reply got: when (ms on the caller's clock) and what it said.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shown {
    pub at_ms: u64,
    pub notice: Notice,
}

/// When a waiting job's reply is edited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WaitingPolicy {
    /// No edit before the job has waited this long: a job the next free worker takes within
    /// it keeps Discord's "thinking…" and costs no call.
    pub first_after: Duration,
    /// At least this long between two edits of one reply; longer while the wait ahead is
    /// long ([`WaitingPolicy::gap`]).
    pub min_gap: Duration,
    /// No edit once the job is this old: its interaction token (15 minutes) is about to die,
    /// and the answer then goes to the channel instead.
    pub stop_after: Duration,
}

impl Default for WaitingPolicy {
    fn default() -> Self {
        Self {
            // A worker takes a job within milliseconds of a free slot; 3 s of waiting means
            // every slot is busy (and that the ack has long gone out).
            first_after: Duration::from_secs(3),
            // Discord limits edits of one message to about 5 per 5 s; one per 5 s per job
            // leaves room for the job's own progress and final edits, and the position of a
            // job in a queue that moves every second still reads as live.
            min_gap: Duration::from_secs(5),
            // A minute before the token's 15 minutes: an edit sent then still arrives alive.
            stop_after: Duration::from_secs(14 * 60),
        }
    }
}

impl WaitingPolicy {
    /// Whether a job that has waited `age` since its interaction was created, whose reply
    /// last showed `last` (none yet: `None`), is edited at `now_ms` to say `notice`: only
    /// when what it says changed, and not more often than [`min_gap`](Self::min_gap).
    pub fn should_edit(
        &self,
        age: Duration,
        now_ms: u64,
        last: Option<&Shown>,
        notice: Notice,
    ) -> bool {
        if age < self.first_after || age >= self.stop_after {
            return false;
        }
        match last {
            None => true,
            Some(s) => {
                s.notice != notice
                    && now_ms.saturating_sub(s.at_ms) >= self.gap(notice).as_millis() as u64
            }
        }
    }

    /// The gap before a reply that now says `notice` is edited again: `min_gap`, or a quarter
    /// of the wait still ahead when that is longer. A user told "about 2 minutes" learns
    /// nothing from an edit every 5 s; a deep queue would otherwise cost an edit per waiting
    /// job every `min_gap`, calls that grow with the backlog exactly when the instance is
    /// busiest. Near the front the gap falls back to `min_gap`, so the last stretch is live.
    pub fn gap(&self, notice: Notice) -> Duration {
        let remaining = Duration::from_secs(notice.estimate_secs.unwrap_or(0));
        self.min_gap.max(remaining / 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(user: u64, in_hand: u64) -> Waiting {
        Waiting {
            user,
            in_hand,
            last_served: 0,
            lateness: crate::fair::Lateness::OnTime,
        }
    }

    #[test]
    fn a_heavy_users_jobs_interleave_with_the_others() {
        // User 1 queued three jobs first, then users 2 and 3 one each.
        let view = [w(1, 0), w(1, 0), w(1, 0), w(2, 0), w(3, 0)];
        assert_eq!(fair_order(&view), vec![0, 3, 4, 1, 2]);
        // One job per user: first come, first served.
        assert_eq!(fair_order(&[w(4, 0), w(5, 0), w(6, 0)]), vec![0, 1, 2]);
        // A user with jobs in hand goes after those without.
        assert_eq!(fair_order(&[w(1, 2), w(2, 0)]), vec![1, 0]);
        assert!(fair_order(&[]).is_empty());
    }

    #[test]
    fn the_first_rank_is_the_fair_picks_choice() {
        let view = [w(1, 3), w(2, 1), w(3, 1)];
        let ranks = fair_order(&view);
        assert_eq!(ranks[fair_pick(&view).unwrap()], 0);
    }

    #[test]
    fn ranks_are_a_permutation() {
        // Every list of up to 6 jobs over 3 users with 0 or 1 in hand: exhaustive, so the
        // same cases every run.
        for n in 0..=6u32 {
            for code in 0..6u64.pow(n) {
                let view: Vec<Waiting> = (0..n)
                    .map(|i| {
                        let d = code / 6u64.pow(i) % 6;
                        w(d % 3, d / 3)
                    })
                    .collect();
                let mut ranks = fair_order(&view);
                ranks.sort_unstable();
                assert_eq!(ranks, (0..u64::from(n)).collect::<Vec<_>>(), "{view:?}");
            }
        }
    }

    #[test]
    fn places_round_up_in_steps_that_grow_with_the_queue() {
        assert_eq!(round_ahead(0), 0);
        assert_eq!(round_ahead(9), 9);
        assert_eq!(round_ahead(10), 10);
        assert_eq!(round_ahead(11), 15);
        assert_eq!(round_ahead(49), 50);
        assert_eq!(round_ahead(51), 60);
        assert_eq!(round_ahead(200), 200);
        assert_eq!(round_ahead(287), 300);
        assert_eq!(Notice::new(287, None).ahead, 300);
        assert_eq!(Notice::new(3, None).ahead, 3);
    }

    #[test]
    fn a_long_wait_is_edited_less_often() {
        let p = WaitingPolicy::default();
        let s = Duration::from_secs;
        assert_eq!(p.gap(Notice::new(3, Some(s(20)))), s(5));
        assert_eq!(p.gap(Notice::new(3, None)), s(5));
        assert_eq!(p.gap(Notice::new(300, Some(s(120)))), s(30));
        // Moved from 300 ahead and 2 minutes to 250 ahead and 90 s: edited after 22.5 s, not 5.
        let last = Shown {
            at_ms: 10_000,
            notice: Notice::new(300, Some(s(120))),
        };
        let moved = Notice::new(250, Some(s(90)));
        assert!(!p.should_edit(s(20), 32_499, Some(&last), moved));
        assert!(p.should_edit(s(20), 32_500, Some(&last), moved));
    }

    #[test]
    fn estimates_round_up_in_steps_that_grow_with_the_wait() {
        let s = Duration::from_secs;
        assert_eq!(round_estimate(Duration::from_millis(200)), 10);
        assert_eq!(round_estimate(s(41)), 50);
        assert_eq!(round_estimate(s(61)), 90);
        assert_eq!(round_estimate(s(601)), 660);
        assert_eq!(Notice::new(3, None).estimate_secs, None);
    }

    #[test]
    fn an_edit_waits_for_the_first_delay_a_change_and_the_gap() {
        let p = WaitingPolicy::default();
        let s = Duration::from_secs;
        let n = Notice::new(4, Some(s(20)));
        assert!(!p.should_edit(s(1), 1_000, None, n), "starts at once");
        assert!(p.should_edit(s(3), 3_000, None, n));
        let last = Shown {
            at_ms: 3_000,
            notice: n,
        };
        assert!(!p.should_edit(s(20), 20_000, Some(&last), n), "no change");
        let moved = Notice::new(2, Some(s(20)));
        assert!(!p.should_edit(s(7), 7_999, Some(&last), moved), "too soon");
        assert!(p.should_edit(s(8), 8_000, Some(&last), moved));
        assert!(
            !p.should_edit(s(14 * 60), 900_000, Some(&last), moved),
            "token dying"
        );
    }
}

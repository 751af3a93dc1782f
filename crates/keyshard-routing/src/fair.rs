//! Fair share under overload: which waiting job a worker takes next ([`fair_pick`]), how long
//! a new job is expected to wait ([`estimate_wait`]), and whether it is queued at all
//! ([`admit`]).
//!
//! The pick favours the user with the least service in hand: the fewest jobs in flight
//! cluster-wide, then the one served longest ago (a cluster-wide sequence number of the last
//! pick of that user's job), then the oldest job. A user who sends a hundred jobs has many in
//! flight as soon as workers free up, so every other user's job, with nothing in flight, goes
//! before that user's next one; and where one worker serves a kind, so that the heavy user's
//! previous job is done by the next pick, "served longest ago" still puts the others first.
//! That is round robin over users: nobody waits behind another user's hundredth job. With one
//! job per user the order stays first come, first served. The pick always returns a job when
//! any waits: the rule reorders, it never holds work back (work-conserving; a heavy user's job
//! runs the moment it is the only one).
//!
//! One exception bounds every wait ([`lateness`]): a job that has waited past half its
//! command's maximum wait is *overdue*, and an overdue job whose user has nothing in flight
//! goes first, oldest first; a job past nine tenths of it is *late* and goes first whatever
//! its user has in flight. Without it, under sustained overload a job of a user served a moment
//! ago is passed by every newly admitted job of a user served longer ago, and can wait far
//! past the maximum it was admitted under. "Nothing in flight" keeps the exception from undoing
//! the fair share: a heavy user, whose jobs run back to back, gets no more than the rule gives
//! it until a job of theirs is about to break its promise; a user with one job at a time
//! (everyone, when the overload is many users) is not passed for good.
//!
//! The wait estimate is the overload rule's arithmetic (waiting ÷ service rate) for one kind:
//! the jobs of that kind waiting in the queue the new one joins, plus the new one, over the
//! rate at which that queue is served. It is what a job of a user with nothing in hand waits at
//! most under the fair pick, and roughly what anyone waits when no one is heavy.

use std::time::Duration;

use crate::UserId;

/// One job waiting for a worker, as the pick sees it: whose it is, and how many jobs that
/// user has in flight across the cluster right now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waiting {
    pub user: UserId,
    /// The user's jobs in flight cluster-wide (all kinds): the service in hand.
    pub in_hand: u64,
    /// When a job of this user was last picked, as a cluster-wide sequence number that only
    /// grows (no clocks to compare); 0 for never (or forgotten).
    pub last_served: u64,
    /// How much of its command's maximum wait the job has used ([`lateness`]).
    pub lateness: Lateness,
}

/// How much of its command's maximum wait a waiting job has used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lateness {
    /// Under half: the fair order alone.
    #[default]
    OnTime,
    /// Half or more: first, oldest first, when its user has nothing in flight.
    Overdue,
    /// Nine tenths or more: first, oldest first, whatever its user has in flight.
    Late,
}

/// The lateness of a job that has waited `waited` against its command's `max_wait` (none:
/// always on time). Half leaves the other half for the overdue jobs before it, served oldest
/// first, and for its own run.
pub fn lateness(waited: Duration, max_wait: Option<Duration>) -> Lateness {
    match max_wait {
        Some(max) if waited >= max.mul_f64(0.9) => Lateness::Late,
        Some(max) if waited >= max / 2 => Lateness::Overdue,
        _ => Lateness::OnTime,
    }
}

/// The index of the job to run next in `waiting` (oldest first): the oldest late job; else
/// the oldest overdue job of a user with nothing in flight; otherwise the first job of a user
/// with the least service in hand, served longest ago among equals. `None` only when nothing
/// waits.
pub fn fair_pick(waiting: &[Waiting]) -> Option<usize> {
    let first = |urgent: fn(&Waiting) -> bool| waiting.iter().position(urgent);
    if let Some(i) = first(|w| w.lateness == Lateness::Late)
        .or_else(|| first(|w| w.lateness == Lateness::Overdue && w.in_hand == 0))
    {
        return Some(i);
    }
    // `min_by_key` keeps the first of equal keys, so ties go to the oldest job.
    waiting
        .iter()
        .enumerate()
        .min_by_key(|(_, w)| (w.in_hand, w.last_served))
        .map(|(i, _)| i)
}

/// The expected wait of a new job with `ahead` jobs of its kind waiting before it, when the
/// queue is served at `rate` jobs per second and a job of the kind takes `service` to run:
/// `ahead ÷ rate` until it starts, then its own run (at least `1 ÷ rate`: no less than one
/// more job's share of the rate). A video renders for seconds while its queue moves a job
/// every half second, so counting the job itself as one more `1 ÷ rate` would promise it too
/// early. `None` when the rate is unknown (0, negative or not finite: nothing finished
/// recently), where no estimate is honest.
pub fn estimate_wait(ahead: u64, rate: f64, service: Duration) -> Option<Duration> {
    if !rate.is_finite() || rate <= 0.0 {
        return None;
    }
    let secs = ahead as f64 / rate + service.as_secs_f64().max(1.0 / rate);
    Duration::try_from_secs_f64(secs).ok()
}

/// Whether a new job is queued, with its expected wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Queue it. `estimate`: its expected wait, when one is known.
    Queue { estimate: Option<Duration> },
    /// Do not queue it: the expected wait is past the command's maximum.
    Refuse { estimate: Duration },
}

/// Queues a job whose expected wait is at most `max_wait`, or unknown (a cluster that has
/// not finished anything lately has no backlog worth refusing for: it answers the job, and
/// the rate it measures meanwhile makes the next estimate).
pub fn admit(estimate: Option<Duration>, max_wait: Duration) -> Admission {
    match estimate {
        Some(e) if e > max_wait => Admission::Refuse { estimate: e },
        estimate => Admission::Queue { estimate },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(user: UserId, in_hand: u64) -> Waiting {
        Waiting {
            user,
            in_hand,
            last_served: 0,
            lateness: Lateness::OnTime,
        }
    }

    #[test]
    fn overdue_jobs_of_users_with_nothing_in_flight_and_late_jobs_go_first_oldest_first() {
        let overdue = |user, in_hand| Waiting {
            lateness: Lateness::Overdue,
            ..w(user, in_hand)
        };
        let late = |user, in_hand| Waiting {
            lateness: Lateness::Late,
            ..w(user, in_hand)
        };
        assert_eq!(fair_pick(&[w(1, 1), overdue(2, 0), overdue(3, 0)]), Some(1));
        // An overdue job of a user with jobs in flight: no more than the fair order gives it.
        assert_eq!(fair_pick(&[w(1, 1), overdue(2, 5), w(3, 0)]), Some(2));
        // A late one goes first all the same, before any overdue one.
        assert_eq!(
            fair_pick(&[w(3, 0), overdue(4, 0), late(2, 5), late(5, 0)]),
            Some(2)
        );
        assert_eq!(
            fair_pick(&[w(1, 0), w(2, 0)]),
            Some(0),
            "none overdue: fair"
        );
        let max = Some(Duration::from_secs(60));
        assert_eq!(lateness(Duration::from_secs(29), max), Lateness::OnTime);
        assert_eq!(lateness(Duration::from_secs(30), max), Lateness::Overdue);
        assert_eq!(lateness(Duration::from_secs(54), max), Lateness::Late);
        assert_eq!(lateness(Duration::from_secs(3600), None), Lateness::OnTime);
    }

    #[test]
    fn the_user_with_least_in_hand_goes_first_and_ties_go_to_the_oldest() {
        assert_eq!(fair_pick(&[]), None);
        assert_eq!(fair_pick(&[w(1, 3)]), Some(0), "work-conserving");
        assert_eq!(fair_pick(&[w(1, 3), w(1, 3), w(2, 0)]), Some(2));
        assert_eq!(fair_pick(&[w(1, 1), w(2, 1), w(3, 1)]), Some(0));
        assert_eq!(fair_pick(&[w(1, 2), w(2, 1), w(3, 1)]), Some(1));
        let served = |user, last_served| Waiting {
            last_served,
            ..w(user, 0)
        };
        assert_eq!(
            fair_pick(&[served(1, 7), served(2, 9), served(3, 0)]),
            Some(2)
        );
        assert_eq!(fair_pick(&[served(1, 7), served(2, 9)]), Some(0));
    }

    #[test]
    fn the_estimate_counts_the_new_jobs_run_and_needs_a_rate() {
        let none = Duration::ZERO;
        assert_eq!(estimate_wait(9, 2.0, none), Some(Duration::from_secs(5)));
        assert_eq!(estimate_wait(0, 1.0, none), Some(Duration::from_secs(1)));
        // A long run counts in full: 9 ahead at 2/s, then 7 s of rendering.
        let render = Duration::from_secs(7);
        assert_eq!(
            estimate_wait(9, 2.0, render),
            Some(Duration::from_millis(11_500))
        );
        assert_eq!(estimate_wait(10, 0.0, render), None);
        assert_eq!(estimate_wait(10, f64::NAN, none), None);
        assert_eq!(estimate_wait(10, -1.0, none), None);
    }

    #[test]
    fn admission_refuses_only_a_known_wait_past_the_maximum() {
        let max = Duration::from_secs(60);
        let at = Duration::from_secs(60);
        assert_eq!(
            admit(Some(at), max),
            Admission::Queue { estimate: Some(at) }
        );
        let over = Duration::from_secs(61);
        assert_eq!(admit(Some(over), max), Admission::Refuse { estimate: over });
        assert_eq!(admit(None, max), Admission::Queue { estimate: None });
    }
}

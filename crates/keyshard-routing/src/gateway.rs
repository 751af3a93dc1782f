//! Gateway policy: how many shards, when one shard may IDENTIFY, how long a restarting
//! instance waits before its first one.
//!
//! Discord allows one IDENTIFY per `shard_id % max_concurrency` bucket per 5 s and about 1000
//! a day for the whole token (every shard, every process). The cluster spends that budget
//! together: the mechanism (`keyshard-cluster::gateway`) reads the bucket's slot, the day's
//! count and this instance's backoff from Redis in one round trip, [`identify_turn`] says what
//! to do with them, and after the atomic take [`keeps_reserve`] says whether the take stands.
//! A crash-looping instance waits [`restart_delay`] before its first IDENTIFY, doubling with
//! every start that did not end in a clean stop or a stable run.
//!
//! Plain values in, plain values out: the time is always a parameter.

use std::time::Duration;

/// `session_start_limit` of `GET /gateway/bot`, as plain data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBudget {
    /// Session starts (IDENTIFYs) allowed per day.
    pub total: u32,
    /// Left in the current day.
    pub remaining: u32,
    /// Until the day's count resets.
    pub reset_after: Duration,
    /// IDENTIFYs allowed at the same time, one per bucket.
    pub max_concurrency: u32,
}

/// `SHARD_COUNT`: Discord's recommendation or a fixed number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardSetting {
    /// `auto`: the `shards` of `GET /gateway/bot`.
    Auto,
    Fixed(u32),
}

/// The shard count to run with: the fixed one, or Discord's recommendation (at least 1).
pub fn shard_count(setting: ShardSetting, recommended: u32) -> u32 {
    match setting {
        ShardSetting::Fixed(n) => n.max(1),
        ShardSetting::Auto => recommended.max(1),
    }
}

/// The rate-limit bucket of a shard: `shard_id % max_concurrency`.
pub fn bucket(shard_id: u32, max_concurrency: u32) -> u32 {
    shard_id % max_concurrency.max(1)
}

/// The cluster-wide IDENTIFY rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentifyPolicy {
    /// One IDENTIFY per bucket per this long (Discord: 5 s).
    pub window: Duration,
    /// IDENTIFYs never bring the day's `remaining` below this: what is left for an operator's
    /// emergency restart after a bad day.
    pub reserve: u32,
}

impl IdentifyPolicy {
    /// How long a bucket's slot is held after an IDENTIFY: the window plus a tenth of it (at
    /// least 100 ms). Discord measures the window between the IDENTIFYs it receives, the queue
    /// between the grants it gives, and what lies between (the relay, the network, a busy
    /// process) is not the same for every IDENTIFY: two grants exactly a window apart can
    /// arrive less than one apart and the second gets op 9 (seen at a 500 ms window on a
    /// loaded test box). A tenth costs 8 s over a cold start of sixteen shards at Discord's 5 s.
    pub fn slot_hold(&self) -> Duration {
        self.window + (self.window / 10).max(Duration::from_millis(100))
    }
}

/// How long an instance at the reserve waits before it looks again: the count only goes up
/// when Discord's day resets, but re-reading it once a minute also catches a count that
/// drifted low (another process using the token, a Redis that lost the key) at the cost of one
/// `GET /gateway/bot` a minute.
pub const RESERVE_RECHECK: Duration = Duration::from_secs(60);

/// What one instance knows when it asks to IDENTIFY a shard (read from Redis in one trip).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IdentifyView {
    /// How much longer the bucket's slot is held by the last IDENTIFY; `None` when free.
    pub bucket_busy_for: Option<Duration>,
    /// The cluster's count of IDENTIFYs left today; `None` when nobody has read it yet today
    /// (or Redis lost it).
    pub remaining: Option<u32>,
    /// When that count resets (the key's TTL); `None` when unknown.
    pub resets_in: Option<Duration>,
    /// What is left of this instance's own restart backoff.
    pub backoff_left: Duration,
}

/// Why an IDENTIFY waits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// This instance restarted without a clean stop: its restart backoff runs.
    Backoff,
    /// Another IDENTIFY of the same bucket went out less than a window ago.
    Bucket,
}

/// What to do about one IDENTIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdentifyTurn {
    /// Take the bucket's slot and a unit of the day's budget now.
    Now,
    /// Ask again after `delay`.
    Wait { delay: Duration, why: WaitReason },
    /// The day's budget is at the reserve: wait (and say so) until `retry_in`, then re-read it.
    AtReserve {
        remaining: u32,
        reserve: u32,
        retry_in: Duration,
    },
    /// The day's count is unknown: read `GET /gateway/bot` and store it first.
    RefreshBudget,
}

/// What to do about one IDENTIFY, given the view. The instance's own backoff comes first (it
/// holds every IDENTIFY of the process), then the day's budget (nothing to gain from a slot
/// without budget), then the bucket.
pub fn identify_turn(view: &IdentifyView, policy: &IdentifyPolicy) -> IdentifyTurn {
    if !view.backoff_left.is_zero() {
        return IdentifyTurn::Wait {
            delay: view.backoff_left,
            why: WaitReason::Backoff,
        };
    }
    let Some(remaining) = view.remaining else {
        return IdentifyTurn::RefreshBudget;
    };
    if remaining <= policy.reserve {
        let retry_in = view
            .resets_in
            .map_or(RESERVE_RECHECK, |r| r.min(RESERVE_RECHECK));
        return IdentifyTurn::AtReserve {
            remaining,
            reserve: policy.reserve,
            retry_in,
        };
    }
    match view.bucket_busy_for {
        Some(busy) if !busy.is_zero() => IdentifyTurn::Wait {
            delay: busy,
            why: WaitReason::Bucket,
        },
        _ => IdentifyTurn::Now,
    }
}

/// After the atomic take (slot set, count decremented to `remaining_after`): whether the
/// IDENTIFY may go. Two instances that both saw room decrement one after the other, so only
/// takes that leave at least the reserve stand; the others give their unit back.
pub fn keeps_reserve(remaining_after: i64, reserve: u32) -> bool {
    remaining_after >= i64::from(reserve)
}

/// Without Redis: one IDENTIFY per `hold` (the slot hold) from this process, serenity's own
/// rule, counted from its last one at `last_ms`.
pub fn local_delay(last_ms: Option<u64>, now_ms: u64, hold: Duration) -> Duration {
    match last_ms {
        None => Duration::ZERO,
        Some(last) => {
            let next = last.saturating_add(hold.as_millis() as u64);
            Duration::from_millis(next.saturating_sub(now_ms))
        }
    }
}

/// The restart backoff: starts that follow a crash wait before their first IDENTIFY.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// The wait of the first start after a crash; each further one doubles it.
    pub base: Duration,
    /// The longest wait.
    pub max: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            // One bucket window: a single crash costs about what one more IDENTIFY in the
            // queue would.
            base: Duration::from_secs(5),
            // Ten minutes caps a crash loop at 144 starts a day, a seventh of Discord's 1000,
            // while an operator's fix is picked up within ten minutes.
            max: Duration::from_secs(600),
        }
    }
}

/// The wait before the first IDENTIFY of a start that is number `starts_in_a_row` since the
/// last clean stop or stable run (1 = a normal start: no wait).
pub fn restart_delay(starts_in_a_row: u32, policy: &RestartPolicy) -> Duration {
    if starts_in_a_row <= 1 {
        return Duration::ZERO;
    }
    let doublings = (starts_in_a_row - 2).min(32);
    let delay = policy.base.saturating_mul(1u32 << doublings.min(31));
    delay.min(policy.max)
}

/// How many starts of a crash loop get to IDENTIFY within `span`, if each one does so as soon
/// as its backoff allows and crashes at once (the worst case for the day's budget): the bound
/// a crash loop's IDENTIFYs stay within, per shard it runs.
pub fn starts_within(span: Duration, policy: &RestartPolicy) -> u32 {
    let mut at = Duration::ZERO;
    let mut n = 0u32;
    loop {
        let next = at + restart_delay(n + 1, policy);
        if next > span {
            return n;
        }
        at = next;
        n += 1;
        if n == u32::MAX {
            return n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> IdentifyPolicy {
        IdentifyPolicy {
            window: Duration::from_secs(5),
            reserve: 50,
        }
    }

    fn view(remaining: u32) -> IdentifyView {
        IdentifyView {
            remaining: Some(remaining),
            resets_in: Some(Duration::from_secs(3_600)),
            ..IdentifyView::default()
        }
    }

    #[test]
    fn a_slot_is_held_a_little_longer_than_the_window() {
        assert_eq!(policy().slot_hold(), Duration::from_millis(5_500));
        let short = IdentifyPolicy {
            window: Duration::from_millis(500),
            reserve: 0,
        };
        assert_eq!(short.slot_hold(), Duration::from_millis(600));
    }

    #[test]
    fn the_order_is_backoff_budget_bucket() {
        let mut v = IdentifyView {
            backoff_left: Duration::from_secs(3),
            bucket_busy_for: Some(Duration::from_secs(1)),
            ..view(10)
        };
        assert_eq!(
            identify_turn(&v, &policy()),
            IdentifyTurn::Wait {
                delay: Duration::from_secs(3),
                why: WaitReason::Backoff
            }
        );
        v.backoff_left = Duration::ZERO;
        assert_eq!(
            identify_turn(&v, &policy()),
            IdentifyTurn::AtReserve {
                remaining: 10,
                reserve: 50,
                retry_in: RESERVE_RECHECK
            }
        );
        v.remaining = Some(51);
        assert_eq!(
            identify_turn(&v, &policy()),
            IdentifyTurn::Wait {
                delay: Duration::from_secs(1),
                why: WaitReason::Bucket
            }
        );
        v.bucket_busy_for = None;
        assert_eq!(identify_turn(&v, &policy()), IdentifyTurn::Now);
        v.remaining = None;
        assert_eq!(identify_turn(&v, &policy()), IdentifyTurn::RefreshBudget);
    }

    #[test]
    fn at_the_reserve_it_looks_again_at_the_reset_or_within_a_minute() {
        let v = IdentifyView {
            resets_in: Some(Duration::from_secs(20)),
            ..view(50)
        };
        assert!(matches!(
            identify_turn(&v, &policy()),
            IdentifyTurn::AtReserve { retry_in, .. } if retry_in == Duration::from_secs(20)
        ));
    }

    #[test]
    fn a_take_stands_only_if_it_leaves_the_reserve() {
        assert!(keeps_reserve(50, 50));
        assert!(!keeps_reserve(49, 50));
        assert!(!keeps_reserve(-1, 0));
        assert!(keeps_reserve(0, 0));
    }

    #[test]
    fn restarts_double_from_the_second_and_stop_at_the_cap() {
        let p = RestartPolicy::default();
        let waits: Vec<u64> = (1..=10).map(|n| restart_delay(n, &p).as_secs()).collect();
        assert_eq!(waits, [0, 5, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(restart_delay(u32::MAX, &p), p.max);
    }

    #[test]
    fn a_five_minute_crash_loop_gets_six_starts() {
        // Starts at 0, 5, 15, 35, 75, 155 s; the next would be at 315 s.
        assert_eq!(
            starts_within(Duration::from_secs(300), &RestartPolicy::default()),
            6
        );
        // A day: 8 starts to reach the cap (at 635 s), then one every 10 minutes.
        let day = starts_within(Duration::from_secs(86_400), &RestartPolicy::default());
        assert_eq!(day, 8 + (86_400 - 635) / 600);
    }

    #[test]
    fn shard_count_and_buckets() {
        assert_eq!(shard_count(ShardSetting::Auto, 0), 1);
        assert_eq!(shard_count(ShardSetting::Auto, 6), 6);
        assert_eq!(shard_count(ShardSetting::Fixed(4), 6), 4);
        assert_eq!(bucket(5, 1), 0);
        assert_eq!(bucket(5, 16), 5);
        assert_eq!(bucket(17, 16), 1);
        assert_eq!(bucket(3, 0), 0);
    }

    #[test]
    fn without_redis_one_identify_per_window() {
        let w = Duration::from_secs(5);
        assert_eq!(local_delay(None, 1_000, w), Duration::ZERO);
        assert_eq!(local_delay(Some(1_000), 2_000, w), Duration::from_secs(4));
        assert_eq!(local_delay(Some(1_000), 9_000, w), Duration::ZERO);
    }
}

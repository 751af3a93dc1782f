//! Pure routing policy for a keyshard cluster: who owns a user, when an instance counts as
//! overloaded, who answers when the owner cannot, and how long a fallback waits before it
//! tries to claim an interaction.
//!
//! Nothing in this crate does I/O or reads a clock. Callers pass in a [`Membership`] snapshot
//! (built by `keyshard-cluster` from Redis) and the current time, and get plain answers back,
//! so every rule here is tested with property tests over random snapshots.
//!
//! - [`owner`]: `primary(u) = u % N + 1`, the ladder, and the effective owner with its reason.
//! - [`load`]: one instance's published load, its estimated queue wait and the overload rule.
//! - [`claim`]: the fallback-claim schedule by rank on the ladder.
//! - [`placement`]: where job work goes between instances: the peer a job moves to when this
//!   instance's key cannot serve it ([`move_target`]), and whom an idle worker takes a waiting
//!   job of its kind from ([`steal_order`]).
//! - [`fair`]: fair share under overload: the next waiting job a worker takes (the user with
//!   the least service in hand first, [`fair_pick`]), a new job's expected wait
//!   ([`estimate_wait`]) and whether it is queued or refused ([`admit`]).
//! - [`quota`]: quotas and cooldowns per user and guild per command: the rules, the day in
//!   `QUOTA_TIMEZONE` with the clock passed in ([`QuotaZone::day`]), and the verdict for one
//!   interaction ([`judge`] → [`Verdict`]).
//! - [`rate`]: the service-rate estimate behind the overload rule ([`ServiceRate`]).
//! - [`snowflake`]: a Discord snowflake's creation time and the 3 s acknowledgement deadline.
//! - [`waiting`]: honest waiting: a waiting job's place in the fair pick's order
//!   ([`fair_order`]), what its reply says ([`Notice`]) and when it is edited
//!   ([`WaitingPolicy`]).
//! - [`gateway`]: the shard count, when a shard may IDENTIFY (one per bucket per window, never
//!   below the day's reserve: [`identify_turn`], [`keeps_reserve`]), and the restart backoff of
//!   a crash-looping instance ([`restart_delay`]).

pub mod claim;
pub mod fair;
pub mod gateway;
pub mod load;
pub mod owner;
pub mod placement;
pub mod quota;
pub mod rate;
pub mod snowflake;
pub mod waiting;

pub use claim::{claim_turn, sweep_delay, ClaimTiming, ClaimTurn};
pub use fair::{admit, estimate_wait, fair_pick, lateness, Admission, Lateness, Waiting};
pub use gateway::{
    bucket, identify_turn, keeps_reserve, local_delay, restart_delay, shard_count, starts_within,
    IdentifyPolicy, IdentifyTurn, IdentifyView, RestartPolicy, SessionBudget, ShardSetting,
    WaitReason,
};
pub use load::{InstanceState, Membership, OverloadPolicy};
pub use owner::{effective_owner, ladder, ladder_from, primary, Assignment, Reason};
pub use placement::{move_target, steal_order};
pub use quota::{
    drift, judge, merge, remaining, Day, Limits, Override, Plan, QuotaCommand, QuotaRules,
    QuotaZone, Remaining, Rule, Used, Verdict,
};
pub use rate::ServiceRate;
pub use snowflake::{
    ack_deadline_ms, created_at_ms, snowflake_at, ACK_WINDOW_MS, DISCORD_EPOCH_MS,
};
pub use waiting::{fair_order, round_ahead, round_estimate, Notice, Shown, WaitingPolicy};

/// An instance number, 1-based: instance `k` of an `N`-instance cluster has `1 <= k <= N`.
pub type InstanceId = u32;

/// A Discord user id (a snowflake).
pub type UserId = u64;

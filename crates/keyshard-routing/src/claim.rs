//! The fallback-claim schedule: when each instance tries to claim an interaction.
//!
//! The effective owner claims at once. Every other instance that believes itself alive waits
//! `grace + rank · step`, where `rank` counts live instances on the ladder after the owner
//! (0 for the first), and then tries the same `SET NX`. If the owner claimed, the key exists
//! and the fallback drops the interaction; if the owner crashed or stalled, the first fallback
//! answers. Fallback times are squeezed so that the last one still lands before the ack
//! deadline derived from the interaction's snowflake, but never below `grace`, so a skewed
//! local clock cannot make fallbacks race a healthy owner.

use std::borrow::Cow;
use std::time::Duration;

use crate::load::{Membership, OverloadPolicy};
use crate::owner::{effective_owner, ladder_from, Assignment};
use crate::snowflake::ack_deadline_ms;
use crate::{InstanceId, UserId};

/// Timing of fallback claims.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimTiming {
    /// How long the first fallback gives the owner to claim.
    pub grace: Duration,
    /// How much longer each further fallback waits than the one before it.
    pub step: Duration,
    /// Time kept in hand before the ack deadline for the claim and the callback request.
    pub margin: Duration,
    /// How long a claim holds before its owner confirms it acknowledged the interaction. An
    /// owner that dies between claim and acknowledgement lets the claim lapse after this, and
    /// the first fallback's sweep answers instead.
    pub pending: Duration,
    /// When the first fallback looks again (after receipt) for a claim that lapsed unconfirmed;
    /// later than `pending` past any owner's claim, and squeezed before the ack deadline.
    pub sweep: Duration,
}

impl Default for ClaimTiming {
    fn default() -> Self {
        Self {
            // An owner claims within a Redis round trip of receiving the event (well under 10 ms);
            // 400 ms covers a GC-free but busy process and gateway jitter between sessions.
            grace: Duration::from_millis(400),
            step: Duration::from_millis(300),
            // The claim plus the callback POST; generous for a loopback or same-region Discord.
            margin: Duration::from_millis(500),
            // An owner acknowledges within milliseconds of its claim; 1.5 s leaves room for a
            // slow Discord answer while lapsing well before the sweep.
            pending: Duration::from_millis(1_500),
            sweep: Duration::from_millis(2_000),
        }
    }
}

/// What one instance should do with an interaction it received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimTurn {
    /// This instance is the effective owner: claim now.
    Now(Assignment),
    /// This instance is fallback number `rank` (0-based): try to claim after `delay`.
    After {
        assignment: Assignment,
        rank: u32,
        delay: Duration,
    },
}

impl ClaimTurn {
    pub fn assignment(&self) -> &Assignment {
        match self {
            ClaimTurn::Now(a) | ClaimTurn::After { assignment: a, .. } => a,
        }
    }

    /// How long to wait before trying to claim.
    pub fn delay(&self) -> Duration {
        match self {
            ClaimTurn::Now(_) => Duration::ZERO,
            ClaimTurn::After { delay, .. } => *delay,
        }
    }
}

/// When instance `me` should try to claim interaction `interaction_id` from `user`, received at
/// Unix time `now_ms`. `me` counts as alive whatever the snapshot says: it is running this code.
pub fn claim_turn(
    me: InstanceId,
    user: UserId,
    interaction_id: u64,
    now_ms: u64,
    members: &Membership,
    policy: &OverloadPolicy,
    timing: &ClaimTiming,
) -> ClaimTurn {
    // Every instance runs this for every interaction it receives: copy the snapshot (every
    // instance's state, with its per-kind waiting map) only in the rare case that it has `me`
    // dead (a heartbeat that lapsed while this instance was stalled).
    let view = match members.get(me) {
        Some(own) if !own.alive => {
            let mut view = members.clone();
            view.set(crate::InstanceState {
                alive: true,
                ..own.clone()
            });
            Cow::Owned(view)
        }
        _ => Cow::Borrowed(members),
    };
    let assignment = effective_owner(user, &view, policy);
    let owner = match assignment.owner {
        Some(owner) if owner != me => owner,
        _ => return ClaimTurn::Now(assignment),
    };

    let count = view.count();
    let rank = ladder_from(owner, count)
        .skip(1)
        .filter(|&id| id == me || view.get(id).is_some_and(|s| s.alive))
        .position(|id| id == me)
        .unwrap_or(0) as u32;
    let wanted = timing.grace + timing.step * rank;
    let latest = ack_deadline_ms(interaction_id)
        .saturating_sub(timing.margin.as_millis() as u64)
        .saturating_sub(now_ms);
    let delay = wanted.min(Duration::from_millis(latest).max(timing.grace));
    ClaimTurn::After {
        assignment,
        rank,
        delay,
    }
}

/// How long, from `now_ms`, the first fallback waits before its sweep for an unconfirmed
/// claim: until `sweep` after receipt (`received_ms`), but no later than the ack deadline less
/// `margin`.
pub fn sweep_delay(
    interaction_id: u64,
    received_ms: u64,
    now_ms: u64,
    timing: &ClaimTiming,
) -> Duration {
    let at = (received_ms + timing.sweep.as_millis() as u64)
        .min(ack_deadline_ms(interaction_id).saturating_sub(timing.margin.as_millis() as u64));
    Duration::from_millis(at.saturating_sub(now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snowflake::snowflake_at;

    const NOW: u64 = 1_790_000_000_000;

    #[test]
    fn owner_claims_now_others_wait_by_rank() {
        let m = Membership::all_idle(4);
        let id = snowflake_at(NOW, 1);
        let t = ClaimTiming::default();
        let p = OverloadPolicy::default();
        // user 1 -> primary 2; ladder after 2 is 3, 4, 1.
        assert!(matches!(
            claim_turn(2, 1, id, NOW, &m, &p, &t),
            ClaimTurn::Now(_)
        ));
        let delays: Vec<_> = [3, 4, 1]
            .iter()
            .map(|&me| claim_turn(me, 1, id, NOW, &m, &p, &t).delay())
            .collect();
        assert_eq!(
            delays,
            vec![t.grace, t.grace + t.step, t.grace + t.step * 2]
        );
    }

    #[test]
    fn an_instance_counts_itself_alive_whatever_the_snapshot_says() {
        // Instance 2's own heartbeat lapsed in the snapshot (it was stalled): it still owns
        // its user 1, and as a fallback for user 3 (primary 4) it keeps its rank after 1.
        let mut m = Membership::all_idle(4);
        let own = m.get(2).unwrap().clone();
        m.set(crate::InstanceState {
            alive: false,
            ..own
        });
        let id = snowflake_at(NOW, 1);
        let t = ClaimTiming::default();
        let p = OverloadPolicy::default();
        match claim_turn(2, 1, id, NOW, &m, &p, &t) {
            ClaimTurn::Now(a) => assert_eq!(a.owner, Some(2)),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            claim_turn(2, 3, id, NOW, &m, &p, &t).delay(),
            t.grace + t.step
        );
        // Its peers see it dead: user 1 goes to the next on the ladder, 3.
        assert!(matches!(
            claim_turn(3, 1, id, NOW, &m, &p, &t),
            ClaimTurn::Now(_)
        ));
    }

    #[test]
    fn the_sweep_comes_before_the_deadline() {
        let id = snowflake_at(NOW, 1);
        let t = ClaimTiming::default();
        // Received 50 ms after creation, asked at the end of a 400 ms grace.
        assert_eq!(
            sweep_delay(id, NOW + 50, NOW + 450, &t),
            Duration::from_millis(1_600)
        );
        // Received 1 s late: deadline − margin (creation + 2.5 s) comes before receipt + 2 s.
        assert_eq!(
            sweep_delay(id, NOW + 1_000, NOW + 1_400, &t),
            Duration::from_millis(1_100)
        );
        assert_eq!(
            sweep_delay(id, NOW + 5_000, NOW + 5_400, &t),
            Duration::ZERO
        );
    }

    #[test]
    fn late_arrival_is_squeezed_but_keeps_grace() {
        let m = Membership::all_idle(4);
        let id = snowflake_at(NOW, 1);
        let t = ClaimTiming::default();
        // Received 2.2 s after creation: only 300 ms left before deadline - margin.
        let turn = claim_turn(1, 1, id, NOW + 2_200, &m, &OverloadPolicy::default(), &t);
        assert_eq!(turn.delay(), t.grace);
    }
}

//! Who owns a user: the primary instance, the ladder of fallbacks, and the effective owner.

use serde::{Deserialize, Serialize};

use crate::load::{Membership, OverloadPolicy};
use crate::{InstanceId, UserId};

/// The user's primary instance: `user % N + 1` (the rule the whole cluster agrees on).
///
/// # Panics
/// If `count` is 0.
pub fn primary(user: UserId, count: u32) -> InstanceId {
    assert!(count > 0, "a cluster has at least one instance");
    (user % u64::from(count)) as InstanceId + 1
}

/// The ladder of a user: the primary first, then `primary + 1`, … wrapping around, so every
/// instance appears exactly once.
pub fn ladder(user: UserId, count: u32) -> impl Iterator<Item = InstanceId> {
    ladder_from(primary(user, count), count)
}

/// Every instance once, starting at `first` and wrapping around: `first, first + 1, …, first - 1`.
pub fn ladder_from(first: InstanceId, count: u32) -> impl Iterator<Item = InstanceId> {
    (0..count).map(move |k| (first - 1 + k) % count + 1)
}

/// Why the effective owner is who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The primary is alive and not overloaded.
    Primary,
    /// The primary is down; the first live, not overloaded instance on the ladder takes over.
    PrimaryDown,
    /// The primary is overloaded or draining; the first available instance on the ladder takes over.
    PrimaryOverloaded,
    /// Every live instance is overloaded: the one with the smallest estimated wait answers.
    AllOverloaded,
    /// No instance is alive as far as this snapshot knows.
    NoneAlive,
}

impl Reason {
    /// Whether the owner is someone other than the primary because the primary was down.
    pub fn is_takeover_down(self) -> bool {
        self == Reason::PrimaryDown
    }

    /// A short English phrase for operators (CLI, logs).
    pub fn describe(self) -> &'static str {
        match self {
            Reason::Primary => "primary is alive and not overloaded",
            Reason::PrimaryDown => "primary is down; next alive instance on the ladder",
            Reason::PrimaryOverloaded => {
                "primary is overloaded or draining; next available instance on the ladder"
            }
            Reason::AllOverloaded => "every alive instance is overloaded; smallest estimated wait",
            Reason::NoneAlive => "no instance is alive",
        }
    }
}

/// The routing decision for one user against one snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub user: UserId,
    pub primary: InstanceId,
    /// The instance that should answer now; `None` only when no instance is alive.
    pub owner: Option<InstanceId>,
    pub reason: Reason,
}

/// The effective owner of `user`: the first alive, not overloaded instance on the ladder; if
/// every alive one is overloaded, the alive one with the smallest estimated wait (ties go to
/// the earlier one on the ladder, so every instance decides alike).
pub fn effective_owner(user: UserId, members: &Membership, policy: &OverloadPolicy) -> Assignment {
    let count = members.count();
    let primary = primary(user, count);
    let state = |id| members.get(id).expect("ladder ids are within 1..=N");

    let available = ladder(user, count).find(|&id| state(id).is_available(policy));
    let (owner, reason) = match available {
        Some(id) if id == primary => (Some(id), Reason::Primary),
        Some(id) if state(primary).alive => (Some(id), Reason::PrimaryOverloaded),
        Some(id) => (Some(id), Reason::PrimaryDown),
        None => {
            let least_loaded = ladder(user, count)
                .filter(|&id| state(id).alive)
                .min_by_key(|&id| state(id).estimated_wait(policy));
            match least_loaded {
                Some(id) => (Some(id), Reason::AllOverloaded),
                None => (None, Reason::NoneAlive),
            }
        }
    };
    Assignment {
        user,
        primary,
        owner,
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::InstanceState;

    #[test]
    fn primary_follows_the_mission_rule() {
        assert_eq!(primary(12345, 4), 2);
        assert_eq!(primary(0, 4), 1);
        assert_eq!(primary(3, 4), 4);
        assert_eq!(primary(u64::MAX, 1), 1);
    }

    #[test]
    fn ladder_wraps_around() {
        assert_eq!(ladder(2, 4).collect::<Vec<_>>(), vec![3, 4, 1, 2]);
        assert_eq!(ladder(7, 1).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn dead_primary_hands_over_to_next_on_ladder() {
        let mut m = Membership::all_idle(4);
        m.set(InstanceState::unknown(3));
        let a = effective_owner(2, &m, &OverloadPolicy::default());
        assert_eq!(
            (a.primary, a.owner, a.reason),
            (3, Some(4), Reason::PrimaryDown)
        );
    }

    #[test]
    fn all_overloaded_picks_smallest_wait() {
        let mut m = Membership::all_idle(3);
        for (id, q) in [(1, 100), (2, 40), (3, 70)] {
            m.set(InstanceState {
                queue_depth: q,
                service_rate: 1.0,
                ..InstanceState::idle(id)
            });
        }
        let a = effective_owner(0, &m, &OverloadPolicy::default());
        assert_eq!((a.owner, a.reason), (Some(2), Reason::AllOverloaded));
    }

    #[test]
    fn nobody_alive_means_no_owner() {
        let a = effective_owner(5, &Membership::new(4), &OverloadPolicy::default());
        assert_eq!((a.owner, a.reason), (None, Reason::NoneAlive));
    }
}

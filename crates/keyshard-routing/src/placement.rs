//! Where job work goes between instances: the peer a job moves to when this instance's key
//! cannot serve it, and the peers a worker with nothing to do takes a waiting job from.
//!
//! Job kinds are opaque names here (`"chat"`, `"image"`, …): the cluster crate owns the kinds,
//! and a name, unlike a position, means the same thing to two versions of the software
//! during a rolling restart.

use crate::load::Membership;
use crate::owner::ladder_from;
use crate::InstanceId;

/// The instance a job moves to when `me`'s key cannot serve it (auth, quota, balance): the
/// first instance on the ladder after `me` that is alive, not draining and not in `tried` (the
/// instances whose keys already failed it). `None` when there is no such instance; the job's
/// user is then told.
///
/// Every instance walks the same ladder, so a job that keeps failing visits each instance at
/// most once, in a predictable order.
pub fn move_target(
    me: InstanceId,
    tried: &[InstanceId],
    members: &Membership,
) -> Option<InstanceId> {
    ladder_from(me, members.count())
        .skip(1)
        .filter(|id| *id != me && !tried.contains(id))
        .find(|id| members.get(*id).is_some_and(|s| s.alive && !s.draining))
}

/// The peers to take a waiting job of kind `kind` from, in the order to try them: every live
/// peer (never `me`) with jobs of that kind waiting, most waiting first; ties keep id order.
///
/// Ordered by the waiting jobs of the one kind, not by the peer's whole queue: a peer with a
/// long video queue has nothing for an idle chat worker, and trying it first only costs a
/// round trip. A draining peer stays in: taking its waiting jobs helps it finish.
pub fn steal_order(me: InstanceId, kind: &str, members: &Membership) -> Vec<InstanceId> {
    let mut peers: Vec<(InstanceId, u64)> = members
        .iter()
        .filter(|s| s.alive && s.id != me)
        .map(|s| (s.id, s.waiting_of(kind)))
        .filter(|(_, waiting)| *waiting > 0)
        .collect();
    // A stable sort over id order: equal queues are tried lowest id first.
    peers.sort_by_key(|(_, waiting)| std::cmp::Reverse(*waiting));
    peers.into_iter().map(|(id, _)| id).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::InstanceState;

    fn with_waiting(id: InstanceId, chat: u64, video: u64) -> InstanceState {
        InstanceState {
            queue_depth: chat + video,
            waiting: [("chat".to_owned(), chat), ("video".to_owned(), video)].into(),
            ..InstanceState::idle(id)
        }
    }

    #[test]
    fn a_job_moves_to_the_next_live_untried_instance() {
        let mut m = Membership::all_idle(5);
        m.set(InstanceState::unknown(3));
        m.set(InstanceState {
            draining: true,
            ..InstanceState::idle(4)
        });
        // After 2: 3 is dead, 4 draining, 5 is next.
        assert_eq!(move_target(2, &[], &m), Some(5));
        // 5 tried already: wrap around to 1.
        assert_eq!(move_target(2, &[5], &m), Some(1));
        assert_eq!(move_target(2, &[5, 1], &m), None);
        // `me` is never the answer, even when it alone is alive and untried.
        assert_eq!(move_target(1, &[], &Membership::all_idle(1)), None);
    }

    #[test]
    fn stealing_goes_by_the_waiting_jobs_of_the_kind() {
        let mut m = Membership::all_idle(4);
        m.set(with_waiting(1, 2, 50));
        m.set(with_waiting(2, 5, 0));
        m.set(with_waiting(3, 0, 9));
        m.set(with_waiting(4, 5, 0));
        // Peer 1 has the deepest queue, but mostly video: for chat, 2 and 4 (tie: id order).
        assert_eq!(steal_order(3, "chat", &m), vec![2, 4, 1]);
        assert_eq!(steal_order(3, "video", &m), vec![1]);
        assert_eq!(steal_order(3, "image", &m), Vec::<InstanceId>::new());
        // A dead peer is never asked.
        m.set(InstanceState::unknown(2));
        assert_eq!(steal_order(3, "chat", &m), vec![4, 1]);
    }
}

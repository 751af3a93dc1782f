//! Taking one waiting job from a peer: a reader with a free worker and nothing of its kind
//! waiting at home moves a waiting entry of a peer's stream into its own, trying peers in
//! routing's [`steal_order`] (most jobs of that kind waiting first), and taking the entry the
//! fair pick chooses there (`pick`), so a stolen job is the one the peer would run next.

use std::sync::atomic::Ordering;

use keyshard_routing::steal_order;

use super::pick::{Picked, Taker};
use super::{stream, JobKind, Jobs};

impl Jobs {
    /// Moves one waiting (never read) job of `kind` from a peer into this instance's own
    /// stream; `true` when one was moved. Off with `TAKEOVER=off`, where each instance keeps to
    /// its own users' work, while degraded, where the snapshot is stale, and while this
    /// instance's keys cannot serve the kind (it would only move the job on).
    pub(super) async fn steal_one(&self, kind: JobKind) -> bool {
        let cluster = &self.inner.cluster;
        if !cluster.config().takeover || cluster.is_degraded() || !self.is_available(kind) {
            return false;
        }
        let me = self.inner.me;
        let mine = self.stream(me, kind);
        for peer in steal_order(me, kind.as_str(), &cluster.membership()) {
            let theirs = self.stream(peer, kind);
            // The fair pick, as the peer's own workers would pick: taken as the peer's own
            // consumer, so if the move fails (or this instance dies mid-way) the entry waits
            // in the peer's pending list, where its restart scan and a dead-instance rescue
            // find it.
            let Ok(Some(Picked { entry, .. })) =
                self.pick(&theirs, kind, peer, Taker::Thief, None).await
            else {
                continue;
            };
            let why = stream::Move::Steal;
            if let Ok(Some(queued)) =
                stream::move_entry(&self.inner.redis, &theirs, &entry, &mine, why).await
            {
                self.shelter(&mine, kind, queued);
                self.inner.stolen.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }
}

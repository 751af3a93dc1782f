//! Taking one waiting job from a peer: a reader with a free worker and nothing of its kind
//! waiting at home moves a never-read entry of a peer's stream into its own, trying peers in
//! routing's [`steal_order`] (most jobs of that kind waiting first).

use std::sync::atomic::Ordering;

use keyshard_routing::steal_order;

use super::{stream, JobKind, Jobs};
use crate::keys;

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
            // Read as the peer's own consumer: if the move fails (or this instance dies
            // mid-way) the entry waits in the peer's pending list, where its restart scan and
            // a dead-instance rescue find it.
            let consumer = keys::job_consumer(peer);
            let Ok(Some(entry)) = stream::take_waiting(&self.inner.redis, &theirs, &consumer).await
            else {
                continue;
            };
            let why = stream::Move::Steal;
            if let Ok(true) =
                stream::move_entry(&self.inner.redis, &theirs, &entry, &mine, why).await
            {
                self.inner.stolen.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }
}

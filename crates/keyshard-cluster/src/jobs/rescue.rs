//! The rescue of a dead instance's jobs: one live peer (chosen with `SET NX` on
//! `{c}:rescue:{dead}`) moves the dead instance's entries, pending or never read, into its own
//! streams, where its workers finish them with its own keys.

use std::sync::atomic::Ordering;

use keyshard_routing::InstanceId;

use super::stream::{self, OP_BUDGET};
use super::{JobKind, Jobs};
use crate::{keys, ClusterError};

/// How long one rescuer holds a dead instance: long enough to move a batch, short enough
/// that another instance takes over if the rescuer itself dies mid-way.
const RESCUE_LOCK_MS: u64 = 10_000;

/// How many entries one rescue pass moves per stream; the next pass (a heartbeat later) takes
/// the rest, so one pass never holds the shared connection long.
const RESCUE_BATCH: usize = 100;

impl Jobs {
    /// Moves the jobs of every dead instance that has some into this instance's own streams,
    /// one rescuer per dead instance.
    pub(super) async fn rescue_dead(&self) -> Result<(), ClusterError> {
        if self.inner.cluster.is_degraded() {
            return Ok(());
        }
        let membership = self.inner.cluster.membership();
        let dead: Vec<InstanceId> = membership
            .iter()
            .filter(|s| !s.alive && s.id != self.inner.me)
            .map(|s| s.id)
            .collect();
        for d in dead {
            let backlog = self.backlog_of(d).await?;
            if backlog.iter().all(|(_, _, len)| *len == 0) || !self.lock_rescue(d).await? {
                continue;
            }
            // Its jobs run again here, counted when this instance's workers pick them.
            self.forget_busy(d).await;
            for (kind, stream, len) in backlog {
                if len == 0 {
                    continue;
                }
                let moved = self.move_entries(&stream, kind).await?;
                if moved > 0 {
                    self.inner.rescued.fetch_add(moved, Ordering::Relaxed);
                    tracing::info!(
                        from = d,
                        kind = kind.as_str(),
                        moved,
                        "rescued jobs of a dead instance"
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether this instance is (or now becomes) the one rescuer of `dead`.
    async fn lock_rescue(&self, dead: InstanceId) -> Result<bool, ClusterError> {
        let key = keys::rescue(&self.inner.prefix, dead);
        let me = self.inner.me;
        let k = key.clone();
        let r: Option<String> = self
            .inner
            .redis
            .run("rescue lock", OP_BUDGET, move |mut c| async move {
                redis::cmd("SET")
                    .arg(&k)
                    .arg(me)
                    .arg("NX")
                    .arg("PX")
                    .arg(RESCUE_LOCK_MS)
                    .query_async(&mut c)
                    .await
            })
            .await?;
        if r.is_some() {
            return Ok(true);
        }
        // Held already: by this instance (a previous pass) is fine too.
        let holder: Option<String> = self
            .inner
            .redis
            .run("rescue lock", OP_BUDGET, move |mut c| async move {
                redis::cmd("GET").arg(&key).query_async(&mut c).await
            })
            .await?;
        Ok(holder.as_deref() == Some(me.to_string().as_str()))
    }

    /// Takes a batch of a dead stream's entries and re-queues them on this instance's own
    /// stream of `kind`; the number of jobs moved.
    async fn move_entries(&self, dead_stream: &str, kind: JobKind) -> Result<u64, ClusterError> {
        let consumer = keys::rescue_consumer(self.inner.me);
        let entries =
            stream::take_for_rescue(&self.inner.redis, dead_stream, &consumer, RESCUE_BATCH)
                .await?;
        let mine = self.stream(self.inner.me, kind);
        let mut moved = 0;
        for entry in entries {
            let why = stream::Move::Rescue;
            if let Some(queued) =
                stream::move_entry(&self.inner.redis, dead_stream, &entry, &mine, why).await?
            {
                self.shelter(&mine, kind, queued);
                moved += 1;
            }
        }
        Ok(moved)
    }
}

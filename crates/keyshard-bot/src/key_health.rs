//! Keeps this instance's keys' health (`keyshard_providers::health`) in step with the
//! cluster-wide out-of-service marks (`keyshard_cluster::key_marks`), and tells the job
//! readers which kinds this instance's keys can serve. The one place the two meet, like
//! `daily_store`: the providers know no Redis, the cluster knows no providers.
//!
//! Each tick reads the marks of this instance's keys (one `MGET`) and takes one [`Step`] per
//! key, decided by [`step`] (pure): a key that went out here is marked for the cluster (and
//! the mark renewed while it stays out, so it expires only if this instance dies); a key that
//! came back clears its mark; a mark held by another instance puts the key out here too
//! without probing it; a mark that went away brings the key back.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keyshard_cluster::{
    run_every, Cluster, ClusterError, InstanceId, JobKind, Jobs, KeyMarks, MarkedKey,
};
use keyshard_providers::{KeyHealth, Providers};
use tokio_util::sync::CancellationToken;

/// How often the marks are read and written: a key that goes out here is known to the cluster
/// within a second, and a cleared mark reaches the other holders within a second. One `MGET`
/// a second per instance is nothing for Redis.
pub const SYNC_EVERY: Duration = Duration::from_secs(1);

/// What one tick does for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    Nothing,
    /// Set (or renew) this instance's mark; if another instance holds it, follow that one.
    Mark,
    /// This instance's probe found the key working: remove its mark.
    Clear,
    /// Another instance holds the mark: out here too, not probed here.
    Follow,
    /// This instance's own mark from before a restart: out, probed from here.
    Adopt,
    /// The mark is gone: back in service.
    Restore,
}

/// The step for a key that is `out` here (and probed here when `prober`), whose mark is held
/// by `holder`, on this instance `me`'s `first` tick since start.
pub fn step(
    out: bool,
    prober: bool,
    holder: Option<InstanceId>,
    me: InstanceId,
    first: bool,
) -> Step {
    match (out, holder) {
        (true, _) if prober => Step::Mark,
        (true, None) => Step::Restore,
        (true, Some(_)) => Step::Nothing,
        (false, None) => Step::Nothing,
        (false, Some(h)) if h != me => Step::Follow,
        (false, Some(_)) if first => Step::Adopt,
        (false, Some(_)) => Step::Clear,
    }
}

/// Runs the sync every [`SYNC_EVERY`] until `stop`.
pub async fn run(cluster: Cluster, providers: Providers, jobs: Jobs, stop: CancellationToken) {
    let marks = KeyMarks::new(&cluster);
    let me = cluster.config().instance_id;
    let healths = providers.health();
    let keys: Arc<Vec<MarkedKey>> = Arc::new(
        healths
            .iter()
            .map(|h| MarkedKey {
                provider: h.provider().as_str().to_owned(),
                fingerprint: h.key().to_owned(),
            })
            .collect(),
    );
    let healths = Arc::new(healths);
    let first = Arc::new(AtomicBool::new(true));
    run_every("key health", SYNC_EVERY, stop, None, move || {
        let (marks, keys, healths, first) =
            (marks.clone(), keys.clone(), healths.clone(), first.clone());
        let (providers, jobs) = (providers.clone(), jobs.clone());
        async move {
            let r = sync(&marks, &keys, &healths, me, first.load(Ordering::Relaxed)).await;
            if r.is_ok() {
                first.store(false, Ordering::Relaxed);
            }
            // Local health changes are published to the readers whether Redis answers or not.
            publish_kinds(&providers, &jobs);
            r
        }
    })
    .await;
}

async fn sync(
    marks: &KeyMarks,
    keys: &[MarkedKey],
    healths: &[KeyHealth],
    me: InstanceId,
    first: bool,
) -> Result<(), ClusterError> {
    let holders = marks.read(keys).await?;
    for ((key, health), holder) in keys.iter().zip(healths).zip(holders) {
        let view = health.view();
        match step(view.out_of_service, view.prober, holder, me, first) {
            Step::Nothing => {}
            Step::Mark => {
                if marks.mark(key).await?.is_some_and(|h| h != me) {
                    health.marked_elsewhere();
                }
            }
            Step::Clear => marks.clear(key).await?,
            Step::Follow => health.marked_elsewhere(),
            Step::Adopt => health.adopt_mark(),
            Step::Restore => health.mark_cleared(),
        }
    }
    Ok(())
}

/// Tells the job readers which kinds this instance's keys can serve: chat needs the OpenAI
/// key, video the MiniMax key, images any image provider's key. A kind without a configured
/// provider stays "available", as before: its jobs are taken and moved to a peer.
fn publish_kinds(providers: &Providers, jobs: &Jobs) {
    let out = |h: Option<KeyHealth>| h.map(|h| h.is_out());
    let openai = out(providers.openai.as_ref().map(|p| p.health()));
    let minimax = out(providers.minimax.as_ref().map(|p| p.health()));
    let stability = out(providers.stability.as_ref().map(|p| p.health()));
    let all_out = |xs: &[Option<bool>]| {
        let configured: Vec<bool> = xs.iter().flatten().copied().collect();
        !configured.is_empty() && configured.iter().all(|o| *o)
    };
    jobs.set_available(JobKind::Chat, openai != Some(true));
    jobs.set_available(JobKind::Video, minimax != Some(true));
    jobs.set_available(JobKind::Image, !all_out(&[openai, minimax, stability]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_follow_the_local_state_and_the_mark() {
        use Step::*;
        for (out, prober, holder, first, want) in [
            (true, true, None, false, Mark),
            (true, true, Some(1), false, Mark),
            (true, true, Some(2), false, Mark),
            (true, false, None, false, Restore),
            (true, false, Some(2), false, Nothing),
            (false, false, None, false, Nothing),
            (false, false, Some(2), false, Follow),
            (false, false, Some(1), true, Adopt),
            (false, false, Some(1), false, Clear),
        ] {
            assert_eq!(
                step(out, prober, holder, 1, first),
                want,
                "{out} {prober} {holder:?} {first}"
            );
        }
    }
}

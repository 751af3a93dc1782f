//! The claim's confirmation, after the acknowledgement: the claim then holds for the token's
//! life, and an interaction answered without a job gets its usage-ledger row in the same
//! script (see [`Cluster::confirm_recording`]).

use super::{Cluster, CLAIM_BUDGET};
use crate::keys;

/// Extends a claim to its full life only if this instance still holds it (a lapsed claim taken
/// by a sweeping fallback must not be taken back).
const CONFIRM_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The confirmation of an answered interaction with its ledger row (`KEYS[1]` the claim,
/// `KEYS[2]` this instance's ledger stream; `ARGV` me, the claim TTL, the row's JSON):
/// - held by me: extend it, append the row, return the entry id;
/// - lapsed and taken by nobody (this instance answered slower than the pending life and no
///   fallback swept it): take it back for its full life and append the row, since this
///   instance did answer and no one else will record it;
/// - held by another instance (a fallback swept it): nothing; that instance records the row
///   (its own answer, or this one's on its behalf when Discord told it "already answered").
///
/// Returns the stream entry id, or `false` (nil) when the row was not appended.
const CONFIRM_RECORDING_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return false
end
return redis.call('XADD', KEYS[2], '*', 'row', ARGV[3])
";

/// What [`Cluster::confirm_recording`] did with the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// The claim is confirmed and the row is entry `entry` of this instance's ledger stream.
    Recorded { entry: String },
    /// Another instance holds the claim (a fallback swept it): it records the row.
    NotHolder,
    /// Redis did not answer (unreachable, or slower than the budget): the row may or may not
    /// be in the stream. The caller keeps it in memory; Postgres keeps one copy.
    Unknown,
}

impl Cluster {
    /// Confirms that this instance acknowledged the interaction it claimed: the claim then
    /// holds for the token's 15 minutes instead of lapsing after `ClaimTiming::pending`. Call
    /// it right after the acknowledgement; a failure only means a fallback's sweep may try
    /// (and get Discord's "already acknowledged").
    pub async fn confirm(&self, interaction_id: u64) {
        let key = keys::claim(&self.inner.cfg.cluster_name, interaction_id);
        let me = self.inner.cfg.instance_id.to_string();
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_SCRIPT));
        let script = &*SCRIPT;
        let result: Result<i64, _> = self
            .inner
            .redis
            .run("confirm claim", CLAIM_BUDGET, |mut c| async move {
                script
                    .key(&key)
                    .arg(&me)
                    .arg(keys::CLAIM_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(interaction_id, "could not confirm the claim: {e}");
        }
    }

    /// [`confirm`](Self::confirm) for an interaction this instance answered without a job,
    /// with its usage-ledger row (JSON, opaque here) appended to `{c}:ledger:{me}` in the same
    /// script ([`CONFIRM_RECORDING_SCRIPT`]): the row is in Redis exactly when the claim is
    /// confirmed as this instance's, so a crash between the answer and this call leaves no
    /// row and a lapsed claim, which the first fallback's sweep then finds (and records the
    /// row on this instance's behalf when Discord says the interaction was answered).
    ///
    /// Off the acknowledgement's path like `confirm`: it runs after the answer.
    pub async fn confirm_recording(&self, interaction_id: u64, row: &str) -> Confirmed {
        let cfg = &self.inner.cfg;
        let claim = keys::claim(&cfg.cluster_name, interaction_id);
        let stream = keys::ledger_stream(&cfg.cluster_name, cfg.instance_id);
        let me = cfg.instance_id.to_string();
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_RECORDING_SCRIPT));
        let script = &*SCRIPT;
        let result: Result<Option<String>, _> = self
            .inner
            .redis
            .run("confirm claim", CLAIM_BUDGET, |mut c| async move {
                script
                    .key(&claim)
                    .key(&stream)
                    .arg(&me)
                    .arg(keys::CLAIM_TTL_MS)
                    .arg(row)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(Some(entry)) => Confirmed::Recorded { entry },
            Ok(None) => Confirmed::NotHolder,
            Err(e) => {
                tracing::debug!(interaction_id, "could not confirm the claim: {e}");
                Confirmed::Unknown
            }
        }
    }
}

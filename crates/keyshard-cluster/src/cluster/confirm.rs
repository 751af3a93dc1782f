//! The claim's confirmation, after the acknowledgement: the claim then holds for the token's
//! life. What the answer leaves in Redis is appended in the same script
//! ([`Cluster::confirm_appending`]): an interaction answered without a job its usage-ledger
//! row ([`Cluster::confirm_recording`]), a job command its job (`jobs::stream`).

use std::time::Duration;

use super::{Cluster, CLAIM_BUDGET};
use crate::{keys, ClusterError};

/// Extends a claim to its full life only if this instance still holds it (a lapsed claim taken
/// by a sweeping fallback must not be taken back).
const CONFIRM_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The confirmation of an answered interaction with what its answer leaves in a stream
/// (`KEYS[1]` the claim, `KEYS[2]` the stream; `ARGV` me, the claim TTL, the entry's field and
/// value):
/// - held by me: extend it, append the entry, return its id;
/// - lapsed and taken by nobody (this instance answered slower than the pending life and no
///   fallback swept it): take it back for its full life and append the entry, since this
///   instance did answer and no one else will;
/// - held by another instance (a fallback swept it): nothing. That instance appends instead:
///   its own answer's, or, told by Discord that the interaction was answered already, the
///   ledger row or the job on this one's behalf.
///
/// Returns the stream entry id, or `false` (nil) when nothing was appended. Atomic, so the
/// entry is in Redis exactly when the claim is confirmed as this instance's, and a fallback
/// can only sweep a claim whose entry is not there.
const CONFIRM_APPENDING_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return false
end
return redis.call('XADD', KEYS[2], '*', ARGV[3], ARGV[4])
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
    /// script ([`confirm_appending`](Self::confirm_appending)): a crash between the answer and
    /// this call leaves no row and a lapsed claim, which the first fallback's sweep then finds
    /// (and records the row on this instance's behalf when Discord says the interaction was
    /// answered).
    ///
    /// Off the acknowledgement's path like `confirm`: it runs after the answer.
    pub async fn confirm_recording(&self, interaction_id: u64, row: &str) -> Confirmed {
        let cfg = &self.inner.cfg;
        let stream = keys::ledger_stream(&cfg.cluster_name, cfg.instance_id);
        let entry = ("row", row.as_bytes());
        let budget = ("confirm claim", CLAIM_BUDGET);
        match self
            .confirm_appending(interaction_id, &stream, entry, budget)
            .await
        {
            Ok(Some(entry)) => Confirmed::Recorded { entry },
            Ok(None) => Confirmed::NotHolder,
            Err(e) => {
                tracing::debug!(interaction_id, "could not confirm the claim: {e}");
                Confirmed::Unknown
            }
        }
    }

    /// Confirms this instance's claim on `interaction_id` and appends `entry` (field, value) to
    /// `stream` in one script ([`CONFIRM_APPENDING_SCRIPT`]), run as `op` within `budget`: the
    /// entry id, or `None` when another instance holds the claim and nothing was appended.
    pub(crate) async fn confirm_appending(
        &self,
        interaction_id: u64,
        stream: &str,
        (field, value): (&str, &[u8]),
        (op, budget): (&'static str, Duration),
    ) -> Result<Option<String>, ClusterError> {
        let cfg = &self.inner.cfg;
        let claim = keys::claim(&cfg.cluster_name, interaction_id);
        let me = cfg.instance_id.to_string();
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_APPENDING_SCRIPT));
        let script = &*SCRIPT;
        self.inner
            .redis
            .run(op, budget, |mut c| async move {
                script
                    .key(&claim)
                    .key(stream)
                    .arg(&me)
                    .arg(keys::CLAIM_TTL_MS)
                    .arg(field)
                    .arg(value)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }
}

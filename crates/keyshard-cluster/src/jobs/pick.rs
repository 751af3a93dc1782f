//! The fair pick's mechanism: which waiting entry of a job stream a worker (or a thief) takes
//! next, chosen by routing's [`fair_pick`] from a view of the stream's waiting entries.
//!
//! Waiting entries are read ahead into the consumer [`JOB_POOL`](keys::JOB_POOL): they stay in
//! the stream's pending list, so a dead instance's rescue (`XAUTOCLAIM`) finds them like any
//! other, and the stream's length is still the backlog. A pick is two steps:
//!
//! 1. [`VIEW_SCRIPT`]: pull new entries into the pool, and list the pooled ones, oldest first,
//!    each with its user, the user's jobs in flight across the cluster (the sum of every
//!    instance's `{c}:busy:{id}`), when the user was last served (`{c}:served`), and the
//!    provider the user chose for it (an image job's `model`). A worker picks with a provider
//!    send already reserved ([`Ready`](super::Ready)): among the jobs that provider can serve
//!    (no choice, or that one), and only when none waits, among all (the job then waits for
//!    its own provider, and the reservation is given back).
//! 2. [`TAKE_SCRIPT`]: `XCLAIM` the chosen entry from the pool to the taker, only if it is still
//!    in the pool. Two takers of one entry (a worker and a thief) cannot both have it: the
//!    script is atomic, and whoever comes second finds it gone and looks again. A worker's take
//!    also counts the user in flight here and stamps the user as just served.
//!
//! So a pooled job runs once: a thief takes it from the pool like a worker does, and a worker
//! releases its count when the job ends ([`Jobs::release`]). The count of a dead instance is
//! dropped by its rescuer, and a restarted instance drops its own: the jobs they counted run
//! again, uncounted, from the pending list. Both hashes expire an hour after their last
//! change, so a count that leaked (a panicking handler) fades instead of lasting for good.

use keyshard_routing::{fair_pick, Lateness, Waiting};
use keyshard_types::ProviderKind;
use redis::streams::{StreamClaimReply, StreamId};

use super::stream::OP_BUDGET;
use super::{JobKind, Jobs};
use crate::keys::{self, JOB_GROUP, JOB_POOL};
use crate::ClusterError;

/// How many waiting entries of one stream a pick looks at (and reads ahead at most per pick).
/// Far above a queue the overload rule and the max wait let build (tens of jobs per kind per
/// instance), so the pick sees the whole queue in practice; a deeper one is picked fairly
/// among its oldest 512.
pub(super) const POOL_SCAN: usize = 512;

/// How long the in-flight and last-served hashes outlive their last change: longer than any
/// job runs (a video renders for minutes), so a live count never expires under a running job.
const FAIR_KEYS_TTL_MS: u64 = 60 * 60 * 1000;

/// How many times a pick looks again after losing its chosen entry to another taker (a thief
/// from a peer): each loss means a job did start, so a few are plenty; after them the reader
/// goes back to waiting for work and picks again within a read.
const TAKE_ATTEMPTS: usize = 3;

/// KEYS: stream, served, busy hashes of every instance. ARGV: group, pool, scan limit.
/// Returns `[id, user, in_hand, last_served, model, created_ms, …]` for the pooled entries,
/// oldest first (`model`: the provider an image job's user chose, `''` for none; `created_ms`:
/// when the interaction was made, for its wait so far). The fields are found by their quoted
/// key: inside the prompt's JSON string a quote is escaped, so `"model":"` only matches the
/// real field.
const VIEW_SCRIPT: &str = r#"
local s = KEYS[1]
local group, pool, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
-- A stream written before its owner's reader ran (or after Redis restarted empty) has no
-- group yet; an existing one answers BUSYGROUP, which pcall swallows.
redis.pcall('XGROUP', 'CREATE', s, group, '0', 'MKSTREAM')
redis.call('XREADGROUP', 'GROUP', group, pool, 'COUNT', limit, 'STREAMS', s, '>')
local pending = redis.call('XPENDING', s, group, '-', '+', limit, pool)
local out = {}
for _, p in ipairs(pending) do
  local id = p[1]
  local e = redis.call('XRANGE', s, id, id)[1]
  if e == nil then
    -- Deleted while pooled: nothing to run, so it leaves the pending list.
    redis.call('XACK', s, group, id)
  else
    local user, model, created = '0', '', '0'
    local fields = e[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'job' then
        user = string.match(fields[i + 1], '"user_id":(%d+)') or '0'
        model = string.match(fields[i + 1], '"model":"(%a+)"') or ''
        created = string.match(fields[i + 1], '"created_ms":(%d+)') or '0'
      end
    end
    local held, last = service(user)
    table.insert(out, id)
    table.insert(out, user)
    table.insert(out, held)
    table.insert(out, last)
    table.insert(out, model)
    table.insert(out, created)
  end
end
return out
"#;

/// KEYS: stream, served, the taker's busy hash. ARGV: group, pool, entry id, taker consumer,
/// user, count (`1`: a worker runs it; `0`: a thief moves it), TTL ms. Returns the claimed
/// entry, or nothing when it is no longer in the pool.
const TAKE_SCRIPT: &str = r#"
local s, served, busy = KEYS[1], KEYS[2], KEYS[3]
local group, pool, id, taker, user, count, ttl =
  ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local p = redis.call('XPENDING', s, group, id, id, 1, pool)
if #p == 0 then return {} end
local claimed = redis.call('XCLAIM', s, group, taker, 0, id)
if #claimed == 0 then return {} end
if count == '1' then
  redis.call('HINCRBY', busy, user, 1)
  redis.call('PEXPIRE', busy, ttl)
  local seq = redis.call('HINCRBY', served, 'seq', 1)
  redis.call('HSET', served, user, seq)
  redis.call('PEXPIRE', served, ttl)
end
return claimed
"#;

/// KEYS: busy hash. ARGV: user.
const RELEASE_SCRIPT: &str = r#"
if redis.call('HINCRBY', KEYS[1], ARGV[1], -1) <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"#;

/// The head of every script that reads a fair view (this one's and the waiting read's):
/// `service(user)`, a user's service in hand as the pick weighs it — jobs in flight summed over
/// every instance's busy hash (`KEYS[3..]`) and the sequence number of the user's last pick
/// (`KEYS[2]`, the served hash) — each as a string, read once per user per call.
pub(super) const SERVICE_LUA: &str = r#"
local service_seen = {}
local function service(user)
  local v = service_seen[user]
  if v == nil then
    local n = 0
    for k = 3, #KEYS do
      n = n + (tonumber(redis.call('HGET', KEYS[k], user)) or 0)
    end
    v = {tostring(n), tostring(tonumber(redis.call('HGET', KEYS[2], user)) or 0)}
    service_seen[user] = v
  end
  return v[1], v[2]
end
"#;

static VIEW: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{SERVICE_LUA}{VIEW_SCRIPT}")));
static TAKE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(TAKE_SCRIPT));
static RELEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(RELEASE_SCRIPT));

/// Who takes the picked entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Taker {
    /// This instance's worker runs it: counted in flight for its user.
    Worker,
    /// A thief moves it to its own stream (read as the owner's consumer, so a failed move
    /// leaves it in the owner's pending list); counted when the thief's worker picks it.
    Thief,
}

/// A picked entry; `counted`: the user counted in flight for it, to release when it ends;
/// `fits`: the provider the pick was asked for can serve it.
pub(super) struct Picked {
    pub(super) entry: StreamId,
    pub(super) counted: Option<u64>,
    pub(super) fits: bool,
}

/// One pooled entry as the pick sees it.
#[derive(Clone, Debug, PartialEq)]
struct Pooled {
    id: String,
    waiting: Waiting,
    /// The provider its user chose (`""`: none).
    model: String,
    /// When its interaction was made (ms since the epoch; 0: unknown).
    created_ms: u64,
}

/// Whether a job whose user chose `model` (`""`: none) can be served by a send reserved on
/// `lane`'s provider (`None`: any job).
fn serves(lane: Option<ProviderKind>, model: &str) -> bool {
    lane.is_none_or(|p| model.is_empty() || model == p.as_str())
}

impl Jobs {
    /// Takes the waiting entry of `stream` (instance `owner`'s, of `kind`) that the fair pick
    /// chooses, as `owner`'s consumer `i{owner}`, among those `lane`'s provider can serve if
    /// any (see [`serves`]); `None` when nothing waits there.
    pub(super) async fn pick(
        &self,
        stream: &str,
        kind: JobKind,
        owner: keyshard_routing::InstanceId,
        taker: Taker,
        lane: Option<ProviderKind>,
    ) -> Result<Option<Picked>, ClusterError> {
        for _ in 0..TAKE_ATTEMPTS {
            let mut pool = self.view(stream).await?;
            for p in &mut pool {
                p.waiting.lateness = self.lateness(kind, p.created_ms);
            }
            let fitting: Vec<&Pooled> = pool.iter().filter(|p| serves(lane, &p.model)).collect();
            let (candidates, fits) = if fitting.is_empty() {
                (pool.iter().collect(), false)
            } else {
                (fitting, true)
            };
            let waiting: Vec<Waiting> = candidates.iter().map(|p| p.waiting).collect();
            let Some(i) = fair_pick(&waiting) else {
                return Ok(None);
            };
            let Pooled { id, waiting: w, .. } = candidates[i];
            if let Some(entry) = self.take(stream, owner, id, w.user, taker).await? {
                let counted = (taker == Taker::Worker).then_some(w.user);
                return Ok(Some(Picked {
                    entry,
                    counted,
                    fits,
                }));
            }
        }
        Ok(None)
    }

    /// The pooled entries of `stream`, oldest first, as the pick sees them.
    async fn view(&self, stream: &str) -> Result<Vec<Pooled>, ClusterError> {
        let raw = self.read_fair_view("fair view", &VIEW, stream).await?;
        Ok(parse_view(&raw))
    }

    /// Runs a fair-view script (one headed by [`SERVICE_LUA`]) on `stream` with the keys and
    /// arguments every such script takes: KEYS stream, served, every instance's busy hash;
    /// ARGV group, pool, [`POOL_SCAN`].
    pub(super) async fn read_fair_view(
        &self,
        name: &'static str,
        script: &'static redis::Script,
        stream: &str,
    ) -> Result<Vec<String>, ClusterError> {
        let inner = &self.inner;
        let mut keys = vec![stream.to_owned(), keys::served(&inner.prefix)];
        keys.extend(
            (1..=inner.cluster.config().instance_count).map(|id| keys::busy(&inner.prefix, id)),
        );
        inner
            .redis
            .run(name, OP_BUDGET, move |mut c| async move {
                let mut inv = script.prepare_invoke();
                for k in &keys {
                    inv.key(k);
                }
                inv.arg(JOB_GROUP)
                    .arg(JOB_POOL)
                    .arg(POOL_SCAN)
                    .invoke_async(&mut c)
                    .await
            })
            .await
    }

    /// Moves entry `id` from the pool to the taker, if it is still there.
    async fn take(
        &self,
        stream: &str,
        owner: keyshard_routing::InstanceId,
        id: &str,
        user: u64,
        taker: Taker,
    ) -> Result<Option<StreamId>, ClusterError> {
        let inner = &self.inner;
        let keys = [
            stream.to_owned(),
            keys::served(&inner.prefix),
            keys::busy(&inner.prefix, inner.me),
        ];
        let consumer = keys::job_consumer(owner);
        let count = if taker == Taker::Worker { "1" } else { "0" };
        let id = id.to_owned();
        let reply: StreamClaimReply = inner
            .redis
            .run("fair take", OP_BUDGET, move |mut c| async move {
                TAKE.key(&keys[0])
                    .key(&keys[1])
                    .key(&keys[2])
                    .arg(JOB_GROUP)
                    .arg(JOB_POOL)
                    .arg(&id)
                    .arg(&consumer)
                    .arg(user)
                    .arg(count)
                    .arg(FAIR_KEYS_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(reply.ids.into_iter().next())
    }

    /// A counted job of `user` ended on this instance: one fewer in flight.
    pub(super) async fn release(&self, user: u64) {
        let busy = keys::busy(&self.inner.prefix, self.inner.me);
        let r: Result<i64, _> = self
            .inner
            .redis
            .run("fair release", OP_BUDGET, move |mut c| async move {
                RELEASE.key(&busy).arg(user).invoke_async(&mut c).await
            })
            .await;
        if let Err(e) = r {
            // The count stays one too high until the hash expires: the user is picked a
            // little later, never skipped.
            tracing::debug!("could not release a job's in-flight count: {e}");
        }
    }

    /// Forgets instance `id`'s in-flight counts: it died (its rescuer calls this) or it is
    /// this instance starting again. The jobs counted there run again uncounted.
    pub(super) async fn forget_busy(&self, id: keyshard_routing::InstanceId) {
        let busy = keys::busy(&self.inner.prefix, id);
        let r: Result<(), _> = self
            .inner
            .redis
            .run("fair forget", OP_BUDGET, move |mut c| async move {
                redis::cmd("DEL").arg(&busy).query_async(&mut c).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!("could not drop in-flight counts of instance {id}: {e}");
        }
    }
}

/// `[id, user, in_hand, last_served, model, created_ms, …]` as [`Pooled`]; a malformed one is
/// skipped. On time until the pick says otherwise.
fn parse_view(raw: &[String]) -> Vec<Pooled> {
    raw.chunks_exact(6)
        .filter_map(|q| {
            Some(Pooled {
                id: q[0].clone(),
                waiting: parse_service(&q[1..4])?,
                model: q[4].clone(),
                created_ms: q[5].parse().unwrap_or(0),
            })
        })
        .collect()
}

/// `[user, in_hand, last_served]` of a fair view's row as the pick's [`Waiting`] (on time:
/// the caller knows the job's age and its kind's maximum).
pub(super) fn parse_service(row: &[String]) -> Option<Waiting> {
    Some(Waiting {
        user: row.first()?.parse().ok()?,
        in_hand: row.get(1)?.parse().ok()?,
        last_served: row.get(2)?.parse().ok()?,
        lateness: Lateness::OnTime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_view_reads_as_sextuples() {
        let raw: Vec<String> = [
            "1-0", "7", "2", "5", "", "100", "2-0", "8", "0", "0", "minimax", "200",
        ]
        .map(String::from)
        .to_vec();
        let view = parse_view(&raw);
        assert_eq!(view.len(), 2);
        assert_eq!(
            view[1],
            Pooled {
                id: "2-0".to_owned(),
                waiting: Waiting {
                    user: 8,
                    in_hand: 0,
                    last_served: 0,
                    lateness: Lateness::OnTime,
                },
                model: "minimax".to_owned(),
                created_ms: 200,
            }
        );
    }

    #[test]
    fn a_reserved_send_serves_jobs_without_a_choice_or_with_its_provider() {
        let mm = Some(ProviderKind::MiniMax);
        assert!(serves(mm, ""));
        assert!(serves(mm, "minimax"));
        assert!(!serves(mm, "stability"));
        assert!(serves(None, "stability"), "no reservation: any job");
    }
}

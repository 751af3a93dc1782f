//! Honest waiting's reads and fences (issue 14 §4): the jobs waiting in this instance's own
//! stream of a kind, each with its place in the fair pick's order and its expected wait
//! ([`Jobs::waiting`]), and the per-job fence that keeps a waiting edit of a reply from
//! landing after the job's answer ([`Jobs::begin_waiting_edit`], [`Jobs::job_started`]).
//!
//! The read changes nothing: unlike the pick's view it pulls no entry into the pool (a pulled
//! entry would not wake a reader blocked on new ones). A waiting entry is one not yet read or
//! held by the pool consumer; one held by any other consumer runs (or moves) already.
//!
//! The fence, per job, in Redis because the job may run on another instance (stolen from this
//! one's queue) while this one edits: an edit begins only if no run has begun
//! (`{c}:started:{id}` absent), marking `{c}:wedit:{id}`; a run begins by setting
//! `{c}:started:{id}` and learning whether an edit is on its way, which it then waits out
//! before its first word to Discord. Both are one script, so one of the two always comes
//! first: either the edit is skipped, or the run waits for it.

use std::time::Duration;

use keyshard_routing::{estimate_wait, fair_order, InstanceId, Waiting};

use super::pick::{parse_service, SERVICE_LUA};
use super::stream::OP_BUDGET;
use super::{decode, Job, JobKind, Jobs};
use crate::keys;
use crate::ClusterError;

/// How long a started marker lasts: the interaction token's 15 minutes, after which no edit
/// of the reply is possible anyway. A job that starts, moves to a peer and waits there again
/// gets no more waiting edits (it stops cleanly rather than flicker back to "waiting").
const STARTED_TTL_MS: u64 = 15 * 60 * 1000;

/// How long a waiting edit's fence holds: the sender gives up on the edit well before
/// ([`WAITING_EDIT_BUDGET`]), so a run never waits on a fence whose edit may still land.
const FENCE_TTL_MS: u64 = 3_000;

/// The longest a waiting edit may take (Discord's PATCH answers in well under a second):
/// the sender abandons it after this, a second inside the fence's life.
pub const WAITING_EDIT_BUDGET: Duration = Duration::from_secs(2);

/// KEYS: stream, served, busy hashes of every instance. ARGV: group, pool, scan limit (the
/// pick's own window, so the positions are those of the jobs the pick would choose among).
/// Returns `[id, user, in_hand, last_served, job json, …]` for the waiting entries, oldest
/// first. Headed by the pick's `SERVICE_LUA`.
const WAITING_SCRIPT: &str = r#"
local s = KEYS[1]
local group, pool, limit = ARGV[1], ARGV[2], tonumber(ARGV[3])
local taken = {}
-- Entries held by a consumer other than the pool run (or move) already. No group yet: none.
local ok, pending = pcall(redis.call, 'XPENDING', s, group, '-', '+', limit * 4)
if ok then
  for _, p in ipairs(pending) do
    if p[2] ~= pool then taken[p[1]] = true end
  end
end
local out = {}
for _, e in ipairs(redis.call('XRANGE', s, '-', '+', 'COUNT', limit)) do
  local id = e[1]
  if not taken[id] then
    local user, job = '0', nil
    local fields = e[2]
    for i = 1, #fields, 2 do
      if fields[i] == 'job' then
        job = fields[i + 1]
        user = string.match(job, '"user_id":(%d+)') or '0'
      end
    end
    if job ~= nil then
      local held, last = service(user)
      table.insert(out, id)
      table.insert(out, user)
      table.insert(out, held)
      table.insert(out, last)
      table.insert(out, job)
    end
  end
end
return out
"#;

/// KEYS: started, fence. ARGV: sender id, fence TTL ms. 1: the edit may go; 0: a run began.
const BEGIN_EDIT_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return 1
"#;

/// KEYS: fence. ARGV: sender id. Lifts the sender's own fence only.
const END_EDIT_SCRIPT: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"#;

/// KEYS: started, fence. ARGV: started TTL ms. Returns `{sender or '', fence PTTL}`.
const START_SCRIPT: &str = r#"
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
local who = redis.call('GET', KEYS[2])
if not who then return {'', -2} end
return {who, redis.call('PTTL', KEYS[2])}
"#;

static WAITING: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(&format!("{SERVICE_LUA}{WAITING_SCRIPT}")));
static BEGIN_EDIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(BEGIN_EDIT_SCRIPT));
static END_EDIT: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(END_EDIT_SCRIPT));
static START: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(START_SCRIPT));

/// A job waiting in this instance's stream, as its reply's edit needs it.
#[derive(Clone, Debug)]
pub struct WaitingJob {
    /// Its envelope: whom to edit (`id`, `token`, `application_id`) and its age
    /// (`created_ms`). `Debug` hides the token.
    pub job: Job,
    /// Jobs of its kind the fair pick would take before it here.
    pub ahead: u64,
    /// Its expected wait: the jobs ahead plus itself over this instance's rate for the kind;
    /// `None` while no rate is known.
    pub estimate: Option<Duration>,
}

/// An edit on its way when a run began: who sends it, and how long its fence still holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EditInFlight {
    pub sender: InstanceId,
    pub remaining: Duration,
}

impl Jobs {
    /// The jobs of `kind` waiting in this instance's own stream, in stream order, each with
    /// its place in the fair pick's order ([`fair_order`]) and its expected wait. One script
    /// per call; nothing in Redis changes.
    pub async fn waiting(&self, kind: JobKind) -> Result<Vec<WaitingJob>, ClusterError> {
        let stream = self.stream(self.inner.me, kind);
        let raw = self
            .read_fair_view("waiting view", &WAITING, &stream)
            .await?;
        let (jobs, mut view) = parse_waiting(&raw);
        for (w, job) in view.iter_mut().zip(&jobs) {
            w.lateness = self.lateness(kind, job.created_ms);
        }
        let (rate, run) = self.kind_pace(kind);
        Ok(jobs
            .into_iter()
            .zip(fair_order(&view))
            .map(|(job, ahead)| WaitingJob {
                job,
                ahead,
                estimate: estimate_wait(ahead, rate, run),
            })
            .collect())
    }

    /// Before a waiting edit of job `id`'s reply: `true` (the fence is up) unless a run of
    /// the job has begun. Call [`end_waiting_edit`](Self::end_waiting_edit) once the edit is
    /// answered or abandoned within [`WAITING_EDIT_BUDGET`].
    pub async fn begin_waiting_edit(&self, id: u64) -> Result<bool, ClusterError> {
        let p = &self.inner.prefix;
        let (started, fence) = (keys::job_started(p, id), keys::waiting_edit(p, id));
        let me = self.inner.me;
        let go: i64 = self
            .inner
            .redis
            .run("waiting edit", OP_BUDGET, move |mut c| async move {
                BEGIN_EDIT
                    .key(&started)
                    .key(&fence)
                    .arg(me)
                    .arg(FENCE_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(go == 1)
    }

    /// After a waiting edit of job `id`: lifts this instance's fence. A failure leaves it to
    /// expire ([`FENCE_TTL_MS`]); a run meanwhile waits that long at most.
    pub async fn end_waiting_edit(&self, id: u64) {
        let fence = keys::waiting_edit(&self.inner.prefix, id);
        let me = self.inner.me;
        let r: Result<i64, _> = self
            .inner
            .redis
            .run("waiting edit end", OP_BUDGET, move |mut c| async move {
                END_EDIT.key(&fence).arg(me).invoke_async(&mut c).await
            })
            .await;
        if let Err(e) = r {
            tracing::debug!(job = id, "could not lift a waiting edit's fence: {e}");
        }
    }

    /// A run of job `id` begins: no waiting edit starts after this. Returns the edit already
    /// on its way, if any, which the run waits out before it says anything to Discord.
    pub async fn job_started(&self, id: u64) -> Result<Option<EditInFlight>, ClusterError> {
        if self.inner.cluster.is_degraded() {
            // Redis is away: no edit can be fenced meanwhile either, and a job run in-process
            // does not wait a Redis call's budget to learn that.
            return Ok(None);
        }
        let p = &self.inner.prefix;
        let (started, fence) = (keys::job_started(p, id), keys::waiting_edit(p, id));
        let (who, pttl): (String, i64) = self
            .inner
            .redis
            .run("job started", OP_BUDGET, move |mut c| async move {
                START
                    .key(&started)
                    .key(&fence)
                    .arg(STARTED_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(in_flight(&who, pttl))
    }

    /// Whether job `id`'s waiting-edit fence is still up, and for how long.
    pub async fn waiting_edit_remaining(&self, id: u64) -> Result<Option<Duration>, ClusterError> {
        let fence = keys::waiting_edit(&self.inner.prefix, id);
        let pttl: i64 = self
            .inner
            .redis
            .run("waiting edit check", OP_BUDGET, move |mut c| async move {
                redis::cmd("PTTL").arg(&fence).query_async(&mut c).await
            })
            .await?;
        Ok((pttl > 0).then(|| Duration::from_millis(pttl as u64)))
    }
}

/// The fence an edit left, from `START_SCRIPT`'s answer.
fn in_flight(who: &str, pttl: i64) -> Option<EditInFlight> {
    let sender = who.parse().ok()?;
    (pttl > 0).then(|| EditInFlight {
        sender,
        remaining: Duration::from_millis(pttl as u64),
    })
}

/// `[id, user, in_hand, last_served, json, …]` as the jobs and the pick's view of them; an
/// entry whose job does not decode is skipped (its run tells the user).
fn parse_waiting(raw: &[String]) -> (Vec<Job>, Vec<Waiting>) {
    raw.chunks_exact(5)
        .filter_map(|q| {
            let w = parse_service(&q[1..4])?;
            Some((decode(q[4].as_bytes()).ok()?, w))
        })
        .unzip()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_is_read_from_the_start_script() {
        assert_eq!(in_flight("", -2), None);
        assert_eq!(in_flight("3", -2), None, "expired between the two reads");
        assert_eq!(
            in_flight("3", 1500),
            Some(EditInFlight {
                sender: 3,
                remaining: Duration::from_millis(1500)
            })
        );
    }

    #[test]
    fn entries_that_do_not_decode_are_skipped() {
        let raw: Vec<String> = ["1-0", "7", "0", "0", "{not json"]
            .map(String::from)
            .to_vec();
        let (jobs, view) = parse_waiting(&raw);
        assert!(jobs.is_empty() && view.is_empty());
    }
}

//! The Redis stream calls of the job engine, each written once: queue (`XADD`, or a new job's
//! with its claim's confirmation), finish (`XACK` + `XDEL`), the consumer group's creation, the reads (own entries, a dead stream's
//! batch), the backlog (`XLEN`) and the move of an entry between streams.
//!
//! Every call but one runs on the shared connection within [`OP_BUDGET`] or its own budget.
//! The exception is [`read_own`], the reader's possibly blocking read: it is only a command,
//! which the reader runs on its [`Dedicated`](crate::conn::Dedicated) connection, so a
//! `BLOCK` never reaches the shared one.

use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use redis::RedisResult;

use super::run::Work;
use super::{decode, Arrival, DecodeError, Job};
use crate::conn::Redis;
use crate::keys::JOB_GROUP;
use crate::{Cluster, ClusterError};

/// Time budget of the non-blocking job operations on the shared connection: one small
/// command, well over a healthy Redis's millisecond, well under a user's patience.
pub(super) const OP_BUDGET: Duration = Duration::from_millis(500);

/// Time budget of one rescue read: an `XAUTOCLAIM` and an `XREADGROUP` of up to a batch of
/// entries each, kilobytes per entry, so more than a single small command.
const RESCUE_READ_BUDGET: Duration = Duration::from_secs(2);

/// The entry field that holds a job's JSON.
const JOB: &str = "job";

/// The entry fields that say how a job got to its stream ([`Arrival`]), beside `job`.
const RESCUED: &str = "rescued";
const STOLEN: &str = "stolen";

/// An entry as queued: its id, the job's JSON as written and how the job got there (what the
/// job shelter keeps a copy of). No `Debug`: the JSON holds the interaction token.
#[derive(Clone, PartialEq)]
pub(super) struct Queued {
    pub(super) id: String,
    pub(super) payload: Vec<u8>,
    pub(super) arrival: Arrival,
}

/// Queues `job` on `stream`, with what its arrival was so far (a job moved to a peer keeps
/// having been rescued or stolen).
pub(super) async fn add(
    redis: &Redis,
    stream: &str,
    job: &Job,
    arrival: Arrival,
) -> Result<Queued, ClusterError> {
    let payload = serde_json::to_vec(job).expect("a job serializes");
    add_payload(redis, stream, payload, arrival).await
}

/// Queues the JSON of a job, as written, on `stream`.
pub(super) async fn add_payload(
    redis: &Redis,
    stream: &str,
    payload: Vec<u8>,
    arrival: Arrival,
) -> Result<Queued, ClusterError> {
    let stream = stream.to_owned();
    let sent = payload.clone();
    let id = redis
        .run("queue job", OP_BUDGET, move |mut c| async move {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&stream).arg("*").arg(JOB).arg(sent);
            if arrival.rescued {
                cmd.arg(RESCUED).arg(1);
            }
            if arrival.stolen {
                cmd.arg(STOLEN).arg(1);
            }
            cmd.query_async::<String>(&mut c).await
        })
        .await?;
    Ok(Queued {
        id,
        payload,
        arrival,
    })
}

/// Queues `job`, new, on `stream` and confirms its interaction's claim for this instance in
/// the same script (`Cluster::confirm_appending`), so that a job is queued exactly when its
/// claim is confirmed: `None` when another instance holds the claim (a fallback swept it) and
/// nothing was queued.
pub(super) async fn add_confirming(
    cluster: &Cluster,
    stream: &str,
    job: &Job,
) -> Result<Option<Queued>, ClusterError> {
    let payload = serde_json::to_vec(job).expect("a job serializes");
    let id = cluster
        .confirm_appending(job.id, stream, (JOB, &payload), ("queue job", OP_BUDGET))
        .await?;
    Ok(id.map(|id| Queued {
        id,
        payload,
        arrival: Arrival::default(),
    }))
}

/// How the job in `entry` got to its stream.
pub(super) fn arrival(entry: &StreamId) -> Arrival {
    Arrival {
        rescued: entry.map.contains_key(RESCUED),
        stolen: entry.map.contains_key(STOLEN),
    }
}

/// Why a job moves between streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Move {
    /// From a dead instance's stream, by its rescuer.
    Rescue,
    /// From a busy peer's queue, by an idle instance.
    Steal,
}

/// Acknowledges entry `id` and deletes it, so the stream's length stays the backlog.
pub(super) async fn ack(redis: &Redis, stream: &str, id: &str) -> Result<(), ClusterError> {
    let (stream, id) = (stream.to_owned(), id.to_owned());
    redis
        .run("ack job", OP_BUDGET, move |mut c| async move {
            redis::pipe()
                .cmd("XACK")
                .arg(&stream)
                .arg(JOB_GROUP)
                .arg(&id)
                .ignore()
                .cmd("XDEL")
                .arg(&stream)
                .arg(&id)
                .ignore()
                .query_async::<()>(&mut c)
                .await
        })
        .await
}

/// Creates the consumer group of `stream` (and the stream), reading from its start; a group
/// that exists already is fine.
pub(super) async fn ensure_group(c: &mut impl ConnectionLike, stream: &str) -> RedisResult<()> {
    let r: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(JOB_GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match r {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// `XREADGROUP GROUP workers {consumer} COUNT {count} [BLOCK ms] STREAMS {stream} {start}`.
/// `start` is `>` for entries never handed out, or an id to re-read `consumer`'s own pending
/// entries after it.
fn read_group(
    stream: &str,
    consumer: &str,
    start: &str,
    count: usize,
    block: Option<Duration>,
) -> redis::Cmd {
    let mut cmd = redis::cmd("XREADGROUP");
    cmd.arg("GROUP")
        .arg(JOB_GROUP)
        .arg(consumer)
        .arg("COUNT")
        .arg(count);
    if let Some(block) = block {
        cmd.arg("BLOCK").arg(block.as_millis() as u64);
    }
    cmd.arg("STREAMS").arg(stream).arg(start);
    cmd
}

fn entries(reply: Option<StreamReadReply>) -> impl Iterator<Item = StreamId> {
    reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids)
}

/// The reader's read of one entry of its own stream, blocking up to `block` when given: a
/// command for a dedicated connection, never the shared one. Its answer goes to [`first`].
pub(super) fn read_own(
    stream: &str,
    consumer: &str,
    start: &str,
    block: Option<Duration>,
) -> redis::Cmd {
    read_group(stream, consumer, start, 1, block)
}

/// The first entry of a read's answer.
pub(super) fn first(reply: Option<StreamReadReply>) -> Option<StreamId> {
    entries(reply).next()
}

/// Up to `batch` entries of a dead instance's `stream` each of pending ones (`XAUTOCLAIM`,
/// whoever held them) and never-read ones (`XREADGROUP >`), now held by `consumer`.
pub(super) async fn take_for_rescue(
    redis: &Redis,
    stream: &str,
    consumer: &str,
    batch: usize,
) -> Result<Vec<StreamId>, ClusterError> {
    let (stream, consumer) = (stream.to_owned(), consumer.to_owned());
    redis
        .run("rescue read", RESCUE_READ_BUDGET, move |mut c| async move {
            // A stream written before its owner's reader ever ran has no group yet.
            ensure_group(&mut c, &stream).await?;
            let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(JOB_GROUP)
                .arg(&consumer)
                .arg(0)
                .arg("0-0")
                .arg("COUNT")
                .arg(batch)
                .query_async(&mut c)
                .await?;
            let unread: Option<StreamReadReply> = read_group(&stream, &consumer, ">", batch, None)
                .query_async(&mut c)
                .await?;
            let mut all = claimed.claimed;
            all.extend(entries(unread));
            Ok(all)
        })
        .await
}

/// The lengths of `streams` (waiting + being worked on), in one pipelined round trip.
pub(super) async fn lengths(redis: &Redis, streams: &[String]) -> Result<Vec<u64>, ClusterError> {
    let keys = streams.to_vec();
    redis
        .run("job backlog", OP_BUDGET, move |mut c| async move {
            let mut pipe = redis::pipe();
            for k in &keys {
                pipe.cmd("XLEN").arg(k);
            }
            pipe.query_async(&mut c).await
        })
        .await
}

/// Moves `entry` of stream `from` to stream `to`: queued there first, then acknowledged on
/// `from` (a crash in between runs the job twice, and the done marker keeps the answer
/// single). An entry that is not a job is dropped. `Ok(Some(queued))` when a job moved: the
/// new entry, which carries the old one's arrival and `why` it moved.
///
/// The job's JSON moves as written, not decoded and written again: a job whose arguments
/// this version cannot read still reaches a handler that tells its user, and fields that a
/// newer version added survive a move by an older one.
pub(super) async fn move_entry(
    redis: &Redis,
    from: &str,
    entry: &StreamId,
    to: &str,
    why: Move,
) -> Result<Option<Queued>, ClusterError> {
    let payload = match parse(entry) {
        Ok(_) => payload(entry),
        Err(not) => {
            not.log(from, &entry.id);
            None
        }
    };
    let mut moved = None;
    if let Some(payload) = payload {
        let mut arrival = arrival(entry);
        match why {
            Move::Rescue => arrival.rescued = true,
            Move::Steal => arrival.stolen = true,
        }
        moved = Some(add_payload(redis, to, payload, arrival).await?);
    }
    ack(redis, from, &entry.id).await?;
    Ok(moved)
}

/// The `job` field of a stream entry; `None` for a deleted entry still pending.
fn payload(entry: &StreamId) -> Option<Vec<u8>> {
    let raw = entry.map.get(JOB)?;
    redis::from_redis_value_ref(raw).ok()
}

/// Why a stream entry holds no job to run.
pub(super) enum NotAJob {
    /// No `job` field: an entry deleted while still pending (moved away by a rescuer).
    Deleted,
    /// A `job` field that is not a job's JSON: nothing in it says whom to answer.
    Malformed(DecodeError),
}

impl NotAJob {
    /// Logs why the entry `id` of `stream` is dropped; a deleted one is routine.
    pub(super) fn log(&self, stream: &str, id: &str) {
        match self {
            NotAJob::Deleted => tracing::debug!(stream, id, "dropping a deleted entry"),
            NotAJob::Malformed(e) => {
                tracing::warn!(stream, id, "dropping an entry: {}", e.summary())
            }
        }
    }
}

/// The job in a stream entry, its arguments decoded (or found unreadable) here, once.
pub(super) fn parse(entry: &StreamId) -> Result<Work, NotAJob> {
    let payload = payload(entry).ok_or(NotAJob::Deleted)?;
    match decode(&payload) {
        Ok(job) => Ok(Work::Job(job)),
        Err(DecodeError::Args(job)) => Ok(Work::Unreadable(*job)),
        Err(e @ DecodeError::NotAJob(_)) => Err(NotAJob::Malformed(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(cmd: &redis::Cmd) -> Vec<String> {
        cmd.args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                _ => "<not a plain argument>".into(),
            })
            .collect()
    }

    #[test]
    fn a_read_blocks_only_when_asked() {
        let blocking = read_group("ks:jobs:1:chat", "i1", ">", 1, Some(Duration::from_secs(1)));
        assert_eq!(
            args(&blocking).join(" "),
            "XREADGROUP GROUP workers i1 COUNT 1 BLOCK 1000 STREAMS ks:jobs:1:chat >"
        );
        let scan = read_group("ks:jobs:1:chat", "i1", "0", 1, None);
        assert_eq!(
            args(&scan).join(" "),
            "XREADGROUP GROUP workers i1 COUNT 1 STREAMS ks:jobs:1:chat 0"
        );
    }
}

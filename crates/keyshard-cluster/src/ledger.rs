//! The Redis side of the usage ledger's durable buffer: one stream per instance,
//! `{c}:ledger:{id}`, with the consumer group `writers`; field `row` holds a ledger row as JSON
//! (built and parsed by `keyshard-ledger`, opaque here).
//!
//! The buffer is at-least-once on purpose: every row may be read and written to Postgres more
//! than once (a crash between the Postgres commit and the `XACK`, a peer taking over a stream
//! its owner still reads, a row pushed again after an empty Redis restart), and Postgres keeps
//! exactly one (the interaction id is unique there). So nothing here needs to be exact, only
//! never lose an entry that was not acknowledged:
//!
//! - [`LedgerStream::push_many`]: `XADD` into this instance's stream (pipelined).
//! - [`LedgerStream::read`]: every pending entry of the group, whoever held it
//!   (`XAUTOCLAIM` from `0-0`), then never-delivered ones (`XREADGROUP >`). A missing group
//!   means Redis lost the stream (an empty restart): the group is created again and the batch
//!   says so ([`Batch::recreated`]), so the writer pushes again what it had not written yet.
//! - [`LedgerStream::ack`]: `XACK` + `XDEL` in one `MULTI`, after the rows are in Postgres, so
//!   `XLEN` is the backlog.
//! - A dead instance's stream is read, written and acknowledged by one peer at a time, the
//!   holder of `{c}:ledger-takeover:{dead}` (`SET NX PX`, like the job rescue):
//!   [`LedgerStream::dead_with_backlog`], [`LedgerStream::lock_takeover`], then `read`/`ack`
//!   with the dead instance's id.
//! - [`LedgerStream::generation`]: the cluster's `{c}:gen` marker (the same `SET NX` + `GET` as
//!   the membership loop), so the writer notices an empty restart even when its stream was
//!   recreated by someone else's read.
//!
//! Every read here is non-blocking on the shared connection: batches are read on an interval,
//! so there is no `BLOCK` that could stall a claim.

use std::sync::Arc;
use std::time::Duration;

use keyshard_routing::InstanceId;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};

use crate::conn::Redis;
use crate::{keys, Cluster, ClusterError};

/// The consumer group every ledger stream has.
pub const GROUP: &str = "writers";

/// The entry field holding the row's JSON.
pub const FIELD: &str = "row";

/// Budget of a push or an acknowledgement: a pipeline of a few hundred small commands on a
/// healthy Redis takes a millisecond or two; half a second rides out a busy moment, and a
/// failure only keeps the rows in memory for the next try.
const WRITE_BUDGET: Duration = Duration::from_millis(500);

/// Budget of a read: up to a few hundred entries of ~500 bytes each, plus creating the group
/// after an empty restart. Longer than a push because a reply can be a few hundred kilobytes.
const READ_BUDGET: Duration = Duration::from_secs(1);

/// How long a peer holds a dead instance's stream: long enough to write a few batches (a
/// batch takes milliseconds; a slow Postgres, a second or two), short enough that another
/// peer takes over within seconds if the taker itself dies.
pub const TAKEOVER_LOCK_MS: u64 = 10_000;

/// One entry of a ledger stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The stream entry id (what [`LedgerStream::ack`] takes).
    pub id: String,
    /// The row as pushed; `None` when the entry has no `row` field (not ours: acknowledge and
    /// drop it).
    pub row: Option<String>,
}

/// What one [`LedgerStream::read`] returned.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// Pending entries first (oldest first), then new ones.
    pub entries: Vec<Entry>,
    /// Nothing else was in the stream when it was read: every entry added before the read
    /// started is in `entries` (unless it was acknowledged by someone else meanwhile).
    pub drained: bool,
    /// The consumer group was missing and has been created: Redis lost the stream (an empty
    /// restart) since the last read.
    pub recreated: bool,
}

/// Handle on the ledger streams of one instance's cluster. Cheap to clone.
#[derive(Clone)]
pub struct LedgerStream {
    redis: Arc<Redis>,
    cluster: Cluster,
    prefix: String,
    me: InstanceId,
}

impl std::fmt::Debug for LedgerStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LedgerStream")
            .field("prefix", &self.prefix)
            .field("me", &self.me)
            .finish_non_exhaustive()
    }
}

impl LedgerStream {
    /// Uses `cluster`'s connection, name and instance id; does not touch Redis.
    pub fn new(cluster: &Cluster) -> LedgerStream {
        let cfg = cluster.config();
        LedgerStream {
            redis: cluster.redis(),
            cluster: cluster.clone(),
            prefix: cfg.cluster_name.clone(),
            me: cfg.instance_id,
        }
    }

    /// This instance's id (whose stream `push_many` writes).
    pub fn instance_id(&self) -> InstanceId {
        self.me
    }

    /// `{c}:ledger:{owner}`.
    pub fn key(&self, owner: InstanceId) -> String {
        keys::ledger_stream(&self.prefix, owner)
    }

    /// This instance's consumer name in every ledger group.
    fn consumer(&self) -> String {
        format!("i{}", self.me)
    }

    /// Appends rows (JSON) to this instance's stream, in order, in one pipeline. On an error
    /// any prefix of them may have been added; pushing them again only makes duplicates, which
    /// the writer's idempotent insert absorbs.
    pub async fn push_many<S: AsRef<str>>(&self, rows: &[S]) -> Result<(), ClusterError> {
        if rows.is_empty() {
            return Ok(());
        }
        let key = self.key(self.me);
        let mut pipe = redis::pipe();
        for row in rows {
            pipe.cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg(FIELD)
                .arg(row.as_ref())
                .ignore();
        }
        self.redis
            .run("ledger push", WRITE_BUDGET, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
    }

    /// One row; see [`push_many`](Self::push_many).
    pub async fn push(&self, row: &str) -> Result<(), ClusterError> {
        self.push_many(&[row]).await
    }

    /// Up to `max` entries of `owner`'s stream (this instance's own, or a dead peer's it holds
    /// the takeover lock of): every pending one first, whichever consumer it was delivered to,
    /// then new ones. Entries stay pending until [`ack`](Self::ack)ed, so a failed write reads
    /// them again next time.
    pub async fn read(&self, owner: InstanceId, max: usize) -> Result<Batch, ClusterError> {
        let max = max.max(1);
        let key = self.key(owner);
        let consumer = self.consumer();
        self.redis
            .run("ledger read", READ_BUDGET, |mut c| async move {
                let mut recreated = false;
                let claimed = match autoclaim(&mut c, &key, &consumer, max).await {
                    Err(e) if e.code() == Some("NOGROUP") => {
                        create_group(&mut c, &key).await?;
                        recreated = true;
                        autoclaim(&mut c, &key, &consumer, max).await?
                    }
                    other => other?,
                };
                let pending_done = claimed.next_stream_id == "0-0";
                let mut entries: Vec<Entry> = claimed.claimed.iter().map(entry).collect();
                let room = max.saturating_sub(entries.len());
                let mut drained = false;
                if room > 0 && pending_done {
                    let new: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                        .arg("GROUP")
                        .arg(GROUP)
                        .arg(&consumer)
                        .arg("COUNT")
                        .arg(room)
                        .arg("STREAMS")
                        .arg(&key)
                        .arg(">")
                        .query_async(&mut c)
                        .await?;
                    let before = entries.len();
                    entries.extend(
                        new.into_iter()
                            .flat_map(|r| r.keys)
                            .flat_map(|k| k.ids)
                            .map(|id| entry(&id)),
                    );
                    drained = entries.len() - before < room;
                }
                Ok(Batch {
                    entries,
                    drained,
                    recreated,
                })
            })
            .await
    }

    /// Acknowledges and deletes entries of `owner`'s stream (one `MULTI`: an entry is never
    /// deleted without being acknowledged, or the reverse).
    pub async fn ack(&self, owner: InstanceId, ids: &[String]) -> Result<(), ClusterError> {
        if ids.is_empty() {
            return Ok(());
        }
        let key = self.key(owner);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XACK")
            .arg(&key)
            .arg(GROUP)
            .arg(ids)
            .ignore()
            .cmd("XDEL")
            .arg(&key)
            .arg(ids)
            .ignore();
        self.redis
            .run("ledger ack", WRITE_BUDGET, |mut c| async move {
                pipe.query_async::<()>(&mut c).await
            })
            .await
    }

    /// Entries in `owner`'s stream (pending or new): the backlog.
    pub async fn backlog(&self, owner: InstanceId) -> Result<u64, ClusterError> {
        let key = self.key(owner);
        self.redis
            .run("ledger backlog", WRITE_BUDGET, |mut c| async move {
                redis::cmd("XLEN").arg(&key).query_async(&mut c).await
            })
            .await
    }

    /// Peers that are dead in the latest membership snapshot and have rows in their stream.
    /// Empty while this instance is degraded or has not read a snapshot yet (every peer looks
    /// dead until then).
    pub async fn dead_with_backlog(&self) -> Result<Vec<InstanceId>, ClusterError> {
        if !self.cluster.is_ready() {
            return Ok(Vec::new());
        }
        let dead: Vec<InstanceId> = self
            .cluster
            .membership()
            .iter()
            .filter(|s| !s.alive && s.id != self.me)
            .map(|s| s.id)
            .collect();
        if dead.is_empty() {
            return Ok(dead);
        }
        let keys: Vec<String> = dead.iter().map(|d| self.key(*d)).collect();
        let lens: Vec<u64> = self
            .redis
            .run("ledger backlog", WRITE_BUDGET, |mut c| async move {
                let mut pipe = redis::pipe();
                for k in &keys {
                    pipe.cmd("XLEN").arg(k);
                }
                pipe.query_async(&mut c).await
            })
            .await?;
        Ok(dead
            .into_iter()
            .zip(lens)
            .filter(|(_, n)| *n > 0)
            .map(|(d, _)| d)
            .collect())
    }

    /// Takes (or keeps) the right to write `dead`'s stream for [`TAKEOVER_LOCK_MS`]: `true`
    /// when this instance holds it.
    pub async fn lock_takeover(&self, dead: InstanceId) -> Result<bool, ClusterError> {
        let key = keys::ledger_takeover(&self.prefix, dead);
        let me = self.me.to_string();
        self.redis
            .run("ledger takeover lock", WRITE_BUDGET, |mut c| async move {
                let (_set, holder): (Option<String>, Option<String>) = redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&me)
                    .arg("NX")
                    .arg("PX")
                    .arg(TAKEOVER_LOCK_MS)
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await?;
                Ok(holder.as_deref() == Some(me.as_str()))
            })
            .await
    }

    /// The current value of `{c}:gen`, setting it first when absent (exactly as the
    /// membership loop does, so whichever comes first after a restart sets it). A different
    /// value than last time means Redis restarted empty in between.
    pub async fn generation(&self) -> Result<String, ClusterError> {
        let key = keys::generation(&self.prefix);
        let mine = format!("{}-{}", self.me, crate::clock::now_ms());
        self.redis
            .run("generation", WRITE_BUDGET, |mut c| async move {
                let (current,): (String,) = redis::pipe()
                    .cmd("SET")
                    .arg(&key)
                    .arg(&mine)
                    .arg("NX")
                    .ignore()
                    .cmd("GET")
                    .arg(&key)
                    .query_async(&mut c)
                    .await?;
                Ok(current)
            })
            .await
    }
}

async fn autoclaim(
    c: &mut redis::aio::ConnectionManager,
    key: &str,
    consumer: &str,
    max: usize,
) -> redis::RedisResult<StreamAutoClaimReply> {
    // Min idle 0: every pending entry, also one delivered a moment ago. Only the stream's
    // owner, or the single holder of its takeover lock, reads it; if both do (an owner back
    // from the dead), the same row is written twice and Postgres keeps one.
    redis::cmd("XAUTOCLAIM")
        .arg(key)
        .arg(GROUP)
        .arg(consumer)
        .arg(0)
        .arg("0-0")
        .arg("COUNT")
        .arg(max)
        .query_async(c)
        .await
}

/// Creates the group at the start of the stream (`0`: rows pushed before the group existed,
/// as after an empty restart, are read too), and the stream if needed.
async fn create_group(c: &mut redis::aio::ConnectionManager, key: &str) -> redis::RedisResult<()> {
    let r: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(key)
        .arg(GROUP)
        .arg("0")
        .arg("MKSTREAM")
        .query_async(c)
        .await;
    match r {
        // Another reader created it between our read and this call.
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

fn entry(id: &StreamId) -> Entry {
    Entry {
        id: id.id.clone(),
        row: id
            .map
            .get(FIELD)
            .and_then(|v| redis::from_redis_value_ref::<String>(v).ok()),
    }
}

//! Fallback claims that leave together go to Redis together: one [`CLAIMS_SCRIPT`] call for
//! every claim queued when the batcher gets to run.
//!
//! Every instance receives every interaction and, as a fallback, claims each one a peer owns
//! once its turn on the ladder comes (almost always to find the owner's claim). Fallbacks
//! wake on a shared tick (the bot's edge), so with 4 instances at 1,000 interactions/s each
//! instance sends some 7 claims every 10 ms. One script call each cost Redis the script's
//! fixed part (the look at the generation and `INFO server`) every time, and the instance a
//! round trip each; batched, both are paid once a tick. The claims themselves are unchanged:
//! each key's `SET NX PX`, its holder and TTL, after one look for a Redis restart that holds
//! for the whole batch (the script is atomic).
//!
//! A batch is sent from a task of its own, so a slow Redis delays the claims of one batch,
//! not the batches after it. A failed call fails every claim in it, each with its own copy
//! of the error, and each caller retries or degrades as before.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::claim::CLAIM_BUDGET;
use crate::conn::Redis;
use crate::ClusterError;

/// Fallback claims after one look for a Redis restart, atomically (`KEYS[1]` the generation,
/// `KEYS[2..]` the claims; `ARGV` the generation and `run_id` last seen (empty: unknown), me,
/// the pending life in ms):
/// - Redis restarted since that look (another generation, or another `run_id`, as
///   `ServerIdentity::restart_since` tells them): nothing is claimed, and the reply is
///   `{'0', generation, run_id}` (empty for none);
/// - else each claim's `SET NX PX`, and the reply is `{'1', holder, PTTL, holder, PTTL, …}`
///   in the order of the keys.
///
/// `INFO server` costs Redis a few microseconds and sends nothing back.
pub(super) const CLAIMS_SCRIPT: &str = r"
local gen = redis.call('GET', KEYS[1])
local run_id = string.match(redis.call('INFO', 'server'), 'run_id:(%x+)') or ''
if gen ~= ARGV[1] or (ARGV[2] ~= '' and run_id ~= '' and run_id ~= ARGV[2]) then
  return {'0', gen or '', run_id}
end
local out = {'1'}
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], ARGV[3], 'NX', 'PX', ARGV[4])
  out[#out + 1] = redis.call('GET', KEYS[i]) or ''
  out[#out + 1] = tostring(redis.call('PTTL', KEYS[i]))
end
return out
";

/// The most claims in one call: a tick's worth at several thousand interactions a second.
const MAX_BATCH: usize = 64;

/// What a claim found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Found {
    /// Redis restarted since the look: its generation and `run_id` now (empty: none).
    Restarted { generation: String, run_id: String },
    /// Who holds the claim now (empty: nobody, it expired at once) and its PTTL.
    Held { holder: String, ttl: String },
}

struct Request {
    key: String,
    /// The generation and `run_id` last seen.
    seen: (String, String),
    reply: oneshot::Sender<Result<Found, ClusterError>>,
}

/// The handle claims are sent through. The batching task ends when the handle is dropped.
pub(super) struct ClaimBatcher {
    tx: mpsc::UnboundedSender<Request>,
}

impl ClaimBatcher {
    /// Starts the batching task (on the current Tokio runtime).
    pub(super) fn spawn(
        redis: Arc<Redis>,
        generation: String,
        me: String,
        pending_ms: u64,
    ) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let ctx = Arc::new(Ctx {
            redis,
            generation,
            me,
            pending_ms,
        });
        tokio::spawn(collect(rx, ctx));
        ClaimBatcher { tx }
    }

    /// Claims `key` for this instance, with the server last seen as `seen` (generation,
    /// `run_id`), in the next batch.
    pub(super) async fn claim(
        &self,
        key: String,
        seen: (&str, &str),
    ) -> Result<Found, ClusterError> {
        let (reply, answer) = oneshot::channel();
        let request = Request {
            key,
            seen: (seen.0.to_owned(), seen.1.to_owned()),
            reply,
        };
        if self.tx.send(request).is_err() {
            return Err(gone());
        }
        answer.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// What every batch needs.
struct Ctx {
    redis: Arc<Redis>,
    generation: String,
    me: String,
    pending_ms: u64,
}

/// Takes what is queued, one batch per look, and sends each batch from a task of its own.
async fn collect(mut rx: mpsc::UnboundedReceiver<Request>, ctx: Arc<Ctx>) {
    while let Some(first) = rx.recv().await {
        // The fallbacks woken with the first one are being polled now: let them queue.
        tokio::task::yield_now().await;
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        for group in by_seen(batch) {
            tokio::spawn(send(group, ctx.clone()));
        }
    }
}

/// The requests grouped by the server they last saw (one group, but across a restart).
fn by_seen(mut batch: Vec<Request>) -> Vec<Vec<Request>> {
    batch.sort_by(|a, b| a.seen.cmp(&b.seen));
    let mut groups: Vec<Vec<Request>> = Vec::new();
    for r in batch {
        match groups.last_mut() {
            Some(g) if g[0].seen == r.seen => g.push(r),
            _ => groups.push(vec![r]),
        }
    }
    groups
}

/// One script call for `group`, its answers handed back in order.
async fn send(group: Vec<Request>, ctx: Arc<Ctx>) {
    static SCRIPT: std::sync::LazyLock<redis::Script> =
        std::sync::LazyLock::new(|| redis::Script::new(CLAIMS_SCRIPT));
    let (seen_generation, seen_run_id) = &group[0].seen;
    let result: Result<Vec<String>, ClusterError> = ctx
        .redis
        .run_retrying("claim", CLAIM_BUDGET, |mut c| {
            let mut invocation = SCRIPT.key(&ctx.generation);
            for r in &group {
                invocation.key(&r.key);
            }
            invocation
                .arg(seen_generation)
                .arg(seen_run_id)
                .arg(&ctx.me)
                .arg(ctx.pending_ms);
            async move { invocation.invoke_async(&mut c).await }
        })
        .await;
    for (i, r) in group.into_iter().enumerate() {
        let answer = match &result {
            Ok(reply) => found(reply, i),
            Err(e) => Err(duplicate(e)),
        };
        let _ = r.reply.send(answer);
    }
}

/// The `i`-th claim's answer in a [`CLAIMS_SCRIPT`] reply.
fn found(reply: &[String], i: usize) -> Result<Found, ClusterError> {
    let at = |k: usize| reply.get(k).cloned().unwrap_or_default();
    match reply.first().map(String::as_str) {
        Some("0") => Ok(Found::Restarted {
            generation: at(1),
            run_id: at(2),
        }),
        Some("1") if reply.len() > 2 + 2 * i => Ok(Found::Held {
            holder: at(1 + 2 * i),
            ttl: at(2 + 2 * i),
        }),
        _ => Err(ClusterError::Redis {
            op: "claim",
            source: redis::RedisError::from((
                redis::ErrorKind::UnexpectedReturnType,
                "unexpected reply to the claims script",
            )),
        }),
    }
}

/// Each claim of a failed call gets its own copy of the error, as from a call of its own.
fn duplicate(e: &ClusterError) -> ClusterError {
    match e {
        ClusterError::Timeout { op, timeout } => ClusterError::Timeout {
            op,
            timeout: *timeout,
        },
        ClusterError::Redis { op, source } => ClusterError::Redis {
            op,
            source: source.clone(),
        },
        other => ClusterError::InvalidConfig(other.to_string()),
    }
}

/// The batching task is gone (the runtime is shutting down): like a Redis that cannot be
/// reached, the caller degrades.
fn gone() -> ClusterError {
    ClusterError::Redis {
        op: "claim",
        source: redis::RedisError::from(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "the claim batcher stopped",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_is_read_claim_by_claim() {
        let reply: Vec<String> = ["1", "2", "899990", "", "-2", "3", "12"]
            .map(String::from)
            .to_vec();
        let held = |h: &str, t: &str| {
            Some(Found::Held {
                holder: h.into(),
                ttl: t.into(),
            })
        };
        assert_eq!(found(&reply, 0).ok(), held("2", "899990"));
        assert_eq!(found(&reply, 1).ok(), held("", "-2"));
        assert_eq!(found(&reply, 2).ok(), held("3", "12"));
        assert!(found(&reply, 3).is_err(), "a claim the reply does not have");
        let restarted: Vec<String> = ["0", "g2", "abc"].map(String::from).to_vec();
        for i in 0..3 {
            assert_eq!(
                found(&restarted, i).ok(),
                Some(Found::Restarted {
                    generation: "g2".into(),
                    run_id: "abc".into()
                })
            );
        }
        assert!(found(&[], 0).is_err());
    }

    #[test]
    fn a_failed_call_fails_each_claim_alike() {
        let timeout = ClusterError::Timeout {
            op: "claim",
            timeout: CLAIM_BUDGET,
        };
        assert!(duplicate(&timeout).is_timeout());
        assert_eq!(duplicate(&timeout).to_string(), timeout.to_string());
        let io = ClusterError::Redis {
            op: "claim",
            source: redis::RedisError::from(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "slow",
            )),
        };
        let copy = duplicate(&io);
        assert!(
            copy.is_timeout(),
            "a timed-out call is retried by each claim"
        );
        assert_eq!(copy.to_string(), io.to_string());
    }
}

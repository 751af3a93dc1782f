//! Noticing that Redis restarted, whether it came back empty or with its data.
//!
//! Two marks identify the server a handle talks to ([`ServerIdentity`]):
//! - the generation key `{c}:gen`, `SET NX` by whoever reads first after Redis starts empty:
//!   it changes when the data is gone;
//! - `INFO server`'s `run_id`, new on every start of the server process: it changes also when
//!   the data was kept (`docker restart redis` with a volume: saved on SIGTERM, loaded at
//!   start). Such a restart keeps the claim keys but not the seconds Redis was away: heartbeat
//!   keys lapse meanwhile, and a primary that could not reach it answered its users by the
//!   static rule without a claim key.
//!
//! Either change counts as an outage (`link_epoch` bumped, `restarted_at` set) even when no
//! call of this instance failed: a reconnect can hide the outage from every call (the retry on
//! a fresh connection in `conn::Redis::run_retrying` reports only its final success, and an
//! instance may simply have made no call while Redis was away).

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::{Cluster, BACKGROUND_BUDGET, CLAIM_BUDGET};
use crate::{keys, ClusterError};

/// Which Redis server, and which life of its data, a handle talks to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ServerIdentity {
    /// The value of `{c}:gen`; `None` when nobody has set it since Redis started empty.
    generation: Option<String>,
    /// `INFO server`'s `run_id`; `None` when the server does not report one (a proxy in front
    /// of Redis may not), and then only the generation tells restarts apart.
    run_id: Option<String>,
}

/// How Redis restarted between two looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Restart {
    /// The generation changed: every key is gone (claims, heartbeats, job streams).
    Empty,
    /// Only the server's `run_id` changed: the keys are back, except those that expired while
    /// it was away (heartbeats), and answers given by the static rule meanwhile have no claim.
    KeptData,
}

impl ServerIdentity {
    pub(super) fn new(generation: Option<String>, run_id: Option<String>) -> Self {
        ServerIdentity { generation, run_id }
    }

    /// The generation and `run_id` as a script's arguments (empty for none).
    pub(super) fn parts(&self) -> (&str, &str) {
        (
            self.generation.as_deref().unwrap_or(""),
            self.run_id.as_deref().unwrap_or(""),
        )
    }

    /// Whether (and how) Redis restarted between `seen` and `self`.
    pub(super) fn restart_since(&self, seen: &ServerIdentity) -> Option<Restart> {
        if self.generation != seen.generation {
            return Some(Restart::Empty);
        }
        match (&self.run_id, &seen.run_id) {
            (Some(now), Some(before)) if now != before => Some(Restart::KeptData),
            _ => None,
        }
    }
}

/// The `run_id` line of an `INFO server` answer.
fn run_id(info: &str) -> Option<String> {
    info.lines()
        .find_map(|l| l.strip_prefix("run_id:"))
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// One round trip that reads the server's identity: the generation (stamped first with
/// `stamp` when given, `SET NX`, so a Redis that restarted empty gets one) and `INFO server`.
fn identity_pipe(key: &str, stamp: Option<&str>) -> redis::Pipeline {
    let mut pipe = redis::pipe();
    if let Some(stamp) = stamp {
        pipe.cmd("SET").arg(key).arg(stamp).arg("NX").ignore();
    }
    pipe.cmd("GET").arg(key).cmd("INFO").arg("server");
    pipe
}

async fn read_identity(
    c: &mut redis::aio::ConnectionManager,
    pipe: redis::Pipeline,
) -> redis::RedisResult<ServerIdentity> {
    let (generation, info): (Option<String>, String) = pipe.query_async(c).await?;
    Ok(ServerIdentity {
        generation,
        run_id: run_id(&info),
    })
}

impl Cluster {
    /// How many times this instance has seen Redis restart empty.
    pub(crate) fn empty_restarts(&self) -> u64 {
        self.inner.empty_restarts.load(Ordering::Relaxed)
    }

    /// The generation (`{c}:gen`) of the Redis this instance last saw; `None` before the
    /// first look. A reader that finds another value talks to a Redis not noticed yet.
    pub(crate) fn generation_seen(&self) -> Option<String> {
        let seen = self.inner.server.lock().unwrap_or_else(|e| e.into_inner());
        seen.as_ref().and_then(|s| s.generation.clone())
    }

    /// The server this instance last saw; `None` before the first look.
    pub(super) fn server_seen(&self) -> Option<ServerIdentity> {
        self.inner
            .server
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The membership tick's look, before it reads the snapshot: `SET NX` of the generation
    /// (so a Redis that restarted empty gets one), then its value and `INFO server`, in one
    /// round trip. A restart found here is noted (see [`note_server`](Self::note_server)) so
    /// that the snapshot read right after does not take lapsed heartbeats for deaths. Retried
    /// once on a fresh connection (the look is idempotent): the tick that finds the old
    /// connection broken then notes the restart at once, not a tick later, shortening the
    /// time in which a claim on the fresh connection does not know of it yet.
    pub(super) async fn check_restart(&self) -> Result<(), ClusterError> {
        let key = keys::generation(&self.inner.cfg.cluster_name);
        let mine = format!(
            "{}-{}",
            self.inner.cfg.instance_id,
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        );
        let current = self
            .inner
            .redis
            .run_retrying("generation", BACKGROUND_BUDGET, |mut c| {
                let pipe = identity_pipe(&key, Some(&mine));
                async move { read_identity(&mut c, pipe).await }
            })
            .await?;
        self.note_server(current);
        Ok(())
    }

    /// Whether Redis restarted since this instance last looked (one round trip: the
    /// generation's `GET` and `INFO server`). A sweeping fallback asks right before it claims
    /// (a first try looks in its own claim script), closing the gap until the next membership
    /// tick; a restart found here is noted at once, so
    /// other claims in flight see `link_epoch` move. An unreachable Redis counts as
    /// restarted: the fallback then declines, as in degraded mode.
    pub(super) async fn restarted_since_seen(&self) -> bool {
        let key = keys::generation(&self.inner.cfg.cluster_name);
        let current = self
            .inner
            .redis
            .run("generation", CLAIM_BUDGET, |mut c| async move {
                read_identity(&mut c, identity_pipe(&key, None)).await
            })
            .await;
        match current {
            // An empty Redis nobody has stamped yet is a restart too (`generation: None`
            // differs from any generation seen); before the first look there is nothing to
            // compare with.
            Ok(current) => self.note_server(current).is_some(),
            Err(_) => true,
        }
    }

    /// Records `current` as the server this instance talks to; when it differs from the one
    /// seen before, Redis restarted: claims made before it may be gone (an empty restart) or
    /// answers were given without one (the static rule while it was away), so waiting
    /// fallbacks decline (`link_epoch`), and for one heartbeat lifetime a peer missing from
    /// Redis is not dead (`restarted_at`). Returns how it restarted.
    pub(super) fn note_server(&self, current: ServerIdentity) -> Option<Restart> {
        let inner = &self.inner;
        let mut seen = inner.server.lock().unwrap_or_else(|e| e.into_inner());
        let restart = seen.as_ref().and_then(|s| current.restart_since(s));
        if let Some(restart) = restart {
            inner.link_epoch.fetch_add(1, Ordering::Relaxed);
            *inner.restarted_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            match restart {
                Restart::Empty => {
                    inner.empty_restarts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        instance = inner.cfg.instance_id,
                        "Redis restarted empty; claims made before it are gone"
                    )
                }
                Restart::KeptData => tracing::warn!(
                    instance = inner.cfg.instance_id,
                    "Redis restarted with its data; heartbeats may have lapsed while it was away"
                ),
            }
            // A restarted Redis has lost our heartbeat (or let it lapse): announce ourselves
            // at once.
            inner.wake_heartbeat.notify_one();
        }
        // A reply without a generation (a fallback's look before any tick stamped the empty
        // Redis) is not kept: the next tick's `SET NX` gives it one to remember.
        if current.generation.is_some() {
            *seen = Some(current);
        }
        restart
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(generation: Option<&str>, run_id: Option<&str>) -> ServerIdentity {
        ServerIdentity {
            generation: generation.map(str::to_owned),
            run_id: run_id.map(str::to_owned),
        }
    }

    #[test]
    fn a_restart_is_a_new_generation_or_a_new_run_id() {
        let seen = id(Some("1-5"), Some("aaa"));
        let cases = [
            (id(Some("1-5"), Some("aaa")), None),
            // `docker restart redis` with a volume: the data (and the generation) came back.
            (id(Some("1-5"), Some("bbb")), Some(Restart::KeptData)),
            (id(Some("2-9"), Some("bbb")), Some(Restart::Empty)),
            // Empty and not stamped yet.
            (id(None, Some("bbb")), Some(Restart::Empty)),
            // A server that hides its run_id: only the generation can tell.
            (id(Some("1-5"), None), None),
            (id(Some("2-9"), None), Some(Restart::Empty)),
        ];
        for (now, want) in cases {
            assert_eq!(now.restart_since(&seen), want, "{now:?}");
        }
        assert_eq!(
            id(Some("1-5"), Some("bbb")).restart_since(&id(Some("1-5"), None)),
            None,
            "nothing to compare a run_id with"
        );
    }

    #[test]
    fn run_id_is_read_from_info_server() {
        let info = "# Server\r\nredis_version:7.0.15\r\nredis_mode:standalone\r\nprocess_id:42\r\n\
                    run_id:3f1c0e4b9d2a8f7e6c5b4a39281706f5e4d3c2b1\r\ntcp_port:6379\r\n";
        assert_eq!(
            run_id(info).as_deref(),
            Some("3f1c0e4b9d2a8f7e6c5b4a39281706f5e4d3c2b1")
        );
        assert_eq!(run_id("# Server\r\nredis_version:7.0.15\r\n"), None);
        assert_eq!(run_id("run_id:\r\n"), None);
    }
}

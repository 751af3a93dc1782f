//! The shard table of this instance: which of its shards are up, the gateway counters the
//! relay sees per shard, what their IDENTIFYs wait for, and each shard's heartbeat latency.
//! Written by the relay (`gateway::relay`) and the event handler (`edge`), read by `/readyz`,
//! `/핑`, `/로드밸런서` and the serving flag in `app`.
//!
//! A shard is *up* from its READY or RESUMED until its session is invalidated or its socket
//! ends. Every instance runs every shard, so an instance with a shard down misses that shard's
//! interactions: `app` marks it draining in its heartbeat until all are up again, and peers
//! answer its users meanwhile.
//!
//! A leaf of the bot's import graph, beside `context`: it names serenity's shard manager (for
//! the latencies) and the cluster's IDENTIFY queue (for the waits), no other bot module.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use keyshard_cluster::{IdentifyQueue, IdentifyWait};
use poise::serenity_prelude as serenity;
use tokio::sync::watch;

/// One shard as the views show it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardView {
    pub id: u32,
    pub up: bool,
    /// Heartbeat round trip; `None` before the first acknowledged heartbeat.
    pub latency: Option<Duration>,
    /// IDENTIFYs this process sent for the shard.
    pub identifies: u32,
    pub resumes: u32,
    /// Op 9 INVALID_SESSION the shard received.
    pub invalidated: u32,
    /// What its IDENTIFY waits for, if it waits.
    pub waiting: Option<IdentifyWait>,
}

#[derive(Clone, Debug, Default)]
struct Entry {
    up: bool,
    /// The relay connection that last sent this shard's IDENTIFY or RESUME: only its end
    /// takes the shard down (an old socket closing after the new one is up must not).
    conn: u64,
    identifies: u32,
    resumes: u32,
    invalidated: u32,
}

/// The shard table. Create it with the shard count once it is known ([`ShardBoard::plan`]).
pub struct ShardBoard {
    entries: Mutex<Vec<Entry>>,
    /// Session id → shard, from READY: a RESUME names only its session.
    sessions: Mutex<HashMap<String, u32>>,
    all_up: watch::Sender<bool>,
    managers: OnceLock<Vec<Arc<serenity::ShardManager>>>,
    queue: OnceLock<IdentifyQueue>,
}

impl Default for ShardBoard {
    fn default() -> Self {
        Self {
            entries: Mutex::new(Vec::new()),
            sessions: Mutex::new(HashMap::new()),
            all_up: watch::channel(false).0,
            managers: OnceLock::new(),
            queue: OnceLock::new(),
        }
    }
}

impl ShardBoard {
    /// Sets the shard count (every shard down).
    pub fn plan(&self, shards: u32) {
        *self.lock() = vec![Entry::default(); shards as usize];
        self.publish();
    }

    /// The serenity shard managers, one per shard, for the latencies.
    pub fn set_managers(&self, managers: Vec<Arc<serenity::ShardManager>>) {
        let _ = self.managers.set(managers);
    }

    /// The IDENTIFY queue, for what each shard waits for.
    pub fn set_queue(&self, queue: IdentifyQueue) {
        let _ = self.queue.set(queue);
    }

    pub fn queue(&self) -> Option<&IdentifyQueue> {
        self.queue.get()
    }

    pub fn count(&self) -> u32 {
        self.lock().len() as u32
    }

    pub fn up_count(&self) -> u32 {
        self.lock().iter().filter(|e| e.up).count() as u32
    }

    /// Every shard is up (and there is at least one).
    pub fn all_up(&self) -> bool {
        *self.all_up.borrow()
    }

    /// Changes of [`all_up`](Self::all_up).
    pub fn watch_all_up(&self) -> watch::Receiver<bool> {
        self.all_up.subscribe()
    }

    /// Relay: connection `conn` sent shard `shard`'s IDENTIFY (after the queue's grant).
    pub fn identified(&self, shard: u32, conn: u64) {
        self.with(shard, |e| {
            e.conn = conn;
            e.up = false;
            e.identifies += 1;
        });
    }

    /// Relay: connection `conn` sent shard `shard`'s RESUME.
    pub fn resuming(&self, shard: u32, conn: u64) {
        self.with(shard, |e| {
            e.conn = conn;
            e.up = false;
            e.resumes += 1;
        });
    }

    /// Relay: connection `conn` of shard `shard` received op 9 INVALID_SESSION.
    pub fn invalidated(&self, shard: u32, conn: u64) {
        self.with(shard, |e| {
            e.invalidated += 1;
            if e.conn == conn {
                e.up = false;
            }
        });
    }

    /// Relay: connection `conn` of shard `shard` ended.
    pub fn ended(&self, shard: u32, conn: u64) {
        self.with(shard, |e| {
            if e.conn == conn {
                e.up = false;
            }
        });
    }

    /// Event handler: shard `shard` is READY or RESUMED.
    pub fn up(&self, shard: u32) {
        self.with(shard, |e| e.up = true);
    }

    /// Event handler: READY gave shard `shard` session `session_id`.
    pub fn session(&self, session_id: &str, shard: u32) {
        let mut sessions = self.sessions.lock().unwrap_or_else(|e| e.into_inner());
        // One session per shard: the shard's older ones can no longer be resumed.
        sessions.retain(|_, s| *s != shard);
        sessions.insert(session_id.to_owned(), shard);
    }

    /// The shard a RESUME of `session_id` is for.
    pub fn shard_of_session(&self, session_id: &str) -> Option<u32> {
        self.sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(session_id)
            .copied()
    }

    /// Every shard as the views show it, latencies read from serenity now.
    pub async fn views(&self) -> Vec<ShardView> {
        let entries = self.lock().clone();
        let waits = self.queue.get().map(|q| q.waits()).unwrap_or_default();
        let mut latencies: BTreeMap<u32, Duration> = BTreeMap::new();
        for manager in self.managers.get().map(Vec::as_slice).unwrap_or_default() {
            for (id, runner) in manager.runners.lock().await.iter() {
                if let Some(l) = runner.latency {
                    latencies.insert(id.0, l);
                }
            }
        }
        entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let id = i as u32;
                ShardView {
                    id,
                    up: e.up,
                    latency: latencies.get(&id).copied(),
                    identifies: e.identifies,
                    resumes: e.resumes,
                    invalidated: e.invalidated,
                    // A wait left behind by a connection that went away is not one.
                    waiting: waits.get(&id).filter(|_| !e.up).cloned(),
                }
            })
            .collect()
    }

    /// The first thing a shard's IDENTIFY waits for, if any (for `/readyz` and the log).
    pub fn waiting(&self) -> Option<IdentifyWait> {
        let mut waits = self.queue.get()?.waits();
        let entries = self.lock();
        // A wait left behind by a connection that went away is not one.
        waits.retain(|id, _| entries.get(*id as usize).is_some_and(|e| !e.up));
        drop(entries);
        // The reserve first: it is the wait an operator must act on.
        waits
            .values()
            .find(|w| matches!(w, IdentifyWait::Reserve { .. }))
            .or_else(|| waits.values().next())
            .cloned()
    }

    fn with(&self, shard: u32, f: impl FnOnce(&mut Entry)) {
        if let Some(e) = self.lock().get_mut(shard as usize) {
            f(e);
        }
        self.publish();
    }

    fn publish(&self) {
        let entries = self.lock();
        let all = !entries.is_empty() && entries.iter().all(|e| e.up);
        drop(entries);
        self.all_up
            .send_if_modified(|v| std::mem::replace(v, all) != all);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The shards as an instance publishes them for its peers' `/로드밸런서` (in `{c}:info:{id}`):
/// `[{"id", "up", "latency_ms", "waiting", "detail"}]`.
pub fn published(shards: &[ShardView]) -> serde_json::Value {
    shards
        .iter()
        .map(|s| {
            serde_json::json!({
                "id": s.id,
                "up": s.up,
                "latency_ms": s.latency.map(|l| l.as_millis() as u64),
                "waiting": s.waiting.as_ref().map(IdentifyWait::kind),
                "detail": s.waiting.as_ref().map(ToString::to_string),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_up_needs_every_shard_and_an_old_socket_does_not_take_a_new_session_down() {
        let board = ShardBoard::default();
        let rx = board.watch_all_up();
        assert!(!board.all_up(), "no shards planned yet");
        board.plan(2);
        board.identified(0, 1);
        board.up(0);
        assert!(!board.all_up());
        board.identified(1, 2);
        board.up(1);
        assert!(board.all_up() && *rx.borrow());

        // Shard 1 is invalidated and identifies again on connection 3 before connection 2 ends.
        board.invalidated(1, 2);
        assert!(!board.all_up());
        board.identified(1, 3);
        board.up(1);
        board.ended(1, 2);
        assert!(
            board.all_up(),
            "the old socket's end is not the new session's"
        );
        board.ended(1, 3);
        assert!(!board.all_up());
        assert_eq!(board.up_count(), 1);
    }
}

//! The cluster-wide "key out of service" mark: `{c}:keyout:{provider}:{key fingerprint}`, a
//! string naming the instance that probes the key, with an expiry ([`MARK_TTL`]) that the
//! prober renews while it lives, so a crashed prober cannot leave a key out for good.
//!
//! Only the mechanism is here: when a key goes out or comes back is the provider crate's
//! policy (`keyshard_providers::health`), which this crate does not depend on; the bot reads
//! the marks of its own keys and writes them as its keys' health changes.

use std::sync::Arc;
use std::time::Duration;

use keyshard_routing::InstanceId;

use crate::conn::Redis;
use crate::{keys, Cluster, ClusterError};

/// How long a mark outlives its last renewal. The prober renews it every sync (seconds); two
/// minutes covers a prober that stalls or loses Redis for a while, and bounds how long a
/// crashed one keeps a working key out of service (its holders then try it again, and a
/// still-broken key is marked again by the first call that fails).
pub const MARK_TTL: Duration = Duration::from_secs(120);

/// The time budget of one mark call: background work, never on the acknowledgement path.
const BUDGET: Duration = Duration::from_millis(500);

/// Sets the mark to `ARGV[1]` (renewing its expiry `ARGV[2]` ms) unless another instance
/// holds it; returns the holder either way.
const MARK_SCRIPT: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return v
";

/// Deletes the mark only if `ARGV[1]` holds it.
const CLEAR_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// One provider key as the marks name it: the provider's name and the key's fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MarkedKey {
    pub provider: String,
    pub fingerprint: String,
}

/// The out-of-service marks, on the instance's one Redis connection.
#[derive(Clone)]
pub struct KeyMarks {
    redis: Arc<Redis>,
    cluster_name: String,
    me: InstanceId,
}

impl KeyMarks {
    pub fn new(cluster: &Cluster) -> KeyMarks {
        let cfg = cluster.config();
        KeyMarks {
            redis: cluster.redis(),
            cluster_name: cfg.cluster_name.clone(),
            me: cfg.instance_id,
        }
    }

    fn key(&self, k: &MarkedKey) -> String {
        keys::key_out(&self.cluster_name, &k.provider, &k.fingerprint)
    }

    /// Who holds the mark of each key (`None`: in service), in one round trip.
    pub async fn read(&self, keys: &[MarkedKey]) -> Result<Vec<Option<InstanceId>>, ClusterError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
        self.redis
            .run("key marks", BUDGET, move |mut c| async move {
                redis::cmd("MGET")
                    .arg(&names)
                    .query_async::<Vec<Option<String>>>(&mut c)
                    .await
            })
            .await
            .map(|v| {
                v.into_iter()
                    .map(|holder| holder.and_then(|h| h.parse().ok()))
                    .collect()
            })
    }

    /// Marks `key` out of service with this instance as its prober, or renews this
    /// instance's mark; returns the holder (another instance when it marked the key first).
    pub async fn mark(&self, key: &MarkedKey) -> Result<Option<InstanceId>, ClusterError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(MARK_SCRIPT));
        let (name, me, ttl) = (self.key(key), self.me, MARK_TTL.as_millis() as u64);
        let script = &*SCRIPT;
        self.redis
            .run("key mark", BUDGET, move |mut c| async move {
                script
                    .key(&name)
                    .arg(me)
                    .arg(ttl)
                    .invoke_async::<Option<String>>(&mut c)
                    .await
            })
            .await
            .map(|h| h.and_then(|h| h.parse().ok()))
    }

    /// Removes this instance's mark of `key` (its probe found the key working again).
    pub async fn clear(&self, key: &MarkedKey) -> Result<(), ClusterError> {
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CLEAR_SCRIPT));
        let (name, me) = (self.key(key), self.me);
        let script = &*SCRIPT;
        self.redis
            .run("key mark clear", BUDGET, move |mut c| async move {
                script.key(&name).arg(me).invoke_async::<i64>(&mut c).await
            })
            .await
            .map(|_| ())
    }
}

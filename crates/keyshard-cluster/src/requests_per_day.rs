//! Requests per UTC day of each provider key, counted in Redis so a restart does not reset
//! them: `{c}:rpd:{provider}:{key fingerprint}:{YYYY-MM-DD}`, an integer that expires
//! [`DAY_KEY_TTL`] after its last change.
//!
//! A plain counter: the limit, the day and what to do while Redis is away are the provider
//! crate's policy (`keyshard_providers::limits::daily`), which this crate does not depend on;
//! the bot adapts [`RequestsPerDay`] to that crate's `DailyStore` trait. The calls go through
//! the instance's one connection (`conn`, the one reconnect policy) with [`BUDGET`] each.

use std::time::Duration;

use crate::conn::Redis;
use crate::{keys, Cluster, ClusterError};

/// Two days: the key outlives the day it counts (a request at 23:59:59 UTC still finds it),
/// then disappears so old days do not pile up in Redis.
pub const DAY_KEY_TTL: Duration = Duration::from_secs(2 * 86_400);

/// The time budget of one count. The count is taken before every provider request (on the
/// job path, not the acknowledgement path); a request must not wait long on a sick Redis,
/// since the caller counts in memory instead, and 300 ms is far above a healthy round trip.
pub const BUDGET: Duration = Duration::from_millis(300);

/// The daily request counters of this cluster, on the instance's one Redis connection.
#[derive(Clone)]
pub struct RequestsPerDay {
    redis: std::sync::Arc<Redis>,
    cluster_name: String,
}

impl std::fmt::Debug for RequestsPerDay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestsPerDay")
            .field("cluster_name", &self.cluster_name)
            .finish_non_exhaustive()
    }
}

impl RequestsPerDay {
    pub fn new(cluster: &Cluster) -> RequestsPerDay {
        RequestsPerDay {
            redis: cluster.redis(),
            cluster_name: cluster.config().cluster_name.clone(),
        }
    }

    /// Adds `delta` (negative to give back) to the count of `provider`'s key `fingerprint` on
    /// `day` (`YYYY-MM-DD`, UTC) and returns the new total, in one atomic step that also
    /// renews the key's expiry.
    ///
    /// Not retried, not even on a broken connection (`INCRBY` is not idempotent: a retry after
    /// a lost answer would count twice); the caller counts in memory and adds it later.
    pub async fn add(
        &self,
        provider: &str,
        fingerprint: &str,
        day: &str,
        delta: i64,
    ) -> Result<i64, ClusterError> {
        let key = keys::requests_per_day(&self.cluster_name, provider, fingerprint, day);
        let ttl = DAY_KEY_TTL.as_secs();
        self.redis
            .run("requests per day", BUDGET, move |mut c| async move {
                let (total,): (i64,) = redis::pipe()
                    .atomic()
                    .cmd("INCRBY")
                    .arg(&key)
                    .arg(delta)
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(ttl)
                    .ignore()
                    .query_async(&mut c)
                    .await?;
                Ok(total)
            })
            .await
    }
}

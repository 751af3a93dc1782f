//! Where requests per UTC day are counted: the [`DailyStore`] trait this crate needs, the
//! [`KeyDay`] a count belongs to, and [`MemoryStore`], the in-process store used in tests and
//! when the instance gives no store.
//!
//! The store that makes counts survive a restart lives outside this crate (the bot adapts
//! `keyshard_cluster::RequestsPerDay`, a Redis counter, to this trait), so this crate never
//! talks to Redis. A store owns its own time budget: this crate sets no timeout around it and
//! never retries it; a failed call is answered by counting in memory
//! (`daily::DailyCounter`).

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;

use crate::error::ProviderKind;

const SECS_PER_DAY: u64 = 86_400;

/// A UTC calendar day, as days since 1970-01-01. Displays as `YYYY-MM-DD`, the form stores
/// put in their keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct UtcDay(pub u64);

impl UtcDay {
    /// The UTC day `t` falls on (a time before 1970 counts as day 0).
    pub fn of(t: SystemTime) -> UtcDay {
        UtcDay(since_epoch(t).as_secs() / SECS_PER_DAY)
    }

    /// How long after `t` this day ends (zero when it already has).
    pub fn left_at(self, t: SystemTime) -> Duration {
        Duration::from_secs((self.0 + 1) * SECS_PER_DAY).saturating_sub(since_epoch(t))
    }
}

fn since_epoch(t: SystemTime) -> Duration {
    t.duration_since(UNIX_EPOCH).unwrap_or_default()
}

impl fmt::Display for UtcDay {
    /// `YYYY-MM-DD` (Howard Hinnant's `civil_from_days`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let z = self.0 as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        let y = yoe + era * 400 + i64::from(m <= 2);
        write!(f, "{y:04}-{m:02}-{d:02}")
    }
}

/// Which count: one provider key on one UTC day. The key is named by its
/// [`fingerprint`](crate::Secret::fingerprint), never by itself.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyDay {
    pub provider: ProviderKind,
    pub fingerprint: String,
    pub day: UtcDay,
}

/// A store that failed to count (unreachable, too slow, refused). The message is the store's
/// own error, which must not hold secrets (the cluster's errors redact the Redis password).
#[derive(Debug, thiserror::Error)]
#[error("the daily request store failed: {0}")]
pub struct StoreError(#[source] pub Box<dyn std::error::Error + Send + Sync>);

impl StoreError {
    pub fn new(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError(e.into())
    }
}

/// Counts requests per provider key and UTC day, shared by every process that uses the key.
///
/// Contract: `add` is one atomic step; a count is kept at least until its day is over (a
/// request at 23:59:59 UTC still finds it); the call returns within the store's own time
/// budget, since it sits on the path of every provider request.
pub trait DailyStore: Send + Sync {
    /// Adds `delta` to the count of `key_day` (negative to give back a slot) and returns the
    /// new total.
    fn add<'a>(&'a self, key_day: &'a KeyDay, delta: i64)
        -> BoxFuture<'a, Result<u64, StoreError>>;
}

/// Counts in this process only: a restart starts from zero. Forgets a day once the next one
/// is over, as the Redis store's keys expire.
#[derive(Debug, Default)]
pub struct MemoryStore {
    // A std mutex: it guards a map update, never an await.
    counts: Mutex<HashMap<KeyDay, u64>>,
}

impl MemoryStore {
    /// The current count of `key_day` (0 when never counted).
    pub fn get(&self, key_day: &KeyDay) -> u64 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(key_day).copied().unwrap_or(0)
    }
}

impl DailyStore for MemoryStore {
    fn add<'a>(
        &'a self,
        key_day: &'a KeyDay,
        delta: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let yesterday = key_day.day.0.saturating_sub(1);
        counts.retain(|k, _| k.day.0 >= yesterday);
        let count = counts.entry(key_day.clone()).or_default();
        *count = count.saturating_add_signed(delta);
        let total = *count;
        Box::pin(std::future::ready(Ok(total)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_formatting() {
        assert_eq!(UtcDay(0).to_string(), "1970-01-01");
        assert_eq!(UtcDay(59).to_string(), "1970-03-01");
        assert_eq!(UtcDay(11_016).to_string(), "2000-02-29");
        assert_eq!(UtcDay(20_415).to_string(), "2025-11-23");
    }

    #[test]
    fn day_of_a_time_and_what_is_left_of_it() {
        let t = UNIX_EPOCH + Duration::from_secs(20_415 * SECS_PER_DAY + 3_600);
        let day = UtcDay::of(t);
        assert_eq!(day, UtcDay(20_415));
        assert_eq!(day.left_at(t), Duration::from_secs(23 * 3_600));
        let last_second = UNIX_EPOCH + Duration::from_secs(20_416 * SECS_PER_DAY - 1);
        assert_eq!(UtcDay::of(last_second), day);
        assert_eq!(day.left_at(last_second), Duration::from_secs(1));
        assert_eq!(UtcDay(20_414).left_at(t), Duration::ZERO);
    }

    fn key_day(day: u64) -> KeyDay {
        KeyDay {
            provider: ProviderKind::MiniMax,
            fingerprint: "abc".into(),
            day: UtcDay(day),
        }
    }

    #[tokio::test]
    async fn memory_store_adds_gives_back_and_forgets_old_days() {
        let store = MemoryStore::default();
        assert_eq!(store.add(&key_day(10), 3).await.unwrap(), 3);
        assert_eq!(store.add(&key_day(10), -1).await.unwrap(), 2);
        assert_eq!(store.add(&key_day(11), 1).await.unwrap(), 1);
        assert_eq!(store.get(&key_day(10)), 2, "yesterday is kept");
        store.add(&key_day(12), 1).await.unwrap();
        assert_eq!(
            store.get(&key_day(10)),
            0,
            "the day before yesterday is gone"
        );
        assert_eq!(store.get(&key_day(11)), 1);
    }
}

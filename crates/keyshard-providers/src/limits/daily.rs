//! Requests per UTC day of one provider key: the limit check, counted in a [`DailyStore`] so
//! the count can outlive the process.
//!
//! Every admitted request adds one to the store's count of (provider, key fingerprint, UTC
//! day). When the store fails, the counter keeps counting in memory (warning once, never
//! blocking a request) and checks the limit against the last count it knew; the requests
//! counted meanwhile are added to the store with the first call that succeeds again. The
//! bookkeeping is `Tally`, pure with the day passed in; [`DailyCounter`] adds the clock and
//! the store call.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::day_store::{DailyStore, KeyDay, MemoryStore, UtcDay};
use crate::error::ProviderKind;

/// Why a request may not start today.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyExhausted {
    pub used: u64,
    pub until_next_day: Duration,
}

/// What this process knows of one key's count today.
#[derive(Debug, Default, Clone, PartialEq)]
struct Tally {
    day: UtcDay,
    /// Best known count for `day`: the store's when it answers, else our own.
    count: u64,
    /// Requests counted while the store failed, not yet added to it.
    unsynced: u64,
}

/// The verdict on one request once the store answered.
#[derive(Debug, PartialEq)]
enum Stored {
    Admitted(u64),
    /// Over the limit: give the slot back to the store, and refuse with `used` requests sent.
    OverLimit {
        used: u64,
    },
}

impl Tally {
    /// Moves to `day` if the tally is on an older one, and takes out what this request must
    /// add to the store: itself and the requests the store missed. Taking them out (rather
    /// than reading them) keeps two concurrent requests from adding them twice.
    fn begin(&mut self, day: UtcDay) -> u64 {
        if self.day != day {
            // Yesterday's unsynced requests are dropped: yesterday's count limits nothing.
            *self = Tally {
                day,
                ..Tally::default()
            };
        }
        1 + std::mem::take(&mut self.unsynced)
    }

    /// The store added `pushed` (from [`begin`](Self::begin)) and answered `total`.
    fn stored(&mut self, day: UtcDay, total: u64, limit: Option<u32>) -> Stored {
        let over = limit.is_some_and(|limit| total > u64::from(limit));
        // The slot taken for this request is given back when it is refused, so the stored
        // count stays "requests sent".
        let count = if over { total - 1 } else { total };
        if self.day == day {
            self.count = count;
        }
        if over {
            Stored::OverLimit { used: count }
        } else {
            Stored::Admitted(total)
        }
    }

    /// The store failed to add `pushed`: this request is judged against the last known count,
    /// and everything not stored waits for the next call that reaches the store.
    fn store_failed(&mut self, day: UtcDay, pushed: u64, limit: Option<u32>) -> Result<u64, u64> {
        if self.day != day {
            // The day turned while the store was failing: the request is judged by the new
            // day's tally and what it pushed for the old day is dropped, as in `begin`.
            self.begin(day);
        } else {
            // Put back what the failed call should have stored, except this request's own one.
            self.unsynced += pushed - 1;
        }
        if limit.is_some_and(|limit| self.count >= u64::from(limit)) {
            return Err(self.count);
        }
        self.count += 1;
        self.unsynced += 1;
        Ok(self.count)
    }
}

/// The daily request counter of one provider key, shared by the key's generating lanes.
pub struct DailyCounter {
    provider: ProviderKind,
    fingerprint: String,
    limit: Option<u32>,
    store: Arc<dyn DailyStore>,
    // A std mutex: it guards the tally's arithmetic, never an await.
    tally: Mutex<Tally>,
    /// Whether the "counting in memory" warning was logged since the store last answered.
    degraded: AtomicBool,
}

impl DailyCounter {
    /// `store: None` counts in this process only ([`MemoryStore`]).
    pub fn new(
        provider: ProviderKind,
        fingerprint: String,
        limit: Option<u32>,
        store: Option<Arc<dyn DailyStore>>,
    ) -> Self {
        DailyCounter {
            provider,
            fingerprint,
            limit,
            store: store.unwrap_or_else(|| Arc::new(MemoryStore::default())),
            tally: Mutex::new(Tally::default()),
            degraded: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// The last known count for today (no I/O).
    pub fn used(&self) -> u64 {
        self.used_at(SystemTime::now())
    }

    /// The last known count for the UTC day of `now` (no I/O).
    pub fn used_at(&self, now: SystemTime) -> u64 {
        let tally = self.tally();
        if tally.day == UtcDay::of(now) {
            tally.count
        } else {
            0
        }
    }

    /// Counts one request for today, or refuses when the day's limit is reached. Without a
    /// limit it still counts (for the budget view).
    pub async fn take(&self) -> Result<u64, DailyExhausted> {
        self.take_at(SystemTime::now()).await
    }

    /// [`take`](Self::take) at `now`.
    pub async fn take_at(&self, now: SystemTime) -> Result<u64, DailyExhausted> {
        let day = UtcDay::of(now);
        let exhausted = |used| DailyExhausted {
            used,
            until_next_day: day.left_at(now),
        };
        let key_day = KeyDay {
            provider: self.provider,
            fingerprint: self.fingerprint.clone(),
            day,
        };
        let pushed = self.tally().begin(day);
        let delta = i64::try_from(pushed).unwrap_or(i64::MAX);
        match self.store.add(&key_day, delta).await {
            Ok(total) => {
                if self.degraded.swap(false, Ordering::Relaxed) {
                    tracing::info!(provider = %self.provider, key = %self.fingerprint, "daily request counter back on its store");
                }
                let verdict = self.tally().stored(day, total, self.limit);
                match verdict {
                    Stored::Admitted(count) => Ok(count),
                    Stored::OverLimit { used } => {
                        if let Err(e) = self.store.add(&key_day, -1).await {
                            // The stored count stays one too high until the day ends: at worst
                            // one request fewer today, never one too many.
                            tracing::debug!(error = %e, "daily request counter could not give a slot back");
                        }
                        Err(exhausted(used))
                    }
                }
            }
            Err(e) => {
                if !self.degraded.swap(true, Ordering::Relaxed) {
                    tracing::warn!(provider = %self.provider, key = %self.fingerprint, error = %e, "counting requests per day in memory until the store answers");
                }
                self.tally()
                    .store_failed(day, pushed, self.limit)
                    .map_err(exhausted)
            }
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    use futures::future::BoxFuture;

    use crate::limits::day_store::StoreError;

    const DAY: UtcDay = UtcDay(20_415);

    fn noon(day: UtcDay) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(day.0 * 86_400 + 43_200)
    }

    #[test]
    fn tally_admits_up_to_the_limit_and_refuses_beyond() {
        let mut t = Tally::default();
        assert_eq!(t.begin(DAY), 1);
        assert_eq!(t.stored(DAY, 3, Some(3)), Stored::Admitted(3));
        assert_eq!(t.begin(DAY), 1);
        assert_eq!(t.stored(DAY, 4, Some(3)), Stored::OverLimit { used: 3 });
        assert_eq!(t.count, 3);
    }

    #[test]
    fn tally_keeps_what_the_store_missed_and_pushes_it_once() {
        let mut t = Tally::default();
        t.begin(DAY);
        t.stored(DAY, 5, None);
        for expect in [6, 7] {
            let pushed = t.begin(DAY);
            assert_eq!(t.store_failed(DAY, pushed, None), Ok(expect));
        }
        assert_eq!(t.unsynced, 2);
        assert_eq!(t.begin(DAY), 3, "the two missed ones and this one");
        assert_eq!(
            t.unsynced, 0,
            "taken out, so a concurrent request cannot push them again"
        );
        assert_eq!(t.store_failed(DAY, 3, None), Ok(8));
        assert_eq!(
            t.unsynced, 3,
            "put back after another failure, with this request"
        );
    }

    #[test]
    fn tally_starts_afresh_on_a_new_day() {
        let mut t = Tally::default();
        t.begin(DAY);
        assert_eq!(t.store_failed(DAY, 1, Some(1)), Ok(1));
        let next = UtcDay(DAY.0 + 1);
        assert_eq!(t.begin(next), 1, "yesterday's unsynced request is dropped");
        assert_eq!(t.stored(next, 1, Some(1)), Stored::Admitted(1));
    }

    /// A [`MemoryStore`] that can be switched off, as a Redis that went away.
    #[derive(Default)]
    struct FlakyStore {
        inner: MemoryStore,
        down: AtomicBool,
    }

    impl DailyStore for FlakyStore {
        fn add<'a>(
            &'a self,
            key_day: &'a KeyDay,
            delta: i64,
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            if self.down.load(Ordering::Relaxed) {
                return Box::pin(std::future::ready(Err(StoreError::new("store is down"))));
            }
            self.inner.add(key_day, delta)
        }
    }

    fn counter(limit: Option<u32>, store: &Arc<FlakyStore>) -> DailyCounter {
        let store: Arc<dyn DailyStore> = store.clone();
        DailyCounter::new(ProviderKind::MiniMax, "abc".into(), limit, Some(store))
    }

    fn key_day(day: UtcDay) -> KeyDay {
        KeyDay {
            provider: ProviderKind::MiniMax,
            fingerprint: "abc".into(),
            day,
        }
    }

    #[tokio::test]
    async fn without_a_store_counts_in_memory_and_enforces_the_limit() {
        let c = DailyCounter::new(ProviderKind::OpenAi, "abc".into(), Some(2), None);
        assert_eq!(c.take().await, Ok(1));
        assert_eq!(c.take().await, Ok(2));
        let err = c.take().await.unwrap_err();
        assert_eq!(err.used, 2);
        assert!(err.until_next_day <= Duration::from_secs(86_400));
        assert_eq!(c.used(), 2);
    }

    #[tokio::test]
    async fn a_refused_request_gives_its_slot_back_to_the_store() {
        let store = Arc::new(FlakyStore::default());
        let c = counter(Some(2), &store);
        let now = noon(DAY);
        c.take_at(now).await.unwrap();
        c.take_at(now).await.unwrap();
        let err = c.take_at(now).await.unwrap_err();
        assert_eq!(
            err,
            DailyExhausted {
                used: 2,
                until_next_day: Duration::from_secs(43_200)
            }
        );
        assert_eq!(
            store.inner.get(&key_day(DAY)),
            2,
            "requests sent, not tried"
        );
    }

    #[tokio::test]
    async fn the_count_continues_from_the_store_in_a_new_counter() {
        let store = Arc::new(FlakyStore::default());
        let now = noon(DAY);
        let first = counter(Some(3), &store);
        first.take_at(now).await.unwrap();
        first.take_at(now).await.unwrap();
        drop(first);
        let second = counter(Some(3), &store);
        assert_eq!(second.take_at(now).await, Ok(3));
        assert_eq!(second.used_at(now), 3);
        assert!(second.take_at(now).await.is_err());
    }

    #[tokio::test]
    async fn a_failing_store_degrades_to_memory_and_is_synced_when_it_answers() {
        let store = Arc::new(FlakyStore::default());
        let c = counter(Some(10), &store);
        let now = noon(DAY);
        c.take_at(now).await.unwrap();
        store.down.store(true, Ordering::Relaxed);
        for expect in 2..=4 {
            assert_eq!(c.take_at(now).await, Ok(expect), "served from memory");
        }
        assert_eq!(store.inner.get(&key_day(DAY)), 1);
        assert!(c.degraded.load(Ordering::Relaxed));

        store.down.store(false, Ordering::Relaxed);
        assert_eq!(c.take_at(now).await, Ok(5));
        assert_eq!(
            store.inner.get(&key_day(DAY)),
            5,
            "the three requests counted in memory reached the store with the next one"
        );
        assert!(!c.degraded.load(Ordering::Relaxed));
        assert_eq!(c.take_at(now).await, Ok(6), "synced once, not again");
    }

    #[tokio::test]
    async fn a_failing_store_still_enforces_the_last_known_count() {
        let store = Arc::new(FlakyStore::default());
        let c = counter(Some(3), &store);
        let now = noon(DAY);
        c.take_at(now).await.unwrap();
        c.take_at(now).await.unwrap();
        store.down.store(true, Ordering::Relaxed);
        assert_eq!(c.take_at(now).await, Ok(3));
        assert_eq!(c.take_at(now).await.unwrap_err().used, 3);
        assert_eq!(c.used_at(now), 3);
    }

    #[tokio::test]
    async fn a_new_utc_day_starts_from_zero() {
        let store = Arc::new(FlakyStore::default());
        let c = counter(Some(1), &store);
        c.take_at(noon(DAY)).await.unwrap();
        assert!(c.take_at(noon(DAY)).await.is_err());
        let tomorrow = UtcDay(DAY.0 + 1);
        assert_eq!(c.used_at(noon(tomorrow)), 0);
        assert_eq!(c.take_at(noon(tomorrow)).await, Ok(1));
        assert_eq!(store.inner.get(&key_day(tomorrow)), 1);
    }
}

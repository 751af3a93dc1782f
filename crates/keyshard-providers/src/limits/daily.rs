//! Requests per UTC day, counted in Redis so a restart does not reset them.
//!
//! Key: `{ns}:rpd:{provider}:{key fingerprint}:{YYYY-MM-DD}`, an integer `INCR`ed once per
//! admitted request, expiring after [`DAY_KEY_TTL`]. When Redis is unreachable the counter
//! keeps counting in memory (warning once) and never blocks a request; the requests counted
//! meanwhile are added to Redis as soon as it answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::ConnectionManager;
use tokio::sync::Mutex as AsyncMutex;

/// Two days: the key outlives the day it counts (a request at 23:59:59 UTC still finds it),
/// then disappears so old days do not pile up in Redis.
pub const DAY_KEY_TTL: Duration = Duration::from_secs(2 * 86_400);

/// Longest one Redis round trip may take before the counter falls back to memory. A request
/// must not wait on a sick Redis; 300 ms is far above a healthy loopback/LAN round trip.
const REDIS_OP_TIMEOUT: Duration = Duration::from_millis(300);

/// After Redis failed (connect, error or timeout), leave it alone this long, so a dead Redis
/// costs one timeout per 5 s rather than one per request.
const RECONNECT_EVERY: Duration = Duration::from_secs(5);

/// Where the daily counter keeps its count.
#[derive(Clone)]
pub enum RedisTarget {
    /// Connected lazily on first use (and again after failures).
    Client(redis::Client),
    /// An existing connection, shared with the rest of the process.
    Manager(ConnectionManager),
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password: never print it.
        f.write_str(match self {
            RedisTarget::Client(_) => "RedisTarget::Client(..)",
            RedisTarget::Manager(_) => "RedisTarget::Manager(..)",
        })
    }
}

impl From<redis::Client> for RedisTarget {
    fn from(c: redis::Client) -> Self {
        RedisTarget::Client(c)
    }
}

impl From<ConnectionManager> for RedisTarget {
    fn from(m: ConnectionManager) -> Self {
        RedisTarget::Manager(m)
    }
}

/// Why a request may not start today.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyExhausted {
    pub used: u64,
    pub until_next_day: Duration,
}

#[derive(Default)]
struct Local {
    day: u64,
    /// Best known count for `day` (from Redis when it answers, else our own).
    count: u64,
    /// Requests counted while Redis was unreachable, not yet added to Redis.
    unsynced: u64,
}

struct Conn {
    target: Option<RedisTarget>,
    manager: Option<ConnectionManager>,
    /// Redis failed recently: do not try before this instant.
    skip_until: Option<tokio::time::Instant>,
}

/// The daily request counter of one provider key.
pub struct DailyCounter {
    prefix: String,
    limit: Option<u32>,
    conn: AsyncMutex<Conn>,
    local: Mutex<Local>,
    degraded_warned: AtomicBool,
}

impl DailyCounter {
    /// `prefix` is `{ns}:rpd:{provider}:{fingerprint}`.
    pub fn new(prefix: String, limit: Option<u32>, redis: Option<RedisTarget>) -> Self {
        let manager = match &redis {
            Some(RedisTarget::Manager(m)) => Some(m.clone()),
            _ => None,
        };
        DailyCounter {
            prefix,
            limit,
            conn: AsyncMutex::new(Conn {
                target: redis,
                manager,
                skip_until: None,
            }),
            local: Mutex::new(Local::default()),
            degraded_warned: AtomicBool::new(false),
        }
    }

    pub fn limit(&self) -> Option<u32> {
        self.limit
    }

    /// The last known count for today (no I/O).
    pub fn used(&self) -> u64 {
        let (day, _) = utc_day_now();
        let local = self.local.lock().expect("daily counter lock");
        if local.day == day {
            local.count
        } else {
            0
        }
    }

    /// Counts one request for today, or refuses when the day's limit is reached. Without a
    /// limit it still counts (for the budget view).
    pub async fn take(&self) -> Result<u64, DailyExhausted> {
        let (day, until_next_day) = utc_day_now();
        let key = format!("{}:{}", self.prefix, format_day(day));
        let unsynced = {
            let mut local = self.local.lock().expect("daily counter lock");
            if local.day != day {
                *local = Local {
                    day,
                    ..Local::default()
                };
            }
            local.unsynced
        };
        match self.incr(&key, 1 + unsynced).await {
            Some(count) => {
                if self.degraded_warned.swap(false, Ordering::Relaxed) {
                    tracing::info!(key = %self.prefix, "daily counter back on Redis");
                }
                let over = self.limit.is_some_and(|limit| count > u64::from(limit));
                {
                    let mut local = self.local.lock().expect("daily counter lock");
                    local.unsynced = local.unsynced.saturating_sub(unsynced);
                    local.count = if over { count - 1 } else { count };
                }
                if over {
                    // Give the slot back so the stored count stays "requests sent".
                    self.decr(&key).await;
                    return Err(DailyExhausted {
                        used: count - 1,
                        until_next_day,
                    });
                }
                Ok(count)
            }
            None => {
                if !self.degraded_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(key = %self.prefix, "Redis unreachable: counting requests per day in memory until it answers");
                }
                let mut local = self.local.lock().expect("daily counter lock");
                if let Some(limit) = self.limit {
                    if local.count >= u64::from(limit) {
                        return Err(DailyExhausted {
                            used: local.count,
                            until_next_day,
                        });
                    }
                }
                local.count += 1;
                if self.has_redis() {
                    local.unsynced += 1;
                }
                Ok(local.count)
            }
        }
    }

    fn has_redis(&self) -> bool {
        // `try_lock` because this is only a hint; a busy lock means Redis is configured.
        self.conn
            .try_lock()
            .map(|c| c.target.is_some())
            .unwrap_or(true)
    }

    /// `INCRBY key n` + `EXPIRE`, bounded by [`REDIS_OP_TIMEOUT`]; `None` when Redis is not
    /// configured or does not answer.
    async fn incr(&self, key: &str, n: u64) -> Option<u64> {
        let mut manager = self.manager().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .incr(key, n)
            .expire(key, DAY_KEY_TTL.as_secs() as i64)
            .ignore();
        let result: Result<Result<(u64,), redis::RedisError>, _> =
            tokio::time::timeout(REDIS_OP_TIMEOUT, pipe.query_async(&mut manager)).await;
        match result {
            Ok(Ok((count,))) => Some(count),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "daily counter INCR failed");
                self.back_off().await;
                None
            }
            Err(_) => {
                tracing::debug!("daily counter INCR timed out");
                self.back_off().await;
                None
            }
        }
    }

    async fn back_off(&self) {
        self.conn.lock().await.skip_until = Some(tokio::time::Instant::now() + RECONNECT_EVERY);
    }

    async fn decr(&self, key: &str) {
        if let Some(mut manager) = self.manager().await {
            let cmd = redis::cmd("DECR").arg(key).clone();
            let _ =
                tokio::time::timeout(REDIS_OP_TIMEOUT, cmd.query_async::<i64>(&mut manager)).await;
        }
    }

    async fn manager(&self) -> Option<ConnectionManager> {
        let mut conn = self.conn.lock().await;
        let now = tokio::time::Instant::now();
        if conn.skip_until.is_some_and(|t| now < t) {
            return None;
        }
        if let Some(m) = &conn.manager {
            return Some(m.clone());
        }
        let client = match &conn.target {
            Some(RedisTarget::Client(c)) => c.clone(),
            _ => return None,
        };
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(REDIS_OP_TIMEOUT))
            .set_response_timeout(Some(REDIS_OP_TIMEOUT))
            // One reconnect try per command: the counter must not stall a request.
            .set_number_of_retries(1);
        match tokio::time::timeout(
            REDIS_OP_TIMEOUT * 2,
            client.get_connection_manager_with_config(config),
        )
        .await
        {
            Ok(Ok(m)) => {
                conn.manager = Some(m.clone());
                Some(m)
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "daily counter cannot connect to Redis");
                conn.skip_until = Some(now + RECONNECT_EVERY);
                None
            }
            Err(_) => {
                conn.skip_until = Some(now + RECONNECT_EVERY);
                None
            }
        }
    }
}

/// Days since 1970-01-01 (UTC) and the time left until the next day starts.
pub fn utc_day_now() -> (u64, Duration) {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let day = since.as_secs() / 86_400;
    let next = Duration::from_secs((day + 1) * 86_400);
    (day, next.saturating_sub(since))
}

/// `YYYY-MM-DD` of a day number (Howard Hinnant's `civil_from_days`).
pub fn format_day(days: u64) -> String {
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_formatting() {
        assert_eq!(format_day(0), "1970-01-01");
        assert_eq!(format_day(59), "1970-03-01");
        assert_eq!(format_day(11_016), "2000-02-29");
        assert_eq!(format_day(20_415), "2025-11-23");
    }

    #[tokio::test]
    async fn without_redis_counts_in_memory_and_enforces_the_limit() {
        let c = DailyCounter::new("t:rpd:openai:abc".into(), Some(2), None);
        assert_eq!(c.take().await, Ok(1));
        assert_eq!(c.take().await, Ok(2));
        let err = c.take().await.unwrap_err();
        assert_eq!(err.used, 2);
        assert!(err.until_next_day <= Duration::from_secs(86_400));
        assert_eq!(c.used(), 2);
    }
}

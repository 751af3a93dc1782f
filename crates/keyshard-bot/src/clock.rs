//! The bot's one reading of the wall clock. Routing and the cluster's policy take the time as a
//! parameter; the bot reads it here and passes it down (the claim's snowflake deadline, a job's
//! age, the interaction token's lifetime).

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch (0 for a clock set before 1970, which only makes every
/// age look long rather than failing a command).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

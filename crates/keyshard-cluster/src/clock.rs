//! The one wall clock of the cluster crate. Policy never reads it (`keyshard-routing` takes
//! the time as a parameter); the mechanism reads it here and passes it in.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch (0 for a clock set before it).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

//! Discord snowflakes: creation time and the acknowledgement deadline derived from it.

/// Discord's epoch, the first second of 2015, in Unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// Discord drops an interaction whose first response has not arrived within 3 s of its creation.
pub const ACK_WINDOW_MS: u64 = 3_000;

/// The Unix time in milliseconds at which a snowflake was created (its top 42 bits).
pub fn created_at_ms(snowflake: u64) -> u64 {
    (snowflake >> 22) + DISCORD_EPOCH_MS
}

/// The Unix time in milliseconds after which Discord no longer accepts the interaction's
/// first response.
pub fn ack_deadline_ms(interaction_id: u64) -> u64 {
    created_at_ms(interaction_id) + ACK_WINDOW_MS
}

/// A snowflake for the given Unix time in milliseconds, with `low` in the 22 low bits
/// (worker, process, increment). Used by the simulator and tests.
pub fn snowflake_at(unix_ms: u64, low: u32) -> u64 {
    (unix_ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | u64::from(low & 0x3f_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_snowflake() {
        // Discord's documentation example: 175928847299117063 was created 2016-04-30 11:18:25.796 UTC.
        assert_eq!(created_at_ms(175_928_847_299_117_063), 1_462_015_105_796);
        assert_eq!(ack_deadline_ms(175_928_847_299_117_063), 1_462_015_108_796);
    }

    #[test]
    fn round_trip() {
        let t = 1_790_000_000_123;
        assert_eq!(created_at_ms(snowflake_at(t, 77)), t);
    }
}

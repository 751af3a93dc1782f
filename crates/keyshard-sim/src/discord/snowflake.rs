//! Discord snowflakes, the fake's own: ids that carry their creation time in the top 42 bits,
//! as Discord's documentation lays them out. Not the bot's reading of them, so a wrong
//! reading in the bot shows up against the fake.

/// Discord's epoch, the first second of 2015, in Unix milliseconds.
const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// A snowflake for the given Unix time in milliseconds, with `low` in the 22 low bits
/// (worker, process, increment).
pub fn snowflake_at(unix_ms: u64, low: u32) -> u64 {
    (unix_ms.saturating_sub(DISCORD_EPOCH_MS) << 22) | u64::from(low & 0x3f_ffff)
}

/// The Unix time in milliseconds at which a snowflake was created (its top 42 bits).
pub fn created_at_ms(snowflake: u64) -> u64 {
    (snowflake >> 22) + DISCORD_EPOCH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snowflakes_carry_their_time_as_discord_documents() {
        // Discord's documentation example: 175928847299117063 was created
        // 2016-04-30 11:18:25.796 UTC.
        assert_eq!(created_at_ms(175_928_847_299_117_063), 1_462_015_105_796);
        let t = 1_790_000_000_123;
        assert_eq!(created_at_ms(snowflake_at(t, 77)), t);
        assert_eq!(snowflake_at(t, 77) & 0x3f_ffff, 77);
    }
}

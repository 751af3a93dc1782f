//! [`IdentifyLedger`]: the fake's count of the day's session starts and of each bucket's last
//! IDENTIFY, by which it enforces Discord's session rules.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::{GatewayRules, SessionStartLimit};

/// The day's session starts and the last IDENTIFY of each bucket.
pub(crate) struct IdentifyLedger {
    pub(crate) remaining: u32,
    /// When the current day ends.
    pub(crate) resets_at: Instant,
    pub(crate) last_by_bucket: HashMap<u32, Instant>,
    /// Set once the day's IDENTIFYs ran out: Discord resets the token, so every later
    /// IDENTIFY or RESUME fails authentication.
    pub(crate) token_reset: bool,
}

impl IdentifyLedger {
    pub(super) fn new(rules: &GatewayRules) -> Self {
        Self {
            remaining: rules.identify_remaining.min(rules.identify_total),
            resets_at: Instant::now() + rules.identify_reset_after,
            last_by_bucket: HashMap::new(),
            token_reset: false,
        }
    }

    /// Starts a new day if the current one is over.
    pub(crate) fn roll(&mut self, rules: &GatewayRules) {
        const DAY: Duration = Duration::from_secs(24 * 3_600);
        let now = Instant::now();
        while now >= self.resets_at {
            self.resets_at += DAY;
            self.remaining = rules.identify_total;
        }
    }

    pub(crate) fn limit(&mut self, rules: &GatewayRules) -> SessionStartLimit {
        self.roll(rules);
        SessionStartLimit {
            total: rules.identify_total,
            remaining: self.remaining,
            reset_after: self.resets_at.saturating_duration_since(Instant::now()),
            max_concurrency: rules.max_concurrency.max(1),
        }
    }
}

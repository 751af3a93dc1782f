//! [`IdentifyWait`]: what an IDENTIFY waits for, said the same way in `/readyz`, the log and
//! the admin view.

use std::fmt;
use std::time::Duration;

/// What an IDENTIFY waits for, for `/readyz`, the log and the admin view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IdentifyWait {
    /// The restart backoff after a crash.
    Backoff { left: Duration },
    /// Another IDENTIFY of the same bucket went out less than a window ago.
    Bucket { bucket: u32 },
    /// The day's session starts are down to the reserve.
    Reserve {
        remaining: u32,
        reserve: u32,
        resets_in: Option<Duration>,
    },
    /// Reading the day's session starts from Discord.
    Budget,
    /// Redis is unreachable: one IDENTIFY per window from this process.
    Local,
}

impl IdentifyWait {
    /// A short machine word: `backoff`, `bucket`, `reserve`, `budget`, `local`.
    pub fn kind(&self) -> &'static str {
        match self {
            IdentifyWait::Backoff { .. } => "backoff",
            IdentifyWait::Bucket { .. } => "bucket",
            IdentifyWait::Reserve { .. } => "reserve",
            IdentifyWait::Budget => "budget",
            IdentifyWait::Local => "local",
        }
    }
}

impl fmt::Display for IdentifyWait {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdentifyWait::Backoff { left } => write!(
                f,
                "restart backoff after a crash: IDENTIFY in {}s",
                left.as_secs()
            ),
            IdentifyWait::Bucket { bucket } => {
                write!(f, "waiting for IDENTIFY bucket {bucket} (one per window)")
            }
            IdentifyWait::Reserve {
                remaining,
                reserve,
                resets_in,
            } => {
                write!(
                    f,
                    "IDENTIFY paused: {remaining} session starts left today, the reserve is \
                     {reserve} (IDENTIFY_RESERVE)"
                )?;
                match resets_in {
                    Some(r) => write!(f, "; Discord resets the count in {}s", r.as_secs()),
                    None => Ok(()),
                }
            }
            IdentifyWait::Budget => write!(f, "reading the session start limit from Discord"),
            IdentifyWait::Local => write!(
                f,
                "Redis unreachable: IDENTIFY spaced by this instance alone"
            ),
        }
    }
}

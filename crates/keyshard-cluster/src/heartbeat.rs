//! The heartbeat value an instance writes to `{c}:hb:{id}`.

use std::collections::BTreeMap;

use keyshard_routing::InstanceId;
use serde::{Deserialize, Serialize};

/// The JSON stored in an instance's heartbeat key. The key's existence says the instance is
/// alive; the fields carry its load. Unknown fields are ignored when reading, so a newer
/// instance may add some during a rolling upgrade.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub id: InstanceId,
    #[serde(default)]
    pub draining: bool,
    #[serde(default)]
    pub queue_depth: u64,
    #[serde(default)]
    pub in_flight: u64,
    #[serde(default)]
    pub service_rate: f64,
    /// Jobs waiting per job kind (`{"chat": 2, "image": 0, "video": 1}`), which peers with
    /// idle workers of a kind steal from. Absent in a heartbeat from a version before it (a
    /// rolling restart): it reads as empty, and routing then credits the instance with its
    /// whole `queue_depth` for every kind.
    #[serde(default)]
    pub waiting: BTreeMap<String, u64>,
    /// The TTL the writer put on the key: readers derive the heartbeat's age from it and the
    /// remaining TTL, without comparing two machines' clocks.
    pub dead_after_ms: u64,
    /// The writer's software version.
    #[serde(default)]
    pub version: String,
}

/// The version written into heartbeats (the workspace version).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_heartbeats_with_missing_and_extra_fields() {
        let hb: Heartbeat =
            serde_json::from_str(r#"{"id":3,"dead_after_ms":3000,"future":1}"#).unwrap();
        assert_eq!((hb.id, hb.queue_depth, hb.draining), (3, 0, false));
        assert!(hb.waiting.is_empty());
        let round: Heartbeat = serde_json::from_str(&serde_json::to_string(&hb).unwrap()).unwrap();
        assert_eq!(round, hb);
    }

    #[test]
    fn a_heartbeat_from_before_per_kind_figures_still_parses() {
        // Exactly what version 0.1.0 wrote, with no `waiting`.
        let old = r#"{"id":2,"draining":false,"queue_depth":4,"in_flight":1,"service_rate":0.5,"dead_after_ms":3000,"version":"0.1.0"}"#;
        let hb: Heartbeat = serde_json::from_str(old).unwrap();
        assert_eq!((hb.queue_depth, hb.waiting.len()), (4, 0));
        let new = Heartbeat {
            waiting: [("chat".to_owned(), 3), ("video".to_owned(), 1)].into(),
            ..hb
        };
        let json = serde_json::to_string(&new).unwrap();
        assert!(json.contains(r#""waiting":{"chat":3,"video":1}"#), "{json}");
    }
}

//! What the instances say about themselves on `/metrics`, scraped once at the end of a run
//! (before they stop): the Redis round trips of the acknowledgement path, and the keys that
//! went out of service and the circuits that opened. Read as plain text, like the heartbeats:
//! the simulator does not link the code it judges.

use std::collections::BTreeMap;

use crate::cluster::ProcessCluster;
use crate::report::InstanceMetrics;

/// Adds one instance's exposition text to `into`.
pub fn add(into: &mut InstanceMetrics, text: &str) {
    let mut counted = false;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let label = |key: &str| {
            labels
                .split(',')
                .find_map(|kv| kv.strip_prefix(&format!("{key}=\"")))
                .map(|v| v.trim_end_matches(['}', '"']).to_owned())
        };
        match name {
            "keyshard_ack_redis_round_trips_sum" => {
                into.ack_round_trips += v as u64;
                counted = true;
            }
            "keyshard_ack_redis_round_trips_count" => into.ack_measured += v as u64,
            "keyshard_ack_redis_round_trips_by_op_total" => {
                *into
                    .ack_round_trips_by_op
                    .entry(label("op").unwrap_or_default())
                    .or_default() += v as u64;
            }
            "keyshard_key_outages_total" => into.key_outages += v as u64,
            "keyshard_key_out_of_service" => into.keys_out_at_end += v as u64,
            "keyshard_provider_circuit_opens_total" => into.circuit_opens += v as u64,
            _ => {}
        }
    }
    into.scraped += u32::from(counted);
}

/// Scrapes every running instance; an instance that does not answer is left out.
pub async fn scrape(cluster: &mut ProcessCluster, instances: u32) -> InstanceMetrics {
    let mut out = InstanceMetrics {
        ack_round_trips_by_op: BTreeMap::new(),
        ..InstanceMetrics::default()
    };
    let client = reqwest::Client::new();
    for id in 1..=instances {
        if !cluster.is_running(id) {
            continue;
        }
        let Some(addr) = cluster.http_addr(id) else {
            continue;
        };
        let text = client
            .get(format!("http://{addr}/metrics"))
            .timeout(std::time::Duration::from_secs(2))
            .send()
            .await;
        match text {
            Ok(r) => match r.text().await {
                Ok(t) => add(&mut out, &t),
                Err(e) => tracing::debug!(id, error = %e, "metrics body unreadable"),
            },
            Err(e) => tracing::debug!(id, error = %e, "metrics scrape failed"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_series_are_summed_over_instances() {
        let text = "# HELP x\nkeyshard_ack_redis_round_trips_sum 5\nkeyshard_ack_redis_round_trips_count 2\n\
                    keyshard_ack_redis_round_trips_by_op_total{op=\"claim\"} 2\n\
                    keyshard_ack_redis_round_trips_by_op_total{op=\"confirm claim\"} 3\n\
                    keyshard_key_outages_total{provider=\"openai\",key=\"ab\"} 1\n\
                    keyshard_key_out_of_service{provider=\"openai\",key=\"ab\"} 0\n";
        let mut m = InstanceMetrics::default();
        add(&mut m, text);
        add(&mut m, text);
        assert_eq!((m.ack_round_trips, m.ack_measured, m.scraped), (10, 4, 2));
        assert_eq!(m.ack_round_trips_by_op["confirm claim"], 6);
        assert_eq!((m.key_outages, m.keys_out_at_end), (2, 0));
        assert_eq!(m.per_interaction(), Some(2.5));
    }
}

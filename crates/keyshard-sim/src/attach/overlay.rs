//! The env overlay: the env file that points the compose file's `keyshard-N` services at the
//! fakes, written in the shape `docker-compose.multi.yml` reads.
//!
//! The compose file passes each instance the API keys and `DISCORD_API_BASE` from their
//! per-instance form `X_n`, and every other variable as the one shared `X`. So a variable with
//! the same value everywhere is written once as `X=v`; the keys and the REST base as `X_n=v`; and
//! a variable that differs between instances but has no per-instance form in the compose file
//! is an error here, since compose would hand every instance the same value.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::bail;

/// Variables the compose file sets itself (or the instance must not get from the overlay).
const SET_BY_COMPOSE: &[&str] = &["INSTANCE_ID", "REDIS_URL", "HTTP_BIND", "DATABASE_URL"];

/// Whether docker-compose.multi.yml passes `name` per instance, from `name_n`.
pub fn passed_per_instance(name: &str) -> bool {
    name.ends_with("_API_KEY") || name == "DISCORD_API_BASE"
}

/// The env file for instances 1..=N, from each instance's variables (`envs[k - 1]`), names in
/// first-seen order.
pub fn env_file(envs: &[Vec<(String, String)>], header: &str) -> anyhow::Result<String> {
    let mut order: Vec<&str> = Vec::new();
    let mut values: BTreeMap<&str, Vec<Option<&str>>> = BTreeMap::new();
    for (k, env) in envs.iter().enumerate() {
        for (name, value) in env {
            if SET_BY_COMPOSE.contains(&name.as_str()) {
                continue;
            }
            let slot = values.entry(name).or_insert_with(|| {
                order.push(name);
                vec![None; envs.len()]
            });
            slot[k] = Some(value);
        }
    }
    let mut out = String::new();
    for line in header.lines() {
        let _ = writeln!(out, "# {line}");
    }
    for name in order {
        let vals = &values[name];
        let first = vals[0];
        if !passed_per_instance(name) && vals.iter().all(|v| *v == first) {
            let _ = writeln!(out, "{name}={}", first.unwrap_or_default());
        } else if passed_per_instance(name) {
            for (k, v) in vals.iter().enumerate() {
                if let Some(v) = v {
                    let _ = writeln!(out, "{name}_{}={v}", k + 1);
                }
            }
        } else {
            bail!(
                "{name} differs between instances, but docker-compose.multi.yml gives every instance the same {name}"
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn shared_values_once_keys_and_rest_base_per_instance() {
        let envs = [
            env(&[
                ("DISCORD_TOKEN", "t"),
                ("INSTANCE_ID", "1"),
                ("DISCORD_API_BASE", "http://sim:7000/i/1"),
                ("OPENAI_API_KEY", "k1"),
                ("OPENAI_RPM", "60"),
            ]),
            env(&[
                ("DISCORD_TOKEN", "t"),
                ("INSTANCE_ID", "2"),
                ("DISCORD_API_BASE", "http://sim:7000/i/2"),
                ("OPENAI_API_KEY", "k2"),
                ("OPENAI_RPM", "60"),
            ]),
        ];
        let text = env_file(&envs, "written by a test").unwrap();
        assert_eq!(
            text,
            "# written by a test\nDISCORD_TOKEN=t\nDISCORD_API_BASE_1=http://sim:7000/i/1\n\
             DISCORD_API_BASE_2=http://sim:7000/i/2\nOPENAI_API_KEY_1=k1\nOPENAI_API_KEY_2=k2\n\
             OPENAI_RPM=60\n"
        );
    }

    #[test]
    fn a_value_compose_cannot_pass_per_instance_is_refused() {
        let envs = [env(&[("OPENAI_RPM", "60")]), env(&[("OPENAI_RPM", "30")])];
        let err = env_file(&envs, "").unwrap_err().to_string();
        assert!(err.contains("OPENAI_RPM differs"), "{err}");
        // Set on one instance only is a difference too.
        let envs = [env(&[("VIDEO_POLL_MS", "500")]), env(&[])];
        assert!(env_file(&envs, "").is_err());
    }
}

//! `keyshard config check`: an env file read as every instance of the cluster will read it.
//!
//! Each instance `1..=INSTANCE_COUNT` is loaded with the real [`Config`] loading (the file's
//! values, `X_<n>` overrides, `INSTANCE_ID=n`), so a rule the bot enforces at start is a rule
//! this check enforces, with the same words. Around that come the rules no single instance can
//! see: the file's syntax (a line that is not `KEY=VALUE`, a variable set twice), names nothing
//! reads, one Discord bot for all, provider keys that are the instance's own and present on all
//! of them, `INSTANCE_COUNT` against the compose file's `keyshard-N` services, and the file's
//! permissions.
//!
//! Pure: the caller reads the files ([`crate::cli::config_check`]); this module gets their text
//! and says what it found. No value of a secret appears in a problem or a warning.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};

use keyshard_providers::Secret;

use super::{source_name, Config};

/// What `config check` is given: the env file and, when known, the compose file's services.
#[derive(Clone, Debug)]
pub struct CheckInput<'a> {
    /// The env file's name as the operator typed it, for messages.
    pub file_name: &'a str,
    pub text: &'a str,
    /// Others (not owner or group) may read it (`mode & 0o007 != 0`).
    pub others_may_read: bool,
    pub compose: Option<Compose<'a>>,
}

/// The compose file the instances run from.
#[derive(Clone, Debug)]
pub struct Compose<'a> {
    pub file_name: &'a str,
    /// Its text, or `None` when it does not exist.
    pub text: Option<&'a str>,
}

/// Everything found, in the order an operator should read it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    pub file_name: String,
    pub instances: u32,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// The text `keyshard config check` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "config check: {} ({} instances)\n",
            self.file_name, self.instances
        );
        for p in &self.problems {
            out += &format!("  problem: {p}\n");
        }
        for w in &self.warnings {
            out += &format!("  warning: {w}\n");
        }
        if self.is_ok() {
            out += &format!(
                "config check: {} is ok ({} warning(s))\n",
                self.file_name,
                self.warnings.len()
            );
        } else {
            out += &format!(
                "config check: {} problem(s), {} warning(s) in {}\n",
                self.problems.len(),
                self.warnings.len(),
                self.file_name
            );
        }
        out
    }
}

/// One `KEY=VALUE` line of an env file.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: String,
    /// 1-based.
    pub line: usize,
}

/// An env file as dotenvy and docker compose both read it: `#` comments, blank lines,
/// `export `, single or double quotes, ` # comment` after an unquoted value, CRLF line ends.
/// Lines that are not assignments are listed, not fatal.
#[derive(Clone, Debug, Default)]
pub struct EnvFile {
    pub entries: Vec<Entry>,
    pub bad_lines: Vec<usize>,
}

impl EnvFile {
    pub fn parse(text: &str) -> EnvFile {
        let mut file = EnvFile::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((key, raw)) = line.split_once('=') else {
                file.bad_lines.push(i + 1);
                continue;
            };
            let key = key.trim_end();
            let valid_name = key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid_name {
                file.bad_lines.push(i + 1);
                continue;
            }
            file.entries.push(Entry {
                key: key.to_owned(),
                value: unquote(raw.trim()),
                line: i + 1,
            });
        }
        file
    }

    /// The value the bot sees: dotenvy keeps the first of a variable set twice.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }
}

fn unquote(raw: &str) -> String {
    // A quoted value ends at its closing quote; a comment may follow.
    for q in ['"', '\''] {
        if let Some(inner) = raw.strip_prefix(q) {
            if let Some(end) = inner.find(q) {
                let rest = inner[end + 1..].trim_start();
                if rest.is_empty() || rest.starts_with('#') {
                    return inner[..end].to_owned();
                }
            }
        }
    }
    // An unquoted value ends at whitespace followed by `#`.
    let cut = raw
        .char_indices()
        .find(|&(i, c)| c == '#' && raw[..i].ends_with(char::is_whitespace))
        .map_or(raw.len(), |(i, _)| i);
    raw[..cut].trim().to_owned()
}

/// The instance numbers N of the compose file's `keyshard-N` services, ascending.
pub fn compose_instances(text: &str) -> Vec<u32> {
    let mut ns: Vec<u32> = text
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("  keyshard-")?;
            let (n, after) = rest.split_once(':')?;
            let after = after.trim();
            (after.is_empty() || after.starts_with('#')).then_some(())?;
            n.parse().ok()
        })
        .collect();
    ns.sort_unstable();
    ns
}

/// Names the bot reads without going through [`Config`], or that the compose file reads.
/// Config's own names are found by asking it ([`config_names`]), so they never fall out of step.
const OTHER_NAMES: &[(&str, &str)] = &[
    // tracing's EnvFilter, in the binary.
    ("RUST_LOG", "plain"),
    // Read by docker-compose.multi.yml, not by the bot.
    ("KEYSHARD_IMAGE", "plain"),
    ("REDIS_IMAGE", "plain"),
    ("POSTGRES_IMAGE", "plain"),
    ("POSTGRES_PASSWORD", "plain"),
];

/// The per-instance variables docker-compose.multi.yml passes to `keyshard-N` from `X_N`; every
/// other variable it passes as the shared `X`.
fn compose_passes_per_instance(base: &str) -> bool {
    base.ends_with("_API_KEY") || base == "DISCORD_API_BASE"
}

/// The names a [`Config`] reads: `(per_instance, plain)`. Found by loading one with a lookup that
/// records every name asked for and sets each provider's key, so no provider's settings are
/// skipped; `X` is per-instance when `X_1` was asked for too.
pub fn config_names() -> (BTreeSet<String>, BTreeSet<String>) {
    let asked = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| {
        asked.borrow_mut().insert(name.to_owned());
        match name {
            "INSTANCE_ID" => Some("1".to_owned()),
            n if n.ends_with("_API_KEY") => Some("probe".to_owned()),
            // The ledger's variables are read only when it is on.
            "DATABASE_URL" => Some("postgres://probe@127.0.0.1/probe".to_owned()),
            _ => None,
        }
    };
    let _ = Config::read(&lookup);
    let asked = asked.into_inner();
    let per_instance: BTreeSet<String> = asked
        .iter()
        .filter(|n| asked.contains(&format!("{n}_1")))
        .cloned()
        .collect();
    let plain = asked
        .iter()
        .filter(|n| !per_instance.contains(*n))
        .filter(|n| {
            n.strip_suffix("_1")
                .is_none_or(|base| !per_instance.contains(base))
        })
        .cloned()
        .collect();
    (per_instance, plain)
}

const PROVIDERS: &[(&str, &str)] = &[
    ("OPENAI", "OpenAI"),
    ("MINIMAX", "MiniMax"),
    ("STABILITY", "Stability"),
];

/// Beyond this, comparing instances one by one is not what the operator meant.
const MAX_INSTANCES: u32 = 999;

/// What the checks found so far.
#[derive(Default)]
struct Findings {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Findings {
    fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    fn warning(&mut self, w: String) {
        self.warnings.push(w);
    }
}

/// Checks an env file for a cluster; see the module docs.
pub fn check(input: &CheckInput<'_>) -> Report {
    let file = EnvFile::parse(input.text);
    let mut f = Findings::default();
    syntax(&file, &mut f);
    let (count, configs, timing) = load_instances(&file, &mut f);
    if let Some(compose) = &input.compose {
        compose_services(compose, count, &mut f);
    }
    if file.get("INSTANCE_ID").is_some() {
        f.warning(format!(
            "INSTANCE_ID is set in {}; compose gives each service its own (1..{count}) and ignores it",
            input.file_name
        ));
    }
    names(&file, count, &mut f);
    one_bot(&configs, &mut f);
    provider_keys(&file, &configs, &mut f);
    postgres_password(&file, &mut f);
    f.warnings.extend(timing);
    if input.others_may_read && !input.file_name.ends_with(".example") {
        f.warning(format!(
            "{} is readable by other users; it holds the token and keys: chmod 600 {}",
            input.file_name, input.file_name
        ));
    }
    Report {
        file_name: input.file_name.to_owned(),
        instances: count,
        problems: f.problems,
        warnings: f.warnings,
    }
}

/// Lines that are not assignments, variables set twice.
fn syntax(file: &EnvFile, f: &mut Findings) {
    for line in &file.bad_lines {
        f.problem(format!("line {line} is not KEY=VALUE"));
    }
    let mut first_line: BTreeMap<&str, usize> = BTreeMap::new();
    for e in &file.entries {
        match first_line.get(e.key.as_str()) {
            Some(first) => f.problem(format!(
                "{} is set twice (lines {first} and {}): the bot keeps the first, docker compose the last; keep one",
                e.key, e.line
            )),
            None => {
                first_line.insert(&e.key, e.line);
            }
        }
    }
}

/// Each instance 1..=INSTANCE_COUNT as the bot loads it: the count, the configs, and the timing
/// warnings (kept to go after the other warnings). Config's own problems go in at once.
fn load_instances(file: &EnvFile, f: &mut Findings) -> (u32, Vec<Config>, Vec<String>) {
    let lookup_for = |id: u32| {
        move |name: &str| {
            if name == "INSTANCE_ID" {
                Some(id.to_string())
            } else {
                file.get(name).map(str::to_owned)
            }
        }
    };
    // INSTANCE_COUNT has no per-instance form: instance 1 reads the count every instance reads.
    let (first, _) = Config::read(&lookup_for(1));
    let mut count = first.instance_count;
    if count > MAX_INSTANCES {
        f.problem(format!(
            "INSTANCE_COUNT={count} is more than {MAX_INSTANCES} instances"
        ));
        count = MAX_INSTANCES;
    }
    let mut configs = Vec::new();
    let mut found: Vec<(u32, String)> = Vec::new();
    for id in 1..=count {
        let (config, problems) = Config::read(&lookup_for(id));
        found.extend(problems.into_iter().map(|p| (id, p)));
        configs.push(config);
    }
    f.problems.extend(merge(found, count));
    let timing = merge(timing_warnings(&configs), count);
    (count, configs, timing)
}

/// INSTANCE_COUNT against the compose file's `keyshard-N` services.
fn compose_services(compose: &Compose<'_>, count: u32, f: &mut Findings) {
    let Some(text) = compose.text else {
        f.warning(format!(
            "{} not found: INSTANCE_COUNT not compared with the compose services",
            compose.file_name
        ));
        return;
    };
    let services = compose_instances(text);
    if services != (1..=count).collect::<Vec<_>>() {
        let names: Vec<String> = services.iter().map(u32::to_string).collect();
        f.problem(format!(
            "INSTANCE_COUNT={count} but {} defines the services keyshard-{{{}}}; they must be keyshard-1 … keyshard-{count}",
            compose.file_name,
            names.join(",")
        ));
    }
}

/// Every name: read by something, and in a per-instance form for an instance that exists.
fn names(file: &EnvFile, count: u32, f: &mut Findings) {
    let (mut per_instance, mut plain) = config_names();
    for (name, kind) in OTHER_NAMES {
        if *kind == "plain" {
            plain.insert((*name).to_owned());
        } else {
            per_instance.insert((*name).to_owned());
        }
    }
    let mut seen = BTreeSet::new();
    for e in &file.entries {
        if !seen.insert(e.key.as_str()) || e.key == "INSTANCE_ID" {
            continue;
        }
        if plain.contains(&e.key) || per_instance.contains(&e.key) {
            continue;
        }
        let per_instance_form = e.key.rsplit_once('_').and_then(|(base, n)| {
            let n: u32 = n.parse().ok()?;
            per_instance.contains(base).then_some((base, n))
        });
        match per_instance_form {
            Some((_, n)) if n < 1 || n > count => f.warning(format!(
                "{} is for instance {n}, but INSTANCE_COUNT={count}: nothing reads it",
                e.key
            )),
            Some((base, _)) if !compose_passes_per_instance(base) && !e.value.is_empty() => {
                f.warning(format!(
                    "{} is read by natively started instances only; docker-compose.multi.yml passes {base} to every instance",
                    e.key
                ))
            }
            Some(_) => {}
            None => f.warning(format!(
                "{} is not a keyshard variable (a typo?); nothing reads it",
                e.key
            )),
        }
    }
}

/// One bot: every instance the same token (compared, never printed).
fn one_bot(configs: &[Config], f: &mut Findings) {
    let tokens: BTreeSet<&str> = configs
        .iter()
        .map(|c| c.discord_token.expose())
        .filter(|t| !Secret::new(*t).looks_like_placeholder())
        .collect();
    if tokens.len() > 1 {
        f.problem(
            "the instances use different DISCORD_TOKEN values; they must all run the same bot"
                .into(),
        );
    }
}

/// Provider keys: each instance its own, on every instance or on none, and some provider on.
fn provider_keys(file: &EnvFile, configs: &[Config], f: &mut Findings) {
    let lookup = |name: &str| file.get(name).map(str::to_owned);
    let mut any_provider = false;
    for (prefix, provider) in PROVIDERS {
        let var = format!("{prefix}_API_KEY");
        // Per instance: the variable its key comes from, and the key (never printed).
        let keys: Vec<(u32, Option<(String, Secret)>)> = configs
            .iter()
            .zip(1..)
            .map(|(c, id)| {
                let key = match *prefix {
                    "OPENAI" => c.openai.as_ref().map(|p| &p.common.api_key),
                    "MINIMAX" => c.minimax.as_ref().map(|p| &p.common.api_key),
                    _ => c.stability.as_ref().map(|p| &p.common.api_key),
                };
                let source = source_name(&lookup, &var, Some(id));
                (id, key.cloned().zip(source).map(|(k, s)| (s, k)))
            })
            .collect();
        if keys.iter().all(|(_, k)| k.is_none()) {
            f.warning(format!(
                "no {var}_N set: {provider} is disabled, and commands that need it say so"
            ));
            continue;
        }
        any_provider = true;
        let shared: Vec<String> = keys
            .iter()
            .filter(|(_, k)| k.as_ref().is_some_and(|(s, _)| *s == var))
            .map(|(id, _)| id.to_string())
            .collect();
        if !shared.is_empty() {
            f.warning(format!(
                "instances {} take the shared {var}, which only natively started instances read; docker-compose.multi.yml passes {var}_N to keyshard-N",
                shared.join(" ")
            ));
        }
        for (id, key) in &keys {
            if key.is_none() {
                f.problem(format!(
                    "{var}_{id} is missing: other instances have {provider} keys, instance {id} has none (each instance serves its users with its own keys)"
                ));
            }
        }
        shared_keys(&var, &keys, f);
    }
    if !any_provider {
        f.problem(format!(
            "no provider has keys: set OPENAI_API_KEY_N, MINIMAX_API_KEY_N or STABILITY_API_KEY_N for N = 1..{}",
            configs.len()
        ));
    }
}

/// One problem per key value held by more than one instance, naming the variables.
fn shared_keys(var: &str, keys: &[(u32, Option<(String, Secret)>)], f: &mut Findings) {
    // Instances grouped by key value; the value stays in this map.
    let mut by_key: BTreeMap<&str, Vec<(u32, &str)>> = BTreeMap::new();
    for (id, key) in keys {
        if let Some((source, secret)) = key {
            if !secret.looks_like_placeholder() {
                by_key
                    .entry(secret.expose())
                    .or_default()
                    .push((*id, source));
            }
        }
    }
    let mut groups: Vec<&Vec<(u32, &str)>> =
        by_key.values().filter(|users| users.len() > 1).collect();
    groups.sort_by_key(|users| users[0].0);
    for users in groups {
        let sources: BTreeSet<&str> = users.iter().map(|(_, s)| *s).collect();
        if sources.len() == 1 {
            f.problem(format!(
                "{var} is shared by {} instances; give each its own {var}_N (one key per instance is the point: N keys, N times the rate limits)",
                users.len()
            ));
        } else {
            let names: Vec<&str> = sources.into_iter().collect();
            f.problem(format!(
                "{} hold the same key; each instance needs its own (a key shared by two instances halves its limits and brings 429s)",
                names.join(" and ")
            ));
        }
    }
}

/// The compose file puts POSTGRES_PASSWORD into DATABASE_URL as it is.
fn postgres_password(file: &EnvFile, f: &mut Findings) {
    let Some(password) = file.get("POSTGRES_PASSWORD").filter(|p| !p.is_empty()) else {
        return;
    };
    if Secret::new(password).looks_like_placeholder() {
        f.problem(
            "POSTGRES_PASSWORD is still a placeholder; put a password of your own (or leave it empty for the default)".into(),
        );
    } else if !password
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~".contains(c))
    {
        f.problem(
            "POSTGRES_PASSWORD has characters a URL must escape; docker-compose.multi.yml puts it into DATABASE_URL as it is: use letters, digits and - . _ ~".into(),
        );
    }
}

/// Warnings on the timing settings of each instance: valid, but fragile.
fn timing_warnings(configs: &[Config]) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    for (c, id) in configs.iter().zip(1..) {
        let (hb, dead) = (c.heartbeat.as_millis(), c.dead_after.as_millis());
        if dead > hb && dead < 2 * hb {
            out.push((id, format!(
                "DEAD_AFTER_MS ({dead}) is under twice HEARTBEAT_MS ({hb}): one late heartbeat makes an instance look dead"
            )));
        }
        // Discord's 3 s acknowledgement window, which the last fallback on the ladder must fit in.
        let ladder = c.claim.grace + c.claim.step * c.instance_count.saturating_sub(1);
        if ladder.as_millis() >= 2_500 {
            out.push((id, format!(
                "CLAIM_GRACE_MS + (INSTANCE_COUNT-1) × CLAIM_STEP_MS = {} ms leaves little of Discord's 3 s ack window; the bot squeezes the ladder, but smaller values are safer",
                ladder.as_millis()
            )));
        }
    }
    out
}

/// One line per distinct message, in first-seen order. A message every instance gave stands
/// alone; one only some instances gave says which, unless it already names the one instance's
/// own variable (`OPENAI_TPM_2=…`).
fn merge(found: Vec<(u32, String)>, count: u32) -> Vec<String> {
    let mut order: Vec<String> = Vec::new();
    let mut who: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for (id, msg) in found {
        let ids = who.entry(msg.clone()).or_default();
        if ids.is_empty() {
            order.push(msg);
        }
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    order
        .into_iter()
        .map(|msg| {
            let ids = &who[&msg];
            if ids.len() as u32 == count || names_own_variable(&msg, ids) {
                msg
            } else {
                let list: Vec<String> = ids.iter().map(u32::to_string).collect();
                let noun = if ids.len() == 1 {
                    "instance"
                } else {
                    "instances"
                };
                format!("{noun} {}: {msg}", list.join(", "))
            }
        })
        .collect()
}

fn names_own_variable(msg: &str, ids: &[u32]) -> bool {
    let [id] = ids else { return false };
    let suffix = format!("_{id}");
    msg.match_indices(&suffix).any(|(i, _)| {
        msg[i + suffix.len()..]
            .chars()
            .next()
            .is_none_or(|c| !c.is_ascii_digit())
    })
}

#[cfg(test)]
mod tests;

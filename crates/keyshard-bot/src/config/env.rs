//! [`Env`]: the lookup every setting is read through, with the per-instance override rule
//! ([`source_name`]) and problems collected instead of stopping at the first.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use keyshard_providers::{KeyLimits, ProviderConfig, Secret};
use keyshard_routing::InstanceId;

/// The variable instance `instance` reads for `name`: `name_<instance>` when it is set (and not
/// empty), else `name` when it is set. The one statement of the per-instance rule: the loading
/// below and `config check` both go through it.
pub(crate) fn source_name(
    lookup: &dyn Fn(&str) -> Option<String>,
    name: &str,
    instance: Option<InstanceId>,
) -> Option<String> {
    let set = |n: &str| lookup(n).is_some_and(|v| !v.trim().is_empty());
    if let Some(per_instance) = instance.map(|id| format!("{name}_{id}")) {
        if set(&per_instance) {
            return Some(per_instance);
        }
    }
    set(name).then(|| name.to_owned())
}

/// A lookup with the per-instance override rule, collecting problems instead of stopping at the first.
pub(super) struct Env<'a> {
    pub(super) lookup: &'a dyn Fn(&str) -> Option<String>,
    pub(super) instance: Option<InstanceId>,
    pub(super) problems: Vec<String>,
}

impl<'a> Env<'a> {
    pub(super) fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            lookup,
            instance: None,
            problems: Vec::new(),
        }
    }

    pub(super) fn problem(&mut self, p: String) {
        self.problems.push(p);
    }

    /// `X` as set, without the per-instance rule (for `INSTANCE_ID` itself).
    pub(super) fn raw(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|v| !v.trim().is_empty())
    }

    /// `X_<INSTANCE_ID>` if set, else `X`; empty counts as unset.
    pub(super) fn get(&self, name: &str) -> Option<String> {
        self.get_from(name).map(|(_, v)| v)
    }

    /// The value as [`Env::get`] finds it, with the name it was found under (`OPENAI_RPM_2` or
    /// `OPENAI_RPM`), so a problem names the line the operator has to fix.
    pub(super) fn get_from(&self, name: &str) -> Option<(String, String)> {
        let source = source_name(self.lookup, name, self.instance)?;
        let value = self.raw(&source)?.trim().to_owned();
        Some((source, value))
    }

    /// A number, or `None` (with a problem) when it does not parse or is below `min`.
    pub(super) fn number<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        min: Option<T>,
    ) -> Option<T> {
        let (source, v) = self.get_from(name)?;
        match v.parse::<T>() {
            Ok(x) => match min {
                Some(min) if x < min => {
                    self.problem(format!("{source}={x} must be at least {min}"));
                    None
                }
                _ => Some(x),
            },
            Err(_) => {
                self.problem(format!("{source}={v:?} is not a valid number"));
                None
            }
        }
    }

    pub(super) fn parse<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
    ) -> T {
        self.number(name, None).unwrap_or(default)
    }

    /// A number with a smallest sensible value: a zero limit, period or timeout is a typo that
    /// would stall or spin the instance, so it is refused at start.
    pub(super) fn parse_min<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        default: T,
        min: T,
    ) -> T {
        self.number(name, Some(min)).unwrap_or(default)
    }

    pub(super) fn optional_min<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
        min: T,
    ) -> Option<T> {
        self.number(name, Some(min))
    }

    pub(super) fn optional_parse<T: FromStr + PartialOrd + fmt::Display>(
        &mut self,
        name: &str,
    ) -> Option<T> {
        self.number(name, None)
    }

    pub(super) fn parse_with<T, E>(
        &mut self,
        name: &str,
        default: &str,
        f: impl Fn(&str) -> Result<T, E>,
    ) -> T {
        let (source, v) = self
            .get_from(name)
            .unwrap_or_else(|| (name.to_owned(), default.to_owned()));
        match f(&v) {
            Ok(x) => x,
            Err(_) => {
                self.problem(format!("{source}={v:?} is not valid (expected host:port)"));
                f(default).unwrap_or_else(|_| unreachable!("defaults are valid"))
            }
        }
    }

    pub(super) fn id_list(&mut self, name: &str) -> Vec<u64> {
        let Some((source, v)) = self.get_from(name) else {
            return Vec::new();
        };
        let mut ids = Vec::new();
        for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part.parse() {
                Ok(id) => ids.push(id),
                Err(_) => self.problem(format!("{source} has {part:?}, which is not a user id")),
            }
        }
        ids
    }

    /// A secret: never echoed back, placeholders rejected by name.
    pub(super) fn secret(&mut self, name: &str) -> Option<Secret> {
        let (source, value) = self.get_from(name)?;
        let secret = Secret::new(value);
        if secret.looks_like_placeholder() {
            self.problem(format!(
                "{source} is still a placeholder; put the real value in .env.multi"
            ));
        }
        Some(secret)
    }

    /// One provider's settings, or `None` when it has no key (the provider is then disabled).
    #[allow(clippy::too_many_arguments)] // one call per provider, each with its published defaults
    pub(super) fn provider(
        &mut self,
        prefix: &str,
        base_url: &str,
        rpm: u32,
        window_secs: u64,
        tpm: Option<u32>,
        rpd: Option<u32>,
        concurrency: u32,
        timeout_secs: u64,
    ) -> Option<ProviderConfig> {
        let api_key = self.secret(&format!("{prefix}_API_KEY"))?;
        let (source, base_url) = self
            .get_from(&format!("{prefix}_BASE_URL"))
            .unwrap_or_else(|| (format!("{prefix}_BASE_URL"), base_url.to_owned()));
        let base_url = base_url.trim_end_matches('/').to_owned();
        if !(base_url.starts_with("http://") || base_url.starts_with("https://")) {
            self.problem(format!(
                "{source}={base_url:?} must start with http:// or https://"
            ));
        }
        // An empty TPM or RPD means "no such limit"; a set one must allow something.
        let limits = KeyLimits {
            rpm: self.parse_min(&format!("{prefix}_RPM"), rpm, 1),
            tpm: self.optional_min(&format!("{prefix}_TPM"), 1).or(tpm),
            rpd: self.optional_min(&format!("{prefix}_RPD"), 1).or(rpd),
            concurrency: self.parse_min(&format!("{prefix}_CONCURRENCY"), concurrency, 1),
            window: Duration::from_secs(self.parse_min(
                &format!("{prefix}_WINDOW_SECS"),
                window_secs,
                1,
            )),
        };
        let timeout =
            Duration::from_secs(self.parse_min(&format!("{prefix}_TIMEOUT_SECS"), timeout_secs, 1));
        let mut c = ProviderConfig::new(api_key, base_url)
            .with_limits(limits)
            .with_timeout(timeout);
        // How long a key out of service waits for its probe (`KEY_PROBE_SECS`, default 30 s,
        // see `HealthPolicy::probe_every`); shorter in tests.
        c.health.probe_every = Duration::from_secs(self.parse_min(
            "KEY_PROBE_SECS",
            c.health.probe_every.as_secs(),
            1,
        ));
        Some(c)
    }
}

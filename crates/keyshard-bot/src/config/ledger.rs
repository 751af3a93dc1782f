//! The usage ledger's settings: `DATABASE_URL` (a secret as a whole), `LEDGER_PRICES`,
//! `LEDGER_RAW_RETENTION_DAYS` and `LEDGER_ROLLUP_RETENTION_DAYS`.

use std::time::Duration;

use keyshard_ledger::{PriceTable, Retention};
use keyshard_providers::Secret;

use super::{load_env_file, ConfigError, Env};

/// The usage ledger's settings (DESIGN.md §8).
#[derive(Clone, Debug)]
pub struct LedgerConfig {
    /// `DATABASE_URL`: a secret as a whole (it may carry a password); log
    /// [`LedgerConfig::redacted_url`] instead.
    pub database_url: Secret,
    /// `LEDGER_PRICES` over the built-in list prices (`keyshard_ledger::DEFAULT_PRICES`).
    pub prices: PriceTable,
    /// `LEDGER_RAW_RETENTION_DAYS` (90) and `LEDGER_ROLLUP_RETENTION_DAYS` (730).
    pub retention: Retention,
}

impl LedgerConfig {
    /// Reads the ledger's variables alone (for `keyshard migrate` and `keyshard usage`):
    /// `.env.multi` and the environment, `DATABASE_URL` required.
    pub fn from_env() -> Result<LedgerConfig, ConfigError> {
        load_env_file();
        LedgerConfig::from_lookup(|k| std::env::var(k).ok())
    }

    pub fn from_lookup(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<LedgerConfig, ConfigError> {
        let mut env = Env::new(&lookup);
        let ledger = read_ledger(&mut env);
        match ledger {
            Some(l) if env.problems.is_empty() => Ok(l),
            Some(_) => Err(ConfigError {
                problems: env.problems,
            }),
            None => {
                env.problem("DATABASE_URL is not set (the usage ledger is off)".into());
                Err(ConfigError {
                    problems: env.problems,
                })
            }
        }
    }

    /// The URL with its password replaced by `***`, for log lines.
    pub fn redacted_url(&self) -> String {
        let url = self.database_url.expose();
        match database_password(url) {
            Some(pw) => url.replacen(&format!(":{pw}@"), ":***@", 1),
            None => url.to_owned(),
        }
    }
}

/// The password in a `postgres://user:password@host/db` URL, if any. Unlike a Redis URL, a
/// Postgres URL's `user@host` names a user, not a password, so only what follows the `:` of
/// the user info counts.
pub fn database_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.is_empty()).then_some(password)
}

/// The ledger's variables; `None` when `DATABASE_URL` is unset. Problems go to `env`.
pub(super) fn read_ledger(env: &mut Env<'_>) -> Option<LedgerConfig> {
    let url = env.get("DATABASE_URL")?;
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // The URL may carry a password: name the variable, not the value.
        env.problem(
            "DATABASE_URL must start with postgres:// or postgresql:// (postgres://user:password@host:5432/db)"
                .into(),
        );
    }
    let prices = match env.get("LEDGER_PRICES") {
        None => PriceTable::defaults(),
        Some(spec) => PriceTable::parse(&spec).unwrap_or_else(|e| {
            env.problem(format!("LEDGER_PRICES: {e}"));
            PriceTable::defaults()
        }),
    };
    let defaults = Retention::default();
    let days = |d: Duration| d.as_secs() / 86_400;
    let raw_days: u64 = env.parse("LEDGER_RAW_RETENTION_DAYS", days(defaults.raw));
    let rollup_days: u64 = env.parse("LEDGER_ROLLUP_RETENTION_DAYS", days(defaults.rollup));
    // A row can wait in the buffer for minutes at most; a raw retention of at least a day
    // keeps a late row from being written again after its first copy was pruned (see
    // keyshard-ledger's `retention`), and the rollup must outlive the raw rows it sums.
    if raw_days == 0 || rollup_days < raw_days {
        env.problem(format!(
            "LEDGER_RAW_RETENTION_DAYS ({raw_days}) must be at least 1 and LEDGER_ROLLUP_RETENTION_DAYS ({rollup_days}) at least as long"
        ));
    }
    Some(LedgerConfig {
        database_url: Secret::new(url),
        prices,
        retention: Retention {
            raw: Duration::from_secs(raw_days.saturating_mul(86_400)),
            rollup: Duration::from_secs(rollup_days.saturating_mul(86_400)),
        },
    })
}

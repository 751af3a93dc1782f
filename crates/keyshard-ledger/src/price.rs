//! The price table: what a provider call costs, per provider and model, and the estimate of
//! a row's cost in integer micro-dollars. Pure: parsing and arithmetic, no I/O.
//!
//! The compact form (`LEDGER_PRICES`) is a list of entries separated by `;` (or newlines):
//!
//! ```text
//! provider/model=in:USD,out:USD,image:USD,video_s:USD
//! ```
//!
//! `in` and `out` are dollars per million input and output tokens, `image` per image,
//! `video_s` per second of video; a missing field costs nothing. Amounts are plain decimals
//! with at most 6 decimal places (micro-dollars; for the per-million token prices that is a
//! millionth of a micro-dollar per token). Model `*` prices every model of the provider
//! that has no entry of its own. Entries override [`DEFAULT_PRICES`] one by one.
//!
//! Why integer micro-dollars: sums over millions of rows are exact (no float drift), so the
//! rollup equals the raw rows to the unit and two instances never disagree about a total; a
//! cheap chat turn (~1,000 tokens at $0.15/M = 150 µ$) still has three significant digits,
//! and a bigint holds nine trillion dollars.

use std::collections::BTreeMap;
use std::fmt;

use crate::{LedgerError, LedgerRow};

/// Public list prices in USD (mid-2025) of the models keyshard uses by default: OpenAI's
/// chat models per million tokens, `gpt-image-1` at medium quality 1024×1024, MiniMax
/// `image-01`, Hailuo-02 at 768P ($0.28 per 6 s clip), Stability's `core` (3 credits of
/// $0.01). Operators with other models or contracts set `LEDGER_PRICES`.
pub const DEFAULT_PRICES: &str = "openai/gpt-4o-mini=in:0.15,out:0.60;\
openai/gpt-4o=in:2.50,out:10.00;\
openai/gpt-4.1-mini=in:0.40,out:1.60;\
openai/gpt-4.1=in:2.00,out:8.00;\
openai/gpt-image-1=image:0.042;\
openai/dall-e-3=image:0.04;\
minimax/image-01=image:0.0035;\
minimax/MiniMax-Hailuo-02=video_s:0.0467;\
stability/core=image:0.03";

/// What one provider model costs, in micro-dollars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Price {
    /// Per million input tokens.
    pub input_per_mtok: u64,
    /// Per million output tokens.
    pub output_per_mtok: u64,
    pub per_image: u64,
    pub per_video_sec: u64,
}

/// Prices by provider and model (`*` for the provider's other models).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceTable {
    entries: BTreeMap<(String, String), Price>,
}

impl PriceTable {
    /// [`DEFAULT_PRICES`].
    pub fn defaults() -> PriceTable {
        let mut table = PriceTable::default();
        table
            .apply(DEFAULT_PRICES)
            .expect("DEFAULT_PRICES parses (checked by a test)");
        table
    }

    /// The defaults with `spec`'s entries on top; every problem of `spec` listed at once.
    pub fn parse(spec: &str) -> Result<PriceTable, LedgerError> {
        let mut table = PriceTable::defaults();
        table.apply(spec).map_err(LedgerError::InvalidPrices)?;
        Ok(table)
    }

    /// Sets (or replaces) one entry.
    pub fn set(&mut self, provider: &str, model: &str, price: Price) {
        self.entries
            .insert((provider.to_owned(), model.to_owned()), price);
    }

    /// The price of `provider`/`model`: its own entry, else the provider's `*` entry.
    pub fn price_of(&self, provider: &str, model: &str) -> Option<&Price> {
        let key = |m: &str| (provider.to_owned(), m.to_owned());
        self.entries
            .get(&key(model))
            .or_else(|| self.entries.get(&key("*")))
    }

    /// The estimated cost of `row` in micro-dollars: tokens at the per-million prices
    /// (rounded half up, once per row), plus images and video seconds. Zero without a
    /// provider or for a model the table does not know.
    pub fn estimate_cost(&self, row: &LedgerRow) -> u64 {
        let Some(provider) = row.provider.as_deref() else {
            return 0;
        };
        let Some(p) = self.price_of(provider, row.model.as_deref().unwrap_or("")) else {
            return 0;
        };
        let tokens = u128::from(row.tokens_in) * u128::from(p.input_per_mtok)
            + u128::from(row.tokens_out) * u128::from(p.output_per_mtok);
        let tokens = (tokens + 500_000) / 1_000_000;
        let units = u128::from(row.images) * u128::from(p.per_image)
            + u128::from(row.video_secs) * u128::from(p.per_video_sec);
        u64::try_from(tokens + units).unwrap_or(u64::MAX)
    }

    /// Whether the table can price `provider`/`model` (the bot warns once for one it cannot).
    pub fn knows(&self, provider: &str, model: &str) -> bool {
        self.price_of(provider, model).is_some()
    }

    fn apply(&mut self, spec: &str) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for entry in spec
            .split([';', '\n'])
            .map(str::trim)
            .filter(|e| !e.is_empty())
        {
            match parse_entry(entry) {
                Ok((provider, model, price)) => self.set(&provider, &model, price),
                Err(e) => problems.push(format!("{entry:?}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// The compact form, one entry per model, which [`PriceTable::parse`] reads back.
impl fmt::Display for PriceTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for ((provider, model), p) in &self.entries {
            if !first {
                f.write_str(";")?;
            }
            first = false;
            write!(f, "{provider}/{model}=")?;
            let fields = [
                ("in", p.input_per_mtok),
                ("out", p.output_per_mtok),
                ("image", p.per_image),
                ("video_s", p.per_video_sec),
            ];
            let mut sep = "";
            for (name, micros) in fields.iter().filter(|(_, m)| *m > 0) {
                write!(f, "{sep}{name}:{}", dollars(*micros))?;
                sep = ",";
            }
        }
        Ok(())
    }
}

fn parse_entry(entry: &str) -> Result<(String, String, Price), String> {
    let (name, fields) = entry
        .split_once('=')
        .ok_or("expected provider/model=field:USD,…")?;
    let (provider, model) = name
        .trim()
        .split_once('/')
        .ok_or("expected provider/model before '='")?;
    let (provider, model) = (provider.trim(), model.trim());
    if provider.is_empty() || model.is_empty() {
        return Err("empty provider or model".into());
    }
    let mut price = Price::default();
    for field in fields.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, amount) = field
            .split_once(':')
            .ok_or_else(|| format!("{field:?}: expected field:USD"))?;
        let micros = micros(amount.trim()).map_err(|e| format!("{field:?}: {e}"))?;
        match key.trim() {
            "in" => price.input_per_mtok = micros,
            "out" => price.output_per_mtok = micros,
            "image" => price.per_image = micros,
            "video_s" => price.per_video_sec = micros,
            other => return Err(format!("unknown field {other:?} (in, out, image, video_s)")),
        }
    }
    Ok((provider.to_owned(), model.to_owned(), price))
}

/// `"0.0035"` → 3500: a non-negative decimal with at most 6 places, exactly.
fn micros(amount: &str) -> Result<u64, String> {
    let (whole, frac) = amount.split_once('.').unwrap_or((amount, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && frac.is_empty() || !digits(whole) || !digits(frac) {
        return Err(format!("{amount:?} is not a plain decimal amount"));
    }
    if frac.len() > 6 {
        return Err(format!(
            "{amount:?} has more than 6 decimal places (micro-dollars)"
        ));
    }
    let whole: u64 = if whole.is_empty() {
        0
    } else {
        whole
            .parse()
            .map_err(|_| format!("{amount:?} is too large"))?
    };
    let frac: u64 = format!("{frac:0<6}").parse().unwrap_or(0);
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(frac))
        .ok_or_else(|| format!("{amount:?} is too large"))
}

/// 3500 → `"0.0035"`.
fn dollars(micros: u64) -> String {
    let frac = format!("{:06}", micros % 1_000_000);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", micros / 1_000_000)
    } else {
        format!("{}.{frac}", micros / 1_000_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Routing;

    fn row(provider: &str, model: &str) -> LedgerRow {
        let mut r = LedgerRow::new(1, 1, 1, "chat", 1, 1, Routing::Primary, 0);
        r.provider = Some(provider.into());
        r.model = Some(model.into());
        r
    }

    #[test]
    fn amounts_parse_exactly_and_print_back() {
        for (text, want) in [
            ("0.15", 150_000),
            ("2.50", 2_500_000),
            ("0.0035", 3_500),
            ("10", 10_000_000),
            (".5", 500_000),
            ("0.000001", 1),
        ] {
            assert_eq!(micros(text), Ok(want), "{text}");
        }
        for bad in [
            "",
            ".",
            "-1",
            "1e3",
            "0.0000001",
            "abc",
            "1.2.3",
            "99999999999999999999",
        ] {
            assert!(micros(bad).is_err(), "{bad:?} must not parse");
        }
        assert_eq!(dollars(3_500), "0.0035");
        assert_eq!(dollars(10_000_000), "10");
        assert_eq!(dollars(2_500_000), "2.5");
    }

    #[test]
    fn the_defaults_parse_and_the_table_prints_back_what_it_reads() {
        let table = PriceTable::defaults();
        assert!(table.knows("openai", "gpt-4o-mini"));
        assert!(table.knows("minimax", "MiniMax-Hailuo-02"));
        assert!(!table.knows("openai", "gpt-9"));
        let printed = table.to_string();
        let mut again = PriceTable::default();
        again.apply(&printed).unwrap();
        assert_eq!(again, table, "{printed}");
    }

    #[test]
    fn costs_are_estimated_in_micro_dollars() {
        let table = PriceTable::defaults();
        let mut chat = row("openai", "gpt-4o-mini");
        chat.tokens_in = 1_000;
        chat.tokens_out = 500;
        // 1,000 × $0.15/M + 500 × $0.60/M = 150 + 300 µ$.
        assert_eq!(table.estimate_cost(&chat), 450);
        // Three input tokens are 0.45 µ$: rounded once per row, half up.
        chat.tokens_in = 3;
        chat.tokens_out = 0;
        assert_eq!(table.estimate_cost(&chat), 0);
        chat.tokens_in = 4;
        assert_eq!(table.estimate_cost(&chat), 1);

        let mut image = row("minimax", "image-01");
        image.images = 4;
        assert_eq!(table.estimate_cost(&image), 14_000);
        let mut video = row("minimax", "MiniMax-Hailuo-02");
        video.video_secs = 6;
        assert_eq!(table.estimate_cost(&video), 280_200);

        assert_eq!(
            table.estimate_cost(&row("openai", "gpt-9")),
            0,
            "unknown model"
        );
        let none = LedgerRow::new(1, 1, 1, "status", 1, 1, Routing::Primary, 0);
        assert_eq!(table.estimate_cost(&none), 0, "no provider call");
    }

    #[test]
    fn overrides_and_wildcards() {
        let table =
            PriceTable::parse("openai/gpt-4o-mini=in:1,out:2; stability/*=image:0.05").unwrap();
        assert_eq!(
            table.price_of("openai", "gpt-4o-mini"),
            Some(&Price {
                input_per_mtok: 1_000_000,
                output_per_mtok: 2_000_000,
                ..Price::default()
            })
        );
        assert!(table.knows("openai", "gpt-4o"), "the other defaults stay");
        assert_eq!(
            table.price_of("stability", "ultra").unwrap().per_image,
            50_000
        );
        assert_eq!(
            table.price_of("stability", "core").unwrap().per_image,
            30_000,
            "a model's own entry wins over the wildcard"
        );
    }

    #[test]
    fn every_problem_is_listed() {
        let err = PriceTable::parse("nomodel=in:1;a/b=in:x;a/c=tokens:1;a/d=in:1").unwrap_err();
        let LedgerError::InvalidPrices(problems) = &err else {
            panic!("{err:?}");
        };
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(
            err.to_string().contains("unknown field \"tokens\""),
            "{err}"
        );
    }
}

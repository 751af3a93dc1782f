//! Rate-limit hints in response headers: `Retry-After` and OpenAI's `x-ratelimit-*` (whose
//! reset values are Go durations such as `1s`, `6m0s`, `12ms`, `1h2m3.5s`).

use std::time::Duration;

use reqwest::header::HeaderMap;

/// What one response said about the key's limits.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RateHints {
    /// `Retry-After` (seconds, possibly fractional; an HTTP date is ignored).
    pub retry_after: Option<Duration>,
    pub limit_requests: Option<u64>,
    pub remaining_requests: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub limit_tokens: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_tokens: Option<Duration>,
}

impl RateHints {
    pub fn from_headers(headers: &HeaderMap) -> Self {
        let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let num = |name: &str| text(name).and_then(|v| v.trim().parse::<u64>().ok());
        let dur = |name: &str| text(name).and_then(parse_go_duration);
        RateHints {
            retry_after: text("retry-after").and_then(parse_retry_after),
            limit_requests: num("x-ratelimit-limit-requests"),
            remaining_requests: num("x-ratelimit-remaining-requests"),
            reset_requests: dur("x-ratelimit-reset-requests"),
            limit_tokens: num("x-ratelimit-limit-tokens"),
            remaining_tokens: num("x-ratelimit-remaining-tokens"),
            reset_tokens: dur("x-ratelimit-reset-tokens"),
        }
    }

    /// How long the key is certainly out of requests, if the provider said so: `Retry-After`,
    /// or `remaining-requests: 0` with its reset time.
    pub fn blocked_for(&self) -> Option<Duration> {
        let exhausted = match (self.remaining_requests, self.reset_requests) {
            (Some(0), Some(reset)) => Some(reset),
            _ => None,
        };
        match (self.retry_after, exhausted) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `Retry-After: 7` or `Retry-After: 0.5` (seconds). HTTP dates are rare from these APIs and
/// would need a clock comparison with the provider; they are ignored (the backoff applies).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let secs: f64 = value.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(86_400.0)))
}

/// A Go `time.Duration` string: a sequence of decimal numbers with units `h`, `m`, `s`, `ms`,
/// `us`/`µs`, `ns` (`6m0s`, `1.5s`, `12ms`, `0s`). `None` for anything else.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let s = value.trim();
    if s.is_empty() {
        return None;
    }
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    Some(Duration::from_secs_f64(total))
}

/// Formats a duration the way OpenAI does (`6m0s`, `1s`, `12ms`); used by the fake and tests.
pub fn format_go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let secs = d.as_secs_f64();
    let minutes = (secs / 60.0).floor() as u64;
    let rem = secs - minutes as f64 * 60.0;
    let rem = if (rem - rem.round()).abs() < 1e-9 {
        format!("{}", rem.round() as u64)
    } else {
        format!("{rem:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
    };
    if minutes > 0 {
        format!("{minutes}m{rem}s")
    } else {
        format!("{rem}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn go_durations() {
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(parse_go_duration("6m0s"), ms(360_000));
        assert_eq!(parse_go_duration("12ms"), ms(12));
        assert_eq!(parse_go_duration("1s"), ms(1000));
        assert_eq!(parse_go_duration("1.5s"), ms(1500));
        assert_eq!(parse_go_duration("1h2m3s"), ms(3_723_000));
        assert_eq!(parse_go_duration("0s"), ms(0));
        assert_eq!(parse_go_duration("250us"), Some(Duration::from_micros(250)));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("5 minutes"), None);
        assert_eq!(parse_go_duration("s"), None);
    }

    #[test]
    fn format_round_trips() {
        for ms in [0u64, 12, 999, 1000, 1500, 59_000, 60_000, 360_000, 61_250] {
            let d = Duration::from_millis(ms);
            let text = format_go_duration(d);
            assert_eq!(parse_go_duration(&text), Some(d), "{text}");
        }
        assert_eq!(format_go_duration(Duration::from_secs(360)), "6m0s");
    }

    #[test]
    fn hints_from_openai_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-ratelimit-limit-requests", "120"),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "1.5s"),
            ("x-ratelimit-remaining-tokens", "9000"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("retry-after", "1"),
        ] {
            h.insert(k, HeaderValue::from_static(v));
        }
        let hints = RateHints::from_headers(&h);
        assert_eq!(hints.limit_requests, Some(120));
        assert_eq!(hints.remaining_tokens, Some(9000));
        assert_eq!(hints.reset_tokens, Some(Duration::from_secs(360)));
        // Both say "blocked": the longer one wins.
        assert_eq!(hints.blocked_for(), Some(Duration::from_millis(1500)));
        assert_eq!(RateHints::default().blocked_for(), None);
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("0.25"), Some(Duration::from_millis(250)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }
}

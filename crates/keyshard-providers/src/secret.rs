//! [`Secret`]: an API key that never shows itself in `Debug`, `Display`, logs or errors.

use std::fmt;

/// An API key. `Debug` and `Display` print `***`; only [`Secret::expose`] gives the text, and
/// only the HTTP layer calls it (to build the `Authorization` header).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The key itself. Call it only where the key goes on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether the value is obviously not a real key: empty, or one of the placeholders that
    /// example env files ship with (`your-…`, `CHANGE_ME`, `<…>`, `sk-...`, `xxx`). Config
    /// validation uses it to refuse to start with a key that can only ever answer 401.
    pub fn looks_like_placeholder(&self) -> bool {
        let v = self.0.trim();
        let lower = v.to_ascii_lowercase();
        v.is_empty()
            || lower.starts_with("your")
            || lower.contains("change_me")
            || lower.contains("changeme")
            || lower.contains("placeholder")
            || lower.contains("replace")
            || (v.starts_with('<') && v.ends_with('>'))
            || lower.ends_with("...")
            || lower.chars().all(|c| c == 'x' || c == '-' || c == '*')
    }

    /// A short, stable, non-reversible fingerprint of the key (12 hex digits of FNV-1a 64).
    /// It names the key in Redis keys and metrics so two keys can be told apart without the
    /// key itself ever leaving the process. FNV is used instead of `DefaultHasher` because
    /// the value must stay the same across Rust versions: it is part of a Redis key that has
    /// to survive restarts and upgrades.
    pub fn fingerprint(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.0.as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("{:012x}", hash >> 16)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_prints_itself() {
        let s = Secret::new("sk-live-abcdef123456");
        assert_eq!(format!("{s}"), "***");
        assert_eq!(format!("{s:?}"), "***");
        assert_eq!(format!("{:?}", Some(&s)), "Some(***)");
        assert_eq!(s.expose(), "sk-live-abcdef123456");
    }

    #[test]
    fn placeholders_are_recognised() {
        for p in [
            "",
            "  ",
            "your-openai-key",
            "YOUR_KEY",
            "CHANGE_ME",
            "<openai key>",
            "sk-...",
            "xxxx",
        ] {
            assert!(Secret::new(p).looks_like_placeholder(), "{p:?}");
        }
        for real in [
            "sk-proj-3kd93kdk39dk",
            "eyJhbGciOiJSUzI1NiJ9.abc",
            "sk-ant-x1",
        ] {
            assert!(!Secret::new(real).looks_like_placeholder(), "{real:?}");
        }
    }

    #[test]
    fn fingerprint_is_stable_short_and_distinct() {
        let a = Secret::new("key-a").fingerprint();
        assert_eq!(a.len(), 12);
        assert_eq!(a, Secret::new("key-a").fingerprint());
        assert_ne!(a, Secret::new("key-b").fingerprint());
        assert!(!a.contains("key"));
    }
}

//! [`Choices`]: an enum whose values a user picks from a slash option's dropdown.
//!
//! Each value has one string, used as the option's choice value, in job JSON and in logs.
//! The enums also derive serde with the same strings; a test per enum keeps the two equal.

/// A closed set of values a user picks from by name.
pub trait Choices: Copy + Eq + Send + Sync + 'static {
    /// The values in the order the dropdown shows them. Named `CHOICES` rather than `ALL`:
    /// [`ProviderKind::ALL`](crate::ProviderKind::ALL) already lists every provider in
    /// another order, for statistics, and the two lists mean different things.
    const CHOICES: &'static [Self];

    /// The value's string: the choice value Discord sends back, and its name on the wire.
    fn as_str(self) -> &'static str;

    /// What the dropdown shows; the value's string unless a type says otherwise.
    fn label(self) -> &'static str {
        self.as_str()
    }

    /// The choice whose string is exactly `s` (no trimming or case folding: the strings come
    /// from Discord's own list or from JSON this code wrote).
    fn from_choice(s: &str) -> Option<Self> {
        Self::CHOICES.iter().copied().find(|c| c.as_str() == s)
    }
}

/// Checks that `T`'s serde names are its choice strings, for the tests of each enum.
#[cfg(test)]
pub(crate) fn assert_serde_names_are_choices<T>()
where
    T: Choices + std::fmt::Debug + serde::Serialize + serde::de::DeserializeOwned,
{
    for &c in T::CHOICES {
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(json, format!("\"{}\"", c.as_str()), "{c:?}");
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), c);
        assert_eq!(T::from_choice(c.as_str()), Some(c));
    }
}

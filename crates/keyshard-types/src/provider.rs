//! [`ProviderKind`]: which AI provider an image, an error, a budget or a statistic belongs to.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::Choices;

/// Which provider. The lower-case name is the same everywhere: Redis keys, metrics labels,
/// messages, the `/이미지` option's choice values and the `model` field of an image job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    OpenAi,
    MiniMax,
    Stability,
}

impl ProviderKind {
    /// Every provider, in the order statistics list them.
    pub const ALL: [ProviderKind; 3] = [
        ProviderKind::OpenAi,
        ProviderKind::MiniMax,
        ProviderKind::Stability,
    ];

    /// Lower-case name, used in Redis keys, metrics labels and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::OpenAi => "openai",
            ProviderKind::MiniMax => "minimax",
            ProviderKind::Stability => "stability",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The image providers a user may pick in `/이미지`: all three draw images. The dropdown
/// lists the cheaper ones first, the order `/이미지` has always shown.
impl Choices for ProviderKind {
    const CHOICES: &'static [Self] = &[
        ProviderKind::MiniMax,
        ProviderKind::Stability,
        ProviderKind::OpenAi,
    ];

    fn as_str(self) -> &'static str {
        ProviderKind::as_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_everywhere() {
        crate::choices::assert_serde_names_are_choices::<ProviderKind>();
        for p in ProviderKind::ALL {
            assert_eq!(p.to_string(), p.as_str());
            assert!(ProviderKind::CHOICES.contains(&p), "{p} is pickable");
        }
        assert_eq!(ProviderKind::from_choice("midjourney"), None);
        assert_eq!(
            ProviderKind::from_choice("MiniMax"),
            None,
            "exact strings only"
        );
    }
}

//! [`AspectRatio`]: the image shapes every image provider can draw.

use serde::{Deserialize, Serialize};

use crate::Choices;

/// The shapes every provider can produce, named by their `W:H` string everywhere: the
/// `/이미지` option's choice values, the `ratio` field of an image job, and what MiniMax and
/// Stability take. How OpenAI's fixed sizes approximate them is provider knowledge
/// (`keyshard_providers::openai::size_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum AspectRatio {
    #[default]
    #[serde(rename = "1:1")]
    Square,
    #[serde(rename = "16:9")]
    Landscape,
    #[serde(rename = "9:16")]
    Portrait,
    #[serde(rename = "3:2")]
    Photo,
    #[serde(rename = "2:3")]
    PhotoPortrait,
}

impl AspectRatio {
    /// The `W:H` string.
    pub fn as_ratio(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape => "16:9",
            AspectRatio::Portrait => "9:16",
            AspectRatio::Photo => "3:2",
            AspectRatio::PhotoPortrait => "2:3",
        }
    }
}

impl Choices for AspectRatio {
    const CHOICES: &'static [Self] = &[
        AspectRatio::Square,
        AspectRatio::Landscape,
        AspectRatio::Portrait,
        AspectRatio::Photo,
        AspectRatio::PhotoPortrait,
    ];

    fn as_str(self) -> &'static str {
        self.as_ratio()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_agree_everywhere() {
        crate::choices::assert_serde_names_are_choices::<AspectRatio>();
        assert_eq!(AspectRatio::from_choice("7:3"), None);
        assert_eq!(
            AspectRatio::from_choice(" 16:9"),
            None,
            "exact strings only"
        );
    }
}

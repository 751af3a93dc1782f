//! What every image provider takes and gives: [`AspectRatio`] in, [`GeneratedImage`] out.
//!
//! The provider modules import these types; this module imports no provider (the fallback
//! over providers is `clients`).

use bytes::Bytes;

use crate::error::{ErrorClass, ProviderError, ProviderKind};

/// The shapes every provider can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
    /// The `W:H` string MiniMax and Stability take.
    pub fn as_ratio(self) -> &'static str {
        match self {
            AspectRatio::Square => "1:1",
            AspectRatio::Landscape => "16:9",
            AspectRatio::Portrait => "9:16",
            AspectRatio::Photo => "3:2",
            AspectRatio::PhotoPortrait => "2:3",
        }
    }

    /// gpt-image-1 has three sizes; each ratio maps to the closest.
    pub fn openai_size(self) -> &'static str {
        match self {
            AspectRatio::Square => "1024x1024",
            AspectRatio::Landscape | AspectRatio::Photo => "1536x1024",
            AspectRatio::Portrait | AspectRatio::PhotoPortrait => "1024x1536",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AspectRatio::Square,
            AspectRatio::Landscape,
            AspectRatio::Portrait,
            AspectRatio::Photo,
            AspectRatio::PhotoPortrait,
        ]
        .into_iter()
        .find(|r| r.as_ratio() == s.trim())
    }
}

/// An image ready to attach to a Discord message.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    pub bytes: Bytes,
    /// `image/png`, `image/jpeg` or `image/webp`, sniffed from the bytes.
    pub mime: &'static str,
    pub provider: ProviderKind,
}

impl GeneratedImage {
    pub(crate) fn new(bytes: Bytes, provider: ProviderKind) -> Result<Self, ProviderError> {
        let mime = sniff_mime(&bytes).ok_or_else(|| {
            ProviderError::new(
                provider,
                ErrorClass::Retryable,
                format!("the answer is not an image ({} bytes)", bytes.len()),
            )
        })?;
        Ok(GeneratedImage {
            bytes,
            mime,
            provider,
        })
    }

    /// File extension for the attachment name.
    pub fn extension(&self) -> &'static str {
        match self.mime {
            "image/jpeg" => "jpg",
            "image/webp" => "webp",
            _ => "png",
        }
    }
}

fn sniff_mime(b: &[u8]) -> Option<&'static str> {
    if b.starts_with(b"\x89PNG\r\n\x1a\n") {
        Some("image/png")
    } else if b.starts_with(&[0xff, 0xd8, 0xff]) {
        Some("image/jpeg")
    } else if b.len() >= 12 && &b[0..4] == b"RIFF" && &b[8..12] == b"WEBP" {
        Some("image/webp")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_round_trip() {
        for r in [
            AspectRatio::Square,
            AspectRatio::Landscape,
            AspectRatio::Portrait,
            AspectRatio::Photo,
            AspectRatio::PhotoPortrait,
        ] {
            assert_eq!(AspectRatio::parse(r.as_ratio()), Some(r));
        }
        assert_eq!(AspectRatio::parse("5:4"), None);
    }

    #[test]
    fn mime_sniffing() {
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_mime(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_mime(b"{\"error\":1}"), None);
    }
}

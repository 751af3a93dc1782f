//! What every image provider takes and gives: [`AspectRatio`] in, [`GeneratedImage`] out.
//!
//! [`AspectRatio`] is defined in `keyshard-types`, because the `/이미지` option and the image
//! job name the same values; what each provider makes of a ratio is its own module's
//! knowledge (MiniMax and Stability take the `W:H` string, OpenAI a size:
//! [`openai::size_for`](crate::openai::size_for)).
//!
//! The provider modules import these types; this module imports no provider (the fallback
//! over providers is `clients`).

use bytes::Bytes;

use crate::error::{ErrorClass, ProviderError, ProviderKind};

pub use keyshard_types::AspectRatio;

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
    fn mime_sniffing() {
        assert_eq!(sniff_mime(b"\x89PNG\r\n\x1a\n...."), Some("image/png"));
        assert_eq!(sniff_mime(&[0xff, 0xd8, 0xff, 0xe0]), Some("image/jpeg"));
        assert_eq!(sniff_mime(b"RIFF\0\0\0\0WEBPVP8 "), Some("image/webp"));
        assert_eq!(sniff_mime(b"{\"error\":1}"), None);
    }
}

//! The shared HTTP pieces: one reqwest client per provider, response reading, and scrubbing
//! of provider messages before they become error text.

use std::time::Duration;

use bytes::Bytes;
use reqwest::header::HeaderMap;
use reqwest::StatusCode;

use crate::error::{ErrorClass, ProviderError, ProviderKind};
use crate::retry::AttemptError;

/// TCP + TLS connect limit. A provider that cannot even accept a connection in 10 s is down;
/// the attempt timeout (much longer, generation takes time) covers the rest of the call.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Idle pooled connections are dropped after 60 s, below the ~90 s most load balancers in
/// front of these APIs use, so we rarely send on a connection the far end already closed.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A reqwest client without an overall timeout: every call is bounded by keyshard's attempt
/// timeout instead, and nothing in it retries.
pub(crate) fn client(provider: ProviderKind) -> Result<reqwest::Client, ProviderError> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .user_agent(concat!("keyshard/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| {
            ProviderError::new(
                provider,
                ErrorClass::BadRequest,
                format!("cannot build the HTTP client: {e}"),
            )
        })
}

/// A response read to the end.
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// When the status line and headers arrived: the provider had counted the request by
    /// then (the lane frees its slot a window later).
    pub at: tokio::time::Instant,
}

pub(crate) async fn send(
    provider: ProviderKind,
    request: reqwest::RequestBuilder,
) -> Result<Answer, AttemptError> {
    let response = request
        .send()
        .await
        .map_err(|e| ProviderError::transport(provider, &e))?;
    let at = tokio::time::Instant::now();
    let status = response.status();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .map_err(|e| ProviderError::transport(provider, &e))?;
    Ok(Answer {
        status,
        headers,
        body,
        at,
    })
}

/// Removes anything that looks like a key from a provider message: OpenAI's 401 text quotes
/// a masked key (`sk-abc***xyz`), and we print none of it, masked or not.
pub(crate) fn scrub(message: &str, key: &str) -> String {
    let mut text = if key.len() >= 4 {
        message.replace(key, "***")
    } else {
        message.to_owned()
    };
    if text.contains("sk-") || text.contains("Bearer ") {
        text = text
            .split(' ')
            .map(|w| if w.starts_with("sk-") { "sk-***" } else { w })
            .collect::<Vec<_>>()
            .join(" ")
            .replace("Bearer ", "Bearer ***");
    }
    text
}

/// The body as text for an error message, bounded and scrubbed.
pub(crate) fn body_text(body: &[u8], key: &str) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    scrub(text.trim(), key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrub_removes_keys() {
        let key = "sk-proj-abcdefgh12345678";
        let msg = "Incorrect API key provided: sk-proj-****5678. You can find your key at …";
        assert_eq!(
            scrub(msg, key),
            "Incorrect API key provided: sk-*** You can find your key at …"
        );
        assert_eq!(scrub(&format!("bad {key} here"), key), "bad *** here");
        assert_eq!(scrub("plain text", key), "plain text");
    }
}

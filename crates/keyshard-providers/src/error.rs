//! [`ProviderError`] and the pure rules that turn each provider's error answers into one of
//! five [`ErrorClass`]es. The rules read status codes and error codes only, never message
//! text, so a provider rewording a message cannot change how keyshard reacts.

use std::fmt;
use std::time::Duration;

/// Which provider an error, a budget or a statistic belongs to. Defined in `keyshard-types`
/// (the bot's `/이미지` choices and the image job name the same enum) and re-exported here,
/// so `keyshard_providers::ProviderKind` keeps working.
pub use keyshard_types::ProviderKind;

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// 5xx, timeouts, connection errors, a broken stream: the same request may succeed later.
    Retryable,
    /// The provider (or our own daily budget) says "too many": retry after `retry_after`.
    RateLimited,
    /// This key cannot serve: 401, `insufficient_quota`, MiniMax 1004/1008/2049/2056,
    /// Stability 402. Never retried with the same key; the bot moves the job to a peer.
    KeyProblem,
    /// Moderation refused the prompt or the output. Never retried.
    ContentRejected,
    /// The request itself is wrong (400/404/413/422, MiniMax 2013). Never retried.
    BadRequest,
}

impl ErrorClass {
    pub const ALL: [ErrorClass; 5] = [
        ErrorClass::Retryable,
        ErrorClass::RateLimited,
        ErrorClass::KeyProblem,
        ErrorClass::ContentRejected,
        ErrorClass::BadRequest,
    ];

    /// Whether keyshard's own retry loop may try the same request again.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorClass::Retryable | ErrorClass::RateLimited)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::RateLimited => "rate_limited",
            ErrorClass::KeyProblem => "key_problem",
            ErrorClass::ContentRejected => "content_rejected",
            ErrorClass::BadRequest => "bad_request",
        }
    }
}

impl fmt::Display for ErrorClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed provider call. `message` is built from status and error codes and the provider's
/// message text; it never contains the API key (keys are never formatted anywhere).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{provider} {class}: {message}")]
pub struct ProviderError {
    pub provider: ProviderKind,
    pub class: ErrorClass,
    pub message: String,
    /// How long the provider asked us to wait (`Retry-After`, `x-ratelimit-reset-*`), or, for
    /// an exhausted daily budget, the time until the next UTC day.
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(provider: ProviderKind, class: ErrorClass, message: impl Into<String>) -> Self {
        ProviderError {
            provider,
            class,
            message: truncate(message.into()),
            retry_after: None,
        }
    }

    pub fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Maps a reqwest transport error (connect, timeout, broken body) to `Retryable`.
    pub(crate) fn transport(provider: ProviderKind, err: &reqwest::Error) -> Self {
        // `without_url`: signed download URLs carry credentials in their query string.
        let msg = format!("transport error: {}", strip_url(err));
        ProviderError::new(provider, ErrorClass::Retryable, msg)
    }

    pub(crate) fn timeout(provider: ProviderKind, after: Duration) -> Self {
        ProviderError::new(
            provider,
            ErrorClass::Retryable,
            format!("no answer within {after:?}"),
        )
    }
}

fn strip_url(err: &reqwest::Error) -> String {
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        text = text.replace(url.as_str(), "<url>");
    }
    text
}

/// Provider messages can be long (whole HTML error pages); 300 chars is plenty for a log
/// line and keeps metrics/labels and Discord error replies bounded.
fn truncate(mut s: String) -> String {
    const MAX: usize = 300;
    if s.len() > MAX {
        let mut cut = MAX;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// Class of a bare HTTP status, when the body says nothing more specific.
pub fn classify_status(status: u16) -> ErrorClass {
    match status {
        401..=403 => ErrorClass::KeyProblem,
        429 => ErrorClass::RateLimited,
        // 408 Request Timeout and 409 Conflict are transient by definition.
        408 | 409 => ErrorClass::Retryable,
        500..=599 => ErrorClass::Retryable,
        _ => ErrorClass::BadRequest,
    }
}

/// OpenAI: `{"error":{"message","type","param","code"}}` plus the HTTP status.
pub fn classify_openai(status: u16, error_type: Option<&str>, code: Option<&str>) -> ErrorClass {
    let is = |s: &str| code == Some(s) || error_type == Some(s);
    if is("insufficient_quota") || is("billing_hard_limit_reached") || is("invalid_api_key") {
        return ErrorClass::KeyProblem;
    }
    if is("moderation_blocked") || is("content_policy_violation") || is("content_filter") {
        return ErrorClass::ContentRejected;
    }
    if status == 403 {
        // 403 from OpenAI means the key/org/region may not use this model: a key problem.
        return ErrorClass::KeyProblem;
    }
    classify_status(status)
}

/// MiniMax `base_resp.status_code` (most errors arrive with HTTP 200).
pub fn classify_minimax(code: i64) -> ErrorClass {
    match code {
        // 1002 rate limit, 1039 token limit, 1041 connection limit.
        1002 | 1039 | 1041 => ErrorClass::RateLimited,
        // 1004 / 2049 authentication, 1008 insufficient balance, 2056 plan usage limit.
        1004 | 2049 | 1008 | 2056 => ErrorClass::KeyProblem,
        // 1026 sensitive input, 1027 sensitive output.
        1026 | 1027 => ErrorClass::ContentRejected,
        // 1000 unknown error, 1001 timeout, 1013 internal service error, 1024 internal error.
        1000 | 1001 | 1013 | 1024 => ErrorClass::Retryable,
        // 2013 invalid parameters, and anything unknown: retrying an unknown error blindly
        // could burn the key's budget on a request that will never pass.
        _ => ErrorClass::BadRequest,
    }
}

/// Stability: `{"id","name","errors":[…]}` plus the HTTP status.
pub fn classify_stability(status: u16, name: Option<&str>) -> ErrorClass {
    match (status, name) {
        (_, Some("content_moderation")) | (403, _) => ErrorClass::ContentRejected,
        (_, Some("payment_required")) | (402, _) => ErrorClass::KeyProblem,
        (401, _) | (_, Some("unauthorized")) => ErrorClass::KeyProblem,
        _ => classify_status(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ErrorClass::*;

    #[test]
    fn openai_rules() {
        assert_eq!(
            classify_openai(401, Some("invalid_request_error"), Some("invalid_api_key")),
            KeyProblem
        );
        assert_eq!(
            classify_openai(429, Some("insufficient_quota"), Some("insufficient_quota")),
            KeyProblem
        );
        assert_eq!(
            classify_openai(429, Some("requests"), Some("rate_limit_exceeded")),
            RateLimited
        );
        assert_eq!(
            classify_openai(
                400,
                Some("image_generation_user_error"),
                Some("moderation_blocked")
            ),
            ContentRejected
        );
        assert_eq!(
            classify_openai(400, Some("invalid_request_error"), None),
            BadRequest
        );
        assert_eq!(classify_openai(503, None, None), Retryable);
    }

    #[test]
    fn minimax_rules() {
        for (code, class) in [
            (1002, RateLimited),
            (1004, KeyProblem),
            (1008, KeyProblem),
            (2049, KeyProblem),
            (1026, ContentRejected),
            (1027, ContentRejected),
            (2013, BadRequest),
            (1000, Retryable),
        ] {
            assert_eq!(classify_minimax(code), class, "{code}");
        }
    }

    #[test]
    fn stability_rules() {
        assert_eq!(
            classify_stability(402, Some("payment_required")),
            KeyProblem
        );
        assert_eq!(classify_stability(401, Some("unauthorized")), KeyProblem);
        assert_eq!(
            classify_stability(403, Some("content_moderation")),
            ContentRejected
        );
        assert_eq!(classify_stability(429, None), RateLimited);
        assert_eq!(classify_stability(422, Some("invalid_prompt")), BadRequest);
        assert_eq!(classify_stability(500, None), Retryable);
    }

    #[test]
    fn only_retryable_and_rate_limited_are_retried() {
        let retried: Vec<_> = ErrorClass::ALL
            .into_iter()
            .filter(|c| c.is_retryable())
            .collect();
        assert_eq!(retried, vec![Retryable, RateLimited]);
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let e = ProviderError::new(ProviderKind::MiniMax, BadRequest, "한".repeat(400));
        assert!(e.message.len() <= 304);
        assert!(e.message.ends_with('…'));
    }
}

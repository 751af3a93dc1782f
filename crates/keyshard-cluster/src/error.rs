//! Errors of the cluster mechanism, with the conditions callers branch on as variants.

use std::time::Duration;

/// What went wrong talking to Redis or setting up a [`Cluster`](crate::Cluster).
///
/// No variant carries a Redis password: URLs are redacted before they reach an error.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `REDIS_URL` does not parse; `url` has its password replaced by `***`.
    #[error("invalid Redis URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A setting is out of range (instance id outside `1..=N`, zero intervals, ...).
    #[error("invalid cluster config: {0}")]
    InvalidConfig(String),
    /// Redis did not answer within the operation's time budget.
    #[error("Redis did not answer {op} within {timeout:?}")]
    Timeout { op: &'static str, timeout: Duration },
    /// Redis answered with an error or the connection failed.
    #[error("Redis error during {op}: {source}")]
    Redis {
        op: &'static str,
        #[source]
        source: redis::RedisError,
    },
}

impl ClusterError {
    /// Whether Redis (or this process) was too slow, as opposed to refusing or failing: the
    /// operation may still have been carried out.
    pub fn is_timeout(&self) -> bool {
        match self {
            ClusterError::Timeout { .. } => true,
            ClusterError::Redis { source, .. } => source.is_timeout(),
            _ => false,
        }
    }

    /// Whether the error means Redis is unreachable or misbehaving (as opposed to bad config).
    pub fn is_redis_unavailable(&self) -> bool {
        matches!(
            self,
            ClusterError::Timeout { .. } | ClusterError::Redis { .. }
        )
    }
}

/// The password part of `scheme://user:password@host/...` (or of `scheme://password@host`),
/// if any.
pub(crate) fn url_password(url: &str) -> Option<&str> {
    let (_, rest) = url.split_once("://")?;
    // The userinfo ends at the last '@' before the path.
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    let userinfo = &authority[..authority.rfind('@')?];
    let password = match userinfo.split_once(':') {
        Some((_user, password)) => password,
        // `redis://secret@host` puts the password in the user part for some clients.
        None => userinfo,
    };
    (!password.is_empty()).then_some(password)
}

/// `url` with the password (if any) replaced by `***`, fit for logs and error messages.
pub fn redact_url(url: &str) -> String {
    let Some(password) = url_password(url) else {
        return url.to_owned();
    };
    let (scheme, rest) = url.split_once("://").expect("url_password found a scheme");
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let at = rest[..authority_end]
        .rfind('@')
        .expect("url_password found an '@'");
    let user = rest[..at].strip_suffix(password).unwrap_or("");
    format!("{scheme}://{user}***{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("redis://:hunter2@host:6379/0"),
            "redis://:***@host:6379/0"
        );
        assert_eq!(
            redact_url("redis://user:p@ss@host/0"),
            "redis://user:***@host/0"
        );
        assert_eq!(redact_url("redis://hunter2@host"), "redis://***@host");
        assert_eq!(redact_url("not a url"), "not a url");
    }
}

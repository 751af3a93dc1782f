//! keyshard's only retry loop: take a slot on the lane, run one attempt under the attempt
//! timeout, classify, and retry `Retryable`/`RateLimited` errors with capped, jittered
//! exponential backoff. No library underneath retries on its own.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::RetryPolicy;
use crate::error::{ErrorClass, ProviderError};
use crate::health::Gate;
use crate::limits::{Admission, Lane};

/// Backoff after the `failed`-th failed attempt (1-based): "equal jitter", half of the capped
/// exponential value plus a random part up to the other half, so that callers that failed
/// together do not come back together, while the wait never collapses to zero.
pub fn backoff(policy: &RetryPolicy, failed: u32, rng: &mut impl Rng) -> Duration {
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << failed.saturating_sub(1).min(16));
    let capped = exp.min(policy.max_delay);
    let half = capped / 2;
    half + half.mul_f64(rng.random::<f64>())
}

/// How one attempt went, as the attempt itself knows it.
pub(crate) struct AttemptError {
    pub error: ProviderError,
    /// The provider answered 429 (or MiniMax 1002): counted as a provider 429.
    pub from_provider_429: bool,
}

impl From<ProviderError> for AttemptError {
    fn from(error: ProviderError) -> Self {
        AttemptError {
            error,
            from_provider_429: false,
        }
    }
}

/// Runs `attempt` until it succeeds, fails for good, or the policy is used up.
///
/// `tokens` is the token estimate charged on the lane for each attempt. The admission comes
/// back with the value: callers that stream keep it (and its concurrency permit) alive until
/// the stream ends, and reconcile the token estimate with the reported usage.
///
/// Long because it is the one retry loop of the crate: the key's health gate, the lane's
/// admission, the attempt, and what each class of answer means for the next attempt are one
/// state machine over the same attempt count and deadline.
pub(crate) async fn run<T, F, Fut>(
    lane: &Arc<Lane>,
    tokens: u64,
    timeout: Duration,
    policy: &RetryPolicy,
    mut attempt: F,
) -> Result<(T, Admission), ProviderError>
where
    F: FnMut(&Admission) -> Fut,
    Fut: Future<Output = Result<T, AttemptError>>,
{
    let stats = lane.stats.clone();
    let health = stats.health.clone();
    let started = Instant::now();
    let mut failed = 0u32;
    loop {
        // A key out of service is not called at all (the caller moves the job to a peer, or
        // tries the next image provider); an open circuit is waited out while `max_wait`
        // covers it, without counting an attempt.
        match health.as_ref().map_or(Gate::Pass, |h| h.gate()) {
            Gate::Pass | Gate::Probe => {}
            Gate::KeyOut => {
                stats.record_error(ErrorClass::KeyProblem);
                return Err(ProviderError::new(
                    lane.provider,
                    ErrorClass::KeyProblem,
                    "key out of service",
                ));
            }
            Gate::CircuitOpen { retry_in } => {
                if started.elapsed() + retry_in > lane.max_wait() {
                    stats.record_error(ErrorClass::Retryable);
                    return Err(ProviderError::new(
                        lane.provider,
                        ErrorClass::Retryable,
                        "circuit open after a storm of server errors",
                    )
                    .with_retry_after(Some(retry_in)));
                }
                tokio::time::sleep(retry_in).await;
                continue;
            }
        }
        let admission = match lane.admit(tokens).await {
            Ok(a) => a,
            Err(e) => {
                stats.record_error(e.class);
                return Err(e);
            }
        };
        stats.attempts.fetch_add(1, Ordering::Relaxed);
        let outcome = match tokio::time::timeout(timeout, attempt(&admission)).await {
            Ok(r) => r,
            Err(_) => Err(ProviderError::timeout(lane.provider, timeout).into()),
        };
        if let Some(h) = &health {
            match &outcome {
                Ok(_) => h.record(Ok(()), "ok"),
                Err(e) => h.record(Err(e.error.class), &e.error.message),
            }
        }
        let err = match outcome {
            Ok(value) => {
                stats.ok.fetch_add(1, Ordering::Relaxed);
                return Ok((value, admission));
            }
            Err(e) => e,
        };
        drop(admission);
        failed += 1;
        if err.from_provider_429 {
            stats.provider_429.fetch_add(1, Ordering::Relaxed);
        }
        let error = err.error;
        let delay = backoff(policy, failed, &mut rand::rng());
        if error.class == ErrorClass::RateLimited {
            // Everyone on this key backs off, not only this caller: the provider's window is
            // shared by all of them. A 429 is the provider's pause (logged and counted once);
            // running out of local capacity or of the day's requests is the lane's own.
            lane.cool_down(error.retry_after.unwrap_or(delay), err.from_provider_429);
        }
        let give_up = !error.class.is_retryable()
            || failed >= policy.max_attempts
            || error
                .retry_after
                .is_some_and(|ra| started.elapsed() + ra > lane.max_wait());
        if give_up {
            stats.record_error(error.class);
            tracing::debug!(provider = %lane.provider, lane = lane.kind.as_str(), class = %error.class, attempts = failed, "provider call failed");
            return Err(error);
        }
        stats.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(provider = %lane.provider, lane = lane.kind.as_str(), class = %error.class, ?delay, "retrying");
        if error.class == ErrorClass::Retryable {
            tokio::time::sleep(delay).await;
        }
        // RateLimited: the lane's cooldown already makes the next `admit` wait.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn backoff_is_capped_jittered_and_growing() {
        let policy = RetryPolicy {
            max_attempts: 10,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
        };
        let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
        for failed in 1..12 {
            let cap =
                (Duration::from_millis(100) * (1 << (failed - 1).min(16))).min(policy.max_delay);
            for _ in 0..50 {
                let d = backoff(&policy, failed, &mut rng);
                assert!(d >= cap / 2 && d <= cap, "{failed}: {d:?}");
            }
        }
        let a: Vec<_> = (0..5).map(|_| backoff(&policy, 3, &mut rng)).collect();
        assert!(a.windows(2).any(|w| w[0] != w[1]), "jitter varies");
    }
}

//! The providers' daily request store, kept in Redis by the cluster crate: the one place the
//! two meet, since neither crate depends on the other.
//!
//! `keyshard-providers` defines what it needs ([`DailyStore`]: add to the count of a provider
//! key on a UTC day) and keeps the policy (the limit, counting in memory while the store fails,
//! adding those requests later); `keyshard-cluster` offers a plain Redis counter
//! ([`RequestsPerDay`], on the instance's one connection and its time budget). This newtype
//! turns one into the other, so the count is `{c}:rpd:{provider}:{fingerprint}:{YYYY-MM-DD}`.

use futures::future::BoxFuture;
use keyshard_cluster::RequestsPerDay;
use keyshard_providers::{DailyStore, KeyDay, StoreError};

/// [`RequestsPerDay`] as the providers' [`DailyStore`].
#[derive(Clone, Debug)]
pub struct ClusterDailyStore(pub RequestsPerDay);

impl DailyStore for ClusterDailyStore {
    fn add<'a>(
        &'a self,
        key_day: &'a KeyDay,
        delta: i64,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let total = self
                .0
                .add(
                    key_day.provider.as_str(),
                    &key_day.fingerprint,
                    &key_day.day.to_string(),
                    delta,
                )
                .await
                .map_err(StoreError::new)?;
            // Below zero only if the key was deleted between a request and its give-back:
            // nothing counted today.
            Ok(u64::try_from(total).unwrap_or(0))
        })
    }
}

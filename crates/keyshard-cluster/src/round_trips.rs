//! Counting the Redis round trips of one piece of work, such as the acknowledgement path of
//! one interaction: [`RoundTrips::scope`] runs a future with a counter that every Redis call
//! made through this crate's connection (`conn`) adds its operation name to, whichever task
//! awaits it. A task-local rather than a parameter, so no call signature changes for a
//! measurement; calls outside a scope cost one failed thread-local lookup.

use std::future::Future;
use std::sync::{Arc, Mutex};

tokio::task_local! {
    static CURRENT: RoundTrips;
}

/// The Redis calls made within [`scope`](Self::scope)s of this counter. Cheap to clone; the
/// clones share the count, so one interaction's claim, queueing and confirmation (each in
/// its own task) add up.
#[derive(Clone, Default, Debug)]
pub struct RoundTrips(Arc<Mutex<Vec<&'static str>>>);

impl RoundTrips {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `work`, counting its Redis calls here.
    pub async fn scope<F: Future>(&self, work: F) -> F::Output {
        CURRENT.scope(self.clone(), work).await
    }

    /// The operations counted so far, in order (one entry per round trip).
    pub fn ops(&self) -> Vec<&'static str> {
        // A std Mutex: pushed and copied in microseconds, never held across an await.
        self.0.lock().expect("round trips lock").clone()
    }
}

/// Counts one round trip of `op` in the current scope, if any.
pub(crate) fn record(op: &'static str) {
    let _ = CURRENT.try_with(|t| t.0.lock().expect("round trips lock").push(op));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn calls_in_a_scope_are_counted_and_others_are_not() {
        let trips = RoundTrips::new();
        record("outside");
        trips
            .scope(async {
                record("claim");
                // A spawned task is outside the scope unless scoped itself.
                tokio::spawn(async { record("spawned") }).await.unwrap();
            })
            .await;
        trips.scope(async { record("confirm") }).await;
        assert_eq!(trips.ops(), vec!["claim", "confirm"]);
    }
}

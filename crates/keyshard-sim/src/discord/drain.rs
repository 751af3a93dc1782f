//! [`FakeDiscord::drain`]: the end of a run, when the simulator waits for the last answers.

use std::time::{Duration, Instant};

use super::{FakeDiscord, InteractionRecord};

impl FakeDiscord {
    /// Waits until every acknowledged interaction from record `first` on is answered, within
    /// `deadline`, then while records keep changing within `settle` (streamed answers finish
    /// their last edits). Call it once every acknowledgement window has closed: "never acked"
    /// and "completed" are then final, so records before the cursor are never looked at again,
    /// which keeps each wake-up cheap while thousands wait. Returns whether all were answered.
    pub async fn drain(&self, first: usize, deadline: Duration, settle: Duration) -> bool {
        let until = Instant::now() + deadline;
        let mut cursor = first;
        let mut all_answered = move |recs: &[InteractionRecord]| {
            while let Some(r) = recs.get(cursor) {
                if r.ack().is_some() && !r.is_completed() {
                    return false;
                }
                cursor += 1;
            }
            true
        };
        let mut drained = self.wait_for(&mut all_answered, deadline).await;
        while drained && Instant::now() < until {
            if !self.wait_change(settle).await {
                break;
            }
            drained = self
                .wait_for(
                    &mut all_answered,
                    until.saturating_duration_since(Instant::now()),
                )
                .await;
        }
        drained
    }
}

//! Reserved sends, the mechanism: a worker waits until one of its job kind's lanes can send
//! at once ([`reserve_first`]), reserves that send ([`LaneTicket`]), and only then picks the
//! job, which reaches the lane and sends without queueing behind earlier picks. When to send
//! and which lane are [`policy`](super::policy)'s ([`LanePolicy::room`](super::policy::LanePolicy::room),
//! [`choose`]); this module does the waiting.

use std::sync::Arc;

use futures::future::select_all;
use tokio::time::Instant;

use super::policy::{choose, Choice, Room};
use super::{Lane, LaneKind};
use crate::error::ProviderKind;

/// One send reserved on a lane. The lane's next request (normally the picked job's own) uses
/// it up; dropped unused, it is given back at once (and it expires by itself after
/// [`RESERVATION_TTL`](super::policy::RESERVATION_TTL)).
pub struct LaneTicket {
    lane: Arc<Lane>,
    id: u64,
}

impl LaneTicket {
    /// The provider whose lane is reserved: an image job without a choice goes there.
    pub fn provider(&self) -> ProviderKind {
        self.lane.provider
    }

    pub fn lane(&self) -> LaneKind {
        self.lane.kind
    }
}

impl std::fmt::Debug for LaneTicket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LaneTicket({} {})", self.lane.provider, self.lane.kind)
    }
}

impl Drop for LaneTicket {
    fn drop(&mut self) {
        self.lane.lock().release(self.id);
        self.lane.room_changed.notify_waiters();
    }
}

impl Lane {
    /// Whether the lane can take a reserved send at `now`; `None` when its key is out of
    /// service (its calls fail at once: nothing to reserve).
    fn room(&self, now: Instant) -> Option<Room> {
        if self.stats.health.as_ref().is_some_and(|h| h.is_out()) {
            return None;
        }
        if self.permits.available_permits() == 0 {
            return Some(Room::Busy);
        }
        Some(self.lock().room(now, self.max_wait))
    }

    fn reserve(self: &Arc<Self>, now: Instant) -> Option<LaneTicket> {
        let id = self.lock().reserve(now)?;
        Some(LaneTicket {
            lane: self.clone(),
            id,
        })
    }
}

/// Waits until one of `lanes` (in order of preference) can send at once and reserves that
/// send; `None` at once when none is usable (see [`Choice::NoLane`]).
pub(crate) async fn reserve_first(lanes: &[Arc<Lane>]) -> Option<LaneTicket> {
    loop {
        // Registered before the look, so a change between the look and the wait is not lost.
        let mut changes: Vec<_> = lanes
            .iter()
            .flat_map(|l| [l.changed.notified(), l.room_changed.notified()])
            .map(Box::pin)
            .collect();
        for c in &mut changes {
            c.as_mut().enable();
        }
        let now = Instant::now();
        let rooms: Vec<Option<Room>> = lanes.iter().map(|l| l.room(now)).collect();
        let at = match choose(&rooms) {
            Choice::Now(i) => match lanes[i].reserve(now) {
                Some(ticket) => return Some(ticket),
                // Another worker's reservation came first: look again.
                None => continue,
            },
            Choice::NoLane => return None,
            Choice::Wait(at) => at,
        };
        let changed = select_all(changes);
        match at {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = changed => {}
                }
            }
            None => {
                changed.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::KeyLimits;

    fn lane(provider: ProviderKind, rpm: u32, concurrency: u32) -> Arc<Lane> {
        let limits = KeyLimits {
            rpm,
            tpm: None,
            rpd: None,
            concurrency,
            window: Duration::from_secs(60),
        };
        Lane::new(
            provider,
            LaneKind::Images,
            &limits,
            rpm,
            Duration::from_secs(600),
            None,
            Arc::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_reserved_send_goes_at_once_and_the_next_waits_for_the_pace() {
        let l = lane(ProviderKind::MiniMax, 60, 8);
        // A burst of 2 at 60/min: one send now leaves credit for one more.
        drop(l.admit(0).await.unwrap());
        let t0 = Instant::now();
        let ticket = reserve_first(std::slice::from_ref(&l)).await.unwrap();
        assert_eq!(ticket.provider(), ProviderKind::MiniMax);
        // The next reservation waits until the reserved send has gone and the pace allows.
        let next = tokio::spawn({
            let l = l.clone();
            async move {
                reserve_first(&[l]).await.unwrap();
                Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!next.is_finished(), "one reservation at a time");
        let sent = l.admit(0).await.unwrap();
        assert_eq!(
            t0.elapsed(),
            Duration::from_millis(10),
            "the reserved send waits not"
        );
        drop(ticket);
        let at = next.await.unwrap();
        assert!(at - t0 >= Duration::from_millis(900), "{:?}", at - t0);
        drop(sent);
    }

    #[tokio::test(start_paused = true)]
    async fn the_send_goes_to_whichever_lane_has_room() {
        let mm = lane(ProviderKind::MiniMax, 60, 8);
        let st = lane(ProviderKind::Stability, 60, 8);
        let lanes = [mm.clone(), st.clone()];
        drop(mm.admit(0).await.unwrap());
        drop(mm.admit(0).await.unwrap());
        // MiniMax just sent its burst (its pace holds the next back); Stability has room.
        let t = reserve_first(&lanes).await.unwrap();
        assert_eq!(t.provider(), ProviderKind::Stability);
        drop(t);
        // A dropped ticket gives the room back at once.
        let t = reserve_first(&lanes).await.unwrap();
        assert_eq!(t.provider(), ProviderKind::Stability);
    }

    #[tokio::test(start_paused = true)]
    async fn a_lane_with_every_slot_in_flight_has_no_room_until_one_ends() {
        let l = lane(ProviderKind::OpenAi, 6000, 1);
        let held = l.admit(0).await.unwrap();
        let waiter = tokio::spawn({
            let l = l.clone();
            async move { reserve_first(&[l]).await.map(|t| t.provider()) }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiter.is_finished());
        drop(held);
        assert_eq!(waiter.await.unwrap(), Some(ProviderKind::OpenAi));
        assert!(
            reserve_first(&[]).await.is_none(),
            "no lane: nothing to wait for"
        );
    }
}

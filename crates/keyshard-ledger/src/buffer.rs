//! The writer's memory of rows not yet in Postgres. Pure bookkeeping: no I/O, no clock (the
//! time is passed in), so every transition is unit-tested.
//!
//! A row is *waiting* (recorded, not in Redis yet: the outbox), *in flight* (being pushed,
//! or written straight to Postgres while Redis is down), or *pushed* (in this instance's
//! Redis stream, not yet written). A pushed row stays here until it is written, because Redis
//! may restart empty and lose it; the writer then asks for every pushed row older than the
//! evidence ([`Buffer::repush_before`]) to go back to the outbox. Pushing a row twice is
//! harmless: Postgres keeps one.
//!
//! Bounds, and what happens at them:
//! - waiting rows ([`Limits::outbox`]): Redis is down and so is Postgres (otherwise the
//!   writer drains the outbox into one of them). A new row is refused, counted in `dropped`
//!   and logged: the interaction was answered, but its row is lost.
//! - pushed rows ([`Limits::unwritten`]): Postgres has been down a long time. The oldest
//!   pushed row is forgotten here, counted in `unprotected`: it is still in Redis and will be
//!   written, unless Redis also restarts empty before Postgres returns.
//!
//! So memory stays below `outbox + unwritten` rows, whatever fails.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// How many rows the buffer holds at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Rows not yet in Redis. 10,000 rows (~5 MB of JSON) is 50 s of 200 interactions a
    /// second with Redis and Postgres both unreachable.
    pub outbox: usize,
    /// Rows in Redis, not yet in Postgres, kept against an empty Redis restart. 20,000 rows
    /// (~10 MB) is 100 s of 200 a second with Postgres down.
    pub unwritten: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            outbox: 10_000,
            unwritten: 20_000,
        }
    }
}

/// What [`Buffer::record`] did with a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Queued for Redis.
    Queued,
    /// A row for this interaction is already buffered; the first one stays (as in Postgres).
    Duplicate,
    /// The outbox is full (Redis and Postgres both unreachable): the row is lost.
    Dropped,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Waiting,
    InFlight,
    Pushed(u64),
}

#[derive(Debug)]
struct Slot {
    json: Arc<str>,
    recorded_ms: u64,
    state: State,
}

/// Counters of rows lost or exposed at the bounds, and of rows pushed again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufferCounters {
    pub dropped: u64,
    pub unprotected: u64,
    pub repushed: u64,
}

/// Rows by interaction id, in the states above.
#[derive(Debug)]
pub struct Buffer {
    limits: Limits,
    slots: HashMap<u64, Slot>,
    /// Waiting ids in push order. May hold ids that left the state since (written, or pushed
    /// again); those are skipped when taken.
    outbox: VecDeque<u64>,
    /// Waiting or in flight.
    not_in_redis: usize,
    /// Pushed rows by push sequence number: oldest first.
    pushed: BTreeMap<u64, u64>,
    next_seq: u64,
    counters: BufferCounters,
}

impl Buffer {
    pub fn new(limits: Limits) -> Buffer {
        Buffer {
            limits,
            slots: HashMap::new(),
            outbox: VecDeque::new(),
            not_in_redis: 0,
            pushed: BTreeMap::new(),
            next_seq: 0,
            counters: BufferCounters::default(),
        }
    }

    /// Queues a row (its JSON) for Redis.
    pub fn record(&mut self, id: u64, json: Arc<str>, now_ms: u64) -> Recorded {
        if self.slots.contains_key(&id) {
            return Recorded::Duplicate;
        }
        if self.not_in_redis >= self.limits.outbox {
            self.counters.dropped += 1;
            return Recorded::Dropped;
        }
        self.slots.insert(
            id,
            Slot {
                json,
                recorded_ms: now_ms,
                state: State::Waiting,
            },
        );
        self.outbox.push_back(id);
        self.not_in_redis += 1;
        Recorded::Queued
    }

    /// A row already in this instance's Redis stream (appended by the script that marked its
    /// interaction answered): held as pushed, against an empty Redis restart, and never pushed
    /// unless Redis loses it. Subject to [`Limits::unwritten`] like any pushed row.
    pub fn record_pushed(&mut self, id: u64, json: Arc<str>, now_ms: u64) -> Recorded {
        if self.slots.contains_key(&id) {
            return Recorded::Duplicate;
        }
        self.slots.insert(
            id,
            Slot {
                json,
                recorded_ms: now_ms,
                state: State::InFlight,
            },
        );
        // In flight for a moment so `pushed` takes it like a row whose push was just answered.
        self.not_in_redis += 1;
        self.pushed(&[id]);
        Recorded::Queued
    }

    /// Up to `max` waiting rows, oldest first, now in flight.
    pub fn take_waiting(&mut self, max: usize) -> Vec<(u64, Arc<str>)> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(id) = self.outbox.pop_front() else {
                break;
            };
            if let Some(slot) = self.slots.get_mut(&id) {
                if slot.state == State::Waiting {
                    slot.state = State::InFlight;
                    out.push((id, slot.json.clone()));
                }
            }
        }
        out
    }

    /// In-flight rows that did not get anywhere: back to the front of the outbox, in order.
    pub fn put_back(&mut self, ids: &[u64]) {
        for id in ids.iter().rev() {
            if let Some(slot) = self.slots.get_mut(id) {
                if slot.state == State::InFlight {
                    slot.state = State::Waiting;
                    self.outbox.push_front(*id);
                }
            }
        }
    }

    /// In-flight rows that are now in Redis. Past [`Limits::unwritten`], the oldest pushed
    /// rows are forgotten (module docs).
    pub fn pushed(&mut self, ids: &[u64]) {
        for id in ids {
            if let Some(slot) = self.slots.get_mut(id) {
                if slot.state == State::InFlight {
                    let seq = self.next_seq;
                    self.next_seq += 1;
                    slot.state = State::Pushed(seq);
                    self.pushed.insert(seq, *id);
                    self.not_in_redis -= 1;
                }
            }
        }
        while self.pushed.len() > self.limits.unwritten {
            let Some((_, id)) = self.pushed.pop_first() else {
                break;
            };
            self.slots.remove(&id);
            self.counters.unprotected += 1;
        }
    }

    /// A mark before a look at Redis: rows pushed before it were in Redis when the look
    /// started (their push had been answered).
    pub fn mark(&self) -> u64 {
        self.next_seq
    }

    /// Rows now in Postgres (whatever their state here): forgotten.
    pub fn written(&mut self, ids: impl IntoIterator<Item = u64>) {
        for id in ids {
            if let Some(slot) = self.slots.remove(&id) {
                match slot.state {
                    State::Pushed(seq) => {
                        self.pushed.remove(&seq);
                    }
                    // Its outbox entry, if any, is skipped when taken.
                    State::Waiting | State::InFlight => self.not_in_redis -= 1,
                }
            }
        }
    }

    /// Redis may have lost the rows pushed before `mark` (it restarted empty, or a drained
    /// read did not return them): they wait to be pushed again. Returns how many.
    pub fn repush_before(&mut self, mark: u64) -> usize {
        let older: Vec<u64> = self.pushed.range(..mark).map(|(s, _)| *s).collect();
        for seq in &older {
            if let Some(id) = self.pushed.remove(seq) {
                if let Some(slot) = self.slots.get_mut(&id) {
                    slot.state = State::Waiting;
                    self.outbox.push_back(id);
                    self.not_in_redis += 1;
                }
            }
        }
        self.counters.repushed += older.len() as u64;
        older.len()
    }

    /// Rows held (every state).
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Rows not in Redis (waiting or in flight).
    pub fn not_in_redis(&self) -> usize {
        self.not_in_redis
    }

    /// When the oldest held row was recorded.
    pub fn oldest_recorded_ms(&self) -> Option<u64> {
        self.slots.values().map(|s| s.recorded_ms).min()
    }

    pub fn counters(&self) -> BufferCounters {
        self.counters
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(id: u64) -> Arc<str> {
        Arc::from(format!("{{\"id\":{id}}}"))
    }

    fn buffer(outbox: usize, unwritten: usize) -> Buffer {
        Buffer::new(Limits { outbox, unwritten })
    }

    fn ids(taken: &[(u64, Arc<str>)]) -> Vec<u64> {
        taken.iter().map(|(id, _)| *id).collect()
    }

    #[test]
    fn rows_flow_from_the_outbox_to_redis_to_postgres() {
        let mut b = buffer(10, 10);
        for id in 1..=3 {
            assert_eq!(b.record(id, json(id), 100 + id), Recorded::Queued);
        }
        assert_eq!(b.record(2, json(2), 200), Recorded::Duplicate);
        assert_eq!(b.oldest_recorded_ms(), Some(101));
        let taken = b.take_waiting(2);
        assert_eq!(ids(&taken), vec![1, 2]);
        assert_eq!(&*taken[0].1, "{\"id\":1}");
        assert!(b.take_waiting(5).iter().all(|(id, _)| *id == 3));
        b.put_back(&[3]);
        b.pushed(&[1, 2]);
        assert_eq!((b.len(), b.not_in_redis()), (3, 1));
        b.written([1, 2]);
        assert_eq!((b.len(), b.not_in_redis()), (1, 1));
        assert_eq!(ids(&b.take_waiting(5)), vec![3]);
        b.pushed(&[3]);
        b.written([3, 99]);
        assert!(b.is_empty());
        assert_eq!(b.oldest_recorded_ms(), None);
        assert_eq!(b.counters(), BufferCounters::default());
    }

    #[test]
    fn a_row_already_in_redis_is_held_as_pushed() {
        let mut b = buffer(1, 10);
        assert_eq!(b.record_pushed(1, json(1), 5), Recorded::Queued);
        assert_eq!(b.record_pushed(1, json(1), 6), Recorded::Duplicate);
        // Not in the outbox: nothing to push, and the outbox bound does not count it.
        assert!(b.take_waiting(10).is_empty());
        assert_eq!((b.len(), b.not_in_redis()), (1, 0));
        assert_eq!(b.record(2, json(2), 7), Recorded::Queued);
        // Lost by an empty Redis restart: pushed again like any other.
        let mark = b.mark();
        assert_eq!(b.repush_before(mark), 1);
        assert_eq!(ids(&b.take_waiting(10)), vec![2, 1]);
        b.written([1, 2]);
        assert!(b.is_empty());
    }

    #[test]
    fn a_failed_push_keeps_the_order() {
        let mut b = buffer(10, 10);
        for id in 1..=4 {
            b.record(id, json(id), 0);
        }
        let taken = b.take_waiting(3);
        b.put_back(&ids(&taken));
        assert_eq!(ids(&b.take_waiting(10)), vec![1, 2, 3, 4]);
    }

    #[test]
    fn rows_written_while_in_flight_or_waiting_are_gone_for_good() {
        let mut b = buffer(10, 10);
        b.record(1, json(1), 0);
        b.record(2, json(2), 0);
        let taken = b.take_waiting(1);
        // Read back from Redis and written before the push was answered.
        b.written([1, 2]);
        b.pushed(&ids(&taken));
        b.put_back(&[1]);
        assert!(b.take_waiting(10).is_empty());
        assert!(b.is_empty());
        assert_eq!(b.not_in_redis(), 0);
    }

    #[test]
    fn an_empty_restart_sends_back_only_what_was_pushed_before_the_mark() {
        let mut b = buffer(10, 10);
        for id in 1..=4 {
            b.record(id, json(id), 0);
        }
        let first = b.take_waiting(2);
        b.pushed(&ids(&first));
        let mark = b.mark();
        let second = b.take_waiting(2);
        b.pushed(&ids(&second));
        b.written([2]);
        assert_eq!(
            b.repush_before(mark),
            1,
            "row 1; row 2 is written, 3 and 4 are newer"
        );
        assert_eq!(ids(&b.take_waiting(10)), vec![1]);
        assert_eq!(b.counters().repushed, 1);
        assert_eq!(b.repush_before(mark), 0, "nothing twice");
    }

    #[test]
    fn at_the_outbox_bound_new_rows_are_dropped_and_counted() {
        let mut b = buffer(2, 10);
        assert_eq!(b.record(1, json(1), 0), Recorded::Queued);
        assert_eq!(b.record(2, json(2), 0), Recorded::Queued);
        assert_eq!(b.record(3, json(3), 0), Recorded::Dropped);
        // In flight still counts: it is not in Redis yet.
        let taken = b.take_waiting(1);
        assert_eq!(b.record(3, json(3), 0), Recorded::Dropped);
        b.pushed(&ids(&taken));
        assert_eq!(b.record(3, json(3), 0), Recorded::Queued);
        assert_eq!(b.counters().dropped, 2);
    }

    #[test]
    fn at_the_unwritten_bound_the_oldest_pushed_rows_are_forgotten() {
        let mut b = buffer(10, 2);
        for id in 1..=3 {
            b.record(id, json(id), id);
        }
        let taken = b.take_waiting(3);
        b.pushed(&ids(&taken));
        assert_eq!(b.len(), 2);
        assert_eq!(b.counters().unprotected, 1);
        assert_eq!(
            b.oldest_recorded_ms(),
            Some(2),
            "row 1 was the one forgotten"
        );
    }

    #[test]
    fn memory_stays_within_both_bounds_whatever_happens() {
        use rand::rngs::SmallRng;
        use rand::{Rng, SeedableRng};
        let limits = Limits {
            outbox: 7,
            unwritten: 11,
        };
        let mut b = Buffer::new(limits);
        let mut rng = SmallRng::seed_from_u64(13);
        let mut next_id = 0;
        for _ in 0..20_000 {
            match rng.random_range(0..6) {
                0 | 1 => {
                    next_id += 1;
                    b.record(next_id, json(next_id), 0);
                }
                2 => {
                    let t = b.take_waiting(rng.random_range(0..5));
                    if rng.random_bool(0.5) {
                        b.pushed(&ids(&t));
                    } else {
                        b.put_back(&ids(&t));
                    }
                }
                3 => {
                    let mark = b.mark();
                    b.repush_before(mark.saturating_sub(rng.random_range(0..5)));
                }
                4 => b.written((0..3).map(|_| rng.random_range(0..=next_id))),
                _ => {
                    let t = b.take_waiting(2);
                    b.put_back(&ids(&t));
                }
            }
            assert!(b.len() <= limits.outbox + limits.unwritten, "{}", b.len());
            for (id, slot) in &b.slots {
                if slot.state == State::Waiting {
                    assert!(b.outbox.contains(id), "waiting row {id} is in the outbox");
                }
            }
            assert_eq!(
                b.not_in_redis,
                b.slots
                    .values()
                    .filter(|s| !matches!(s.state, State::Pushed(_)))
                    .count()
            );
        }
    }
}

//! Unit tests of `limits::policy`'s reserved sends ([`LanePolicy::room`],
//! [`LanePolicy::reserve`]) and the lane choice ([`choose`]).

use super::tests::{limits, ms};
use super::*;

fn go(p: &mut LanePolicy, now: Instant) -> u64 {
    match p.try_admit(now, 0) {
        Decision::Go(id) => id,
        other => panic!("expected to go at once: {other:?}"),
    }
}

fn wait(p: &mut LanePolicy, now: Instant) -> Instant {
    match p.try_admit(now, 0) {
        Decision::Wait { until, .. } => until,
        other => panic!("expected to wait: {other:?}"),
    }
}

/// A call's longest wait for a lane, far above anything these tests wait for.
const MAX: Duration = Duration::from_secs(600);

#[test]
fn a_reservation_waits_for_the_pace_and_is_used_up_by_the_next_send() {
    let t0 = Instant::now();
    // 60 per minute, burst 1: one send a second (plus the guard's share).
    let mut p = LanePolicy::new(limits(60, 60_000, 1));
    assert_eq!(p.room(t0, MAX), Room::Now);
    let r = p.reserve(t0).expect("room now");
    // One outstanding reservation: no second one until it is used or expires.
    assert_eq!(p.room(t0, MAX), Room::At(t0 + RESERVATION_TTL));
    assert_eq!(p.reserve(t0), None);
    // The reserved job's send goes at once and uses the reservation up.
    go(&mut p, t0 + ms(5));
    let next = p.ready_at(t0 + ms(5), 1);
    assert!(next > t0 + ms(5), "the pace holds the next send back");
    assert_eq!(p.room(t0 + ms(5), MAX), Room::At(next));
    assert_eq!(p.reserve(next), Some(r + 1));
    // Given back unused: room again at once.
    p.release(r + 1);
    assert_eq!(p.room(next, MAX), Room::Now);
}

#[test]
fn an_unused_reservation_expires() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(60, 60_000, 3));
    p.reserve(t0).expect("room now");
    assert_eq!(
        p.room(t0 + RESERVATION_TTL - ms(1), MAX),
        Room::At(t0 + RESERVATION_TTL)
    );
    assert_eq!(p.room(t0 + RESERVATION_TTL, MAX), Room::Now);
}

#[test]
fn ready_at_agrees_with_try_admit_and_takes_nothing() {
    let t0 = Instant::now();
    let mut p = LanePolicy::new(limits(2, 60_000, 2));
    go(&mut p, t0);
    go(&mut p, t0);
    let at = p.ready_at(t0, 0);
    assert_eq!(p.ready_at(t0, 0), at, "a peek changes nothing");
    let until = wait(&mut p, t0);
    assert_eq!(until, at);
    assert_eq!(go(&mut p, at), 2);
    // A provider pause holds the room back too.
    p.cool_down(at, ms(5_000), true);
    assert!(p.ready_at(at, 0) >= at + ms(5_000));
    assert!(matches!(p.room(at, MAX), Room::At(t) if t >= at + ms(5_000)));
    // A pause longer than a call would wait: nobody waits for this lane.
    assert_eq!(p.room(at, ms(4_000)), Room::Beyond);
}

#[test]
fn the_next_send_goes_to_the_first_lane_with_room() {
    let t0 = Instant::now();
    let later = t0 + ms(300);
    let sooner = t0 + ms(100);
    assert_eq!(choose(&[]), Choice::NoLane);
    assert_eq!(choose(&[None, None]), Choice::NoLane);
    assert_eq!(
        choose(&[Some(Room::At(later)), Some(Room::Now), Some(Room::Now)]),
        Choice::Now(1)
    );
    assert_eq!(
        choose(&[Some(Room::At(later)), None, Some(Room::At(sooner))]),
        Choice::Wait(Some(sooner))
    );
    assert_eq!(choose(&[Some(Room::Busy), None]), Choice::Wait(None));
    assert_eq!(choose(&[Some(Room::Beyond), None]), Choice::NoLane);
    assert_eq!(
        choose(&[Some(Room::Beyond), Some(Room::At(later))]),
        Choice::Wait(Some(later))
    );
    assert_eq!(
        choose(&[Some(Room::Busy), Some(Room::At(later))]),
        Choice::Wait(Some(later))
    );
}

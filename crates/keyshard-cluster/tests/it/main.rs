//! Integration tests of the cluster mechanism against a real `redis-server` (one private
//! server per test, started through `keyshard_testkit::RedisServer`).
//!
//! Timings are shrunk (heartbeat 100 ms, dead after 400 ms, snapshot every 50 ms, grace
//! 200 ms, step 150 ms) so liveness changes happen within a second. Real time is used rather
//! than `tokio::time::pause`: the clock that matters here is Redis's own TTL clock, which a
//! paused Tokio clock cannot move. Conditions are awaited by polling with a deadline.

mod claims;
mod fair;
mod gateway;
mod jobs;
mod ledger;
mod liveness;
mod outage;
mod quota;
mod requests_per_day;
mod restart;
mod support;
mod waiting;

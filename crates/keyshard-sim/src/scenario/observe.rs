//! What the simulator watches while a scenario runs: the instances' heartbeats, read from Redis
//! as plain data (`GET {c}:hb:{id}`, parsed into [`crate::judge::Heartbeat`], never through
//! the code under test), and a progress line every few seconds.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::discord::{FakeDiscord, InteractionRecord};
use crate::judge::{Heartbeat, HeartbeatSample};

/// One read's time budget. Loopback Redis answers in well under a millisecond; a read slower
/// than this is Redis restarting (a chaos action), and a sample that late would be stamped
/// long after Redis took it, so it is skipped rather than awaited.
const READ_BUDGET: Duration = Duration::from_millis(500);

/// Heartbeat samples shared between the sampler, the progress line and the report.
pub type Samples = Arc<Mutex<Vec<HeartbeatSample>>>;

/// Reads every instance's heartbeat key in one `MGET`, over one connection that is opened
/// again after a failure (Redis may be restarted under it).
pub struct HeartbeatReader {
    client: redis::Client,
    conn: Option<redis::aio::MultiplexedConnection>,
    keys: Vec<String>,
}

impl HeartbeatReader {
    pub fn new(redis_url: &str, cluster_name: &str, instances: u32) -> anyhow::Result<Self> {
        Ok(Self {
            client: redis::Client::open(redis_url)?,
            conn: None,
            // `{c}:hb:{id}`, ARCHITECTURE.md's Redis table.
            keys: (1..=instances)
                .map(|id| format!("{cluster_name}:hb:{id}"))
                .collect(),
        })
    }

    /// One sample, or the reason there is none (the connection is dropped and reopened on
    /// the next read).
    pub async fn read(&mut self) -> anyhow::Result<HeartbeatSample> {
        let read = tokio::time::timeout(READ_BUDGET, self.read_inner()).await;
        match read {
            Ok(Ok(sample)) => Ok(sample),
            Ok(Err(e)) => {
                self.conn = None;
                Err(e)
            }
            Err(_) => {
                self.conn = None;
                bail!("reading the heartbeats took over {READ_BUDGET:?}")
            }
        }
    }

    async fn read_inner(&mut self) -> anyhow::Result<HeartbeatSample> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self
                .conn
                .insert(self.client.get_multiplexed_async_connection().await?),
        };
        let values: Vec<Option<String>> =
            redis::cmd("MGET").arg(&self.keys).query_async(conn).await?;
        Ok(HeartbeatSample {
            at: Instant::now(),
            instances: values
                .into_iter()
                .map(|v| v.as_deref().map(Heartbeat::parse))
                .collect(),
        })
    }
}

/// Waits until every instance's heartbeat is in Redis.
pub async fn wait_all_alive(reader: &mut HeartbeatReader, instances: u32) -> anyhow::Result<()> {
    // Instances write their first heartbeat before they report ready, so this is normally
    // immediate; 10 s covers a loaded CI box.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let read = reader.read().await;
        if let Ok(s) = &read {
            if s.alive_count() == instances as usize {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("not every instance has a heartbeat in Redis after 10 s: {read:?}");
        }
        // Heartbeats are written every `HEARTBEAT_MS` (250 ms in a run); look 5 times as often.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Samples the heartbeats every `period` until stopped; a failed read is skipped (the report
/// then falls back on the simulator's own kill times).
pub async fn sample_heartbeats(
    mut reader: HeartbeatReader,
    period: Duration,
    out: Samples,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Ok(sample) = reader.read().await {
            out.lock().unwrap_or_else(|e| e.into_inner()).push(sample);
        }
    }
}

/// Running counts of the records for the progress line, without copying them: records before
/// `cursor` are final (answered, or never acknowledged and past the ack window) and counted
/// in `settled_*`, so each tick looks only at the recent tail.
#[derive(Default)]
struct Progress {
    cursor: usize,
    settled_acked: u64,
    settled_completed: u64,
}

impl Progress {
    /// `(sent, acked, completed)` so far.
    fn count(&mut self, recs: &[InteractionRecord], ack_window: Duration) -> (u64, u64, u64) {
        let now = Instant::now();
        while let Some(r) = recs.get(self.cursor) {
            let completed = r.is_completed();
            let lost = r.ack().is_none() && now.saturating_duration_since(r.sent_at) > ack_window;
            if !(completed || lost) {
                break;
            }
            self.settled_acked += u64::from(completed);
            self.settled_completed += u64::from(completed);
            self.cursor += 1;
        }
        let tail = &recs[self.cursor..];
        let acked = tail.iter().filter(|r| r.ack().is_some()).count() as u64;
        let completed = tail.iter().filter(|r| r.is_completed()).count() as u64;
        (
            recs.len() as u64,
            self.settled_acked + acked,
            self.settled_completed + completed,
        )
    }
}

/// Logs a progress line every `every` until stopped: interactions sent, acknowledged and
/// answered, and the jobs queued in the last heartbeat sample, so a long run shows it is alive.
pub async fn report_progress(
    discord: FakeDiscord,
    samples: Samples,
    start: Instant,
    every: Duration,
    stop: CancellationToken,
) {
    let ack_window = discord.config().ack_window;
    let mut progress = Progress::default();
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let (sent, acked, completed) =
            discord.inspect_records(|recs| progress.count(recs, ack_window));
        let last = samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .last()
            .map(|s| (s.queued(), s.in_flight(), s.alive_count()));
        let jobs = match last {
            Some((queued, running, alive)) => {
                format!("jobs queued {queued}  running {running}  instances alive {alive}")
            }
            None => "no heartbeat read yet".into(),
        };
        tracing::info!(
            "{:>6.1} s  sent {sent}  acked {acked}  completed {completed}  {jobs}",
            start.elapsed().as_secs_f64()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discord::CallbackAttempt;

    fn rec(sent_at: Instant, ack: Option<u8>) -> InteractionRecord {
        let callbacks = ack
            .map(|kind| CallbackAttempt::plain(1, 1.0, 204, kind, "퐁"))
            .into_iter()
            .collect();
        InteractionRecord::ping(1, 1, sent_at, vec![1], callbacks)
    }

    #[test]
    fn progress_counts_settle_and_stay_right() {
        let now = Instant::now();
        let old = now - Duration::from_secs(10);
        let window = Duration::from_secs(3);
        // Answered, lost (old, no ack), deferred without an answer yet, fresh without an ack.
        let mut recs = vec![
            rec(old, Some(4)),
            rec(old, None),
            rec(now, Some(5)),
            rec(now, None),
        ];
        let mut p = Progress::default();
        assert_eq!(p.count(&recs, window), (4, 2, 1));
        assert_eq!(p.cursor, 2, "the answered and the lost record are settled");
        recs.push(rec(now, Some(4)));
        assert_eq!(p.count(&recs, window), (5, 3, 2));
    }
}

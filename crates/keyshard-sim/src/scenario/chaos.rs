//! Chaos: what the simulator does to the cluster at given times into the run (SIGKILL,
//! SIGTERM, restart, a dropped gateway session, an invalidated one, a crash loop, a Redis
//! restart that loses the data, one that keeps it as `docker restart redis` does, Postgres
//! down for a while, a provider key revoked and restored), parsed from the command line and
//! performed by [`run_chaos`]. Each instance
//! action is recorded as a process event, which the judge reads back (see
//! [`crate::judge::down_intervals`]).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

use crate::cluster::ProcessCluster;
use crate::discord::FakeDiscord;

/// Something the simulator does to the cluster at a given time into the run.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ChaosAction {
    /// SIGKILL the instance (a crash).
    Kill(u32),
    /// SIGTERM and wait (a graceful stop).
    Terminate(u32),
    /// Start a stopped instance again (killing it first if it runs).
    Restart(u32),
    /// Close the instance's gateway websockets (it should resume).
    DropSession(u32),
    /// Send op 9 INVALID_SESSION to every session of the instance: `resumable` ones are
    /// resumed, the others need a fresh IDENTIFY.
    InvalidateSession { instance: u32, resumable: bool },
    /// For `span`: kill the instance as soon as it has IDENTIFYed and start it again at once,
    /// the worst crash loop for the day's session starts. It is left stopped afterwards.
    CrashLoop { instance: u32, span: Duration },
    /// SIGKILL the private Redis and start it again at once, empty (only with the private
    /// Redis).
    RedisRestart,
    /// Restart the private Redis the way `docker restart redis` restarts the compose service,
    /// whose volume keeps an AOF: stopped saving its data, away for [`REDIS_RESTART_DOWN`]
    /// (its port swallowing connections meanwhile, see `restart_redis`), started
    /// again with that data; keys whose expiry passed meanwhile are gone (only with the
    /// private Redis).
    RedisRestartWithData,
    /// Stop the private Postgres at once (an immediate shutdown, like a crash) and start it
    /// again, with its data, `down` later (only with the private Postgres).
    PostgresRestart { down: Duration },
    /// The fake providers answer instance `instance`'s key of `provider` as invalid (401 /
    /// MiniMax 1004) from now (`revoked`), or accept it again (`!revoked`).
    RevokeKey {
        instance: u32,
        provider: &'static str,
        revoked: bool,
    },
}

/// How long a Redis restart with its data keeps it away: `docker restart redis` took 0.6 to
/// 0.7 s from SIGTERM to "Ready to accept connections" in the compose rehearsal (the redis
/// container's log, four restarts), the gap in which an instance's claim can time out and
/// its primary answer by the static rule.
pub const REDIS_RESTART_DOWN: Duration = Duration::from_millis(700);

/// How long `--postgres-restart` keeps Postgres down unless told otherwise: long enough that
/// the writers' backoff reaches its cap and their Redis buffers fill, as an operator's
/// restart or a failover would, short enough for a one-minute scenario.
pub const DEFAULT_POSTGRES_DOWN: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Chaos {
    pub at: Duration,
    pub action: ChaosAction,
}

impl Chaos {
    /// The instance the action is about, if any.
    pub fn instance(&self) -> Option<u32> {
        match self.action {
            ChaosAction::Kill(i)
            | ChaosAction::Terminate(i)
            | ChaosAction::Restart(i)
            | ChaosAction::DropSession(i)
            | ChaosAction::InvalidateSession { instance: i, .. }
            | ChaosAction::CrashLoop { instance: i, .. }
            | ChaosAction::RevokeKey { instance: i, .. } => Some(i),
            ChaosAction::RedisRestart
            | ChaosAction::RedisRestartWithData
            | ChaosAction::PostgresRestart { .. } => None,
        }
    }

    /// Parses `INSTANCE@SECS+SPAN` for a crash loop (e.g. `3@10+300`).
    pub fn parse_crash_loop(s: &str) -> anyhow::Result<Chaos> {
        let (head, span) = s
            .split_once('+')
            .with_context(|| format!("{s:?}: expected INSTANCE@SECS+SPAN"))?;
        let span = parse_secs(span)?;
        let at = Chaos::parse_instance(head, ChaosAction::Kill)?;
        Ok(Chaos {
            at: at.at,
            action: ChaosAction::CrashLoop {
                instance: at.instance().unwrap_or(0),
                span,
            },
        })
    }

    /// Parses `INSTANCE@SECS` for an instance action.
    /// `PROVIDER:INSTANCE@FROM-TO`: the key is revoked at FROM and restored at TO (seconds).
    pub fn parse_revoke_key(s: &str) -> anyhow::Result<[Chaos; 2]> {
        let (provider, rest) = s
            .split_once(':')
            .with_context(|| format!("{s:?}: expected PROVIDER:INSTANCE@FROM-TO"))?;
        let provider = match provider {
            "openai" => "openai",
            "minimax" => "minimax",
            "stability" => "stability",
            p => bail!("{p:?}: expected openai, minimax or stability"),
        };
        let (instance, span) = rest
            .split_once('@')
            .with_context(|| format!("{s:?}: expected PROVIDER:INSTANCE@FROM-TO"))?;
        let instance: u32 = instance
            .parse()
            .with_context(|| format!("instance {instance:?}"))?;
        let (from, to) = span
            .split_once('-')
            .with_context(|| format!("{s:?}: expected FROM-TO seconds"))?;
        let (from, to) = (parse_secs(from)?, parse_secs(to)?);
        if to <= from {
            bail!("{s:?}: the key must be restored after it is revoked");
        }
        let at = |at, revoked| Chaos {
            at,
            action: ChaosAction::RevokeKey {
                instance,
                provider,
                revoked,
            },
        };
        Ok([at(from, true), at(to, false)])
    }

    pub fn parse_instance(s: &str, make: fn(u32) -> ChaosAction) -> anyhow::Result<Chaos> {
        let (i, t) = s
            .split_once('@')
            .with_context(|| format!("{s:?}: expected INSTANCE@SECS"))?;
        Ok(Chaos {
            at: parse_secs(t)?,
            action: make(i.parse().with_context(|| format!("instance {i:?}"))?),
        })
    }
}

impl fmt::Display for Chaos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = self.at.as_secs_f64();
        match self.action {
            ChaosAction::Kill(i) => write!(f, "kill:{i}@{t}"),
            ChaosAction::Terminate(i) => write!(f, "terminate:{i}@{t}"),
            ChaosAction::Restart(i) => write!(f, "restart:{i}@{t}"),
            ChaosAction::DropSession(i) => write!(f, "drop-session:{i}@{t}"),
            ChaosAction::InvalidateSession {
                instance,
                resumable: true,
            } => write!(f, "invalidate-session:{instance}@{t}"),
            ChaosAction::InvalidateSession {
                instance,
                resumable: false,
            } => write!(f, "invalidate-session-fresh:{instance}@{t}"),
            ChaosAction::CrashLoop { instance, span } => {
                write!(f, "crash-loop:{instance}@{t}+{}", span.as_secs_f64())
            }
            ChaosAction::RedisRestart => write!(f, "redis-restart@{t}"),
            ChaosAction::RedisRestartWithData => write!(f, "redis-restart-with-data@{t}"),
            ChaosAction::RevokeKey {
                instance,
                provider,
                revoked,
            } => {
                let verb = if revoked { "revoke-key" } else { "restore-key" };
                write!(f, "{verb}:{provider}:{instance}@{t}")
            }
            ChaosAction::PostgresRestart { down } => {
                write!(f, "postgres-restart@{t}(down {}s)", down.as_secs_f64())
            }
        }
    }
}

/// Seconds, possibly fractional.
pub fn parse_secs(s: &str) -> anyhow::Result<Duration> {
    let v: f64 = s
        .parse()
        .with_context(|| format!("{s:?} is not a number of seconds"))?;
    Duration::try_from_secs_f64(v).with_context(|| format!("{s:?} is not a valid duration"))
}

/// Performs the chaos actions at their times; returns once every one is done (a Postgres
/// outage included: Postgres is back when this returns).
pub(crate) async fn run_chaos(
    mut chaos: Vec<Chaos>,
    start: Instant,
    cluster: Arc<tokio::sync::Mutex<ProcessCluster>>,
    discord: FakeDiscord,
    redis: Option<Arc<Mutex<keyshard_testkit::RedisServer>>>,
    postgres: Option<Arc<Mutex<keyshard_testkit::PostgresServer>>>,
    providers: Option<Arc<dyn super::ProviderFakes>>,
) -> anyhow::Result<()> {
    chaos.sort_by_key(|c| c.at);
    // A Postgres outage runs beside the actions after it, and is waited for at the end.
    let mut outages = Vec::new();
    for c in chaos {
        tokio::time::sleep_until((start + c.at).into()).await;
        tracing::info!(chaos = %c, "chaos");
        match c.action {
            ChaosAction::Kill(i) => cluster.lock().await.kill(i).await?,
            ChaosAction::Terminate(i) => {
                cluster
                    .lock()
                    .await
                    .terminate(i, Duration::from_secs(30))
                    .await?;
            }
            ChaosAction::Restart(i) => cluster.lock().await.restart(i).await?,
            ChaosAction::DropSession(i) => discord.drop_session(i),
            ChaosAction::InvalidateSession {
                instance,
                resumable,
            } => {
                discord.invalidate_sessions(instance, resumable);
            }
            ChaosAction::CrashLoop { instance, span } => {
                let starts = crash_loop(&cluster, &discord, instance, span).await?;
                tracing::info!(instance, starts, "crash loop over; the instance stays down");
            }
            ChaosAction::RevokeKey {
                instance,
                provider,
                revoked,
            } => {
                let Some(p) = &providers else {
                    bail!("chaos {c} needs the fake providers (a mix with a provider command)");
                };
                p.set_revoked(instance, provider, revoked);
            }
            ChaosAction::RedisRestart | ChaosAction::RedisRestartWithData => {
                let Some(redis) = redis.clone() else {
                    bail!("chaos {c} needs the private redis-server (unset REDIS_URL)");
                };
                restart_redis(c.action, redis).await?;
            }
            ChaosAction::PostgresRestart { down } => {
                let Some(pg) = postgres.clone() else {
                    bail!("postgres-restart needs the private Postgres (and the ledger on)");
                };
                let stop = pg.clone();
                tokio::task::spawn_blocking(move || {
                    stop.lock().unwrap_or_else(|e| e.into_inner()).stop();
                })
                .await?;
                outages.push(tokio::spawn(async move {
                    tokio::time::sleep(down).await;
                    tracing::info!("chaos: postgres back");
                    tokio::task::spawn_blocking(move || {
                        pg.lock().unwrap_or_else(|e| e.into_inner()).restart();
                    })
                    .await
                }));
            }
        }
    }
    for o in outages {
        o.await??;
    }
    Ok(())
}

/// The Redis restarts. [`ChaosAction::RedisRestart`]: SIGKILL and an empty start at once.
/// [`ChaosAction::RedisRestartWithData`] is `docker restart redis` as the instances see it:
/// Redis saves its data and exits, and for [`REDIS_RESTART_DOWN`] its address answers nothing
/// (the container and its network are gone, so a call times out rather than being refused:
/// the rehearsal's instances logged "did not answer … within 500ms"); then it is back with
/// its data. A listener on its port stands for the silent address: it accepts connections
/// and never answers, and closes them all when Redis comes back.
async fn restart_redis(
    action: ChaosAction,
    redis: Arc<Mutex<keyshard_testkit::RedisServer>>,
) -> anyhow::Result<()> {
    if action == ChaosAction::RedisRestart {
        tokio::task::spawn_blocking(move || {
            redis.lock().unwrap_or_else(|e| e.into_inner()).restart();
        })
        .await?;
        return Ok(());
    }
    let stop = redis.clone();
    let port = tokio::task::spawn_blocking(move || {
        let mut r = stop.lock().unwrap_or_else(|e| e.into_inner());
        r.stop_saving();
        r.port()
    })
    .await?;
    let silent = tokio::net::TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, port))
        .await
        .with_context(|| format!("holding Redis's port {port} while it is away"))?;
    let swallow = async {
        let mut held = Vec::new();
        loop {
            if let Ok((conn, _)) = silent.accept().await {
                held.push(conn);
            }
        }
    };
    // `swallow` never ends; the timeout is the gap.
    let _ = tokio::time::timeout(REDIS_RESTART_DOWN, swallow).await;
    drop(silent);
    tokio::task::spawn_blocking(move || {
        redis
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .restart_with_data();
    })
    .await?;
    Ok(())
}

/// Kills `instance` as soon as the fake Discord has accepted an IDENTIFY from it and starts it
/// again at once, until `span` is over; returns the number of starts. The instance stays down
/// afterwards. A start that never gets to IDENTIFY (its restart backoff outlasts the span) is
/// killed when the span ends.
async fn crash_loop(
    cluster: &tokio::sync::Mutex<ProcessCluster>,
    discord: &FakeDiscord,
    instance: u32,
    span: Duration,
) -> anyhow::Result<u32> {
    let until = Instant::now() + span;
    let mut starts = 0;
    loop {
        let seen = discord.gateway_stats(instance).identifies;
        {
            let mut c = cluster.lock().await;
            if c.is_running(instance) {
                c.kill(instance).await?;
            }
            c.spawn(instance)?;
        }
        starts += 1;
        let left = until.saturating_duration_since(Instant::now());
        let identified = discord.wait_identifies(instance, seen, left).await;
        if !identified || Instant::now() >= until {
            cluster.lock().await.kill(instance).await?;
            return Ok(starts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_instance_actions() {
        let k = Chaos::parse_instance("3@10.5", ChaosAction::Kill).unwrap();
        assert_eq!(
            (k.action, k.at),
            (ChaosAction::Kill(3), Duration::from_millis(10_500))
        );
        assert_eq!(k.to_string(), "kill:3@10.5");
        assert!(Chaos::parse_instance("3", ChaosAction::Kill).is_err());
        assert!(parse_secs("-1").is_err());
        let c = Chaos::parse_crash_loop("3@10+300").unwrap();
        assert_eq!(
            c.action,
            ChaosAction::CrashLoop {
                instance: 3,
                span: Duration::from_secs(300)
            }
        );
        assert_eq!(c.to_string(), "crash-loop:3@10+300");
        assert!(Chaos::parse_crash_loop("3@10").is_err());
    }
}

//! The claim: which instance answers one interaction. The effective owner `SET NX`es the
//! claim key at once, fallbacks after their delay from routing's [`claim_turn`], the first
//! fallback sweeps for a claim that lapsed unconfirmed, and a degraded handle follows the
//! static rule. Exactly-once rests on the one `SET NX` per interaction.
//!
//! The confirmation ([`Cluster::confirm_recording`]) is also where an interaction answered
//! without a job gets its usage-ledger row: the row is appended to `{c}:ledger:{me}` in the
//! same script that confirms the claim, so a row exists exactly when the holder of the claim
//! confirmed an answer (see that method for the cases).

use std::sync::atomic::Ordering;
use std::time::Duration;

use keyshard_routing::{
    claim_turn, primary, sweep_delay, Assignment, ClaimTurn, InstanceId, Reason, UserId,
};

use super::Cluster;
use crate::{clock, keys, ClusterError};

/// The time budget of one try of the claim's `SET NX` (at most two tries, see
/// `Cluster::try_claim`). Discord drops an interaction that is not acknowledged within 3 s; a
/// hung Redis may eat at most twice this much of it before the instance falls back to the
/// static rule. A healthy Redis answers in about a millisecond.
pub const CLAIM_BUDGET: Duration = Duration::from_millis(250);

/// What happened to one claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClaimOutcome {
    /// This instance won the `SET NX` and answers. `rank` is `None` when it claimed as the
    /// effective owner and `Some(r)` when it claimed as fallback number `r` after the owner
    /// did not.
    ///
    /// `swept_from`: the instance whose pending claim lapsed and was taken over by this
    /// fallback's sweep. That instance may still have answered (it was slow, or died between
    /// its answer and its confirmation): when Discord then says "already acknowledged", this
    /// instance records the interaction's ledger row on its behalf.
    Won {
        assignment: Assignment,
        rank: Option<u32>,
        swept_from: Option<InstanceId>,
    },
    /// Another instance claimed first: drop the interaction.
    Lost,
    /// Redis is unreachable: the static rule decided. `answer` is `primary(user) == me`;
    /// `assignment` is the static one (the primary, whatever its state).
    Degraded {
        answer: bool,
        assignment: Assignment,
    },
}

impl ClaimOutcome {
    /// Whether this instance should answer the interaction.
    pub fn answers(&self) -> bool {
        matches!(
            self,
            ClaimOutcome::Won { .. } | ClaimOutcome::Degraded { answer: true, .. }
        )
    }
}

/// Extends a claim to its full life only if this instance still holds it (a lapsed claim taken
/// by a sweeping fallback must not be taken back).
const CONFIRM_SCRIPT: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
";

/// The confirmation of an answered interaction with its ledger row (`KEYS[1]` the claim,
/// `KEYS[2]` this instance's ledger stream; `ARGV` me, the claim TTL, the row's JSON):
/// - held by me: extend it, append the row, return the entry id;
/// - lapsed and taken by nobody (this instance answered slower than the pending life and no
///   fallback swept it): take it back for its full life and append the row, since this
///   instance did answer and no one else will record it;
/// - held by another instance (a fallback swept it): nothing; that instance records the row
///   (its own answer, or this one's on its behalf when Discord told it "already answered").
///
/// Returns the stream entry id, or `false` (nil) when the row was not appended.
const CONFIRM_RECORDING_SCRIPT: &str = r"
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
elseif holder == false then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
else
  return false
end
return redis.call('XADD', KEYS[2], '*', 'row', ARGV[3])
";

/// What [`Cluster::confirm_recording`] did with the row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// The claim is confirmed and the row is entry `entry` of this instance's ledger stream.
    Recorded { entry: String },
    /// Another instance holds the claim (a fallback swept it): it records the row.
    NotHolder,
    /// Redis did not answer (unreachable, or slower than the budget): the row may or may not
    /// be in the stream. The caller keeps it in memory; Postgres keeps one copy.
    Unknown,
}

/// What a claim does first ([`Cluster::step`]).
enum Step {
    /// The static rule decides (Redis unreachable: `degraded`; or takeover off).
    Static { degraded: bool },
    /// Redis just came back and the primary is alive: only it answers, as while degraded.
    Decline,
    /// Claim at once, or after a fallback's delay.
    Turn(ClaimTurn),
}

/// An interaction as it arrived, before its claim: when, the Redis link's epoch then, and how
/// long a fallback waits before it claims. Taken by [`Cluster::receive`] as soon as the event
/// is read, so that the wait can happen before the framework builds its (much larger) state
/// for the command: every instance receives every interaction, and a fallback waits its turn
/// for each one its peers own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Receipt {
    pub received_ms: u64,
    epoch: u64,
    /// The fallback's delay from [`claim_turn`] (zero: it claims at once, or the static
    /// rule decides).
    delay: Duration,
    /// How much of `delay` the caller already waited ([`Receipt::waited`]).
    waited: Duration,
}

impl Receipt {
    /// How long to wait before the claim.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// The same receipt after the caller waited its whole delay: the claim then waits only
    /// for a longer delay from a membership that changed meanwhile.
    pub fn waited(self) -> Receipt {
        Receipt {
            waited: self.delay,
            ..self
        }
    }
}

impl Cluster {
    /// The interaction `interaction_id` from `user` arrived at Unix time `received_ms`: its
    /// [`Receipt`], with the delay [`claim`](Self::claim) would sleep before its `SET NX`
    /// (zero for the effective owner, and whenever the claim does not wait: Redis
    /// unreachable, takeover off, or Redis just back with the primary alive).
    pub fn receive(&self, interaction_id: u64, user: UserId, received_ms: u64) -> Receipt {
        let delay = match self.step(interaction_id, user, received_ms) {
            Step::Turn(ClaimTurn::After { delay, .. }) => delay,
            _ => Duration::ZERO,
        };
        Receipt {
            received_ms,
            epoch: self.inner.link_epoch.load(Ordering::Relaxed),
            delay,
            waited: Duration::ZERO,
        }
    }

    /// What the claim does first, from the current membership (see [`Step`]).
    fn step(&self, interaction_id: u64, user: UserId, received_ms: u64) -> Step {
        let cfg = &self.inner.cfg;
        let me = cfg.instance_id;
        // The static rule: while Redis is unreachable, or always with takeover switched off.
        let degraded = self.is_degraded();
        if degraded || !cfg.takeover {
            return Step::Static { degraded };
        }
        let members = self.membership();
        // Within one heartbeat lifetime of Redis coming back, a primary that is alive may not
        // have noticed yet and still answer its users by the static rule, without a claim key
        // for a fallback's `SET NX` to meet: only the primary answers its users meanwhile, as
        // while degraded. A primary already dead before the outage is not alive here, so its
        // users are still taken over.
        let primary_id = primary(user, cfg.instance_count);
        if primary_id != me
            && self.recovering()
            && members
                .get(primary_id)
                .is_some_and(|s| s.alive && !s.draining)
        {
            return Step::Decline;
        }
        Step::Turn(claim_turn(
            me,
            user,
            interaction_id,
            received_ms,
            &members,
            &cfg.overload,
            &cfg.claim,
        ))
    }

    /// Decides whether this instance answers interaction `interaction_id` from `user`,
    /// received at Unix time `received_ms`: [`claim_received`](Self::claim_received) with a
    /// receipt taken now.
    pub async fn claim(&self, interaction_id: u64, user: UserId, received_ms: u64) -> ClaimOutcome {
        let receipt = self.receive(interaction_id, user, received_ms);
        self.claim_received(interaction_id, user, receipt).await
    }

    /// Decides whether this instance answers interaction `interaction_id` from `user`, as it
    /// arrived (`receipt`, from [`receive`](Self::receive)).
    ///
    /// The effective owner claims at once; a fallback first sleeps its delay from
    /// [`claim_turn`]. Cancel-safe: dropping the future during the delay claims nothing.
    /// While Redis is unreachable the static rule decides (`primary(user) == me`) without
    /// waiting; the primary still tries the `SET NX` first, so a Redis that is back already
    /// keeps exactly-once with peers that noticed it earlier.
    pub async fn claim_received(
        &self,
        interaction_id: u64,
        user: UserId,
        receipt: Receipt,
    ) -> ClaimOutcome {
        let received_ms = receipt.received_ms;
        let is_primary = primary(user, self.inner.cfg.instance_count) == self.inner.cfg.instance_id;
        // Redis away or back since the receipt: the checks below see it.
        let epoch = receipt.epoch;
        let turn = match self.step(interaction_id, user, received_ms) {
            Step::Static { degraded } => {
                return self
                    .claim_statically(interaction_id, user, is_primary, degraded)
                    .await
            }
            Step::Decline => return self.degraded(user, false),
            Step::Turn(turn) => turn,
        };
        let (assignment, rank) = match turn {
            ClaimTurn::Now(a) => (a, None),
            ClaimTurn::After {
                assignment,
                rank,
                delay,
            } => {
                // The receipt's wait is deducted: the membership may have changed meanwhile.
                tokio::time::sleep(delay.saturating_sub(receipt.waited)).await;
                if !is_primary && self.redis_came_back_since(epoch).await {
                    return self.degraded(user, false);
                }
                (assignment, Some(rank))
            }
        };
        match self.try_claim(interaction_id).await {
            Ok(Held::Me) => self.won(assignment, rank, None),
            Ok(Held::By(holder))
                if rank == Some(0) && !self.claim_confirmed(interaction_id).await =>
            {
                let sweep = Sweep {
                    epoch,
                    is_primary,
                    holder,
                };
                self.sweep(interaction_id, received_ms, assignment, sweep)
                    .await
            }
            Ok(Held::By(_)) => self.lost(),
            Err(_) => self.degraded(user, is_primary),
        }
    }

    /// The static rule (`primary(user) == me`), for a `degraded` handle or with takeover off:
    /// only the primary answers, and it still claims first (see [`claim`](Self::claim)).
    async fn claim_statically(
        &self,
        interaction_id: u64,
        user: UserId,
        is_primary: bool,
        degraded: bool,
    ) -> ClaimOutcome {
        if !is_primary {
            return if degraded {
                self.degraded(user, false)
            } else {
                self.lost()
            };
        }
        let me = self.inner.cfg.instance_id;
        let assignment = Assignment {
            user,
            primary: me,
            owner: Some(me),
            reason: Reason::Primary,
        };
        match self.try_claim(interaction_id).await {
            Ok(Held::Me) => self.won(assignment, None, None),
            Ok(Held::By(_)) => self.lost(),
            Err(_) => self.degraded(user, true),
        }
    }

    /// Whether Redis was away or restarted since this claim read `epoch`: a fallback that
    /// waited across that declines. A restarted Redis may have lost the owner's claim (an
    /// empty restart), the owner may have answered by the static rule with no claim at all
    /// while it could not reach Redis, or its confirmation may have failed so that its claim
    /// lapses (a restart that kept the data); claiming now could answer a second time. Only
    /// the primary still answers (the static rule), as while degraded.
    ///
    /// The look at the server comes first: when it finds a restart it moves `link_epoch`
    /// itself, and two fallbacks checking at once must both see that.
    async fn redis_came_back_since(&self, epoch: u64) -> bool {
        let restarted = self.restarted_since_seen().await;
        restarted || self.inner.link_epoch.load(Ordering::Relaxed) != epoch
    }

    /// The first fallback looks once more before the deadline: an owner that died between its
    /// claim and its acknowledgement never confirms, and its claim lapses. `sweep.holder` is
    /// who held the claim when this fallback first tried.
    async fn sweep(
        &self,
        interaction_id: u64,
        received_ms: u64,
        assignment: Assignment,
        sweep: Sweep,
    ) -> ClaimOutcome {
        let Sweep {
            epoch,
            is_primary,
            holder,
        } = sweep;
        let now = clock::now_ms().max(received_ms);
        let timing = &self.inner.cfg.claim;
        tokio::time::sleep(sweep_delay(interaction_id, received_ms, now, timing)).await;
        // An owner that answered while Redis was away could not confirm: its claim lapses
        // although it is alive and answered. Only a lapse with Redis steady is a death; across
        // a restart the holder is taken to have answered (the primary too leaves it: the
        // holder's claim says it was not this instance's turn).
        if self.redis_came_back_since(epoch).await {
            return self.lost();
        }
        match self.try_claim(interaction_id).await {
            Ok(Held::Me) => {
                tracing::info!(
                    interaction_id,
                    "took over an unconfirmed claim (its owner died before answering)"
                );
                self.won(assignment, Some(0), holder)
            }
            Ok(Held::By(_)) => self.lost(),
            Err(_) => self.degraded(assignment.user, is_primary),
        }
    }

    /// Whether the holder of a claim has confirmed it (its TTL is past the pending one). An
    /// unreadable claim counts as confirmed: no sweep without evidence of a lapse.
    async fn claim_confirmed(&self, interaction_id: u64) -> bool {
        let key = keys::claim(&self.inner.cfg.cluster_name, interaction_id);
        let pending = self.inner.cfg.claim.pending.as_millis() as i64;
        let ttl: Result<i64, _> = self
            .inner
            .redis
            .run("claim ttl", CLAIM_BUDGET, |mut c| async move {
                redis::cmd("PTTL").arg(&key).query_async(&mut c).await
            })
            .await;
        // -2: no key (lapsed already), worth a sweep; a TTL within the pending life: not
        // confirmed yet.
        !matches!(ttl, Ok(t) if t == -2 || (0..=pending).contains(&t))
    }

    /// Confirms that this instance acknowledged the interaction it claimed: the claim then
    /// holds for the token's 15 minutes instead of lapsing after `ClaimTiming::pending`. Call
    /// it right after the acknowledgement; a failure only means a fallback's sweep may try
    /// (and get Discord's "already acknowledged").
    pub async fn confirm(&self, interaction_id: u64) {
        let key = keys::claim(&self.inner.cfg.cluster_name, interaction_id);
        let me = self.inner.cfg.instance_id.to_string();
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_SCRIPT));
        let script = &*SCRIPT;
        let result: Result<i64, _> = self
            .inner
            .redis
            .run("confirm claim", CLAIM_BUDGET, |mut c| async move {
                script
                    .key(&key)
                    .arg(&me)
                    .arg(keys::CLAIM_TTL_MS)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        if let Err(e) = result {
            tracing::debug!(interaction_id, "could not confirm the claim: {e}");
        }
    }

    /// [`confirm`](Self::confirm) for an interaction this instance answered without a job,
    /// with its usage-ledger row (JSON, opaque here) appended to `{c}:ledger:{me}` in the same
    /// script ([`CONFIRM_RECORDING_SCRIPT`]): the row is in Redis exactly when the claim is
    /// confirmed as this instance's, so a crash between the answer and this call leaves no
    /// row and a lapsed claim, which the first fallback's sweep then finds (and records the
    /// row on this instance's behalf when Discord says the interaction was answered).
    ///
    /// Off the acknowledgement's path like `confirm`: it runs after the answer.
    pub async fn confirm_recording(&self, interaction_id: u64, row: &str) -> Confirmed {
        let cfg = &self.inner.cfg;
        let claim = keys::claim(&cfg.cluster_name, interaction_id);
        let stream = keys::ledger_stream(&cfg.cluster_name, cfg.instance_id);
        let me = cfg.instance_id.to_string();
        static SCRIPT: std::sync::LazyLock<redis::Script> =
            std::sync::LazyLock::new(|| redis::Script::new(CONFIRM_RECORDING_SCRIPT));
        let script = &*SCRIPT;
        let result: Result<Option<String>, _> = self
            .inner
            .redis
            .run("confirm claim", CLAIM_BUDGET, |mut c| async move {
                script
                    .key(&claim)
                    .key(&stream)
                    .arg(&me)
                    .arg(keys::CLAIM_TTL_MS)
                    .arg(row)
                    .invoke_async(&mut c)
                    .await
            })
            .await;
        match result {
            Ok(Some(entry)) => Confirmed::Recorded { entry },
            Ok(None) => Confirmed::NotHolder,
            Err(e) => {
                tracing::debug!(interaction_id, "could not confirm the claim: {e}");
                Confirmed::Unknown
            }
        }
    }

    fn won(
        &self,
        assignment: Assignment,
        rank: Option<u32>,
        swept_from: Option<InstanceId>,
    ) -> ClaimOutcome {
        self.inner.metrics.won(assignment.reason, rank.is_some());
        ClaimOutcome::Won {
            assignment,
            rank,
            swept_from,
        }
    }

    fn lost(&self) -> ClaimOutcome {
        self.inner.metrics.lost();
        ClaimOutcome::Lost
    }

    fn degraded(&self, user: UserId, answer: bool) -> ClaimOutcome {
        self.inner.metrics.degraded(answer);
        let primary = primary(user, self.inner.cfg.instance_count);
        ClaimOutcome::Degraded {
            answer,
            assignment: Assignment {
                user,
                primary,
                owner: Some(primary),
                reason: Reason::Primary,
            },
        }
    }

    /// Claims the interaction: who holds it afterwards ([`Held::Me`] when this instance does).
    ///
    /// One try is `SET {c}:claim:{id} {me} NX PX 900000` pipelined with `GET` of the same key,
    /// so a try tells who holds the claim rather than only whether this `SET` created it.
    /// That makes a second try safe: when the first one times out (a slow Redis or a starved
    /// process, not an unreachable one), its `SET` may still have landed, and the second try
    /// reads back `{me}` instead of reporting a loss, or names the peer that won meanwhile,
    /// instead of this instance answering by the static rule next to that peer.
    async fn try_claim(&self, interaction_id: u64) -> Result<Held, ClusterError> {
        let mut result = self.claim_once(interaction_id).await;
        if result.as_ref().is_err_and(ClusterError::is_timeout) {
            tracing::debug!(
                interaction_id,
                "claim timed out; asking Redis again who holds it"
            );
            result = self.claim_once(interaction_id).await;
        }
        self.observe(&result);
        result
    }

    async fn claim_once(&self, interaction_id: u64) -> Result<Held, ClusterError> {
        let key = keys::claim(&self.inner.cfg.cluster_name, interaction_id);
        let pending_ms = self.inner.cfg.claim.pending.as_millis() as u64;
        let me = self.inner.cfg.instance_id.to_string();
        self.inner
            .redis
            .run_retrying("claim", CLAIM_BUDGET, |mut c| {
                let (key, me) = (key.clone(), me.clone());
                async move {
                    let (_created, holder): (Option<String>, Option<String>) = redis::pipe()
                        .cmd("SET")
                        .arg(&key)
                        .arg(&me)
                        .arg("NX")
                        .arg("PX")
                        .arg(pending_ms)
                        .cmd("GET")
                        .arg(&key)
                        .query_async(&mut c)
                        .await?;
                    Ok(if holder.as_deref() == Some(me.as_str()) {
                        Held::Me
                    } else {
                        // `None`: the key vanished between the two commands (it expired), or
                        // holds something that is not an instance id.
                        Held::By(holder.and_then(|h| h.parse().ok()))
                    })
                }
            })
            .await
    }
}

/// What a sweep carries over from the claim it follows.
struct Sweep {
    /// `link_epoch` when the claim started.
    epoch: u64,
    is_primary: bool,
    /// Who held the claim when the fallback first tried.
    holder: Option<InstanceId>,
}

/// Who holds a claim after a try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Held {
    Me,
    By(Option<InstanceId>),
}

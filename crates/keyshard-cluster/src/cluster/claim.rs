//! The claim: which instance answers one interaction. The effective owner `SET NX`es the
//! claim key at once, fallbacks after their delay from routing's [`claim_turn`], the first
//! fallback sweeps for a claim that lapsed unconfirmed, and a degraded handle follows the
//! static rule. Exactly-once rests on the one `SET NX` per interaction.
//!
//! Round trips: the owner's claim is one (`SET NX` + `GET`), and so is a fallback's, whose
//! look for a Redis restart runs in the same script as its `SET NX`
//! ([`CLAIMS_SCRIPT`]), shared with the other fallback claims of the moment (`claim_batch.rs`).
//! What follows the answer (the confirmation, with the interaction's usage-ledger row) is in
//! `confirm.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use keyshard_routing::{
    claim_turn, primary, sweep_delay, Assignment, ClaimTurn, InstanceId, Reason, UserId,
};

#[cfg(doc)]
use super::claim_batch::CLAIMS_SCRIPT;
use super::claim_batch::{ClaimBatcher, Found};
use super::restart::ServerIdentity;
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
                (assignment, Some(rank))
            }
        };
        let tried = if rank.is_some() && !is_primary {
            // A fallback that is not the primary declines across a Redis restart; it looks
            // for one and claims in the same round trip.
            match self.claim_looking(interaction_id, epoch).await {
                Some(tried) => tried,
                None => return self.degraded(user, false),
            }
        } else {
            self.try_claim(interaction_id, None).await
        };
        match tried {
            Ok(Tried::Held(Held::Me, _)) => self.won(assignment, rank, None),
            Ok(Tried::Held(Held::By(holder), ttl))
                if rank == Some(0) && !self.claim_confirmed(interaction_id, ttl).await =>
            {
                let sweep = Sweep {
                    epoch,
                    is_primary,
                    holder,
                };
                self.sweep(interaction_id, received_ms, assignment, sweep)
                    .await
            }
            Ok(Tried::Held(Held::By(_), _)) => self.lost(),
            // Only a look finds a restart, and a look's restart returned above.
            Ok(Tried::Restarted(_)) | Err(_) => self.degraded(user, is_primary),
        }
    }

    /// A fallback's claim with its look for a Redis restart ([`redis_came_back_since`]) in
    /// the same round trip ([`CLAIMS_SCRIPT`]): `None` when Redis restarted or was
    /// away since `epoch` (or cannot be reached now), and the fallback declines.
    ///
    /// Before the first look there is no server to compare with: the look and the claim
    /// then go as two round trips, as the sweep's do.
    ///
    /// [`redis_came_back_since`]: Self::redis_came_back_since
    async fn claim_looking(
        &self,
        interaction_id: u64,
        epoch: u64,
    ) -> Option<Result<Tried, ClusterError>> {
        if self.inner.link_epoch.load(Ordering::Relaxed) != epoch {
            return None;
        }
        let Some(seen) = self.server_seen() else {
            if self.redis_came_back_since(epoch).await {
                return None;
            }
            return Some(self.try_claim(interaction_id, None).await);
        };
        match self.try_claim(interaction_id, Some(&seen)).await {
            Ok(Tried::Restarted(current)) => {
                // Noted at once, so that other claims in flight see `link_epoch` move.
                self.note_server(current);
                None
            }
            // An unreachable Redis counts as restarted, as in degraded mode.
            Err(_) => None,
            held => Some(held),
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
        match self.try_claim(interaction_id, None).await {
            Ok(Tried::Held(Held::Me, _)) => self.won(assignment, None, None),
            Ok(_) => self.lost(),
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
        match self.try_claim(interaction_id, None).await {
            Ok(Tried::Held(Held::Me, _)) => {
                tracing::info!(
                    interaction_id,
                    "took over an unconfirmed claim (its owner died before answering)"
                );
                self.won(assignment, Some(0), holder)
            }
            Ok(_) => self.lost(),
            Err(_) => self.degraded(assignment.user, is_primary),
        }
    }

    /// Whether the holder of a claim has confirmed it (its TTL is past the pending one), from
    /// `ttl` when the claim read it already, else from a `PTTL`. An unreadable claim counts as
    /// confirmed: no sweep without evidence of a lapse.
    async fn claim_confirmed(&self, interaction_id: u64, ttl: Option<i64>) -> bool {
        let pending = self.inner.cfg.claim.pending.as_millis() as i64;
        let ttl: Result<i64, _> = match ttl {
            Some(t) => Ok(t),
            None => {
                let key = keys::claim(&self.inner.cfg.cluster_name, interaction_id);
                self.inner
                    .redis
                    .run("claim ttl", CLAIM_BUDGET, |mut c| async move {
                        redis::cmd("PTTL").arg(&key).query_async(&mut c).await
                    })
                    .await
            }
        };
        // -2: no key (lapsed already), worth a sweep; a TTL within the pending life: not
        // confirmed yet.
        !matches!(ttl, Ok(t) if t == -2 || (0..=pending).contains(&t))
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
    ///
    /// With `look` (the server last seen), a try is [`CLAIMS_SCRIPT`] instead: it
    /// claims only on that same server, and reads the claim's TTL as well.
    async fn try_claim(
        &self,
        interaction_id: u64,
        look: Option<&ServerIdentity>,
    ) -> Result<Tried, ClusterError> {
        let mut result = self.claim_once(interaction_id, look).await;
        if result.as_ref().is_err_and(ClusterError::is_timeout) {
            tracing::debug!(
                interaction_id,
                "claim timed out; asking Redis again who holds it"
            );
            result = self.claim_once(interaction_id, look).await;
        }
        self.observe(&result);
        result
    }

    /// The batcher of this handle's fallback claims, started on first use.
    fn claim_batcher(&self) -> &ClaimBatcher {
        self.inner.claim_batcher.get_or_init(|| {
            let cfg = &self.inner.cfg;
            ClaimBatcher::spawn(
                self.inner.redis.clone(),
                keys::generation(&cfg.cluster_name),
                cfg.instance_id.to_string(),
                cfg.claim.pending.as_millis() as u64,
            )
        })
    }

    async fn claim_once(
        &self,
        interaction_id: u64,
        look: Option<&ServerIdentity>,
    ) -> Result<Tried, ClusterError> {
        let cfg = &self.inner.cfg;
        let key = keys::claim(&cfg.cluster_name, interaction_id);
        let pending_ms = cfg.claim.pending.as_millis() as u64;
        let me = cfg.instance_id.to_string();
        let held = |holder: Option<String>| {
            if holder.as_deref() == Some(me.as_str()) {
                Held::Me
            } else {
                // `None`: the key vanished between the two commands (it expired), or holds
                // something that is not an instance id.
                Held::By(holder.and_then(|h| h.parse().ok()))
            }
        };
        let Some(seen) = look else {
            return self
                .inner
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
                        Ok(holder)
                    }
                })
                .await
                .map(|holder| Tried::Held(held(holder), None));
        };
        // Batched with the other fallbacks' claims of the moment: one round trip for each.
        crate::round_trips::record("claim");
        let found = self.claim_batcher().claim(key, seen.parts()).await?;
        let some = |s: String| (!s.is_empty()).then_some(s);
        Ok(match found {
            Found::Held { holder, ttl } => Tried::Held(held(some(holder)), ttl.parse().ok()),
            Found::Restarted { generation, run_id } => {
                Tried::Restarted(ServerIdentity::new(some(generation), some(run_id)))
            }
        })
    }
}

/// What one claim try found.
enum Tried {
    /// Who holds the claim now, and its TTL in ms when the try read it.
    Held(Held, Option<i64>),
    /// A look found Redis restarted since `look` (its identity now): nothing was claimed.
    Restarted(ServerIdentity),
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

//! The job types: what a job is ([`Job`]: an envelope of who asked and where to answer, and
//! the typed [`JobArgs`]; [`UnreadableJob`] when the arguments do not decode), how a handler
//! finished it ([`Outcome`]), the handler the bot implements ([`JobHandler`]), and the
//! counters for `/metrics` ([`JobStats`]). The JSON of a job on a stream is `wire`'s.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use keyshard_routing::{InstanceId, Reason};
pub use keyshard_types::{JobArgs, JobKind, ProviderKind};
use serde::{Deserialize, Serialize};

use super::JobContext;

/// One unit of deferred work: everything needed to finish an acknowledged interaction on any
/// instance. `Debug` hides the interaction token.
///
/// `A` is what the job carries besides its envelope: its decoded [`JobArgs`] (the default,
/// and every job a handler runs), or [`UnreadableArgs`] for an entry whose arguments did not
/// decode, which still has everything needed to tell the user ([`UnreadableJob`]). The job's
/// kind is its arguments' ([`Job::kind`]), so the two cannot disagree.
#[derive(Clone)]
pub struct Job<A = JobArgs> {
    /// The interaction id; also the job's id.
    pub id: u64,
    /// The interaction token (a secret: it lets anyone edit the reply for 15 minutes).
    pub token: String,
    pub application_id: u64,
    pub user_id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The command's arguments.
    pub args: A,
    /// When the interaction was created (Unix ms); its token dies 15 minutes later.
    pub created_ms: u64,
    /// The largest attachment the interaction accepts, in bytes.
    pub attachment_limit: u64,
    /// The instance that acknowledged the interaction.
    pub origin: InstanceId,
    /// Instances whose keys could not serve this job (auth, quota, balance).
    pub tried: Vec<InstanceId>,
    /// How many times the job has moved between instances.
    pub attempt: u32,
    /// How the interaction was claimed and acknowledged; `None` in jobs queued by a version
    /// that did not say.
    pub claim: Option<ClaimInfo>,
}

/// How the instance that acknowledged a job's interaction came to answer it, for the usage
/// ledger's row, which the run that finishes the job writes (maybe on another instance).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimInfo {
    /// The routing decision of the claim.
    pub reason: Reason,
    /// Redis was unreachable: the static rule (the primary answers) decided.
    #[serde(default)]
    pub degraded: bool,
    /// When the acknowledgement (the deferred reply) went out, Unix ms.
    pub acked_ms: u64,
    /// Queued by the fallback that swept the lapsed claim of an instance that acknowledged
    /// the interaction and died (or stalled) before it queued the job. Left out of the JSON
    /// when `false`, so other jobs' JSON is as before.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

/// How a job reached the stream its run took it from: moved there from a dead instance's
/// stream by a rescuer, or taken from a busy peer's queue by an idle instance (or both, over
/// its life). Carried in stream entry fields beside the job's JSON, which moves unchanged.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Arrival {
    pub rescued: bool,
    pub stolen: bool,
}

/// A job whose envelope (id, token, user, …) reads but whose arguments do not: a stored
/// value this version does not know (`"ratio": "7:3"`), or a broken writer. It is never run;
/// the handler's [`JobHandler::unreadable`] tells the user and the entry is acknowledged.
pub type UnreadableJob = Job<UnreadableArgs>;

/// Why a job's arguments did not decode.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unreadable {kind} job arguments: {reason}")]
pub struct UnreadableArgs {
    /// The kind the envelope names.
    pub kind: JobKind,
    /// What was wrong, naming the field and the value (`` `ratio`: unknown value "7:3"; … ``).
    pub reason: String,
}

/// What a [`Job`] carries besides its envelope, and so its kind.
pub trait Payload {
    fn kind(&self) -> JobKind;
}

impl Payload for JobArgs {
    fn kind(&self) -> JobKind {
        JobArgs::kind(self)
    }
}

impl Payload for UnreadableArgs {
    fn kind(&self) -> JobKind {
        self.kind
    }
}

impl<A: Payload> Job<A> {
    /// What kind of work the job is: its stream, its worker pool.
    pub fn kind(&self) -> JobKind {
        self.args.kind()
    }
}

impl<A: Payload> fmt::Debug for Job<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("kind", &self.kind())
            .field("token", &"***")
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("origin", &self.origin)
            .field("tried", &self.tried)
            .field("attempt", &self.attempt)
            .field("claim", &self.claim)
            .finish_non_exhaustive()
    }
}

/// How a handler finished a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered (successfully or with an error message the user has seen).
    Finished,
    /// This instance's key cannot serve the job; give it to a peer (check
    /// [`JobContext::peer_for`] first: when no peer is left, the handler tells the user).
    MoveToPeer { reason: String },
}

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Something the handler reserved for the next job before the pick, opaque here (the bot's
/// reserved provider send); the job's handler takes it back with [`JobContext::take_slot`].
pub type Slot = Box<dyn std::any::Any + Send + Sync>;

/// What [`JobHandler::ready`] reserved for the next job of its kind.
#[derive(Default)]
pub struct Ready {
    /// The job must be servable by this provider: a job whose user chose another provider is
    /// not picked with this reservation (`None`: any job of the kind).
    pub provider: Option<ProviderKind>,
    /// Handed to the picked job's handler ([`JobContext::take_slot`]); dropped unused when
    /// no job is picked with it.
    pub slot: Option<Slot>,
}

impl fmt::Debug for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ready")
            .field("provider", &self.provider)
            .field("slot", &self.slot.is_some())
            .finish()
    }
}

/// The work itself: provider calls and delivery, implemented by the bot.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome>;

    /// Waits until a job of `kind` picked now could be sent to its provider at once, and
    /// reserves that send. The reader calls it with a worker slot free and *then* takes the
    /// fair pick, so jobs wait in the stream, where the pick orders them by service in hand,
    /// and not inside the providers' pacing, first come first served, where nothing can
    /// reorder them. The default is ready at once with nothing reserved.
    fn ready(&self, kind: JobKind) -> BoxFuture<Ready> {
        let _ = kind;
        Box::pin(async { Ready::default() })
    }

    /// A job whose arguments do not decode ([`UnreadableJob`]). It cannot run, but its
    /// envelope says whom to tell: the bot answers the interaction with an error message.
    /// The entry is acknowledged once this returns, and the job counts as finished. This
    /// default only logs, so a handler that cannot answer users still drops such a job.
    fn unreadable(&self, job: UnreadableJob, ctx: JobContext) -> BoxFuture<()> {
        let _ = ctx;
        tracing::error!(job = job.id, "dropping a job: {}", job.args);
        Box::pin(async {})
    }
}

/// Counters of the job mechanism, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct JobStats {
    pub finished: u64,
    pub rescued: u64,
    pub moved: u64,
    /// Waiting jobs taken from busier peers.
    pub stolen: u64,
    /// Jobs queued again from this process's copies after Redis restarted empty.
    pub requeued: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub service_rate: f64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshard_types::VideoArgs;

    #[test]
    fn debug_hides_the_token() {
        let job = Job {
            id: 1,
            token: "aW50ZXJhY3Rpb24".into(),
            application_id: 2,
            user_id: 3,
            channel_id: 4,
            guild_id: None,
            args: JobArgs::Video(VideoArgs { prompt: "p".into() }),
            created_ms: 0,
            attachment_limit: 0,
            origin: 1,
            tried: vec![],
            attempt: 0,
            claim: None,
        };
        let text = format!("{job:?}");
        assert!(!text.contains("aW50ZXJhY3Rpb24"), "{text}");
        assert!(text.contains("***") && text.contains("Video"), "{text}");
    }
}

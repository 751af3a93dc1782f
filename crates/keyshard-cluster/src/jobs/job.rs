//! The job types: what a job is ([`Job`], [`JobKind`]), how a handler finished it
//! ([`Outcome`]), the handler the bot implements ([`JobHandler`]), and the counters for
//! `/metrics` ([`JobStats`]).

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use keyshard_routing::InstanceId;
use serde::{Deserialize, Serialize};

use super::JobContext;

/// What kind of work a job is; each kind has its own stream and worker pool so a slow video
/// never holds up a chat answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    Chat,
    Image,
    Video,
}

impl JobKind {
    pub const ALL: [JobKind; 3] = [JobKind::Chat, JobKind::Image, JobKind::Video];

    /// The kind's name: in its stream's key, in the heartbeat's per-kind figures, and the
    /// name routing's placement functions know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chat => "chat",
            JobKind::Image => "image",
            JobKind::Video => "video",
        }
    }
}

/// One unit of deferred work: everything needed to finish an acknowledged interaction on any
/// instance. `Debug` hides the interaction token.
#[derive(Clone, Serialize, Deserialize)]
pub struct Job {
    /// The interaction id; also the job's id.
    pub id: u64,
    pub kind: JobKind,
    /// The interaction token (a secret: it lets anyone edit the reply for 15 minutes).
    pub token: String,
    pub application_id: u64,
    pub user_id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The command's arguments, as the command module defines them.
    pub args: serde_json::Value,
    /// When the interaction was created (Unix ms); its token dies 15 minutes later.
    pub created_ms: u64,
    /// The largest attachment the interaction accepts, in bytes.
    pub attachment_limit: u64,
    /// The instance that acknowledged the interaction.
    pub origin: InstanceId,
    /// Instances whose keys could not serve this job (auth, quota, balance).
    #[serde(default)]
    pub tried: Vec<InstanceId>,
    /// How many times the job has moved between instances.
    #[serde(default)]
    pub attempt: u32,
}

impl fmt::Debug for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Job")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("token", &"***")
            .field("user_id", &self.user_id)
            .field("channel_id", &self.channel_id)
            .field("origin", &self.origin)
            .field("tried", &self.tried)
            .field("attempt", &self.attempt)
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

/// The work itself: provider calls and delivery, implemented by the bot.
pub trait JobHandler: Send + Sync + 'static {
    fn handle(&self, job: Job, ctx: JobContext) -> BoxFuture<Outcome>;
}

/// Counters of the job mechanism, for `/metrics`.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct JobStats {
    pub finished: u64,
    pub rescued: u64,
    pub moved: u64,
    /// Waiting jobs taken from busier peers.
    pub stolen: u64,
    pub queue_depth: u64,
    pub in_flight: u64,
    pub service_rate: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_token() {
        let job = Job {
            id: 1,
            kind: JobKind::Chat,
            token: "aW50ZXJhY3Rpb24".into(),
            application_id: 2,
            user_id: 3,
            channel_id: 4,
            guild_id: None,
            args: serde_json::Value::Null,
            created_ms: 0,
            attachment_limit: 0,
            origin: 1,
            tried: vec![],
            attempt: 0,
        };
        let text = format!("{job:?}");
        assert!(!text.contains("aW50ZXJhY3Rpb24"), "{text}");
        assert!(text.contains("***"), "{text}");
    }

    #[test]
    fn a_job_without_tried_or_attempt_parses() {
        // A job queued before `tried`/`attempt` existed, still in a stream after an upgrade.
        let raw = r#"{"id":1,"kind":"image","token":"t","application_id":2,"user_id":3,
            "channel_id":4,"guild_id":null,"args":{},"created_ms":5,"attachment_limit":6,
            "origin":2}"#;
        let job: Job = serde_json::from_str(raw).unwrap();
        assert_eq!(
            (job.kind, job.tried.len(), job.attempt),
            (JobKind::Image, 0, 0)
        );
    }
}

//! The JSON of a job on a stream (the entry's `job` field), and its decoding.
//!
//! The format is the one every version has written, so instances of two versions read each
//! other's jobs during a rolling restart:
//!
//! ```json
//! {"id":…,"kind":"image","token":"…","application_id":…,"user_id":…,"channel_id":…,
//!  "guild_id":…|null,"args":{"model":"minimax"|null,"prompt":"…","ratio":"16:9"|null},
//!  "created_ms":…,"attachment_limit":…,"origin":…,"tried":[…],"attempt":…,
//!  "claim":{"reason":"primary","degraded":false,"acked_ms":…}}
//! ```
//!
//! `args` has no tag of its own: it is decoded as the struct `kind` names, once, when the
//! entry is read ([`decode`]). An entry whose envelope reads but whose arguments do not is
//! not dropped and not given defaults: it becomes an [`UnreadableJob`], which the handler
//! answers with an error. `tried` and `attempt` may be missing (jobs queued before they
//! existed); unknown fields are ignored. `claim` (for the usage ledger) is written only when
//! known, and older versions ignore it, so a job without it is the same bytes as before.

use keyshard_routing::InstanceId;
use serde::de::Deserializer;
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};

use super::job::{ClaimInfo, Job, JobArgs, JobKind, UnreadableArgs, UnreadableJob};

/// A job as written: the envelope, with the kind beside untagged arguments. Field order is
/// the JSON's.
#[derive(Serialize)]
struct Out<'a> {
    id: u64,
    kind: JobKind,
    token: &'a str,
    application_id: u64,
    user_id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    args: &'a JobArgs,
    created_ms: u64,
    attachment_limit: u64,
    origin: InstanceId,
    tried: &'a [InstanceId],
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    claim: Option<ClaimInfo>,
}

/// A job as read, its arguments still raw: [`decode`] reads them according to `kind`.
#[derive(Deserialize)]
struct In {
    id: u64,
    kind: JobKind,
    token: String,
    application_id: u64,
    user_id: u64,
    channel_id: u64,
    guild_id: Option<u64>,
    args: serde_json::Value,
    created_ms: u64,
    attachment_limit: u64,
    origin: InstanceId,
    #[serde(default)]
    tried: Vec<InstanceId>,
    #[serde(default)]
    attempt: u32,
    #[serde(default)]
    claim: Option<ClaimInfo>,
}

impl In {
    /// The job with its arguments decoded, or, when they do not decode, the job that says so.
    fn decode(self) -> Result<Job, Box<UnreadableJob>> {
        let In {
            id,
            kind,
            token,
            application_id,
            user_id,
            channel_id,
            guild_id,
            args,
            created_ms,
            attachment_limit,
            origin,
            tried,
            attempt,
            claim,
        } = self;
        let args = JobArgs::deserialize_for(kind, args).map_err(|e| UnreadableArgs {
            kind,
            reason: e.to_string(),
        });
        let job = Job {
            id,
            token,
            application_id,
            user_id,
            channel_id,
            guild_id,
            args: (),
            created_ms,
            attachment_limit,
            origin,
            tried,
            attempt,
            claim,
        };
        match args {
            Ok(args) => Ok(job.with_args(args)),
            Err(unreadable) => Err(Box::new(job.with_args(unreadable))),
        }
    }
}

impl Job<()> {
    fn with_args<A>(self, args: A) -> Job<A> {
        Job {
            id: self.id,
            token: self.token,
            application_id: self.application_id,
            user_id: self.user_id,
            channel_id: self.channel_id,
            guild_id: self.guild_id,
            args,
            created_ms: self.created_ms,
            attachment_limit: self.attachment_limit,
            origin: self.origin,
            tried: self.tried,
            attempt: self.attempt,
            claim: self.claim,
        }
    }
}

/// Why a stream entry's `job` field is not a job that can run.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a job's JSON at all: nothing says whom to answer. Its `Display` is serde's
    /// message, which may quote a value of the entry: log [`DecodeError::summary`] instead.
    #[error("not a job: {0}")]
    NotAJob(serde_json::Error),
    /// The envelope reads, the arguments do not.
    #[error("{}", .0.args)]
    Args(Box<UnreadableJob>),
}

impl DecodeError {
    /// A description safe for a log line: a malformed entry's serde message could quote the
    /// interaction token (say, a token where a number belongs), so only its position is kept.
    pub fn summary(&self) -> String {
        match self {
            DecodeError::NotAJob(e) => format!(
                "not a job ({:?} error at line {} column {})",
                e.classify(),
                e.line(),
                e.column()
            ),
            DecodeError::Args(job) => job.args.to_string(),
        }
    }
}

/// Reads a job from the JSON of a stream entry, decoding its arguments according to its kind.
pub fn decode(json: &[u8]) -> Result<Job, DecodeError> {
    let raw: In = serde_json::from_slice(json).map_err(DecodeError::NotAJob)?;
    raw.decode().map_err(DecodeError::Args)
}

/// The JSON of the module docs.
impl Serialize for Job {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Out {
            id: self.id,
            kind: self.kind(),
            token: &self.token,
            application_id: self.application_id,
            user_id: self.user_id,
            channel_id: self.channel_id,
            guild_id: self.guild_id,
            args: &self.args,
            created_ms: self.created_ms,
            attachment_limit: self.attachment_limit,
            origin: self.origin,
            tried: &self.tried,
            attempt: self.attempt,
            claim: self.claim,
        }
        .serialize(s)
    }
}

/// The JSON of the module docs; arguments that do not decode are an error (use [`decode`] to
/// keep the envelope of such a job).
impl<'de> Deserialize<'de> for Job {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        In::deserialize(d)?
            .decode()
            .map_err(|j| serde::de::Error::custom(j.args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keyshard_types::{AspectRatio, ChatArgs, ImageArgs, ProviderKind, VideoArgs};

    /// Jobs as today's instances write them, captured from the code before `args` was typed
    /// (its `serde_json::Value` sorted the argument keys, hence `model` before `prompt`).
    const WRITTEN: [&str; 4] = [
        r#"{"id":1234567890123456789,"kind":"image","token":"aW50ZXJhY3Rpb24","application_id":11,"user_id":22,"channel_id":33,"guild_id":44,"args":{"model":"minimax","prompt":"고양이 \"quoted\"","ratio":"16:9"},"created_ms":1700000000000,"attachment_limit":8388608,"origin":2,"tried":[1],"attempt":1}"#,
        r#"{"id":1234567890123456789,"kind":"image","token":"aW50ZXJhY3Rpb24","application_id":11,"user_id":22,"channel_id":33,"guild_id":44,"args":{"model":null,"prompt":"dog","ratio":null},"created_ms":1700000000000,"attachment_limit":8388608,"origin":2,"tried":[1],"attempt":1}"#,
        r#"{"id":1234567890123456789,"kind":"chat","token":"aW50ZXJhY3Rpb24","application_id":11,"user_id":22,"channel_id":33,"guild_id":44,"args":{"prompt":"hi","reset":true},"created_ms":1700000000000,"attachment_limit":8388608,"origin":2,"tried":[1],"attempt":1}"#,
        r#"{"id":1234567890123456789,"kind":"video","token":"aW50ZXJhY3Rpb24","application_id":11,"user_id":22,"channel_id":33,"guild_id":44,"args":{"prompt":"sea"},"created_ms":1700000000000,"attachment_limit":8388608,"origin":2,"tried":[1],"attempt":1}"#,
    ];

    fn job(args: JobArgs) -> Job {
        Job {
            id: 1234567890123456789,
            token: "aW50ZXJhY3Rpb24".into(),
            application_id: 11,
            user_id: 22,
            channel_id: 33,
            guild_id: Some(44),
            args,
            created_ms: 1700000000000,
            attachment_limit: 8388608,
            origin: 2,
            tried: vec![1],
            attempt: 1,
            claim: None,
        }
    }

    #[test]
    fn todays_jobs_parse_typed_and_serialize_to_the_same_bytes() {
        let typed = [
            JobArgs::Image(ImageArgs {
                provider: Some(ProviderKind::MiniMax),
                prompt: "고양이 \"quoted\"".into(),
                ratio: Some(AspectRatio::Landscape),
            }),
            JobArgs::Image(ImageArgs {
                provider: None,
                prompt: "dog".into(),
                ratio: None,
            }),
            JobArgs::Chat(ChatArgs {
                prompt: "hi".into(),
                reset: true,
            }),
            JobArgs::Video(VideoArgs {
                prompt: "sea".into(),
            }),
        ];
        for (wire, args) in WRITTEN.iter().zip(typed) {
            let parsed = decode(wire.as_bytes()).unwrap();
            assert_eq!(parsed.args, args);
            assert_eq!(
                (parsed.id, parsed.guild_id, &parsed.tried, parsed.attempt),
                (1234567890123456789, Some(44), &vec![1], 1)
            );
            assert_eq!(serde_json::to_string(&parsed).unwrap(), *wire);
            assert_eq!(serde_json::to_string(&job(args)).unwrap(), *wire);
            // The serde impl reads the same.
            let via_serde: Job = serde_json::from_str(wire).unwrap();
            assert_eq!(via_serde.args, parsed.args);
        }
    }

    #[test]
    fn the_claim_round_trips_and_is_left_out_when_unknown() {
        use keyshard_routing::Reason;
        let mut j = job(JobArgs::Video(VideoArgs {
            prompt: "sea".into(),
        }));
        assert!(!serde_json::to_string(&j).unwrap().contains("claim"));
        j.claim = Some(ClaimInfo {
            reason: Reason::PrimaryDown,
            degraded: false,
            acked_ms: 1_700_000_000_123,
            recovered: false,
        });
        let wire = serde_json::to_string(&j).unwrap();
        assert!(
            wire.ends_with(
                r#""attempt":1,"claim":{"reason":"primary_down","degraded":false,"acked_ms":1700000000123}}"#
            ),
            "{wire}"
        );
        assert_eq!(decode(wire.as_bytes()).unwrap().claim, j.claim);
        // A job queued by a sweeping fallback says so; the flag round trips.
        j.claim.as_mut().unwrap().recovered = true;
        let wire = serde_json::to_string(&j).unwrap();
        assert!(
            wire.contains(r#""acked_ms":1700000000123,"recovered":true}"#),
            "{wire}"
        );
        assert_eq!(decode(wire.as_bytes()).unwrap().claim, j.claim);
    }

    #[test]
    fn a_job_without_tried_or_attempt_parses() {
        // A job queued before `tried`/`attempt` existed, still in a stream after an upgrade.
        let raw = r#"{"id":1,"kind":"image","token":"t","application_id":2,"user_id":3,
            "channel_id":4,"guild_id":null,"args":{"prompt":"p","model":null,"ratio":null},
            "created_ms":5,"attachment_limit":6,"origin":2}"#;
        let job = decode(raw.as_bytes()).unwrap();
        assert_eq!(
            (job.kind(), job.tried.len(), job.attempt),
            (JobKind::Image, 0, 0)
        );
    }

    #[test]
    fn bad_arguments_keep_the_envelope_and_say_what_was_wrong() {
        let cases = [
            (
                WRITTEN[0].replace("16:9", "7:3"),
                r#"unreadable image job arguments: `ratio`: unknown value "7:3""#,
            ),
            (
                WRITTEN[0].replace(r#""model":"minimax""#, r#""model":"midjourney""#),
                r#"unreadable image job arguments: `model`: unknown value "midjourney""#,
            ),
            (
                WRITTEN[3].replace(r#"{"prompt":"sea"}"#, "{}"),
                "unreadable video job arguments: missing field `prompt`",
            ),
            (
                WRITTEN[1].replace(r#"{"model":null,"prompt":"dog","ratio":null}"#, "null"),
                "unreadable image job arguments: invalid type: null, expected struct ImageArgs",
            ),
        ];
        for (wire, expected) in cases {
            let Err(DecodeError::Args(job)) = decode(wire.as_bytes()) else {
                panic!("{wire} decoded");
            };
            assert!(job.args.to_string().starts_with(expected), "{}", job.args);
            // Everything needed to tell the user is there.
            assert_eq!(
                (job.id, job.token.as_str(), job.user_id, job.kind()),
                (1234567890123456789, "aW50ZXJhY3Rpb24", 22, job.args.kind)
            );
            let serde_err = serde_json::from_str::<Job>(&wire).unwrap_err().to_string();
            assert!(serde_err.contains(&job.args.reason), "{serde_err}");
        }
    }

    #[test]
    fn an_entry_that_is_not_a_job_is_summarised_without_its_values() {
        let wire = WRITTEN[2].replace("\"user_id\":22", "\"user_id\":\"aW50ZXJhY3Rpb24\"");
        let err = decode(wire.as_bytes()).unwrap_err();
        assert!(matches!(err, DecodeError::NotAJob(_)));
        assert!(
            err.to_string().contains("aW50ZXJhY3Rpb24"),
            "serde quotes it: {err}"
        );
        let summary = err.summary();
        assert!(!summary.contains("aW50ZXJhY3Rpb24"), "{summary}");
        assert!(summary.contains("line 1"), "{summary}");
        assert!(matches!(decode(b"{}"), Err(DecodeError::NotAJob(_))));
    }
}

//! What a job is: its [`JobKind`] and its arguments, [`JobArgs`], one variant per kind.
//!
//! On the wire (the `job` field of a Redis stream entry, written by `keyshard-cluster`) the
//! kind and the arguments are two fields, `"kind": "image"` and `"args": {…}`, and the
//! arguments carry no tag of their own: [`JobArgs`] serializes as its variant's struct, and
//! [`JobArgs::deserialize_for`] decodes `args` as the struct the kind names. That is the JSON
//! instances have always written, so instances of both versions read each other's jobs
//! across a rolling restart.
//!
//! A value that does not decode is an error naming the field and the value (`` `ratio`:
//! unknown value "7:3"; expected one of … ``), never a default: a job whose stored provider
//! or ratio cannot be read must not quietly draw a square image with the default providers.
//! Unknown fields are ignored, so a newer version may add one without breaking older readers.

use std::fmt;

use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize, Serializer};

use crate::{AspectRatio, Choices, ProviderKind};

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

    /// The kind's name: in job JSON, in its stream's key, in the heartbeat's per-kind
    /// figures, and the name routing's placement functions know it by.
    pub fn as_str(self) -> &'static str {
        match self {
            JobKind::Chat => "chat",
            JobKind::Image => "image",
            JobKind::Video => "video",
        }
    }
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's arguments, decoded once when the job is read, according to its kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobArgs {
    Chat(ChatArgs),
    Image(ImageArgs),
    Video(VideoArgs),
}

impl JobArgs {
    /// The kind these arguments belong to: a job's kind is its arguments' kind, so the two
    /// cannot disagree.
    pub fn kind(&self) -> JobKind {
        match self {
            JobArgs::Chat(_) => JobKind::Chat,
            JobArgs::Image(_) => JobKind::Image,
            JobArgs::Video(_) => JobKind::Video,
        }
    }

    /// Decodes the `args` of a job of `kind`. There is deliberately no `Deserialize` for
    /// `JobArgs`: the arguments alone do not say which struct they are.
    pub fn deserialize_for<'de, D: Deserializer<'de>>(
        kind: JobKind,
        args: D,
    ) -> Result<JobArgs, D::Error> {
        match kind {
            JobKind::Chat => ChatArgs::deserialize(args).map(JobArgs::Chat),
            JobKind::Image => ImageArgs::deserialize(args).map(JobArgs::Image),
            JobKind::Video => VideoArgs::deserialize(args).map(JobArgs::Video),
        }
    }
}

/// The variant's struct alone, without a tag: the kind travels beside it (module docs).
impl Serialize for JobArgs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JobArgs::Chat(a) => a.serialize(s),
            JobArgs::Image(a) => a.serialize(s),
            JobArgs::Video(a) => a.serialize(s),
        }
    }
}

impl From<ChatArgs> for JobArgs {
    fn from(a: ChatArgs) -> Self {
        JobArgs::Chat(a)
    }
}

impl From<ImageArgs> for JobArgs {
    fn from(a: ImageArgs) -> Self {
        JobArgs::Image(a)
    }
}

impl From<VideoArgs> for JobArgs {
    fn from(a: VideoArgs) -> Self {
        JobArgs::Video(a)
    }
}

/// `/채팅` job arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatArgs {
    #[serde(deserialize_with = "field::prompt")]
    pub prompt: String,
    /// Forget the conversation so far before answering.
    #[serde(default, deserialize_with = "field::reset")]
    pub reset: bool,
}

/// `/이미지` job arguments.
///
/// The fields are declared in the order today's instances write them, which is alphabetical
/// (they used to pass through a `serde_json::Value`, whose map sorts its keys), so a job
/// serializes to the very bytes an instance of either version writes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageArgs {
    /// The provider the user picked; `None` spreads the job over this instance's image keys.
    /// Called `model` on the wire, its name since the first version (the option is 모델).
    #[serde(rename = "model", default, deserialize_with = "field::model")]
    pub provider: Option<ProviderKind>,
    #[serde(deserialize_with = "field::prompt")]
    pub prompt: String,
    /// `None`: the user did not pick one, and the image is square.
    #[serde(default, deserialize_with = "field::ratio")]
    pub ratio: Option<AspectRatio>,
}

/// `/비디오` job arguments.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoArgs {
    #[serde(deserialize_with = "field::prompt")]
    pub prompt: String,
}

/// Field decoders whose errors name the field: serde's own say what was wrong ("invalid
/// type: integer `5`, expected a string") but not where, and `serde_json::Value`, which the
/// cluster decodes `args` from, keeps no path.
mod field {
    use super::*;

    fn named<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
        d: D,
        name: &str,
    ) -> Result<T, D::Error> {
        T::deserialize(d).map_err(|e| de::Error::custom(format_args!("`{name}`: {e}")))
    }

    /// An optional choice: `null` (or a missing field, with `#[serde(default)]`) is `None`;
    /// a string that is not one of `T`'s choices is an error naming it and the choices.
    fn choice<'de, T: Choices, D: Deserializer<'de>>(
        d: D,
        name: &str,
    ) -> Result<Option<T>, D::Error> {
        let Some(s) = named::<Option<String>, D>(d, name)? else {
            return Ok(None);
        };
        T::from_choice(&s).map(Some).ok_or_else(|| {
            let expected: Vec<String> = T::CHOICES
                .iter()
                .map(|c| format!("{:?}", c.as_str()))
                .collect();
            de::Error::custom(format_args!(
                "`{name}`: unknown value {s:?}; expected one of {}",
                expected.join(", ")
            ))
        })
    }

    pub(super) fn prompt<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        named(d, "prompt")
    }

    pub(super) fn reset<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        named(d, "reset")
    }

    pub(super) fn model<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ProviderKind>, D::Error> {
        choice(d, "model")
    }

    pub(super) fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<Option<AspectRatio>, D::Error> {
        choice(d, "ratio")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decode(kind: JobKind, args: serde_json::Value) -> Result<JobArgs, String> {
        JobArgs::deserialize_for(kind, args).map_err(|e| e.to_string())
    }

    #[test]
    fn args_decode_by_kind_and_serialize_untagged() {
        let cases = [
            (
                JobKind::Image,
                r#"{"model":"minimax","prompt":"고양이","ratio":"16:9"}"#,
                JobArgs::Image(ImageArgs {
                    provider: Some(ProviderKind::MiniMax),
                    prompt: "고양이".into(),
                    ratio: Some(AspectRatio::Landscape),
                }),
            ),
            (
                JobKind::Image,
                r#"{"model":null,"prompt":"dog","ratio":null}"#,
                JobArgs::Image(ImageArgs {
                    provider: None,
                    prompt: "dog".into(),
                    ratio: None,
                }),
            ),
            (
                JobKind::Chat,
                r#"{"prompt":"hi","reset":true}"#,
                JobArgs::Chat(ChatArgs {
                    prompt: "hi".into(),
                    reset: true,
                }),
            ),
            (
                JobKind::Video,
                r#"{"prompt":"sea"}"#,
                JobArgs::Video(VideoArgs {
                    prompt: "sea".into(),
                }),
            ),
        ];
        for (kind, wire, typed) in cases {
            let value: serde_json::Value = serde_json::from_str(wire).unwrap();
            let args = decode(kind, value).unwrap();
            assert_eq!(args, typed);
            assert_eq!(args.kind(), kind);
            assert_eq!(serde_json::to_string(&args).unwrap(), wire);
        }
    }

    #[test]
    fn optional_fields_may_be_missing_and_unknown_fields_are_ignored() {
        assert_eq!(
            decode(JobKind::Image, json!({"prompt": "p", "future": 1})).unwrap(),
            JobArgs::Image(ImageArgs {
                provider: None,
                prompt: "p".into(),
                ratio: None,
            })
        );
        assert_eq!(
            decode(JobKind::Chat, json!({"prompt": "p"})).unwrap(),
            JobArgs::Chat(ChatArgs {
                prompt: "p".into(),
                reset: false,
            })
        );
    }

    #[test]
    fn a_bad_value_is_an_error_naming_the_field_and_the_value() {
        let cases = [
            (
                JobKind::Image,
                json!({"prompt": "p", "model": null, "ratio": "7:3"}),
                r#"`ratio`: unknown value "7:3"; expected one of "1:1", "16:9", "9:16", "3:2", "2:3""#,
            ),
            (
                JobKind::Image,
                json!({"prompt": "p", "model": "midjourney", "ratio": null}),
                r#"`model`: unknown value "midjourney"; expected one of "minimax", "stability", "openai""#,
            ),
            (
                JobKind::Image,
                json!({"prompt": "p", "model": "MiniMax"}),
                r#"`model`: unknown value "MiniMax""#,
            ),
            (
                JobKind::Image,
                json!({"prompt": "p", "ratio": 16}),
                "`ratio`: invalid type: integer `16`, expected a string",
            ),
            (
                JobKind::Chat,
                json!({"prompt": 5}),
                "`prompt`: invalid type: integer `5`, expected a string",
            ),
            (
                JobKind::Chat,
                json!({"prompt": "p", "reset": "yes"}),
                "`reset`: invalid type: string \"yes\", expected a boolean",
            ),
            (JobKind::Video, json!({}), "missing field `prompt`"),
            (JobKind::Chat, json!("hi"), "invalid type: string \"hi\""),
        ];
        for (kind, args, expected) in cases {
            let err = decode(kind, args.clone()).unwrap_err();
            assert!(err.contains(expected), "{kind} {args}: {err}");
        }
    }

    #[test]
    fn kinds_are_named_as_on_the_wire() {
        for kind in JobKind::ALL {
            assert_eq!(serde_json::to_string(&kind).unwrap(), format!("\"{kind}\""));
        }
    }
}

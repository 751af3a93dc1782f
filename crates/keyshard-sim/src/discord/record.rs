//! What the fake Discord remembers about each interaction: every callback attempt and every
//! message, with the instance that made it and the time since the dispatch.
//!
//! The report is computed from these records alone, so the rules that turn raw calls into
//! "acked", "completed" or "duplicate" live here, next to the data.

use std::time::{Duration, Instant};

use serde::Serialize;

/// Interaction callback type 4: reply with a message at once.
pub const CALLBACK_MESSAGE: u8 = 4;
/// Interaction callback type 5: deferred reply ("thinking…"), edited later.
pub const CALLBACK_DEFERRED: u8 = 5;

/// The bot's user-facing error prefix (ARCHITECTURE.md): such a final answer counts as failed.
pub const ERROR_PREFIX: &str = "⚠️";

/// One file part of a multipart request (`files[n]`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FileRecord {
    /// The multipart field name, e.g. `files[0]`.
    pub field: String,
    pub filename: String,
    pub size: usize,
    pub content_type: Option<String>,
}

/// One `POST /interactions/{id}/{token}/callback`, whatever the fake answered.
#[derive(Clone, Debug, Serialize)]
pub struct CallbackAttempt {
    /// The instance whose `DISCORD_API_BASE` the call came through (0 for the bare `/api/v10`).
    pub instance: u32,
    /// Milliseconds from the dispatch of the interaction to the arrival of the call.
    pub after_ms: f64,
    /// The HTTP status the fake returned (204, 400 for 40060, 404 for 10062, …).
    pub status: u16,
    /// The Discord error code in the answer, when the status is not 2xx.
    pub error_code: Option<u32>,
    /// The callback `type` (4 message, 5 deferred, …); 0 when the body had none.
    pub kind: u8,
    pub content: Option<String>,
    pub embeds: Vec<serde_json::Value>,
    pub files: Vec<FileRecord>,
    /// Whether the answer was meant to be visible only to the caller (flag 64).
    pub ephemeral: bool,
}

impl CallbackAttempt {
    /// Whether Discord accepted this callback (the one and only acknowledgement).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Which REST call produced a [`MessageRecord`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// `POST /webhooks/{app}/{token}`.
    Followup,
    /// `PATCH /webhooks/{app}/{token}/messages/@original`.
    EditOriginal,
    /// `PATCH /webhooks/{app}/{token}/messages/{id}` for a followup.
    EditFollowup,
    /// `POST /channels/{id}/messages`, attributed to an interaction (see `rest.rs`).
    Channel,
}

/// One message written on behalf of an interaction.
#[derive(Clone, Debug, Serialize)]
pub struct MessageRecord {
    pub instance: u32,
    pub after_ms: f64,
    pub kind: MessageKind,
    pub status: u16,
    pub error_code: Option<u32>,
    pub content: Option<String>,
    pub embeds: Vec<serde_json::Value>,
    pub files: Vec<FileRecord>,
}

impl MessageRecord {
    /// Whether Discord accepted the message.
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Everything about one interaction the fake dispatched.
#[derive(Clone, Debug, Serialize)]
pub struct InteractionRecord {
    pub id: u64,
    pub command: String,
    pub user_id: u64,
    pub guild_id: Option<u64>,
    pub channel_id: u64,
    /// When the interaction was dispatched (monotonic; not serialized).
    #[serde(skip)]
    pub sent_at: Instant,
    /// When the interaction was dispatched, Unix milliseconds (the snowflake's time).
    pub sent_unix_ms: u64,
    /// The instances whose sessions it was dispatched to (live or resumable).
    pub delivered_to: Vec<u32>,
    pub callbacks: Vec<CallbackAttempt>,
    pub messages: Vec<MessageRecord>,
}

/// The final answer of an interaction: who gave it and when.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Completion {
    pub instance: u32,
    pub after_ms: f64,
    /// The answer starts with the bot's error prefix.
    pub failed: bool,
    /// The answer says the job was not queued because its expected wait was too long
    /// ([`WAIT_REFUSED_PREFIX`]): told at once, and no job ran.
    pub refused_wait: bool,
}

impl InteractionRecord {
    /// The accepted callback, if any (there is at most one).
    pub fn ack(&self) -> Option<&CallbackAttempt> {
        self.callbacks.iter().find(|c| c.accepted())
    }

    /// The instance that acknowledged the interaction.
    pub fn acked_by(&self) -> Option<u32> {
        self.ack().map(|c| c.instance)
    }

    /// Callback attempts after the first accepted one, whatever the fake answered them: each
    /// is an instance that believed it should answer although another already had.
    pub fn duplicate_acks(&self) -> usize {
        match self.callbacks.iter().position(|c| c.accepted()) {
            Some(first) => self.callbacks.len() - first - 1,
            None => 0,
        }
    }

    /// Callback attempts that came after the acknowledgement window with nobody having acked.
    pub fn late_acks(&self, ack_window: Duration) -> usize {
        let window_ms = ack_window.as_secs_f64() * 1000.0;
        self.callbacks
            .iter()
            .take_while(|c| !c.accepted())
            .filter(|c| c.after_ms >= window_ms)
            .count()
    }

    /// The accepted messages that are not progress edits, in order: the answer after a
    /// deferred ack (a long one continues in follow-ups).
    pub fn final_messages(&self) -> impl DoubleEndedIterator<Item = &MessageRecord> {
        self.messages
            .iter()
            .filter(|m| m.accepted() && !is_progress(m.content.as_deref()))
    }

    /// The final answer: a type-4 callback is one; after a deferred ack it is the last accepted
    /// edit, followup or channel message that is not a progress edit (see [`is_progress`]; a
    /// streamed answer edits the reply several times, and only the last edit is the answer
    /// the user keeps).
    pub fn completion(&self) -> Option<Completion> {
        let ack = self.ack()?;
        if ack.kind == CALLBACK_MESSAGE {
            return Some(Completion {
                instance: ack.instance,
                after_ms: ack.after_ms,
                failed: starts_with_error(ack.content.as_deref()),
                refused_wait: starts_with_wait_refusal(ack.content.as_deref()),
            });
        }
        let last = self.final_messages().next_back()?;
        Some(Completion {
            instance: last.instance,
            after_ms: last.after_ms,
            failed: starts_with_error(last.content.as_deref()),
            refused_wait: starts_with_wait_refusal(last.content.as_deref()),
        })
    }

    /// Whether more than one answer reached the user: final messages from two or more
    /// instances (a job finished twice), or two channel messages that each open an answer. Repeated edits of the original reply by one instance are one answer
    /// being streamed, and progress edits (`⏳…`, or a streamed text ending in the `▌` cursor)
    /// are not answers: a job rescued from a dead instance shows its progress from two
    /// instances but answers once.
    pub fn has_duplicate_answer(&self) -> bool {
        let mut instances: Vec<u32> = self.final_messages().map(|m| m.instance).collect();
        if let Some(ack) = self.ack() {
            if ack.kind == CALLBACK_MESSAGE {
                instances.push(ack.instance);
            }
        }
        instances.sort_unstable();
        instances.dedup();
        // A long answer continues in follow-ups (or further channel messages); each answer to
        // the channel opens with the user's mention, so two of those are two answers.
        let channel_answers = self
            .final_messages()
            .filter(|m| m.kind == MessageKind::Channel)
            .filter(|m| m.content.as_deref().is_some_and(|c| c.starts_with("<@")))
            .count();
        instances.len() > 1 || channel_answers > 1
    }

    /// Whether this record has reached a final answer.
    pub fn is_completed(&self) -> bool {
        self.completion().is_some()
    }

    /// The accepted waiting edits of the deferred reply (see [`is_waiting_edit`]), in order.
    /// Progress, never an answer: [`final_messages`](Self::final_messages) leaves them out.
    pub fn waiting_edits(&self) -> impl Iterator<Item = &MessageRecord> {
        self.messages.iter().filter(|m| is_waiting_edit(m))
    }

    /// Waiting edits that reached Discord after the first final message: each one overwrote
    /// (part of) the answer the user had. Must be 0.
    pub fn waiting_edits_after_answer(&self) -> usize {
        let first_final = self
            .messages
            .iter()
            .position(|m| m.accepted() && !is_progress(m.content.as_deref()));
        match first_final {
            Some(i) => self.messages[i..]
                .iter()
                .filter(|m| is_waiting_edit(m))
                .count(),
            None => 0,
        }
    }
}

/// How the bot's waiting edits start (its `replies::progress::QUEUED_PREFIX`): a job still
/// in the queue, its place and expected wait. A progress edit like any other `⏳` one.
pub const WAITING_PREFIX: &str = "⏳ 대기 중이에요";

/// An accepted edit of the original reply that says the job still waits.
pub fn is_waiting_edit(m: &MessageRecord) -> bool {
    m.kind == MessageKind::EditOriginal
        && m.accepted()
        && m.content
            .as_deref()
            .is_some_and(|c| c.starts_with(WAITING_PREFIX))
}

/// A progress edit of a deferred reply, not an answer (the bot's convention: `⏳` first, or
/// the streaming cursor `▌` last).
pub fn is_progress(content: Option<&str>) -> bool {
    content.is_some_and(|c| c.starts_with('⏳') || c.ends_with('▌'))
}

/// How the bot's "the expected wait is past the command's maximum" answer starts (its own
/// wording's marker, neither an error nor progress).
pub const WAIT_REFUSED_PREFIX: &str = "🚦";

fn starts_with_wait_refusal(content: Option<&str>) -> bool {
    content.is_some_and(|c| c.trim_start().starts_with(WAIT_REFUSED_PREFIX))
}

fn starts_with_error(content: Option<&str>) -> bool {
    content.is_some_and(|c| c.trim_start().starts_with(ERROR_PREFIX))
}

/// Records as the unit tests across the simulator write them.
#[cfg(test)]
impl CallbackAttempt {
    /// A callback with `content`, no error code, no embeds or files, not ephemeral.
    pub(crate) fn plain(
        instance: u32,
        after_ms: f64,
        status: u16,
        kind: u8,
        content: &str,
    ) -> Self {
        CallbackAttempt {
            instance,
            after_ms,
            status,
            error_code: None,
            kind,
            content: Some(content.into()),
            embeds: vec![],
            files: vec![],
            ephemeral: false,
        }
    }
}

#[cfg(test)]
impl InteractionRecord {
    /// A `/핑` from `user_id` in a DM-less channel 1, sent at `sent_at` to `delivered_to`.
    pub(crate) fn ping(
        id: u64,
        user_id: u64,
        sent_at: Instant,
        delivered_to: Vec<u32>,
        callbacks: Vec<CallbackAttempt>,
    ) -> Self {
        InteractionRecord {
            id,
            command: "핑".into(),
            user_id,
            guild_id: None,
            channel_id: 1,
            sent_at,
            sent_unix_ms: 0,
            delivered_to,
            callbacks,
            messages: vec![],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cb(instance: u32, after_ms: f64, status: u16, kind: u8, content: &str) -> CallbackAttempt {
        CallbackAttempt::plain(instance, after_ms, status, kind, content)
    }

    fn record(callbacks: Vec<CallbackAttempt>, messages: Vec<MessageRecord>) -> InteractionRecord {
        InteractionRecord {
            messages,
            ..InteractionRecord::ping(1, 2, Instant::now(), vec![1, 2], callbacks)
        }
    }

    #[test]
    fn duplicates_count_every_attempt_after_the_first_accepted_one() {
        let r = record(
            vec![
                cb(3, 3100.0, 404, 4, "late"),
                cb(1, 2.0, 204, 4, "pong"),
                cb(2, 5.0, 400, 4, "pong"),
                cb(3, 6.0, 204, 4, "pong"),
            ],
            vec![],
        );
        assert_eq!(r.acked_by(), Some(1));
        assert_eq!(r.duplicate_acks(), 2);
        assert_eq!(r.late_acks(Duration::from_secs(3)), 1);
        let done = r.completion().unwrap();
        assert_eq!((done.instance, done.failed), (1, false));
    }

    #[test]
    fn deferred_completes_with_its_last_accepted_message() {
        let msg = |after_ms, status, content: &str| MessageRecord {
            instance: 2,
            after_ms,
            kind: MessageKind::EditOriginal,
            status,
            error_code: None,
            content: Some(content.into()),
            embeds: vec![],
            files: vec![],
        };
        let mut r = record(vec![cb(2, 1.0, 204, 5, "")], vec![]);
        assert!(r.completion().is_none());
        r.messages.push(msg(20.0, 200, "⏳ 생성 중…"));
        r.messages.push(msg(30.0, 200, "안녕하세요 ▌"));
        assert!(r.completion().is_none(), "progress edits are not an answer");
        r.messages.push(msg(50.0, 200, "partial"));
        r.messages.push(msg(90.0, 200, "⚠️ provider down"));
        r.messages.push(msg(95.0, 401, "rejected"));
        let done = r.completion().unwrap();
        assert_eq!(done.after_ms, 90.0);
        assert!(done.failed);
        assert!(!r.has_duplicate_answer(), "one instance streaming edits");
        let mut other = msg(120.0, 200, "again");
        other.instance = 3;
        r.messages.push(other);
        assert!(r.has_duplicate_answer(), "a second instance answered too");
    }

    #[test]
    fn progress_from_a_dead_instance_is_not_a_second_answer() {
        let msg = |instance, kind, content: &str| MessageRecord {
            instance,
            after_ms: 1.0,
            kind,
            status: 200,
            error_code: None,
            content: Some(content.into()),
            embeds: vec![],
            files: vec![],
        };
        let deferred = || vec![cb(2, 2.0, 204, 5, "")];
        // Instance 2 streamed and died; instance 3 finished the rescued job.
        let rescued = record(
            deferred(),
            vec![
                msg(2, MessageKind::EditOriginal, "⏳ 영상 생성 중…"),
                msg(2, MessageKind::EditOriginal, "Fake answer ▌"),
                msg(3, MessageKind::EditOriginal, "Fake answer about cats"),
            ],
        );
        assert!(!rescued.has_duplicate_answer());
        // One long answer: an edit and two follow-ups from one instance.
        let long = record(
            deferred(),
            vec![
                msg(2, MessageKind::EditOriginal, "part 1"),
                msg(2, MessageKind::Followup, "part 2"),
                msg(2, MessageKind::Followup, "part 3"),
            ],
        );
        assert!(!long.has_duplicate_answer());
        // Two instances each delivered a final answer.
        let twice = record(
            deferred(),
            vec![
                msg(2, MessageKind::EditOriginal, "answer"),
                msg(3, MessageKind::EditOriginal, "answer"),
            ],
        );
        assert!(twice.has_duplicate_answer());
        // Two channel answers (each opens with the mention).
        let channel = record(
            deferred(),
            vec![
                msg(2, MessageKind::Channel, "<@2> answer"),
                msg(2, MessageKind::Channel, "<@2> answer"),
            ],
        );
        assert!(channel.has_duplicate_answer());
    }

    #[test]
    fn waiting_edits_are_progress_and_any_after_the_answer_is_counted() {
        let msg = |content: &str| MessageRecord {
            instance: 2,
            after_ms: 1.0,
            kind: MessageKind::EditOriginal,
            status: 200,
            error_code: None,
            content: Some(content.into()),
            embeds: vec![],
            files: vec![],
        };
        let mut r = record(
            vec![cb(2, 2.0, 204, 5, "")],
            vec![
                msg("⏳ 대기 중이에요 · 앞에 2개 · 예상 약 20초"),
                msg("⏳ 대기 중이에요 · 곧 시작해요"),
                msg("⏳ 이미지를 그리는 중이에요…"),
            ],
        );
        assert_eq!(r.waiting_edits().count(), 2);
        assert!(r.completion().is_none(), "waiting edits are not an answer");
        r.messages.push(msg("the answer"));
        assert_eq!(r.waiting_edits_after_answer(), 0);
        assert!(!r.has_duplicate_answer());
        r.messages.push(msg("⏳ 대기 중이에요 · 곧 시작해요"));
        assert_eq!(r.waiting_edits_after_answer(), 1, "it overwrote the answer");
        assert_eq!(r.completion().unwrap().after_ms, 1.0, "still the answer's");
    }
}

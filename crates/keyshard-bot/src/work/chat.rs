//! `/채팅` jobs: the conversation so far from Redis, a streamed OpenAI answer edited into the
//! deferred reply about once a second, and the exchange saved for the next turn.

use std::time::Instant;

use futures::StreamExt;
use keyshard_cluster::{Job, JobContext, Outcome};
use keyshard_providers::{ChatEvent, ChatMessage, ChatRole, ProviderKind};
use keyshard_types::ChatArgs;

use super::deliver::{progress, Answer, MESSAGE_LIMIT};
use super::{Meter, Use, Worker};
use crate::replies::{self, CURSOR};

pub(super) const COMMAND: &str = "chat";

/// The assistant's standing instructions.
const SYSTEM_PROMPT: &str = "You are keyshard, a helpful assistant in a Discord server. \
Answer in the language of the question (usually Korean), concisely, using Discord markdown.";

/// A `/채팅` job: the memory read, the streamed answer edited in about once a second, the
/// continuation past 2,000 characters, and the turn saved. Long because the stream's edits
/// and the split share the text and its message as it grows; one loop reads as it happens.
pub async fn run(
    w: &Worker,
    job: &Job,
    a: &ChatArgs,
    ctx: &JobContext,
    meter: &mut Meter,
) -> Outcome {
    let Some(openai) = w.providers().openai.clone() else {
        return w
            .unconfigured(job, ctx, COMMAND, meter, ProviderKind::OpenAi)
            .await;
    };
    let memory = &w.inner.memory;
    if a.reset {
        if let Err(e) = memory.reset(job.user_id, job.channel_id).await {
            tracing::warn!(job = job.id, "could not reset the conversation: {e}");
        }
    }
    let history = memory
        .load(job.user_id, job.channel_id)
        .await
        .unwrap_or_else(|e| {
            // Without Redis the answer still comes, only without the earlier turns.
            tracing::warn!(job = job.id, "could not read the conversation: {e}");
            Vec::new()
        });
    let mut messages = vec![ChatMessage::new(ChatRole::System, SYSTEM_PROMPT)];
    for turn in &history {
        let role = if turn.role == "assistant" {
            ChatRole::Assistant
        } else {
            ChatRole::User
        };
        messages.push(ChatMessage::new(role, turn.content.clone()));
    }
    messages.push(ChatMessage::new(ChatRole::User, a.prompt.clone()));

    meter.called(w.catalog(), ProviderKind::OpenAi, Use::Chat);
    let started = Instant::now();
    let mut stream = match openai.chat_stream(messages).await {
        Ok(s) => s,
        Err(e) => {
            meter.spent(started.elapsed());
            return w.fail(job, ctx, COMMAND, meter, &e).await;
        }
    };
    let mut text = String::new();
    let mut last_edit = Instant::now();
    // Provider time is the stream's, not the progress edits' to Discord in between.
    let mut discord = std::time::Duration::ZERO;
    while let Some(event) = stream.next().await {
        match event {
            Ok(ChatEvent::Delta(d)) => {
                text.push_str(&d);
                if last_edit.elapsed() >= w.inner.timing.chat_edit_every {
                    last_edit = Instant::now();
                    progress(w.http(), job, &streaming_view(&text)).await;
                    discord += last_edit.elapsed();
                }
            }
            Ok(ChatEvent::Usage {
                prompt_tokens,
                completion_tokens,
            }) => {
                meter.tokens_in = prompt_tokens;
                meter.tokens_out = completion_tokens;
            }
            Err(e) => {
                meter.spent(started.elapsed().saturating_sub(discord));
                return w.fail(job, ctx, COMMAND, meter, &e).await;
            }
        }
    }
    drop(stream);
    meter.spent(started.elapsed().saturating_sub(discord));
    w.inner
        .stats
        .provider_request(ProviderKind::OpenAi.as_str());
    if text.trim().is_empty() {
        text = replies::results::EMPTY_CHAT_ANSWER.into();
    }
    // Saved before the answer is shown, so a follow-up question typed right after it (maybe
    // served by another instance) already sees this turn.
    if let Err(e) = memory
        .append(job.user_id, job.channel_id, &a.prompt, &text)
        .await
    {
        tracing::warn!(job = job.id, "could not save the conversation: {e}");
    }
    w.finish(job, ctx, COMMAND, meter, Ok(()), Answer::text(text))
        .await
}

/// The partial answer as shown while streaming: its tail if it is already longer than one
/// message, with the cursor that marks it unfinished.
fn streaming_view(text: &str) -> String {
    let limit = MESSAGE_LIMIT - CURSOR.chars().count();
    let count = text.chars().count();
    let shown: String = if count > limit {
        text.chars().skip(count - limit).collect()
    } else {
        text.to_owned()
    };
    format!("{shown}{CURSOR}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streaming_view_fits_one_message_and_marks_unfinished() {
        let long: String = "가".repeat(5_000);
        let v = streaming_view(&long);
        assert_eq!(v.chars().count(), MESSAGE_LIMIT);
        assert!(v.ends_with(CURSOR));
        assert_eq!(streaming_view("안녕"), format!("안녕{CURSOR}"));
    }
}

//! `/채팅 질문 [새대화]` (`/chat`): a streamed OpenAI answer that remembers the conversation.

use keyshard_types::ChatArgs;

use super::queue::defer_and_queue;
use crate::context::{Answered, Context, Error};
use crate::replies::check_prompt;
use crate::respond;

/// The longest question accepted (Discord's option limit is 6,000; a chat turn needs far less).
pub const MAX_PROMPT: usize = 2_000;

/// AI와 대화합니다. 이전 대화를 기억해요.
#[poise::command(
    slash_command,
    rename = "채팅",
    name_localized("en-US", "chat"),
    description_localized("en-US", "Chat with the AI; it remembers the conversation")
)]
pub async fn chat(
    ctx: Context<'_>,
    #[rename = "질문"]
    #[description = "AI에게 할 질문"]
    #[name_localized("en-US", "prompt")]
    #[description_localized("en-US", "What to ask the AI")]
    #[max_length = 2000]
    prompt: String,
    #[rename = "새대화"]
    #[description = "이전 대화를 잊고 새로 시작할까요?"]
    #[name_localized("en-US", "new_conversation")]
    #[description_localized("en-US", "Forget the earlier conversation and start anew")]
    reset: Option<bool>,
) -> Result<(), Error> {
    let prompt = match check_prompt(&prompt, MAX_PROMPT) {
        Ok(p) => p,
        Err(message) => return respond::ephemeral(ctx, message, Answered::Refused("input")).await,
    };
    let args = ChatArgs {
        prompt,
        reset: reset.unwrap_or(false),
    };
    defer_and_queue(ctx, args.into()).await
}

//! `/비디오 설명` (`/video`): a MiniMax Hailuo video, with progress edits while it renders.

use keyshard_types::VideoArgs;

use super::queue::defer_and_queue;
use crate::context::{Answered, Context, Error};
use crate::replies::check_prompt;
use crate::respond;

/// MiniMax video prompts are limited to 2,000 characters.
pub const MAX_PROMPT: usize = 2_000;

/// 설명대로 짧은 영상을 만듭니다.
#[poise::command(
    slash_command,
    rename = "비디오",
    name_localized("en-US", "video"),
    description_localized("en-US", "Make a short video from a description")
)]
pub async fn video(
    ctx: Context<'_>,
    #[rename = "설명"]
    #[description = "만들 영상 설명"]
    #[name_localized("en-US", "prompt")]
    #[description_localized("en-US", "What the video shows")]
    #[max_length = 2000]
    prompt: String,
) -> Result<(), Error> {
    let prompt = match check_prompt(&prompt, MAX_PROMPT) {
        Ok(p) => p,
        Err(message) => return respond::ephemeral(ctx, message, Answered::Refused("input")).await,
    };
    defer_and_queue(ctx, VideoArgs { prompt }.into()).await
}

//! `/이미지 설명 [모델] [비율]` (`/image`): an image from MiniMax, Stability or OpenAI. The
//! options' choices are the values of `ProviderKind` and `AspectRatio` (the user may pick any
//! provider, every ratio), the same enums the job carries and the provider call takes.

use keyshard_types::{AspectRatio, ImageArgs, ProviderKind};

use super::choice::Choice;
use super::queue::defer_and_queue;
use crate::context::{Answered, Context, Error};
use crate::replies::check_prompt;
use crate::respond;

/// MiniMax `image-01` takes at most 1,500 characters, the tightest of the three providers.
pub const MAX_PROMPT: usize = 1_500;

/// 설명대로 이미지를 그립니다.
#[poise::command(
    slash_command,
    rename = "이미지",
    name_localized("en-US", "image"),
    description_localized("en-US", "Draw an image from a description")
)]
pub async fn image(
    ctx: Context<'_>,
    #[rename = "설명"]
    #[description = "그릴 이미지 설명"]
    #[name_localized("en-US", "prompt")]
    #[description_localized("en-US", "What to draw")]
    #[max_length = 1500]
    prompt: String,
    #[rename = "모델"]
    #[description = "이미지 제공사 (기본: 여러 키에 자동 분배)"]
    #[name_localized("en-US", "model")]
    #[description_localized("en-US", "Image provider (default: spread over the keys)")]
    model: Option<Choice<ProviderKind>>,
    #[rename = "비율"]
    #[description = "가로:세로 비율 (기본: 1:1)"]
    #[name_localized("en-US", "ratio")]
    #[description_localized("en-US", "Aspect ratio (default: 1:1)")]
    ratio: Option<Choice<AspectRatio>>,
) -> Result<(), Error> {
    let prompt = match check_prompt(&prompt, MAX_PROMPT) {
        Ok(p) => p,
        Err(message) => return respond::ephemeral(ctx, message, Answered::Refused("input")).await,
    };
    let args = ImageArgs {
        provider: model.map(|m| m.0),
        prompt,
        ratio: ratio.map(|r| r.0),
    };
    defer_and_queue(ctx, args.into()).await
}

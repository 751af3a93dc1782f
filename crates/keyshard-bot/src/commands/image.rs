//! `/이미지 설명 [모델] [비율]` (`/image`): an image from MiniMax, Stability or OpenAI.

use keyshard_cluster::JobKind;

use super::choice::string_choices;
use super::queue::defer_and_queue;
use crate::context::{Context, Error};
use crate::replies::check_prompt;
use crate::respond;
use crate::work::ImageArgs;

/// MiniMax `image-01` takes at most 1,500 characters, the tightest of the three providers.
pub const MAX_PROMPT: usize = 1_500;

string_choices!(
    /// The image providers a user can pick.
    ImageModel {
        MiniMax => "minimax",
        Stability => "stability",
        OpenAi => "openai",
    }
);

string_choices!(
    /// Ratios every image provider supports.
    Ratio {
        Square => "1:1",
        Landscape => "16:9",
        Portrait => "9:16",
        Photo => "3:2",
        PhotoPortrait => "2:3",
    }
);

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
    model: Option<ImageModel>,
    #[rename = "비율"]
    #[description = "가로:세로 비율 (기본: 1:1)"]
    #[name_localized("en-US", "ratio")]
    #[description_localized("en-US", "Aspect ratio (default: 1:1)")]
    ratio: Option<Ratio>,
) -> Result<(), Error> {
    let prompt = match check_prompt(&prompt, MAX_PROMPT) {
        Ok(p) => p,
        Err(message) => return respond::ephemeral(ctx, message).await,
    };
    let args = ImageArgs {
        prompt,
        model: model.map(|m| m.as_str().to_owned()),
        ratio: ratio.map(|r| r.as_str().to_owned()),
    };
    defer_and_queue(ctx, JobKind::Image, serde_json::to_value(args)?).await
}

//! The final answers of jobs: the image's embed and caption, the finished video (attached or
//! linked), and what an empty chat answer shows.

use std::time::Duration;

use poise::serenity_prelude as serenity;

/// Shown when the model streamed nothing but whitespace.
pub const EMPTY_CHAT_ANSWER: &str = "(답변이 비어 있어요)";

/// The longest prompt shown in an image's embed (Discord allows 4,096 in a description; a
/// shorter echo keeps the image the focus).
const PROMPT_ECHO: usize = 1_000;

/// The caption above an image.
pub fn image_caption(user_id: u64) -> String {
    format!("<@{user_id}> 님의 이미지예요.")
}

/// What an image answer says besides the picture.
pub struct ImageDone<'a> {
    pub prompt: &'a str,
    /// The provider that drew it, as shown (`MiniMax`, `Stability`, `OpenAI`).
    pub provider: String,
    /// `16:9`, …
    pub ratio: &'a str,
    pub instance: u32,
    /// Since the user asked.
    pub total: Duration,
    /// The provider call alone.
    pub generation: Duration,
    /// The attachment the embed shows.
    pub filename: &'a str,
}

pub fn image_embed(d: &ImageDone<'_>) -> serenity::CreateEmbed {
    serenity::CreateEmbed::new()
        .title("🎨 이미지 생성 완료")
        .description(truncate(d.prompt, PROMPT_ECHO))
        .field("제공사", d.provider.clone(), true)
        .field("비율", d.ratio, true)
        .field("처리 인스턴스", format!("#{}", d.instance), true)
        .field(
            "소요 시간",
            format!(
                "{:.1}초 (생성 {:.1}초)",
                d.total.as_secs_f64(),
                d.generation.as_secs_f64()
            ),
            true,
        )
        .image(format!("attachment://{}", d.filename))
}

/// A finished video sent as an attachment.
pub fn video_attached(user_id: u64, instance: u32, elapsed_secs: u64) -> String {
    format!("🎬 <@{user_id}> 님의 영상이 완성됐어요! (처리 인스턴스 #{instance}, {elapsed_secs}초)")
}

/// A finished video over the upload limit: a link instead of an attachment.
pub fn video_linked(user_id: u64, instance: u32, elapsed_secs: u64, url: &str) -> String {
    format!(
        "🎬 <@{user_id}> 님의 영상이 완성됐어요! 파일이 커서 링크로 보내요: {url}\n(처리 인스턴스 #{instance}, {elapsed_secs}초)"
    )
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max - 1).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_prompts_are_cut_in_the_embed() {
        let prompt = "가".repeat(1_200);
        let embed = image_embed(&ImageDone {
            prompt: &prompt,
            provider: "MiniMax".into(),
            ratio: "16:9",
            instance: 2,
            total: Duration::from_millis(2_345),
            generation: Duration::from_millis(1_200),
            filename: "keyshard-1.png",
        });
        let json = serde_json::to_value(&embed).unwrap();
        let description = json["description"].as_str().unwrap();
        assert_eq!(description.chars().count(), PROMPT_ECHO);
        assert!(description.ends_with('…'));
        assert_eq!(json["image"]["url"], "attachment://keyshard-1.png");
        assert!(json["fields"].to_string().contains("2.3초 (생성 1.2초)"));
    }

    #[test]
    fn videos_mention_the_user() {
        assert!(video_attached(5, 1, 30).starts_with("🎬 <@5> 님의 영상이 완성됐어요!"));
        assert!(video_linked(5, 1, 30, "http://x/v.mp4").contains("링크로 보내요: http://x/v.mp4"));
    }
}

//! The edits of a deferred reply while its job runs. Each starts with ⏳ or ends with
//! [`CURSOR`], so neither the simulator nor a test takes it for the final answer.

/// Marks a streamed chat answer as unfinished.
pub const CURSOR: &str = " ▌";

pub const IMAGE_DRAWING: &str = "⏳ 이미지를 그리는 중이에요…";

pub const VIDEO_REQUESTING: &str = "⏳ 영상 생성을 요청하는 중이에요…";

/// Where a video task stands at the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VideoPhase {
    /// Accepted, waiting for a renderer.
    Queued,
    Rendering,
}

/// A video still rendering, `elapsed_secs` since the user asked.
pub fn video(phase: VideoPhase, elapsed_secs: u64) -> String {
    let phase = match phase {
        VideoPhase::Queued => "대기 중",
        VideoPhase::Rendering => "생성 중",
    };
    format!("⏳ 영상 {phase}… (경과 {elapsed_secs}초)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_progress_edit_is_marked_as_one() {
        for text in [
            IMAGE_DRAWING.to_owned(),
            VIDEO_REQUESTING.to_owned(),
            video(VideoPhase::Queued, 3),
            video(VideoPhase::Rendering, 75),
        ] {
            assert!(text.starts_with('⏳'), "{text}");
        }
        assert_eq!(
            video(VideoPhase::Rendering, 75),
            "⏳ 영상 생성 중… (경과 75초)"
        );
    }
}

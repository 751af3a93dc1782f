//! The edits of a deferred reply while its job runs or waits. Each starts with ⏳ or ends with
//! [`CURSOR`], so neither the simulator nor a test takes it for the final answer. Also the
//! answer to a job that is not queued because its expected wait is too long
//! ([`wait_refused`], starting with [`WAIT_REFUSED_PREFIX`]).

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

/// How a "the wait is too long" answer starts: neither an error (⚠️) nor progress (⏳), so the
/// simulator counts it as what it is.
pub const WAIT_REFUSED_PREFIX: &str = "🚦";

/// A job not queued: its expected wait (`estimate_secs`) is past the command's maximum.
pub fn wait_refused(estimate_secs: u64, max_secs: u64) -> String {
    format!(
        "{WAIT_REFUSED_PREFIX} 지금은 요청이 많아 바로 처리하기 어려워요. 예상 대기 시간 약 {} \
         (최대 {}). 요청을 접수하지 않았고 사용 한도에서도 차감하지 않았어요. 잠시 후 다시 시도해 주세요.",
        duration(estimate_secs),
        duration(max_secs)
    )
}

/// How every waiting edit ([`queued`]) starts: the simulator tells those from the job's own
/// progress by it (`keyshard_sim::discord::record::WAITING_PREFIX`).
pub const QUEUED_PREFIX: &str = "⏳ 대기 중이에요";

/// A job waiting for a worker: `ahead` jobs before it, and its expected wait when known.
pub fn queued(ahead: u64, estimate_secs: Option<u64>) -> String {
    // From 10 on, the count is rounded ([`keyshard_routing::round_ahead`]): "about".
    let place = match ahead {
        0 => "곧 시작해요".to_owned(),
        1..10 => format!("앞에 {ahead}개"),
        _ => format!("앞에 약 {ahead}개"),
    };
    match estimate_secs {
        Some(s) => format!("{QUEUED_PREFIX} · {place} · 예상 약 {}", duration(s)),
        None => format!("{QUEUED_PREFIX} · {place}"),
    }
}

/// `45초`, `3분`, `2분 30초`.
fn duration(secs: u64) -> String {
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s}초"),
        (m, 0) => format!("{m}분"),
        (m, s) => format!("{m}분 {s}초"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_read_in_minutes_and_seconds() {
        assert_eq!(
            wait_refused(150, 60),
            "🚦 지금은 요청이 많아 바로 처리하기 어려워요. 예상 대기 시간 약 2분 30초 \
             (최대 1분). 요청을 접수하지 않았고 사용 한도에서도 차감하지 않았어요. 잠시 후 다시 시도해 주세요."
        );
        assert_eq!(
            queued(3, Some(45)),
            "⏳ 대기 중이에요 · 앞에 3개 · 예상 약 45초"
        );
        assert_eq!(queued(0, None), "⏳ 대기 중이에요 · 곧 시작해요");
        assert_eq!(
            queued(300, Some(120)),
            "⏳ 대기 중이에요 · 앞에 약 300개 · 예상 약 2분"
        );
        assert!(!wait_refused(1, 1).starts_with(crate::replies::ERROR_PREFIX));
    }

    #[test]
    fn every_progress_edit_is_marked_as_one() {
        for text in [
            IMAGE_DRAWING.to_owned(),
            VIDEO_REQUESTING.to_owned(),
            video(VideoPhase::Queued, 3),
            video(VideoPhase::Rendering, 75),
            queued(2, Some(30)),
        ] {
            assert!(text.starts_with('⏳'), "{text}");
        }
        assert_eq!(
            video(VideoPhase::Rendering, 75),
            "⏳ 영상 생성 중… (경과 75초)"
        );
    }
}

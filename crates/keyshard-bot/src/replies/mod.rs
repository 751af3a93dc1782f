//! Every message a Discord user reads from keyshard, in Korean, in one place. Errors start
//! with ⚠️ (the simulator counts such final answers as failed); progress edits of a deferred
//! reply start with ⏳ or end with the streaming cursor, so they are never taken for the
//! final answer.
//!
//! - this file: the error messages, the input checks, and [`reason`] (the one wording of each
//!   routing [`Reason`], used by `/핑` and `/할당` alike);
//! - [`ping`]: `/핑`'s answer;
//! - [`admin`]: the admin views (`/로드밸런서`, `/할당`, `/성능`);
//! - [`progress`]: the edits of a deferred reply while a job runs;
//! - [`results`]: the final answers of jobs;
//! - [`usage`]: `/사용량`'s views and `/성능`'s ledger lines.
//!
//! A leaf of the bot's import graph: it renders plain data and names no other bot module.
//! Slash command and option names and descriptions are the one exception: poise reads them
//! as literals in the `#[poise::command]` attributes of `commands/*`.

pub mod admin;
pub mod ping;
pub mod progress;
pub mod results;
pub mod usage;

use keyshard_providers::{ErrorClass, ProviderError, ProviderKind};
use keyshard_routing::Reason;

pub use progress::CURSOR;

pub const ERROR_PREFIX: &str = "⚠️";

pub const EMPTY_PROMPT: &str = "⚠️ 내용을 입력해 주세요. 빈 요청은 처리할 수 없어요.";
pub const ADMIN_ONLY: &str = "⚠️ 관리자만 사용할 수 있는 명령어예요.";
pub const UNKNOWN_USER: &str =
    "⚠️ 해당 사용자를 찾을 수 없어요. 서버에 있는 사용자를 선택해 주세요.";
pub const INPUT_UNREADABLE: &str = "⚠️ 입력을 읽지 못했어요. 명령어를 다시 선택해 입력해 주세요.";
pub const QUEUE_FAILED: &str = "⚠️ 작업을 시작하지 못했어요. 잠시 후 다시 시도해 주세요.";
pub const INTERNAL: &str = "⚠️ 요청을 처리하는 중 문제가 생겼어요. 잠시 후 다시 시도해 주세요.";
/// A queued job whose stored arguments this instance cannot read (a value it does not know,
/// e.g. during an upgrade): it is not run, so the user is asked to send the command again.
pub const JOB_UNREADABLE: &str =
    "⚠️ 요청을 처리하는 중 문제가 생겼어요 (요청 내용을 읽을 수 없어요). 명령어를 다시 입력해 주세요.";
pub const VIDEO_FAILED: &str =
    "⚠️ 영상 생성에 실패했어요. 제공사가 작업을 끝내지 못했어요. 표현을 바꿔 다시 시도해 주세요.";
pub const STATS_UNAVAILABLE: &str =
    "⚠️ 지금은 클러스터 통계를 읽을 수 없어요 (Redis 연결 끊김). 잠시 후 다시 시도해 주세요.";

/// Why an instance serves a user: the one wording of each routing decision, shown by `/핑`
/// (when another instance answered) and by `/할당`.
pub fn reason(reason: Reason) -> &'static str {
    match reason {
        Reason::Primary => "기본 인스턴스가 정상이라 그대로 맡아요",
        Reason::PrimaryDown => "기본 인스턴스가 응답하지 않아 다음 인스턴스가 맡아요",
        Reason::PrimaryOverloaded => "기본 인스턴스가 과부하라 다음 인스턴스가 맡아요",
        Reason::AllOverloaded => "모든 인스턴스가 바빠 대기 시간이 가장 짧은 인스턴스가 맡아요",
        Reason::NoneAlive => {
            "살아 있는 인스턴스를 확인할 수 없어 기본 인스턴스 규칙(정적 규칙)으로 맡아요"
        }
    }
}

/// Seconds with one decimal, as the views show durations: `1.5초`.
pub fn secs(ms: u64) -> String {
    format!("{:.1}초", ms as f64 / 1000.0)
}

pub fn too_long(max: usize) -> String {
    format!("⚠️ 입력이 너무 길어요. {max}자 이하로 줄여 주세요.")
}

pub fn not_configured(provider: ProviderKind) -> String {
    format!("⚠️ 지금은 이 기능을 사용할 수 없어요 ({provider} 키가 설정되어 있지 않아요). 관리자에게 알려 주세요.")
}

/// What the user reads when a provider call finally failed.
pub fn provider_failed(e: &ProviderError) -> String {
    match e.class {
        ErrorClass::ContentRejected => {
            "⚠️ 요청하신 내용은 AI 제공사의 안전 정책에 걸려 처리할 수 없어요. 표현을 바꿔 다시 시도해 주세요.".into()
        }
        ErrorClass::RateLimited => "⚠️ 요청이 몰려 지금은 처리할 수 없어요. 잠시 후 다시 시도해 주세요.".into(),
        ErrorClass::Retryable => "⚠️ AI 서비스가 지금 응답하지 않아요. 잠시 후 다시 시도해 주세요.".into(),
        ErrorClass::KeyProblem => {
            "⚠️ 지금은 이 기능을 사용할 수 없어요 (API 키 문제). 관리자에게 알려 주세요.".into()
        }
        ErrorClass::BadRequest => "⚠️ 요청 형식이 올바르지 않아요. 입력을 확인해 주세요.".into(),
    }
}

/// Checks a prompt: not empty or whitespace only, at most `max` characters. `Err` holds the
/// message for the user.
pub fn check_prompt(prompt: &str, max: usize) -> Result<String, String> {
    let p = prompt.trim();
    if p.is_empty() {
        return Err(EMPTY_PROMPT.into());
    }
    if p.chars().count() > max {
        return Err(too_long(max));
    }
    Ok(p.to_owned())
}

/// Splits `text` into Discord messages of at most `limit` characters, preferring to break at
/// a newline, then at a space, in the last quarter of a chunk.
pub fn split_message(text: &str, limit: usize) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest: &str = text;
    while rest.chars().count() > limit {
        let hard = rest
            .char_indices()
            .nth(limit)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let floor = rest
            .char_indices()
            .nth(limit * 3 / 4)
            .map(|(i, _)| i)
            .unwrap_or(0);
        let cut = rest[..hard]
            .rfind('\n')
            .filter(|&i| i >= floor)
            .or_else(|| rest[..hard].rfind(' ').filter(|&i| i >= floor))
            .map(|i| i + 1)
            .unwrap_or(hard);
        out.push(rest[..cut].trim_end().to_owned());
        rest = &rest[cut..];
    }
    if !rest.trim().is_empty() || out.is_empty() {
        out.push(rest.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_checked() {
        assert_eq!(check_prompt("   \n ", 10), Err(EMPTY_PROMPT.to_string()));
        assert_eq!(
            check_prompt("가나다라마바사아자차카", 10),
            Err(too_long(10))
        );
        assert_eq!(check_prompt("  고양이 ", 10), Ok("고양이".to_string()));
    }

    #[test]
    fn long_answers_split_under_the_limit_without_losing_text() {
        let text: String = (0..300).map(|i| format!("줄 {i}번 입니다.\n")).collect();
        let parts = split_message(&text, 2000);
        assert!(parts.len() > 1);
        assert!(parts.iter().all(|p| p.chars().count() <= 2000));
        let joined: String = parts.join("\n");
        assert_eq!(joined.replace('\n', ""), text.replace('\n', ""));
        assert_eq!(split_message("짧음", 2000), vec!["짧음".to_string()]);
    }

    #[test]
    fn every_reason_has_its_own_wording() {
        let all = [
            Reason::Primary,
            Reason::PrimaryDown,
            Reason::PrimaryOverloaded,
            Reason::AllOverloaded,
            Reason::NoneAlive,
        ];
        let texts: std::collections::HashSet<_> = all.iter().map(|r| reason(*r)).collect();
        assert_eq!(texts.len(), all.len());
        assert!(reason(Reason::Primary).contains("그대로 맡아요"));
    }

    #[test]
    fn every_error_message_carries_the_prefix() {
        for class in ErrorClass::ALL {
            let e = ProviderError::new(ProviderKind::OpenAi, class, "x");
            assert!(provider_failed(&e).starts_with(ERROR_PREFIX));
        }
        assert!(not_configured(ProviderKind::MiniMax).starts_with(ERROR_PREFIX));
        assert!(JOB_UNREADABLE.starts_with(ERROR_PREFIX));
    }
}

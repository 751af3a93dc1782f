//! `/이미지` jobs: the chosen provider first, then the instance's other image providers when
//! it fails with a retryable or key error; the image comes back as an attachment with an
//! embed naming the prompt, provider, serving instance and time taken.

use std::time::Instant;

use keyshard_cluster::{Job, JobContext, Outcome};
use keyshard_providers::{AspectRatio, ProviderKind};
use poise::serenity_prelude as serenity;

use super::deliver::{progress, Answer};
use super::{args, since_created, ImageArgs, Worker};
use crate::replies;

const COMMAND: &str = "image";

/// The order tried when the user names no provider: MiniMax and Stability are cheaper per
/// image than gpt-image-1 and have higher per-key limits.
const DEFAULT_ORDER: [ProviderKind; 3] = [
    ProviderKind::MiniMax,
    ProviderKind::Stability,
    ProviderKind::OpenAi,
];

pub fn parse_model(s: &str) -> Option<ProviderKind> {
    match s.trim().to_ascii_lowercase().as_str() {
        "minimax" => Some(ProviderKind::MiniMax),
        "stability" => Some(ProviderKind::Stability),
        "openai" => Some(ProviderKind::OpenAi),
        _ => None,
    }
}

/// The chosen provider first, then the rest in the default order.
pub fn order(chosen: Option<ProviderKind>) -> Vec<ProviderKind> {
    let mut order: Vec<ProviderKind> = chosen.into_iter().collect();
    order.extend(DEFAULT_ORDER.iter().copied().filter(|k| Some(*k) != chosen));
    order
}

pub async fn run(w: &Worker, job: &Job, ctx: &JobContext) -> Outcome {
    let Some(a) = args::<ImageArgs>(job) else {
        return w
            .finish(job, ctx, COMMAND, false, Answer::text(replies::INTERNAL))
            .await;
    };
    let chosen = a.model.as_deref().and_then(parse_model);
    let order = match chosen {
        Some(_) => order(chosen),
        // No provider asked for: the one with the most room left on this instance's keys
        // first, so every image key is used rather than the first one queueing.
        None => balanced(&w.providers().budget()),
    };
    if w.providers().image_providers(&order).is_empty() {
        return w
            .unconfigured(job, ctx, COMMAND, chosen.unwrap_or(ProviderKind::MiniMax))
            .await;
    }
    let ratio = a
        .ratio
        .as_deref()
        .and_then(AspectRatio::parse)
        .unwrap_or_default();
    progress(w.http(), job, "⏳ 이미지를 그리는 중이에요…").await;
    let started = Instant::now();
    let image = match w.providers().image(&a.prompt, ratio, &order).await {
        Ok(img) => img,
        Err(e) => return w.fail(job, ctx, COMMAND, &e).await,
    };
    w.inner.stats.provider_request(image.provider.as_str());
    let filename = format!("keyshard-{}.{}", job.id, image.extension());
    let embed = serenity::CreateEmbed::new()
        .title("🎨 이미지 생성 완료")
        .description(truncate(&a.prompt, 1_000))
        .field("제공사", image.provider.to_string(), true)
        .field("비율", ratio.as_ratio(), true)
        .field("처리 인스턴스", format!("#{}", w.instance()), true)
        .field(
            "소요 시간",
            format!(
                "{:.1}초 (생성 {:.1}초)",
                since_created(job).as_secs_f64(),
                started.elapsed().as_secs_f64()
            ),
            true,
        )
        .image(format!("attachment://{filename}"));
    let answer = Answer {
        text: format!("<@{}> 님의 이미지예요.", job.user_id),
        embed: Some(embed),
        files: vec![serenity::CreateAttachment::bytes(
            image.bytes.to_vec(),
            filename,
        )],
    };
    w.finish(job, ctx, COMMAND, true, answer).await
}

/// The default order re-ranked by each provider's remaining image requests in its window
/// (ties keep the default order).
pub fn balanced(budget: &[keyshard_providers::LaneBudget]) -> Vec<ProviderKind> {
    let room = |kind: ProviderKind| {
        budget
            .iter()
            .filter(|l| l.provider == kind && l.lane == "images")
            .map(|l| i64::from(l.requests_remaining) - i64::from(l.in_flight))
            .max()
    };
    let mut order: Vec<(ProviderKind, i64)> = DEFAULT_ORDER
        .iter()
        .map(|k| (*k, room(*k).unwrap_or(i64::MIN)))
        .collect();
    order.sort_by_key(|(_, r)| std::cmp::Reverse(*r));
    order.into_iter().map(|(k, _)| k).collect()
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
    fn chosen_provider_goes_first_then_the_rest() {
        assert_eq!(
            order(Some(ProviderKind::OpenAi)),
            vec![
                ProviderKind::OpenAi,
                ProviderKind::MiniMax,
                ProviderKind::Stability
            ]
        );
        assert_eq!(order(None), DEFAULT_ORDER.to_vec());
        assert_eq!(parse_model(" Stability "), Some(ProviderKind::Stability));
        assert_eq!(parse_model("dalle"), None);
    }

    fn lane(
        provider: ProviderKind,
        remaining: u32,
        in_flight: u32,
    ) -> keyshard_providers::LaneBudget {
        keyshard_providers::LaneBudget {
            provider,
            lane: "images",
            window_secs: 60.0,
            requests_limit: 120,
            requests_used: 120 - remaining,
            requests_remaining: remaining,
            tokens_limit: None,
            tokens_used: None,
            day_limit: None,
            day_used: 0,
            in_flight,
            concurrency: 8,
            cooldown_ms: 0,
        }
    }

    #[test]
    fn without_a_choice_the_provider_with_most_room_goes_first() {
        let budget = [
            lane(ProviderKind::MiniMax, 2, 2),
            lane(ProviderKind::Stability, 90, 1),
            lane(ProviderKind::OpenAi, 40, 0),
        ];
        assert_eq!(
            balanced(&budget),
            vec![
                ProviderKind::Stability,
                ProviderKind::OpenAi,
                ProviderKind::MiniMax
            ]
        );
        // A provider without a key comes last; ties keep the default order.
        let budget = [
            lane(ProviderKind::Stability, 5, 0),
            lane(ProviderKind::OpenAi, 5, 0),
        ];
        assert_eq!(
            balanced(&budget),
            vec![
                ProviderKind::Stability,
                ProviderKind::OpenAi,
                ProviderKind::MiniMax
            ]
        );
    }
}

//! `/이미지` jobs: the chosen provider first, then the instance's other image providers when
//! it fails with a retryable or key error; the image comes back as an attachment with an
//! embed naming the prompt, provider, serving instance and time taken.

use std::time::Instant;

use keyshard_cluster::{Job, JobContext, Outcome};
use keyshard_providers::{LaneBudget, LaneKind, LaneTicket};
use keyshard_types::{ImageArgs, ProviderKind};
use poise::serenity_prelude as serenity;

use super::deliver::{progress, Answer};
use super::{since_created, Meter, Use, Worker};
use crate::replies::{self, results};

pub(super) const COMMAND: &str = "image";

/// The order tried when the user names no provider: MiniMax and Stability are cheaper per
/// image than gpt-image-1 and have higher per-key limits. Also the order of preference
/// among image lanes that can all send at once ([`Worker::ready`]).
pub(super) const DEFAULT_ORDER: [ProviderKind; 3] = [
    ProviderKind::MiniMax,
    ProviderKind::Stability,
    ProviderKind::OpenAi,
];

/// The chosen provider first, then the rest in the default order.
pub fn order(chosen: Option<ProviderKind>) -> Vec<ProviderKind> {
    let mut order: Vec<ProviderKind> = chosen.into_iter().collect();
    order.extend(DEFAULT_ORDER.iter().copied().filter(|k| Some(*k) != chosen));
    order
}

pub async fn run(
    w: &Worker,
    job: &Job,
    a: &ImageArgs,
    ctx: &JobContext,
    meter: &mut Meter,
) -> Outcome {
    let chosen = a.provider;
    // The send the reader reserved before it picked this job ([`Worker::ready`]); kept until
    // the call returns, though the lane's first request uses it up at once.
    let ticket: Option<LaneTicket> = ctx.take_slot();
    let order = match (chosen, &ticket) {
        (Some(_), _) => order(chosen),
        // No provider asked for: the image lane that can send now, the others as fallbacks.
        (None, Some(t)) => order(Some(t.provider())),
        // Nothing reserved (a job resumed from the pending list after a restart): spread over
        // this instance's image keys in proportion to their rates.
        (None, None) => balanced(&w.providers().budget(), rand::random::<f64>()),
    };
    if w.providers().image_providers(&order).is_empty() {
        let wanted = chosen.unwrap_or(ProviderKind::MiniMax);
        return w.unconfigured(job, ctx, COMMAND, meter, wanted).await;
    }
    // No ratio picked: square (the option's documented default), not an unreadable value —
    // that never reaches here.
    let ratio = a.ratio.unwrap_or_default();
    progress(w.http(), job, replies::progress::IMAGE_DRAWING).await;
    let started = Instant::now();
    let image = w.providers().image(&a.prompt, ratio, &order).await;
    meter.spent(started.elapsed());
    let image = match image {
        Ok(img) => {
            meter.called(w.catalog(), img.provider, Use::Image);
            meter.images = 1;
            img
        }
        Err(e) => {
            // The provider the fallback ended on: the one whose answer the user reads.
            meter.called(w.catalog(), e.provider, Use::Image);
            return w.fail(job, ctx, COMMAND, meter, &e).await;
        }
    };
    w.inner.stats.provider_request(image.provider.as_str());
    let filename = format!("keyshard-{}.{}", job.id, image.extension());
    let embed = results::image_embed(&results::ImageDone {
        prompt: &a.prompt,
        provider: image.provider.to_string(),
        ratio: ratio.as_ratio(),
        instance: w.instance(),
        total: since_created(job),
        generation: started.elapsed(),
        filename: &filename,
    });
    let answer = Answer {
        text: results::image_caption(job.user_id),
        embed: Some(embed),
        files: vec![serenity::CreateAttachment::bytes(
            image.bytes.to_vec(),
            filename,
        )],
    };
    w.finish(job, ctx, COMMAND, meter, Ok(()), answer).await
}

/// The image providers for a job with no choice: one drawn with probability proportional to
/// its key's image rate (`draw` in `[0, 1)`), then the others in the default order as
/// fallbacks. A load-blind split in proportion to capacity keeps every lane busy; choosing by
/// momentary room herds jobs onto whichever lane has the fewest permits in use.
pub fn balanced(budget: &[LaneBudget], draw: f64) -> Vec<ProviderKind> {
    let rate = |kind: ProviderKind| {
        budget
            .iter()
            .filter(|l| l.provider == kind && l.lane == LaneKind::Images && l.window_secs > 0.0)
            .map(|l| f64::from(l.requests_limit) / l.window_secs)
            .fold(0.0, f64::max)
    };
    let rates: Vec<(ProviderKind, f64)> = DEFAULT_ORDER.iter().map(|k| (*k, rate(*k))).collect();
    let total: f64 = rates.iter().map(|(_, r)| r).sum();
    let mut order = DEFAULT_ORDER.to_vec();
    if total > 0.0 {
        let mut point = draw.clamp(0.0, 1.0) * total;
        let first = rates
            .iter()
            .find(|(_, r)| {
                point -= r;
                point < 0.0 && *r > 0.0
            })
            .or_else(|| rates.iter().rev().find(|(_, r)| *r > 0.0))
            .map(|(k, _)| *k);
        if let Some(first) = first {
            order.retain(|k| *k != first);
            order.insert(0, first);
        }
    }
    order
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
    }

    fn lane(provider: ProviderKind, remaining: u32, in_flight: u32) -> LaneBudget {
        LaneBudget {
            provider,
            lane: LaneKind::Images,
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
    fn without_a_choice_jobs_split_in_proportion_to_the_keys_rates() {
        // MiniMax 10/min, Stability 150 per 10 s (900/min), OpenAI 5/min.
        let mut mm = lane(ProviderKind::MiniMax, 0, 0);
        mm.requests_limit = 10;
        let mut st = lane(ProviderKind::Stability, 0, 0);
        st.requests_limit = 150;
        st.window_secs = 10.0;
        let mut oa = lane(ProviderKind::OpenAi, 0, 0);
        oa.requests_limit = 5;
        let budget = [mm, st, oa.clone()];
        let mut firsts = std::collections::HashMap::new();
        for i in 0..915 {
            let draw = (f64::from(i) + 0.5) / 915.0;
            *firsts.entry(balanced(&budget, draw)[0]).or_insert(0) += 1;
        }
        assert_eq!(firsts[&ProviderKind::MiniMax], 10);
        assert_eq!(firsts[&ProviderKind::Stability], 900);
        assert_eq!(firsts[&ProviderKind::OpenAi], 5);
        // The others follow as fallbacks, in the default order; a provider without a key is
        // never drawn first.
        assert_eq!(
            balanced(&budget, 0.5),
            vec![
                ProviderKind::Stability,
                ProviderKind::MiniMax,
                ProviderKind::OpenAi
            ]
        );
        assert_eq!(balanced(&[oa], 0.0)[0], ProviderKind::OpenAi);
        assert_eq!(balanced(&[], 0.3), DEFAULT_ORDER.to_vec());
    }
}

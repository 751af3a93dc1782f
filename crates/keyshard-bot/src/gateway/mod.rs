//! The gateway at scale: how many shards this instance runs, the day's session budget from
//! Discord, and the relay that puts every IDENTIFY of the process through the cluster's queue.
//!
//! - this file: [`read_plan`] (`GET /gateway/bot`: Discord's recommended shard count, the
//!   session start limit, the gateway URL) and [`DiscordBudget`], the cluster queue's
//!   [`BudgetSource`] over the same call;
//! - [`relay`]: the loopback websocket relay that holds each IDENTIFY until the queue grants
//!   it (and passes everything else, RESUMEs included, at once), each dispatch through the
//!   edge's [`relay::Sieve`] first.
//!
//! Named by `app`, and by `edge::sieve` for the `Sieve` trait; it knows serenity's HTTP client and the cluster's queue,
//! and leaves commands and the framework to `edge`.

pub mod relay;

use std::sync::Arc;
use std::time::Duration;

use keyshard_cluster::gateway::identify::BudgetFuture;
use keyshard_cluster::BudgetSource;
use keyshard_routing::{shard_count, SessionBudget, ShardSetting};
use poise::serenity_prelude as serenity;

use crate::redact::redact;

/// Attempts at `GET /gateway/bot` during a start before the instance gives up: with waits of
/// 1, 2, 4, 8 and 16 s, half a minute of Discord (or the network) being unreachable, after
/// which a non-zero exit lets the restart policy take over.
const PLAN_ATTEMPTS: u32 = 6;

/// What `GET /gateway/bot` said, and the shard count chosen from it.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The shards this instance runs: all of them, `0..shards`.
    pub shards: u32,
    /// Discord's recommendation.
    pub recommended: u32,
    pub budget: SessionBudget,
    /// The gateway URL, without a query string.
    pub url: String,
}

/// Reads `GET /gateway/bot` (retrying while Discord is unreachable) and picks the shard count.
pub async fn read_plan(http: &serenity::Http, setting: ShardSetting) -> anyhow::Result<Plan> {
    let mut wait = Duration::from_secs(1);
    let mut attempt = 1;
    let bot = loop {
        match http.get_bot_gateway().await {
            Ok(bot) => break bot,
            Err(e) if attempt < PLAN_ATTEMPTS => {
                tracing::warn!(
                    attempt,
                    "GET /gateway/bot failed ({}); trying again in {wait:?}",
                    redact(&e.to_string())
                );
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => anyhow::bail!(
                "cannot read the gateway's session limits (GET /gateway/bot): {}",
                redact(&e.to_string())
            ),
        }
    };
    let budget = budget_of(&bot.session_start_limit);
    Ok(Plan {
        shards: shard_count(setting, bot.shards),
        recommended: bot.shards,
        budget,
        url: bot.url,
    })
}

fn budget_of(limit: &serenity::SessionStartLimit) -> SessionBudget {
    let clamp = |v: u64| v.min(u64::from(u32::MAX)) as u32;
    SessionBudget {
        total: clamp(limit.total),
        remaining: clamp(limit.remaining),
        reset_after: Duration::from_millis(limit.reset_after),
        max_concurrency: clamp(limit.max_concurrency).max(1),
    }
}

/// The day's session budget, read from Discord when the cluster's count is missing (a new day,
/// a Redis that lost it) or at the reserve.
pub struct DiscordBudget(pub Arc<serenity::Http>);

impl BudgetSource for DiscordBudget {
    fn fetch(&self) -> BudgetFuture<'_> {
        Box::pin(async move {
            self.0
                .get_bot_gateway()
                .await
                .map(|bot| budget_of(&bot.session_start_limit))
                .map_err(|e| redact(&e.to_string()))
        })
    }
}

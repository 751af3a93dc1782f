//! `/핑` (`/ping`): which instance answered, gateway latency (the delivering shard's, and every
//! shard's), Redis round trip, and the caller's primary instance.

use keyshard_routing::{primary, Reason};

use crate::context::{Claimed, Context, Error};
use crate::replies::ping::{self, Ping};
use crate::respond;

/// 응답한 인스턴스와 지연 시간을 보여줍니다.
#[poise::command(
    slash_command,
    rename = "핑",
    name_localized("en-US", "ping"),
    description_localized("en-US", "Shows which instance answered and the latencies")
)]
pub async fn ping(ctx: Context<'_>) -> Result<(), Error> {
    let data = ctx.data();
    let (reason, claim_rtt) = match ctx.invocation_data::<Claimed>().await {
        Some(c) => (c.assignment.reason, c.redis_rtt),
        None => (Reason::Primary, None),
    };
    // The owner's claim was a Redis round trip already; a second one before the answer would
    // only widen the window between claim and acknowledgement.
    let redis = match claim_rtt {
        Some(rtt) => Some(rtt),
        None => data.cluster.redis_ping().await.ok(),
    };
    let shards = data
        .state
        .shards
        .views()
        .await
        .into_iter()
        .map(|s| (s.id, s.up, s.latency))
        .collect();
    let view = Ping {
        me: data.config.instance_id,
        count: data.config.instance_count,
        primary: primary(ctx.author().id.get(), data.config.instance_count),
        reason,
        gateway: ctx.ping().await,
        shard: ctx.serenity_context().shard_id.0,
        shards,
        redis,
    };
    respond::say(ctx, ping::ping(&view)).await
}

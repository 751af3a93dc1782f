//! The edge's [`Sieve`]: interactions this instance only waits for as a fallback are kept in
//! the gateway relay, so that serenity never decodes them.
//!
//! Every instance receives every interaction, and with N instances it is the owner of one in
//! N: the others it waits out on the fallback ladder, almost always to find the owner's claim.
//! serenity decodes a dispatch through a `serde_json::Value` and spawns tasks for it, the
//! largest cost of an instance at 1,000 interactions/s. Here a frame is read for the few
//! fields routing needs ([`Head`]); one a peer owns is replaced by a stand-in that carries its
//! sequence number (serenity keeps counting, for heartbeats and RESUME, and ignores its
//! unknown type), and waited for here. Only a fallback that wins its claim, after the owner
//! failed to, decodes the interaction and hands it to poise with its shard's context.
//!
//! Frames the sieve cannot read, commands this build does not know, and interactions this
//! instance answers at once (the owner, the static rule while Redis is away) pass to serenity
//! as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use poise::serenity_prelude as serenity;
use serde::Deserialize;

use crate::clock::unix_ms;
use crate::context::{Data, Error};
use crate::gateway::relay;

/// The shards' frameworks and contexts, and the data their claims need.
pub struct Sieve {
    data: Data,
    shards: Mutex<HashMap<u32, Shard>>,
}

/// One shard's framework, and the serenity context its last READY or RESUMED came with (what
/// poise needs to run a command: HTTP, cache, the shard's messenger).
struct Shard {
    poise: Arc<poise::Framework<Data, Error>>,
    ctx: Option<serenity::Context>,
}

/// The fields of a dispatch that routing needs. Borrowed: a frame whose strings need
/// unescaping fails to read and passes to serenity.
#[derive(Deserialize)]
struct Head<'a> {
    s: Option<u64>,
    #[serde(borrow)]
    t: Option<&'a str>,
    #[serde(borrow)]
    d: Option<InteractionHead<'a>>,
}

#[derive(Deserialize)]
struct InteractionHead<'a> {
    #[serde(rename = "type")]
    kind: Option<u8>,
    #[serde(borrow)]
    id: Option<&'a str>,
    #[serde(borrow)]
    member: Option<MemberHead<'a>>,
    #[serde(borrow)]
    user: Option<UserHead<'a>>,
    #[serde(borrow)]
    data: Option<DataHead<'a>>,
}

#[derive(Deserialize)]
struct MemberHead<'a> {
    #[serde(borrow)]
    user: Option<UserHead<'a>>,
}

#[derive(Deserialize)]
struct UserHead<'a> {
    id: &'a str,
}

#[derive(Deserialize)]
struct DataHead<'a> {
    name: &'a str,
}

/// A slash command's dispatch, as routing sees it.
#[derive(Debug, PartialEq, Eq)]
struct Routed<'a> {
    seq: u64,
    id: u64,
    user: u64,
    name: &'a str,
}

/// The application command (`type` 2) an `INTERACTION_CREATE` frame carries, if it is one.
fn routed(frame: &str) -> Option<Routed<'_>> {
    let head: Head<'_> = serde_json::from_str(frame).ok()?;
    if head.t? != "INTERACTION_CREATE" {
        return None;
    }
    let d = head.d?;
    if d.kind? != 2 {
        return None;
    }
    // In a guild the user is the member's; in a DM, `user`.
    let user = d.member.and_then(|m| m.user).or(d.user)?;
    Some(Routed {
        seq: head.s?,
        id: d.id?.parse().ok()?,
        user: user.id.parse().ok()?,
        name: d.data?.name,
    })
}

/// A kept interaction, as it arrived.
struct Kept {
    id: u64,
    user: u64,
    name: String,
    receipt: keyshard_cluster::Receipt,
}

/// What serenity reads instead of a kept dispatch: the same sequence number, a type it does
/// not know (it logs those at debug and dispatches nothing).
fn stand_in(seq: u64) -> String {
    format!(r#"{{"op":0,"s":{seq},"t":"KEYSHARD_FALLBACK","d":{{}}}}"#)
}

/// The interaction of a kept frame, decoded for poise.
#[derive(Deserialize)]
struct Dispatch {
    d: serenity::Interaction,
}

impl Sieve {
    pub fn new(data: Data) -> Arc<Sieve> {
        Arc::new(Sieve {
            data,
            shards: Mutex::new(HashMap::new()),
        })
    }

    /// Shard `shard`'s framework, once initialised.
    pub(super) fn framework(&self, shard: u32, poise: Arc<poise::Framework<Data, Error>>) {
        self.lock().insert(shard, Shard { poise, ctx: None });
    }

    /// The context shard `shard`'s last READY or RESUMED came with.
    pub(super) fn context(&self, shard: u32, ctx: &serenity::Context) {
        if let Some(s) = self.lock().get_mut(&shard) {
            s.ctx = Some(ctx.clone());
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Shard>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits its turn for a kept interaction, claims it, and hands it to poise if won.
    async fn keep(self: Arc<Self>, shard: u32, frame: String, routed: Kept) {
        let Kept {
            id,
            user,
            name,
            receipt,
        } = routed;
        let Some(decided) = super::decide(&self.data, &name, id, user, receipt).await else {
            return;
        };
        let interaction = match serde_json::from_str::<Dispatch>(&frame) {
            Ok(dispatch) => dispatch.d,
            Err(e) => {
                // serenity could not have read it either; the claim is this instance's, so
                // nobody answers. Never expected from Discord.
                tracing::error!(interaction_id = id, "cannot decode a won interaction: {e}");
                return;
            }
        };
        let shard_state = {
            let shards = self.lock();
            shards
                .get(&shard)
                .and_then(|s| Some((s.poise.clone(), s.ctx.clone()?)))
        };
        let Some((poise, ctx)) = shard_state else {
            tracing::error!(
                shard,
                interaction_id = id,
                "no context for the shard of a won interaction"
            );
            return;
        };
        self.data.state.decided.put(id, decided);
        let event = serenity::FullEvent::InteractionCreate { interaction };
        serenity::Framework::dispatch(&*poise, ctx, event).await;
    }
}

impl relay::Sieve for Arc<Sieve> {
    fn sift(&self, shard: u32, frame: &str) -> Option<String> {
        let routed = routed(frame)?;
        let known = {
            let shards = self.lock();
            super::knows(&shards.get(&shard)?.poise, routed.name)
        };
        if !known {
            return None;
        }
        let receipt = self.data.cluster.receive(routed.id, routed.user, unix_ms());
        if receipt.delay().is_zero() {
            // The owner (or the static rule): serenity and the edge answer it at once.
            return None;
        }
        let kept = Kept {
            id: routed.id,
            user: routed.user,
            name: routed.name.to_owned(),
            receipt,
        };
        tokio::spawn(self.clone().keep(shard, frame.to_owned(), kept));
        Some(stand_in(routed.seq))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slash_command_is_read_for_routing_and_anything_else_passes() {
        let guild = r#"{"t":"INTERACTION_CREATE","s":42,"op":0,"d":{"type":2,"id":"1300000000000000001","guild_id":"7","member":{"user":{"id":"1160000000000000164","username":"a"},"roles":[]},"data":{"id":"9","name":"핑","type":1},"token":"x"}}"#;
        assert_eq!(
            routed(guild),
            Some(Routed {
                seq: 42,
                id: 1_300_000_000_000_000_001,
                user: 1_160_000_000_000_000_164,
                name: "핑"
            })
        );
        let dm = r#"{"op":0,"s":7,"t":"INTERACTION_CREATE","d":{"id":"5","type":2,"user":{"id":"6"},"data":{"name":"채팅","options":[{"name":"프롬프트","type":3,"value":"안녕 \"세상\""}]}}}"#;
        assert_eq!(
            routed(dm),
            Some(Routed {
                seq: 7,
                id: 5,
                user: 6,
                name: "채팅"
            })
        );
        // Autocomplete (4), another event, no sequence, an unreadable frame: serenity's.
        let autocomplete = guild.replace(r#""type":2,"#, r#""type":4,"#);
        let ready = r#"{"t":"READY","s":1,"op":0,"d":{"v":10,"session_id":"s","user":{"id":"1"}}}"#;
        let no_seq = guild.replace(r#""s":42,"#, "");
        for frame in [
            &autocomplete[..],
            ready,
            &no_seq[..],
            "{not json",
            r#"{"t":"INTERACTION_CREATE","s":1,"d":[]}"#,
        ] {
            assert_eq!(routed(frame), None, "{frame}");
        }
    }

    #[test]
    fn the_stand_in_carries_the_sequence_and_serenity_reads_it_as_unknown() {
        let frame = stand_in(1234);
        let event: serenity::GatewayEvent = serde_json::from_str(&frame).unwrap();
        match event {
            serenity::GatewayEvent::Dispatch(seq, serenity::Event::Unknown(_)) => {
                assert_eq!(seq, 1234)
            }
            other => panic!("serenity read the stand-in as {other:?}"),
        }
    }

    #[test]
    fn a_kept_frame_decodes_to_the_interaction_serenity_would_have_read() {
        let frame = r#"{"t":"INTERACTION_CREATE","s":42,"op":0,"d":{"type":2,"id":"1300000000000000001","application_id":"3","guild_id":"7","channel_id":"8","member":{"user":{"id":"1160000000000000164","username":"a","discriminator":"0","global_name":null,"avatar":null},"roles":[],"joined_at":"2024-01-01T00:00:00+00:00","deaf":false,"mute":false,"flags":0},"data":{"id":"9","name":"핑","type":1},"token":"x","version":1,"locale":"ko","app_permissions":"0","entitlements":[],"attachment_size_limit":8388608,"authorizing_integration_owners":{}}}"#;
        let ours = serde_json::from_str::<Dispatch>(frame).unwrap().d;
        let theirs = match serde_json::from_str::<serenity::GatewayEvent>(frame).unwrap() {
            serenity::GatewayEvent::Dispatch(_, serenity::Event::InteractionCreate(e)) => {
                e.interaction
            }
            other => panic!("{other:?}"),
        };
        let (serenity::Interaction::Command(ours), serenity::Interaction::Command(theirs)) =
            (ours, theirs)
        else {
            panic!("not a command");
        };
        assert_eq!(ours.id, theirs.id);
        assert_eq!(ours.user.id, theirs.user.id);
        assert_eq!(ours.user.id.get(), 1_160_000_000_000_000_164);
        assert_eq!(ours.data.name, theirs.data.name);
        assert_eq!(ours.guild_id, theirs.guild_id);
    }
}

//! Posting a job's answer to Discord: the deferred reply is edited (follow-ups carry text past
//! 2,000 characters); once the interaction token is dead (15 minutes, or Discord refuses it),
//! the answer goes to the channel as a normal message that mentions the user.

use std::time::Duration;

use keyshard_cluster::Job;
use poise::serenity_prelude as serenity;
use serenity::{
    CreateAllowedMentions, CreateAttachment, CreateEmbed, CreateInteractionResponseFollowup,
    CreateMessage, EditInteractionResponse,
};

use crate::clock::unix_ms;
use crate::replies::split_message;

/// Discord's message content limit, in characters.
pub const MESSAGE_LIMIT: usize = 2_000;

/// Interaction tokens live 15 minutes; a minute of margin keeps a long upload from racing
/// the expiry.
const TOKEN_LIFETIME: Duration = Duration::from_secs(14 * 60);

/// What to post.
#[derive(Default)]
pub struct Answer {
    pub text: String,
    pub embed: Option<CreateEmbed>,
    pub files: Vec<CreateAttachment>,
}

impl Answer {
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            ..Self::default()
        }
    }
}

/// Whether the interaction token can still edit the reply.
pub fn token_alive<A>(job: &Job<A>) -> bool {
    unix_ms().saturating_sub(job.created_ms) < TOKEN_LIFETIME.as_millis() as u64
}

/// Discord refused the token: expired (50027 invalid webhook token), unknown webhook (10015)
/// or interaction (10062), or unauthorized.
fn token_refused(e: &serenity::Error) -> bool {
    match e {
        serenity::Error::Http(serenity::HttpError::UnsuccessfulRequest(r)) => {
            matches!(r.error.code, 50027 | 10015 | 10062) || r.status_code.as_u16() == 401
        }
        _ => false,
    }
}

/// Posts the final answer. Any job will do, whether its arguments were read or not (`A`):
/// only its envelope (token, channel, user) is needed.
pub async fn deliver<A: Sync>(
    http: &serenity::Http,
    job: &Job<A>,
    answer: Answer,
) -> Result<(), serenity::Error> {
    if token_alive(job) {
        match edit_reply(http, job, &answer).await {
            Ok(()) => return Ok(()),
            Err(e) if token_refused(&e) => {
                tracing::info!(
                    job = job.id,
                    "the interaction token was refused; posting to the channel instead"
                );
            }
            Err(e) => return Err(e),
        }
    }
    to_channel(http, job, answer).await
}

async fn edit_reply<A: Sync>(
    http: &serenity::Http,
    job: &Job<A>,
    answer: &Answer,
) -> Result<(), serenity::Error> {
    let parts = split_message(&answer.text, MESSAGE_LIMIT);
    let mut edit = EditInteractionResponse::new().content(parts[0].clone());
    if let Some(embed) = &answer.embed {
        edit = edit.embed(embed.clone());
    }
    for f in &answer.files {
        edit = edit.new_attachment(f.clone());
    }
    http.edit_original_interaction_response(&job.token, &edit, answer.files.clone())
        .await?;
    for part in &parts[1..] {
        let followup = CreateInteractionResponseFollowup::new().content(part.clone());
        http.create_followup_message(&job.token, &followup, Vec::new())
            .await?;
    }
    Ok(())
}

async fn to_channel<A: Sync>(
    http: &serenity::Http,
    job: &Job<A>,
    answer: Answer,
) -> Result<(), serenity::Error> {
    let channel = serenity::ChannelId::new(job.channel_id);
    let mention = format!("<@{}> ", job.user_id);
    let parts = split_message(&answer.text, MESSAGE_LIMIT - mention.len());
    let allowed = CreateAllowedMentions::new().users([serenity::UserId::new(job.user_id)]);
    let mut first = CreateMessage::new()
        .content(format!("{mention}{}", parts[0]))
        .allowed_mentions(allowed.clone());
    if let Some(embed) = answer.embed {
        first = first.embed(embed);
    }
    http.send_message(channel, answer.files, &first).await?;
    for part in &parts[1..] {
        let msg = CreateMessage::new()
            .content(part.clone())
            .allowed_mentions(CreateAllowedMentions::new());
        http.send_message(channel, Vec::new(), &msg).await?;
    }
    Ok(())
}

/// A progress edit of the deferred reply (best effort: a failed progress edit changes nothing).
pub async fn progress(http: &serenity::Http, job: &Job, text: &str) {
    if !token_alive(job) {
        return;
    }
    let edit = EditInteractionResponse::new().content(text);
    if let Err(e) = http
        .edit_original_interaction_response(&job.token, &edit, Vec::new())
        .await
    {
        tracing::debug!(
            job = job.id,
            "progress edit failed: {}",
            crate::redact::redact(&e.to_string())
        );
    }
}

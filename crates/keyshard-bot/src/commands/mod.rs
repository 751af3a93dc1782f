//! The slash commands, one module each. Names are Korean (the default Discord shows) with
//! English localisations; the logic they need lives in the routing, cluster and provider crates.
//!
//! A command stays thin: it checks its input, acknowledges, and queues the work (or reads and
//! shows a view). Its texts come from `replies`, the sending from `respond`, the shared types
//! from `context`; nothing here names `edge`.

use crate::context::{Data, Error};

mod admin;
mod chat;
mod choice;
mod image;
mod ping;
mod queue;
mod video;

/// Every command this bot registers.
pub fn all() -> Vec<poise::Command<Data, Error>> {
    vec![
        chat::chat(),
        image::image(),
        video::video(),
        ping::ping(),
        admin::loadbalancer(),
        admin::assign(),
        admin::performance(),
    ]
}

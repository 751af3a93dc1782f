//! The slash commands, one module each. Names are Korean (the default Discord shows) with
//! English localisations; the logic they need lives in the routing, cluster and provider crates.

use crate::edge::{Data, Error};

pub mod admin;
mod chat;
mod choice;
mod image;
mod ping;
pub mod queue;
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

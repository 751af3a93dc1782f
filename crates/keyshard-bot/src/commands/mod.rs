//! The slash commands, one module each. Names are Korean (the default Discord shows) with
//! English localisations; the logic they need lives in the routing, cluster and provider crates.

use crate::edge::{Data, Error};

mod ping;

/// Every command this bot registers.
pub fn all() -> Vec<poise::Command<Data, Error>> {
    vec![ping::ping()]
}

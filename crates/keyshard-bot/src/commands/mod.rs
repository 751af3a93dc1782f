//! The slash commands, one module each. Names are Korean (the default Discord shows) with
//! English localisations; the logic they need lives in the routing, cluster and provider crates.
//!
//! A command stays thin: it checks its input, acknowledges, and queues the work (or reads and
//! shows a view). Its texts come from `replies`, the sending from `respond`, the shared types
//! from `context`; nothing here names `edge`. Option choices and job arguments are
//! `keyshard-types`' enums and structs (choices through `choice::Choice`), the very values
//! the job carries to `work`, which nothing here names either.

use crate::context::{Data, Error};

mod admin;
mod chat;
mod choice;
mod image;
mod ping;
mod queue;
mod usage;
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
        usage::usage(),
    ]
}

/// Whether the command (by its stable name, `context::command_name`) answers through a job
/// rather than at once: its usage-ledger row comes from the job's final run.
pub fn queues_a_job(command: &str) -> bool {
    matches!(command, "chat" | "image" | "video")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slash commands exactly as they are registered with Discord. A change here changes
    /// what every user sees (and makes Discord re-register the commands), so it is deliberate:
    /// update `tests/fixtures/commands.json` together with the command, never by accident.
    #[test]
    fn the_registered_commands_do_not_change_by_accident() {
        let registered =
            serde_json::to_value(poise::builtins::create_application_commands(&all())).unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/commands.json");
        if std::env::var_os("KEYSHARD_WRITE_FIXTURES").is_some() {
            let text = serde_json::to_string_pretty(&registered).unwrap() + "\n";
            std::fs::write(path, text).unwrap();
        }
        let expected: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(registered, expected);
    }
}

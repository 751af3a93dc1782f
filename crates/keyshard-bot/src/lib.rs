//! keyshard-bot: the Discord edge of a keyshard instance and the `keyshard` binary's library.
//!
//! One process of the cluster: it opens a gateway session (serenity + poise), receives every
//! interaction the bot gets, and for each one runs route → claim → answer. Only this crate
//! (and the simulator) knows Discord types; routing, cluster state and providers live in
//! their own crates and are driven from here.
//!
//! - [`config`]: the one typed `Config`, from the environment and `.env.multi`.
//! - [`app`]: `run(config, shutdown)`: wires the cluster handle, the HTTP server and the bot,
//!   and drains on shutdown.
//! - [`daily_store`]: the cluster's Redis counter as the providers' daily request store.
//! - [`edge`]: the poise framework: the claim as a framework-wide check, error handling, the
//!   Discord client pointed at Discord or at `DISCORD_API_BASE`.
//! - [`commands`]: the slash commands, one module each.
//! - [`work`]: the job handler: provider calls with this instance's keys and delivery.
//! - [`replies`]: every message a Discord user reads, in Korean.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus series this instance exports.
//! - [`cli`]: the `status` and `assign` views for operators.
//! - [`redact`]: keeps interaction tokens out of error text.

pub mod app;
pub mod cli;
pub mod commands;
pub mod config;
pub mod daily_store;
pub mod edge;
pub mod http;
pub mod metrics;
pub mod redact;
pub mod replies;
pub mod work;

pub use app::run;
pub use config::{Config, ConfigError, ViewConfig};

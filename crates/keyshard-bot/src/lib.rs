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
//! - [`edge`]: the poise framework: the claim as a framework-wide check, `on_error` (the one
//!   place errors become Korean messages), one Discord client per shard pointed at Discord or
//!   at `DISCORD_API_BASE`, and the command set registered once for the cluster.
//! - [`gateway`]: the shard plan from `GET /gateway/bot`, and the relay that holds every
//!   IDENTIFY of the process until the cluster's queue grants it.
//! - [`shards`]: the shard table (up or not, latency, what an IDENTIFY waits for).
//! - [`commands`]: the slash commands, one module each: check input, acknowledge, queue.
//! - [`context`]: `Data`, `Context`, `Error`, `Claimed`, `EdgeState`, shared by all of the above.
//! - [`respond`]: how an interaction is answered (ephemeral, deferred, public, embed).
//! - [`daily_store`]: the cluster's Redis counter as the providers' daily request store.
//! - [`key_health`]: the providers' key health kept in step with the cluster-wide
//!   out-of-service marks, and the kinds this instance's keys can serve told to the readers.
//! - [`work`]: the job handler: provider calls with this instance's keys and delivery.
//! - [`waiting`]: honest waiting: one pass per instance edits its waiting jobs' replies with
//!   their place and expected wait, fenced so that no such edit lands after a job's answer.
//! - [`ledger`]: the usage ledger from the bot's side: each answered interaction's row,
//!   priced and recorded with the step that marks it answered (claim confirmation or done
//!   marker), exactly once.
//! - [`replies`]: every message a Discord user reads, in Korean.
//! - [`http`]: `/healthz`, `/readyz`, `/metrics`.
//! - [`metrics`]: the Prometheus series this instance exports.
//! - [`cli`]: the `status` and `assign` views, `migrate` and `usage`, for operators.
//! - [`logging`]: the tracing setup; every log line passes a scrubber for secrets.
//! - [`redact`]: the scrubbing itself: known secrets, interaction tokens in fields and URLs.
//! - [`clock`]: the one reading of the wall clock.
//!
//! Imports run one way: `app → {edge, gateway}`, `edge → commands → {context, respond,
//! replies}`, `gateway → shards`, `work → {replies, clock, redact, ledger, waiting}`,
//! `waiting → {replies, clock, redact}`; `context`, `shards`, `replies`, `clock`, `redact`,
//! `config`, `metrics` and `ledger` name no module above them, and nothing but `app` names
//! `edge` or `gateway`.

pub mod app;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod config;
pub mod context;
pub mod daily_store;
pub mod edge;
pub mod gateway;
pub mod http;
pub mod key_health;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod quota;
pub mod redact;
pub mod replies;
pub mod respond;
pub mod shards;
pub mod waiting;
pub mod work;

pub use app::run;
pub use config::{Config, ConfigError, LedgerConfig, ViewConfig};

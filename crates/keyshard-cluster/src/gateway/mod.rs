//! The gateway's shared state in Redis: one IDENTIFY queue for the whole cluster, the restart
//! backoff of each instance, and the command set registered once.
//!
//! - [`identify`]: [`IdentifyQueue`]: every IDENTIFY of every instance waits here for its
//!   bucket's slot (`{c}:gw:identify:{bucket}`, one per window) and a unit of the day's
//!   session starts (`{c}:gw:budget`), never below the reserve; a restart that followed a
//!   crash waits its backoff first (`{c}:gw:restarts:{id}`). Without Redis, one IDENTIFY per
//!   window from this process. The decisions are `keyshard-routing::gateway`'s.
//! - [`commands`]: [`sync_commands`]: a hash of the command set in `{c}:commands:hash`; one
//!   instance, under `{c}:commands:lock`, registers when it changed.
//!
//! Nothing here knows Discord: the session budget comes in through [`BudgetSource`] as
//! plain data, and registering is a closure the bot passes in.

pub mod commands;
pub mod identify;

pub use commands::{sync_commands, CommandSync, COMMANDS_LOCK_TTL};
pub use identify::{BudgetSource, Grant, IdentifyQueue, IdentifyWait, RESTARTS_TTL};

//! Integration tests of keyshard-sim: the fake Discord driven by a minimal websocket client
//! and reqwest, with every payload checked against serenity's own types; and (ignored unless
//! the `keyshard` binary is built) the orchestrator and scenario against real instances.

mod attach;
mod cluster;
mod discord;
mod gateway;

//! keyshard-sim: a faithful fake Discord, fake AI providers, and an orchestrator that runs N
//! real `keyshard` processes against them and writes a JSON report.
//!
//! - [`discord`]: the fake Discord (REST + gateway), attributing every call to an instance and
//!   recording every interaction's callbacks and messages.
//! - [`providers`]: fake OpenAI / MiniMax / Stability endpoints.
//! - [`cluster`]: [`cluster::ProcessCluster`], N real `keyshard` processes with their env,
//!   readiness, kill/terminate/restart, logs in a run directory.
//! - [`scenario`]: the load scenario (seeded users, commands, open-loop arrivals, chaos) and
//!   [`scenario::run_scenario`], the one call the CLI and the end-to-end tests make, in phases:
//!   start → drive → drain → collect.
//! - [`judge`]: whether each answer came from the right instance, decided from what the
//!   simulator observed itself (its kills, the heartbeats it read from Redis as plain data),
//!   never by calling the code under test.
//! - [`ledger`]: the usage ledger read back from Postgres (`psql`, plain SQL) and judged
//!   against the simulator's own record of answered interactions (`ledger.*`).
//! - [`quota`]: refusals told from answers by their shape, and `quota.over_limit` from the
//!   simulator's own tally against the run's configured limits.
//! - [`report`]: the JSON report (DESIGN.md §6 field names): its model, its computation from
//!   the records and the judge, and the text a person reads.
//! - [`wiring`]: the fake providers plugged into a scenario (per-instance keys, capacity, 429s).
//! - [`attach`]: the fakes as a long-lived service for instances the simulator did not start
//!   (the compose services), with a control API that drives runs against them.

pub mod attach;
pub mod cluster;
pub mod discord;
pub mod judge;
pub mod ledger;
pub mod providers;
pub mod quota;
pub mod report;
pub mod scenario;
pub mod waiting;
pub mod wiring;

/// A loopback HTTP client. reqwest is built without a default crypto provider (the workspace
/// picks ring once for every crate), so install it before the first client is built; plain
/// `http://` to the fakes never uses it, but reqwest refuses to build without one.
pub fn http_client() -> reqwest::Client {
    // Fails only when a provider is already installed, which is what we want.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("building a reqwest client with an installed crypto provider")
}

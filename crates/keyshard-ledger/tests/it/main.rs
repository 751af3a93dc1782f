//! Integration tests of the ledger against a real Postgres (`keyshard_testkit::PostgresServer`,
//! shared by the tests running at once, one database each) and, for the writer, a real Redis.
//! Tests that stop Postgres start their own server.
//!
//! Real time is used: the outages are real processes stopping and starting. Conditions are
//! awaited by polling with a deadline, never by fixed sleeps; the only sleeps pace rows that
//! keep arriving during an outage.

mod quota;
mod read;
mod retention;
mod schema;
mod size;
mod support;
mod write;
mod writer;

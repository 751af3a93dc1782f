//! End-to-end tests: real `keyshard` processes against a real `redis-server` (and, for the
//! usage ledger, a real Postgres) and the fake Discord of `keyshard-sim`.

mod commands;
mod fair;
mod gateway;
mod lanes;
mod ledger;
mod logs;
mod ping;
mod quota;
mod scenarios;
mod support;
mod waiting;

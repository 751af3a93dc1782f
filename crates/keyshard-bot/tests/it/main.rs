//! End-to-end tests: real `keyshard` processes against a real `redis-server` and the fake
//! Discord of `keyshard-sim`.

mod commands;
mod gateway;
mod logs;
mod ping;
mod scenarios;
mod support;

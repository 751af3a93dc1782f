//! keyshard-sim: a faithful fake Discord, fake AI providers, and an orchestrator that runs N
//! real `keyshard` processes against them and writes a JSON report.

pub mod discord;
pub mod providers;

//! Integration tests of keyshard-sim: the fake Discord driven by a minimal websocket client
//! and reqwest, with every payload checked against serenity's own types.

mod discord;

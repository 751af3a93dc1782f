//! Rebuilds the crate when `migrations/` changes: `sqlx::migrate!` embeds the folder at
//! compile time, and on stable Rust a macro cannot tell Cargo which files it read, so without
//! this a new migration would be missing from the binary until something else changed.

fn main() {
    // A directory here makes Cargo compare the newest modification time of everything in it.
    println!("cargo:rerun-if-changed=../../migrations");
}

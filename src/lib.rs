//! dbwarden keeps a SQLite event store (Healarr's layout) alive and correct: every
//! acknowledged write durable, a materialized corruption summary that is exact at all
//! times, and an HTTP API that answers from it.
//!
//! The binary is thin; everything lives here so tests and benchmarks drive the same
//! code. Start with [`supervisor`] for how the parts fit together.

pub mod api;
pub mod auditor;
pub mod backup;
pub mod checkpointer;
pub mod config;
pub mod cron;
pub mod db;
pub mod events;
pub mod exit;
pub mod jobs;
pub mod logging;
pub mod metrics;
pub mod notifier;
pub mod privileges;
pub mod restore;
pub mod scheduler;
pub mod supervisor;
pub mod time;
pub mod writer;

/// The release, and the git revision it was built from (`-dirty` when the work tree
/// had changes; `unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DBWARDEN_REVISION"),
    ")"
);

//! dbwarden keeps a SQLite event store (Healarr's layout) alive and correct: every
//! acknowledged write durable, a materialized corruption summary that is exact at all
//! times, and an HTTP API that answers from it.
//!
//! The binary is thin; everything lives here so tests and benchmarks drive the same
//! code. Start with [`supervisor`] for how the parts fit together.
//!
//! # What is public, and for whom
//!
//! - **Rust jobs** (a program that embeds the service, as `examples/quiet_store.rs`
//!   does) need [`Service`] (built with [`Service::builder`], given jobs with
//!   [`supervisor::ServiceBuilder::job`], stopped with [`Service::shutdown`]),
//!   [`JobSpec`], the [`Job`] trait, [`JobContext`]
//!   and what a run returns ([`JobReport`], [`JobResult`], [`JobFuture`]), plus
//!   [`config::Settings`] and [`cron::Schedule`] to build them. These are re-exported
//!   here and are the surface we keep stable.
//! - **The binary, the integration tests and the benchmarks** drive the rest through
//!   the modules below (`db`, `backup`, `restore`, `writer`, ...): public so that
//!   `tests/` exercises the real code, not a stable API.
//! - Everything else (`time`, `scheduler`, and the inner files of `db`, `backup`,
//!   `jobs` and `api` that nothing outside uses) is `pub(crate)`.

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
pub mod replica;
pub mod restore;
pub(crate) mod scheduler;
pub mod supervisor;
pub(crate) mod time;
pub mod writer;

pub use jobs::{Job, JobContext, JobFuture, JobReport, JobResult, JobSpec};
pub use supervisor::Service;

/// The release, and the git revision it was built from (`-dirty` when the work tree
/// had changes; `unknown` outside a git checkout).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("DBWARDEN_REVISION"),
    ")"
);

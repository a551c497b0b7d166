//! A Rust job registered beside the built-in and `jobs/*.toml` ones.
//!
//! `quiet-store` is a dead man's switch for the program that writes the events: if the
//! newest event id has not moved for `QUIET_RUNS` runs in a row, it alerts through the
//! configured channels (and the alert resolves once events flow again).
//!
//! ```text
//! cargo run --example quiet_store -- --config config.toml
//! ```
//! `QUIET_SCHEDULE` overrides the schedule (default hourly) and `QUIET_RUNS` the
//! number of quiet runs (default 24); the rest comes from the usual settings.

use std::sync::Mutex;

use anyhow::Context;
use dbwarden::config::{ConfigSource, Settings};
use dbwarden::cron::Schedule;
use dbwarden::db::queries;
use dbwarden::jobs::{Job, JobContext, JobFuture, JobReport, JobSpec};
use dbwarden::notifier::Severity;
use dbwarden::supervisor::Service;

struct QuietStore {
    quiet_runs: u32,
    /// (newest event id seen, runs it has not moved)
    seen: Mutex<(i64, u32)>,
}

impl QuietStore {
    fn new(quiet_runs: u32) -> QuietStore {
        QuietStore {
            quiet_runs,
            seen: Mutex::new((-1, 0)),
        }
    }
}

impl Job for QuietStore {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            let newest = ctx
                .readers()
                .run(|conn| queries::max_event_id(conn))
                .await
                .map_err(|e| JobReport::from(format!("reading the newest event: {e}")))?;
            let quiet = {
                let mut seen = self
                    .seen
                    .lock()
                    .map_err(|_| JobReport::from("state lock poisoned"))?;
                seen.1 = if newest == seen.0 { seen.1 + 1 } else { 0 };
                seen.0 = newest;
                seen.1
            };
            let key = format!("quiet-store:{}", ctx.name());
            if quiet >= self.quiet_runs {
                ctx.notifier().alert(
                    &key,
                    Severity::Warning,
                    format!("no new event for {quiet} runs (newest id {newest})"),
                    serde_json::json!({ "newest_event_id": newest, "quiet_runs": quiet }),
                );
            } else if quiet == 0 {
                ctx.notifier().resolve(&key, "events are flowing again");
            }
            Ok(JobReport::from(format!(
                "newest event id {newest}; quiet for {quiet} run(s)"
            )))
        })
    }
}

fn env_or<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T> {
    match std::env::var(key) {
        Ok(v) => v
            .parse()
            .map_err(|_| anyhow::anyhow!("{key}: `{v}` is not valid")),
        Err(_) => Ok(default),
    }
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let source = match (args.next().as_deref(), args.next()) {
        (Some("--config"), Some(path)) => ConfigSource::Explicit(path.into()),
        _ => ConfigSource::Default,
    };
    let settings = Settings::load(&source).context("invalid settings")?;
    let _logs = dbwarden::logging::init(&settings.logging)?;
    let job = JobSpec::new(
        "quiet-store",
        Schedule::parse(&env_or("QUIET_SCHEDULE", "0 0 * * * *".to_string())?)
            .map_err(|reason| anyhow::anyhow!("QUIET_SCHEDULE: {reason}"))?,
        QuietStore::new(env_or("QUIET_RUNS", 24)?),
    );
    actix_rt::System::new().block_on(async move {
        let service = Service::builder(settings)
            .job(job)
            .start()
            .await
            .context("dbwarden could not start")?;
        println!("listening on {}", service.addr);
        tokio::signal::ctrl_c()
            .await
            .context("waiting for Ctrl-C")?;
        service.shutdown(true).await;
        Ok(())
    })
}

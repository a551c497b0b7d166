//! The cron scheduler (tokio-cron-scheduler). Each tick only sends a message to the
//! actor that owns the work; it never does the work itself.
//!
//! Schedules are UTC, six fields with seconds first (`sec min hour dom month dow`); a
//! seventh (year) is accepted. Day-of-month and day-of-week combine with AND. They are
//! validated when settings load, with the same parser the scheduler uses, so a bad
//! expression stops startup with the key and the parser's reason.
//!
//! A job still running when its next tick comes is not started twice: the tick is
//! logged and counted as skipped. Missed ticks (the process was down) are not replayed.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use croner::parser::{CronParser, Seconds};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::notifier::{Notifier, Severity};

/// Parses a schedule the way the scheduler will; the error is the parser's reason.
pub fn validate_schedule(expr: &str) -> Result<(), String> {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("`{expr}` is not a 6-field cron expression with seconds (UTC): {e}"))
}

pub type JobFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// One scheduled job: a name, a schedule and what a tick does.
pub struct JobSpec {
    pub name: String,
    pub schedule: String,
    pub run: Arc<dyn Fn() -> JobFuture + Send + Sync>,
}

/// Counters per job, for logs now and metrics later.
#[derive(Debug, Default)]
pub struct JobStats {
    pub runs: AtomicU64,
    pub failures: AtomicU64,
    pub skipped: AtomicU64,
    running: AtomicBool,
}

pub struct Scheduler {
    inner: JobScheduler,
    pub stats: Vec<(String, Arc<JobStats>)>,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    #[error("job {job}: {reason}")]
    Schedule { job: String, reason: String },
}

impl Scheduler {
    /// Registers the jobs and starts ticking.
    pub async fn start(
        jobs: Vec<JobSpec>,
        notifier: Notifier,
    ) -> Result<Scheduler, SchedulerError> {
        let inner = JobScheduler::new().await?;
        let mut stats = Vec::new();
        for spec in jobs {
            validate_schedule(&spec.schedule).map_err(|reason| SchedulerError::Schedule {
                job: spec.name.clone(),
                reason,
            })?;
            let job_stats = Arc::new(JobStats::default());
            stats.push((spec.name.clone(), job_stats.clone()));
            let (name, run, notifier) = (spec.name.clone(), spec.run.clone(), notifier.clone());
            let job = Job::new_async(spec.schedule.as_str(), move |_, _| {
                let (name, run, stats, notifier) = (
                    name.clone(),
                    run.clone(),
                    job_stats.clone(),
                    notifier.clone(),
                );
                Box::pin(async move {
                    if stats.running.swap(true, Ordering::AcqRel) {
                        stats.skipped.fetch_add(1, Ordering::Relaxed);
                        notifier.alert(
                            &format!("job_overrun:{name}"),
                            Severity::Warning,
                            format!("job {name} is still running from the previous tick; this tick is skipped"),
                            serde_json::Value::Null,
                        );
                        return;
                    }
                    stats.runs.fetch_add(1, Ordering::Relaxed);
                    match run().await {
                        Ok(message) => tracing::info!(job = %name, %message, "scheduled job done"),
                        Err(message) => {
                            stats.failures.fetch_add(1, Ordering::Relaxed);
                            tracing::error!(job = %name, %message, "scheduled job failed");
                        }
                    }
                    stats.running.store(false, Ordering::Release);
                })
            })?;
            inner.add(job).await?;
        }
        inner.start().await?;
        Ok(Scheduler { inner, stats })
    }

    /// Stops ticking. Jobs already running finish on their own actors.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "scheduler shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::validate_schedule;

    #[test]
    fn schedules_are_six_fields_with_seconds() {
        assert!(validate_schedule("0 */5 * * * *").is_ok());
        assert!(validate_schedule("0 0 3 * * *").is_ok());
        assert!(
            validate_schedule("0 0 3 * * * 2030").is_ok(),
            "a year field is accepted"
        );
        let five = validate_schedule("*/5 * * * *").expect_err("five fields refused");
        assert!(five.contains("*/5 * * * *"), "{five}");
        assert!(validate_schedule("0 61 * * * *").is_err());
        assert!(validate_schedule("every day").is_err());
    }
}

//! The cron scheduler (tokio-cron-scheduler). Each tick only asks the job registry to
//! start a run; it never does the work itself.
//!
//! Schedules are UTC, six fields with seconds first (`sec min hour dom month dow`); a
//! seventh (year) is accepted. Day-of-month and day-of-week combine with AND. They are
//! validated when settings load, with the same parser the scheduler uses, so a bad
//! expression stops startup with the key and the parser's reason.
//!
//! What a tick does when the job is still running (skip or queue) is the registry's
//! policy. Missed ticks (the process was down) are not replayed.

use std::sync::Arc;

use croner::parser::{CronParser, Seconds};
use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::jobs::registry::Registry;

/// The cron dialect of every schedule: seconds required, day-of-month AND day-of-week,
/// as tokio-cron-scheduler reads them.
pub fn cron_parser() -> CronParser {
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
}

/// Parses a schedule the way the scheduler will; the error is the parser's reason.
pub fn validate_schedule(expr: &str) -> Result<(), String> {
    cron_parser()
        .parse(expr)
        .map(|_| ())
        .map_err(|e| format!("`{expr}` is not a 6-field cron expression with seconds (UTC): {e}"))
}

/// The longest gap between two runs of `expr` among its next `fires` runs after
/// `from`; `None` for an invalid expression or one that fires fewer than twice.
pub fn longest_interval(
    expr: &str,
    from: chrono::DateTime<chrono::Utc>,
    fires: usize,
) -> Option<std::time::Duration> {
    let cron = cron_parser().parse(expr).ok()?;
    let times: Vec<_> = cron.iter_after(from).take(fires).collect();
    times
        .windows(2)
        .filter_map(|w| (w[1] - w[0]).to_std().ok())
        .max()
}

/// The running cron scheduler. Each tick only asks the [`Registry`] to run a job.
pub struct Scheduler {
    inner: JobScheduler,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
    #[error("job {job}: {reason}")]
    Schedule { job: String, reason: String },
}

impl Scheduler {
    /// Schedules every enabled job of the registry and starts ticking.
    pub async fn start(registry: Arc<Registry>) -> Result<Scheduler, SchedulerError> {
        let inner = JobScheduler::new().await?;
        for (name, schedule) in registry.schedules() {
            validate_schedule(&schedule).map_err(|reason| SchedulerError::Schedule {
                job: name.clone(),
                reason,
            })?;
            let registry = registry.clone();
            let job = Job::new_async(schedule.as_str(), move |_, _| {
                registry.tick(&name);
                Box::pin(async {})
            })?;
            inner.add(job).await?;
        }
        inner.start().await?;
        Ok(Scheduler { inner })
    }

    /// Stops ticking. Runs already started are the registry's to finish or cancel.
    pub async fn shutdown(mut self) {
        if let Err(e) = self.inner.shutdown().await {
            tracing::warn!(error = %e, "scheduler shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{longest_interval, validate_schedule};

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

    #[test]
    fn longest_interval_of_regular_and_irregular_schedules() {
        let from = chrono::DateTime::parse_from_rfc3339("2026-12-01T00:30:00Z")
            .expect("time")
            .with_timezone(&chrono::Utc);
        let hours = |h: u64| Some(std::time::Duration::from_secs(h * 3600));
        assert_eq!(longest_interval("0 0 */6 * * *", from, 16), hours(6));
        assert_eq!(longest_interval("0 0 2,8 * * *", from, 16), hours(18));
        assert_eq!(longest_interval("0 0 3 * * Sun", from, 8), hours(7 * 24));
        assert_eq!(longest_interval("not cron", from, 8), None);
    }
}

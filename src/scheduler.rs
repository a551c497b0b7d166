//! The cron scheduler (tokio-cron-scheduler). Each tick only asks the job registry to
//! start a run; it never does the work itself.
//!
//! Schedules arrive parsed ([`crate::cron::Schedule`]): a bad expression already
//! stopped startup where it was read, with the key or file and the parser's reason.
//!
//! What a tick does when the job is still running (skip or queue) is the registry's
//! policy. Missed ticks (the process was down) are not replayed.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use crate::jobs::registry::Registry;

/// The running cron scheduler. Each tick only asks the [`Registry`] to run a job.
pub struct Scheduler {
    inner: JobScheduler,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("scheduler: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

impl Scheduler {
    /// Schedules every enabled job of the registry and starts ticking.
    pub async fn start(registry: Arc<Registry>) -> Result<Scheduler, SchedulerError> {
        let inner = JobScheduler::new().await?;
        for (name, schedule) in registry.schedules() {
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

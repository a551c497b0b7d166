//! `dbwarden jobs run NAME`: one run now, wherever the database is served from.
//!
//! If no service holds the database lock, the job runs in this process on a
//! one-shot service (database, actors and registry; no HTTP, no schedule) that shuts
//! down in order afterwards. If the service is running, the run must go through its
//! DbWriter, so the command asks it over HTTP (`POST /api/jobs/NAME/run?wait=true`,
//! with `api.token`), on `api.listen` (loopback when it listens on all addresses).

use crate::cli::client::{ClientError, ServiceClient};
use dbwarden::config::Settings;
use dbwarden::db::lock::{self, LockError};
use dbwarden::jobs::registry::TriggerError;
use dbwarden::jobs::{JobRun, Trigger};
use dbwarden::supervisor::{Mode, Service, StartError};

#[derive(Debug, thiserror::Error)]
pub enum RunNowError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Trigger(#[from] TriggerError),
    #[error(transparent)]
    Lock(#[from] LockError),
    #[error("the job was stopped before it reported")]
    Lost,
    #[error(transparent)]
    Service(#[from] ClientError),
    #[error("the running service answered something that is not a job run: {0}")]
    Answer(String),
}

/// Runs `name` once and returns the finished run.
pub async fn run_now(settings: Settings, name: &str) -> Result<JobRun, RunNowError> {
    match lock::acquire(&settings.database.path) {
        Ok(held) => {
            // Released for the one-shot service, which takes it again.
            drop(held);
            let service = Service::builder(settings)
                .mode(Mode::OneShot)
                .start()
                .await?;
            let finished = service.jobs.trigger(name, Trigger::Cli);
            let run = match finished {
                Ok(rx) => rx.await.map_err(|_| RunNowError::Lost),
                Err(e) => Err(e.into()),
            };
            service.shutdown(true).await;
            run
        }
        Err(LockError::Held { .. }) => ask_service(&settings, name).await,
        Err(e) => Err(e.into()),
    }
}

/// How long a run may take before the service answers: the job's own timeout plus a
/// grace for recording it; built-in jobs (bounded by their actors) get a day.
fn answer_within(settings: &Settings, name: &str) -> std::time::Duration {
    let timeout = dbwarden::jobs::load_dir(&settings.jobs.dir)
        .ok()
        .and_then(|jobs| jobs.into_iter().find(|j| j.name == name))
        .map(|j| j.timeout)
        .unwrap_or(std::time::Duration::from_secs(86_400));
    timeout + std::time::Duration::from_secs(60)
}

async fn ask_service(settings: &Settings, name: &str) -> Result<JobRun, RunNowError> {
    let client = ServiceClient::new(settings).with_timeout(answer_within(settings, name));
    let body = client
        .post(&["api", "jobs", name, "run"], Some("wait=true"))
        .await?;
    serde_json::from_value(body).map_err(|e| RunNowError::Answer(e.to_string()))
}

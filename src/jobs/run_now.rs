//! `dbwarden jobs run NAME`: one run now, wherever the database is served from.
//!
//! If no service holds the database lock, the job runs in this process on a
//! one-shot service (database, actors and registry; no HTTP, no schedule) that shuts
//! down in order afterwards. If the service is running, the run must go through its
//! DbWriter, so the command asks it over HTTP (`POST /api/jobs/NAME/run?wait=true`,
//! with `api.token`), on `api.listen` (loopback when it listens on all addresses).

use std::net::SocketAddr;

use super::registry::TriggerError;
use super::{JobRun, Trigger};
use crate::config::Settings;
use crate::db::lock::{self, LockError};
use crate::supervisor::{Mode, Service, StartError};

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
    #[error("asking the running service at {addr}: {reason}")]
    Service { addr: SocketAddr, reason: String },
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

async fn ask_service(settings: &Settings, name: &str) -> Result<JobRun, RunNowError> {
    let mut addr = settings.listen_addr();
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let fail = |reason: String| RunNowError::Service { addr, reason };
    let mut url = reqwest::Url::parse(&format!("http://{addr}/api/jobs/"))
        .map_err(|e| fail(e.to_string()))?;
    url.path_segments_mut()
        .map_err(|_| fail("bad URL".into()))?
        .pop_if_empty()
        .push(name)
        .push("run");
    url.set_query(Some("wait=true"));
    let mut request = reqwest::Client::new().post(url);
    if let Some(token) = &settings.api.token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.map_err(|e| fail(e.to_string()))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(|e| fail(e.to_string()))?;
    if !status.is_success() {
        let message = body["error"]["message"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        return Err(fail(format!("HTTP {status}: {message}")));
    }
    serde_json::from_value(body).map_err(|e| fail(format!("unexpected answer: {e}")))
}

//! `/api/jobs`: the registry's jobs with their last and next run, their history, and
//! running one now.
//!
//! A scheduled run that found nothing to do (a checkpoint when nothing but job history
//! was committed since the previous one) is not kept in the history, or an idle
//! database would change every few minutes and a streaming replica would upload each
//! change; it is counted in `dbwarden_job_runs_total` and shown as the job's last run.
//!
//! `POST /api/jobs/{name}/run` answers 202 at once with the run's start, or with
//! `?wait=true` 200 with the finished run (its `outcome` says whether it worked: the
//! request succeeded even when the job failed). A job already running answers 409.

use std::collections::BTreeMap;

use actix_web::{web, HttpRequest, HttpResponse};

use super::corruptions::{parse_limit, query_params};
use super::error::ApiError;
use super::schema::ErrorBody;
use super::schema::{JobEntry, JobList, JobRuns, JobStarted};
use super::AppState;
use crate::db::job_runs;
use crate::jobs::registry::TriggerError;
use crate::jobs::{JobRun, Trigger};

impl From<TriggerError> for ApiError {
    fn from(e: TriggerError) -> ApiError {
        match e {
            TriggerError::Unknown(name) => ApiError::NotFound(format!("job `{name}`")),
            TriggerError::AlreadyRunning { .. } => ApiError::Conflict(e.to_string()),
            TriggerError::ShuttingDown => ApiError::ShuttingDown,
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/jobs",
    tag = "jobs",
    responses((status = 200, description = "Every job with its last and next run", body = JobList))
)]
pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    query_params(&req, &[])?;
    let mut last: BTreeMap<String, JobRun> = state
        .readers
        .run(|conn| job_runs::last_runs(conn))
        .await?
        .into_iter()
        .map(|(job, row)| Ok((job, stored_run(row)?)))
        .collect::<Result<_, ApiError>>()?;
    let jobs = state
        .jobs
        .list()
        .into_iter()
        .map(|info| {
            // A scheduled run that changed nothing is not in the history: shown when it
            // is the newest.
            let stored = last.remove(&info.name);
            let unrecorded = state.jobs.last_unrecorded(&info.name);
            let last_run = match (stored, unrecorded) {
                (Some(s), Some(u)) if u.started_at > s.started_at => Some(u),
                (Some(s), _) => Some(s),
                (None, u) => u,
            };
            JobEntry { last_run, info }
        })
        .collect();
    Ok(HttpResponse::Ok().json(JobList { jobs }))
}

/// A history row as a run; a word this build does not know is the service's problem.
fn stored_run(row: crate::db::job_runs::JobRunRow) -> Result<JobRun, ApiError> {
    let job = row.job.clone();
    JobRun::try_from(row)
        .map_err(|e| ApiError::Internal(format!("run history of job `{job}`: {e}")))
}

fn known(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.jobs.list().iter().any(|j| j.name == name) {
        Ok(())
    } else {
        Err(ApiError::NotFound(format!("job `{name}`")))
    }
}

#[utoipa::path(
    get,
    path = "/api/jobs/{name}/runs",
    tag = "jobs",
    params(
        ("name" = String, Path, description = "The job's name"),
        ("limit" = Option<u32>, Query, description = "1 to `api.max_page_size` (default 50)")
    ),
    responses((status = 200, description = "Kept runs, newest first", body = JobRuns))
)]
pub async fn runs(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = query_params(&req, &["limit"])?;
    let limit = parse_limit(&params, state.settings.api.max_page_size)?;
    let name = path.into_inner();
    known(&state, &name)?;
    let job = name.clone();
    let runs = state
        .readers
        .run(move |conn| job_runs::runs(conn, &job, limit))
        .await?
        .into_iter()
        .map(stored_run)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(HttpResponse::Ok().json(JobRuns { job: name, runs }))
}

#[utoipa::path(
    post,
    path = "/api/jobs/{name}/run",
    tag = "jobs",
    params(
        ("name" = String, Path, description = "The job's name"),
        ("wait" = Option<bool>, Query, description = "Answer with the finished run")
    ),
    responses(
        (status = 200, description = "With wait=true: the finished run (its outcome says whether the job worked)", body = JobRun),
        (status = 202, description = "Started", body = JobStarted),
        (status = 409, description = "The job is running", body = ErrorBody)
    )
)]
pub async fn run(
    req: HttpRequest,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let params = query_params(&req, &["wait"])?;
    let wait = match params.get("wait").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(ApiError::bad("wait", "must be true or false")),
    };
    let name = path.into_inner();
    let finished = state.jobs.trigger(&name, Trigger::Api)?;
    if !wait {
        return Ok(HttpResponse::Accepted().json(JobStarted {
            job: name,
            started: true,
        }));
    }
    let run = finished.await.map_err(|_| {
        ApiError::Unavailable(format!("job `{name}` was stopped before it reported"))
    })?;
    Ok(HttpResponse::Ok().json(run))
}

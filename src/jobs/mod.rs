//! Jobs: one way to schedule anything.
//!
//! A job is a [`Job`] (an async `run` with a [`JobContext`]) plus how it is scheduled
//! ([`JobSpec`]: name, cron schedule, timeout, overlap and notification policy). The
//! built-in maintenance ([`builtin`]: backup, checkpoint, quick and full check, backup
//! re-verification), the custom jobs of `jobs/*.toml` ([`definition`], run by
//! [`custom`]) and jobs a library user writes in Rust all go through the same
//! [`registry::Registry`], which the cron scheduler, `POST /api/jobs/{name}/run` and
//! `dbwarden jobs run` trigger.
//!
//! The registry owns the policy every job gets: one run at a time per job, the
//! timeout (cancel, a grace period, then the run is abandoned), a history row per run
//! written through the DbWriter, and notifications.
//!
//! ```no_run
//! use dbwarden::cron::Schedule;
//! use dbwarden::jobs::{Job, JobContext, JobFuture, JobReport, JobSpec};
//!
//! struct CountEvents;
//!
//! impl Job for CountEvents {
//!     fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
//!         Box::pin(async move {
//!             let n = ctx
//!                 .readers()
//!                 .run(|conn| Ok(dbwarden::db::queries::max_event_id(conn)?))
//!                 .await
//!                 .map_err(|e| JobReport::from(e.to_string()))?;
//!             Ok(JobReport::from(format!("newest event id {n}")))
//!         })
//!     }
//! }
//!
//! # fn main() -> Result<(), String> {
//! let spec = JobSpec::new("count-events", Schedule::parse("0 */5 * * * *")?, CountEvents);
//! // dbwarden::supervisor::Service::builder(settings).job(spec).start().await
//! # Ok(())
//! # }
//! ```

pub(crate) mod builtin;
pub use builtin::drill_job_name;
mod command;
pub(crate) mod custom;
pub(crate) mod definition;
pub mod registry;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cron::Schedule;
use crate::db::job_runs::JobRunRow;
use crate::db::readers::ReaderPool;
use crate::notifier::Notifier;
use crate::writer::{WriteError, WriterHandle};

pub use definition::{
    load_dir, load_file, JobDefinition, JobError, JobErrors, JobKind, NotifyOn, Overlap,
};

/// What a run reports: a one-line message and, for commands, the tail of the output.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct JobReport {
    pub message: String,
    pub output: Option<String>,
    /// The run found nothing to do and changed nothing. A scheduled run like that is
    /// not written to the history: the row would be the only change to an idle
    /// database, and a streaming replica would upload it (see `Registry::run_once`).
    #[serde(skip)]
    pub unchanged: bool,
}

impl JobReport {
    /// A successful run that found nothing to do.
    pub fn unchanged(message: String) -> JobReport {
        JobReport {
            unchanged: true,
            ..JobReport::from(message)
        }
    }
}

impl From<String> for JobReport {
    fn from(message: String) -> Self {
        JobReport {
            message,
            output: None,
            unchanged: false,
        }
    }
}

impl From<&str> for JobReport {
    fn from(message: &str) -> Self {
        JobReport::from(message.to_string())
    }
}

/// `Ok`: the job did its work. `Err`: it failed, and the report says why.
pub type JobResult = Result<JobReport, JobReport>;

pub type JobFuture<'a> = Pin<Box<dyn Future<Output = JobResult> + Send + 'a>>;

/// Work the scheduler can run.
///
/// `run` should return soon after [`JobContext::cancelled`] fires (timeout or
/// shutdown): the registry waits a short grace period, then drops the future.
pub trait Job: Send + Sync + 'static {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a>;
}

/// What a run can reach: the writer (the only way to write), the readers, the
/// notifier, and its cancellation signal.
pub struct JobContext {
    name: String,
    writer: WriterHandle,
    readers: Arc<ReaderPool>,
    notifier: Notifier,
    cancel: CancellationToken,
    deadline: Option<Instant>,
    database: PathBuf,
}

impl JobContext {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn writer(&self) -> &WriterHandle {
        &self.writer
    }

    pub fn readers(&self) -> &Arc<ReaderPool> {
        &self.readers
    }

    pub fn notifier(&self) -> &Notifier {
        &self.notifier
    }

    /// Path of the database (for commands that want to know it).
    pub fn database(&self) -> &std::path::Path {
        &self.database
    }

    /// Fires when the run timed out or the service is shutting down.
    pub fn cancellation(&self) -> &CancellationToken {
        &self.cancel
    }

    pub async fn cancelled(&self) {
        self.cancel.cancelled().await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// When the run's timeout ends, if it has one.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Runs SQL statements through the DbWriter in one transaction, stopped (and rolled
    /// back) by this run's deadline or cancellation. Returns the row changes (triggers included).
    pub async fn execute(&self, statements: Vec<String>) -> Result<u64, WriteError> {
        self.writer
            .execute_statements(statements, self.cancel.clone(), self.deadline)
            .await
    }
}

/// A job as listings show it before anything runs.
#[derive(Debug, Clone)]
pub struct Listed {
    pub name: String,
    /// `builtin`, or the job file's kind.
    pub kind: &'static str,
    pub schedule: Schedule,
    pub enabled: bool,
}

/// The built-in jobs (their schedules from the settings), then the job files.
pub fn listing(settings: &crate::config::Settings, files: &[JobDefinition]) -> Vec<Listed> {
    let builtin = builtin::schedules(settings)
        .into_iter()
        .map(|(name, schedule)| Listed {
            name,
            kind: "builtin",
            schedule,
            enabled: true,
        });
    let custom = files.iter().map(|j| Listed {
        name: j.name.clone(),
        kind: j.kind.name(),
        schedule: j.schedule.clone(),
        enabled: j.enabled,
    });
    builtin.chain(custom).collect()
}

/// A job and how it is scheduled.
#[derive(Clone)]
pub struct JobSpec {
    pub name: String,
    pub schedule: Schedule,
    /// Shown in listings: `builtin`, `sql`, `query`, `command`, `http` or `rust`.
    pub kind: String,
    /// `None`: no timeout (the built-in jobs, which their actors bound themselves).
    pub timeout: Option<Duration>,
    pub enabled: bool,
    pub overlap: Overlap,
    pub notify_on: NotifyOn,
    pub job: Arc<dyn Job>,
}

impl JobSpec {
    /// A Rust job with the defaults of a job file: 300 s timeout, enabled, overlap
    /// skip, notify on failure.
    pub fn new(name: impl Into<String>, schedule: Schedule, job: impl Job) -> JobSpec {
        JobSpec {
            name: name.into(),
            schedule,
            kind: "rust".into(),
            timeout: Some(Duration::from_secs(300)),
            enabled: true,
            overlap: Overlap::Skip,
            notify_on: NotifyOn::Failure,
            job: Arc::new(job),
        }
    }

    pub fn timeout(mut self, timeout: Option<Duration>) -> JobSpec {
        self.timeout = timeout;
        self
    }

    pub fn overlap(mut self, overlap: Overlap) -> JobSpec {
        self.overlap = overlap;
        self
    }

    pub fn notify_on(mut self, notify_on: NotifyOn) -> JobSpec {
        self.notify_on = notify_on;
        self
    }

    pub fn enabled(mut self, enabled: bool) -> JobSpec {
        self.enabled = enabled;
        self
    }
}

/// What started a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Schedule,
    Startup,
    Api,
    Cli,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Schedule => "schedule",
            Trigger::Startup => "startup",
            Trigger::Api => "api",
            Trigger::Cli => "cli",
        }
    }

    /// The trigger a stored word names; an unknown word is an error, never a default.
    pub fn parse(s: &str) -> Result<Trigger, UnknownWord> {
        [
            Trigger::Schedule,
            Trigger::Startup,
            Trigger::Api,
            Trigger::Cli,
        ]
        .into_iter()
        .find(|t| t.as_str() == s)
        .ok_or_else(|| UnknownWord::new("trigger", s))
    }
}

/// A stored word that names no trigger or outcome (a newer dbwarden wrote it, or the
/// row was changed by hand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{word}` is not a known {what}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub word: String,
}

impl UnknownWord {
    fn new(what: &'static str, word: &str) -> UnknownWord {
        UnknownWord {
            what,
            word: word.to_string(),
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Failed,
    TimedOut,
    /// Stopped by shutdown.
    Cancelled,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
            Outcome::TimedOut => "timed_out",
            Outcome::Cancelled => "cancelled",
        }
    }

    /// The outcome a stored word names; an unknown word is an error, never a default.
    pub fn parse(s: &str) -> Result<Outcome, UnknownWord> {
        [
            Outcome::Ok,
            Outcome::Failed,
            Outcome::TimedOut,
            Outcome::Cancelled,
        ]
        .into_iter()
        .find(|o| o.as_str() == s)
        .ok_or_else(|| UnknownWord::new("outcome", s))
    }
}

/// One finished run, as kept in `dbwarden_job_runs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct JobRun {
    pub job: String,
    pub trigger: Trigger,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: Outcome,
    pub message: String,
    pub output: Option<String>,
}

impl JobRun {
    /// The row the history table stores.
    pub fn to_row(&self) -> JobRunRow {
        JobRunRow {
            job: self.job.clone(),
            trigger: self.trigger.as_str().to_string(),
            started_at: self.started_at,
            duration_ms: self.duration_ms,
            outcome: self.outcome.as_str().to_string(),
            message: self.message.clone(),
            output: self.output.clone(),
        }
    }
}

impl TryFrom<JobRunRow> for JobRun {
    type Error = UnknownWord;

    fn try_from(row: JobRunRow) -> Result<JobRun, UnknownWord> {
        Ok(JobRun {
            trigger: Trigger::parse(&row.trigger)?,
            outcome: Outcome::parse(&row.outcome)?,
            job: row.job,
            started_at: row.started_at,
            duration_ms: row.duration_ms,
            message: row.message,
            output: row.output,
        })
    }
}

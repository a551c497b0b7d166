//! The one registry of jobs: built-in, custom and Rust jobs alike.
//!
//! It decides whether a run may start (one run at a time per job; a scheduled tick
//! that finds the job running is skipped, or with `overlap = "queue"` runs once right
//! after it: ticks arriving meanwhile collapse into that one queued run), enforces the
//! timeout, records each run in the history table through the DbWriter, and sends
//! notifications according to `notify_on` (failure alerts use the key `job:<name>`
//! and are resolved by the next successful run).
//!
//! **Timeout and shutdown.** When a run's timeout passes, its cancellation signal
//! fires; the run gets [`CANCEL_GRACE`] to stop on its own (a command's process group
//! gets SIGTERM, then SIGKILL), after which its future is dropped. At shutdown the
//! registry stops accepting runs, waits for running ones up to
//! `jobs.shutdown_wait_secs` (each still bounded by its own timeout), then cancels the
//! rest the same way, so nothing is left running.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{JobContext, JobReport, JobRun, JobSpec, NotifyOn, Outcome, Overlap, Trigger};
use crate::cron::Schedule;
use crate::db::readers::ReaderPool;
use crate::notifier::{Notifier, Severity};
use crate::writer::{WriteError, WriterHandle};

/// How long a cancelled run may take to stop before its future is dropped.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// Longest message and output kept per run (bytes; the output keeps its tail).
const MESSAGE_LIMIT: usize = 2000;
pub const OUTPUT_LIMIT: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("job `{name}` is defined twice ({first} and {second})")]
    Duplicate {
        name: String,
        first: String,
        second: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TriggerError {
    #[error("no job is named `{0}`")]
    Unknown(String),
    #[error("job `{name}` is already running (since {since})")]
    AlreadyRunning { name: String, since: DateTime<Utc> },
    #[error("the service is shutting down")]
    ShuttingDown,
}

/// What the service gives every run.
#[derive(Clone)]
pub struct JobDeps {
    pub writer: WriterHandle,
    pub readers: Arc<ReaderPool>,
    pub notifier: Notifier,
    pub database: std::path::PathBuf,
    pub history_keep: u32,
    pub metrics: Arc<crate::metrics::Metrics>,
}

#[derive(Default)]
struct RunState {
    running: Option<(DateTime<Utc>, Trigger)>,
    queued: bool,
    /// The newest scheduled run that changed nothing, kept here instead of in the
    /// history table.
    last_unrecorded: Option<JobRun>,
}

struct Entry {
    spec: JobSpec,
    state: Mutex<RunState>,
}

/// A job as `GET /api/jobs` and `jobs list` show it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct JobInfo {
    pub name: String,
    pub kind: String,
    pub schedule: String,
    pub enabled: bool,
    pub overlap: &'static str,
    pub notify_on: &'static str,
    pub timeout_secs: Option<u64>,
    pub running_since: Option<DateTime<Utc>>,
    pub next_run: Option<DateTime<Utc>>,
}

pub struct Registry {
    entries: Vec<Entry>,
    deps: JobDeps,
    cancel_all: CancellationToken,
    tracker: TaskTracker,
    /// The runtime runs are spawned on: the service's own, never the caller's (an HTTP
    /// worker's runtime stops with the server, and would drop a run mid-way).
    runtime: tokio::runtime::Handle,
    closing: AtomicBool,
}

impl Registry {
    /// Checks names; nothing runs until something triggers a job.
    /// Must be called on the runtime that should run the jobs.
    pub fn new(specs: Vec<JobSpec>, deps: JobDeps) -> Result<Arc<Registry>, RegistryError> {
        let mut entries: Vec<Entry> = Vec::new();
        for spec in specs {
            if let Some(first) = entries.iter().find(|e| e.spec.name == spec.name) {
                return Err(RegistryError::Duplicate {
                    name: spec.name.clone(),
                    first: first.spec.kind.clone(),
                    second: spec.kind.clone(),
                });
            }
            entries.push(Entry {
                spec,
                state: Mutex::default(),
            });
        }
        Ok(Arc::new(Registry {
            entries,
            deps,
            cancel_all: CancellationToken::new(),
            tracker: TaskTracker::new(),
            runtime: tokio::runtime::Handle::current(),
            closing: AtomicBool::new(false),
        }))
    }

    /// (name, schedule) of every enabled job, for the cron scheduler.
    pub fn schedules(&self) -> Vec<(String, Schedule)> {
        self.entries
            .iter()
            .filter(|e| e.spec.enabled)
            .map(|e| (e.spec.name.clone(), e.spec.schedule.clone()))
            .collect()
    }

    pub fn list(&self) -> Vec<JobInfo> {
        self.entries
            .iter()
            .map(|e| {
                let running = e.state.lock().ok().and_then(|s| s.running);
                JobInfo {
                    name: e.spec.name.clone(),
                    kind: e.spec.kind.clone(),
                    schedule: e.spec.schedule.to_string(),
                    enabled: e.spec.enabled,
                    overlap: e.spec.overlap.as_str(),
                    notify_on: e.spec.notify_on.as_str(),
                    timeout_secs: e.spec.timeout.map(|t| t.as_secs()),
                    running_since: running.map(|(since, _)| since),
                    next_run: if e.spec.enabled {
                        e.spec.schedule.next_run()
                    } else {
                        None
                    },
                }
            })
            .collect()
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.entries.iter().position(|e| e.spec.name == name)
    }

    /// A scheduler tick: starts the job, or applies its overlap policy.
    pub fn tick(self: &Arc<Self>, name: &str) {
        let Some(index) = self.find(name) else {
            return;
        };
        if self.closing.load(Ordering::Acquire) {
            return;
        }
        let entry = &self.entries[index];
        {
            let Ok(mut state) = entry.state.lock() else {
                return;
            };
            if state.running.is_some() {
                match entry.spec.overlap {
                    Overlap::Queue if !state.queued => {
                        state.queued = true;
                        tracing::info!(job = name, "still running; this tick runs after it");
                    }
                    Overlap::Queue => {
                        tracing::info!(job = name, "still running with a run queued; tick skipped")
                    }
                    Overlap::Skip => {
                        drop(state);
                        self.deps.notifier.alert(
                            &format!("job_overrun:{name}"),
                            Severity::Warning,
                            format!("job {name} is still running from the previous tick; this tick is skipped"),
                            serde_json::Value::Null,
                        );
                    }
                }
                return;
            }
            state.running = Some((Utc::now(), Trigger::Schedule));
        }
        self.spawn(index, Trigger::Schedule, None);
    }

    /// Starts a run now (API, CLI, startup). The receiver gets the finished run.
    pub fn trigger(
        self: &Arc<Self>,
        name: &str,
        trigger: Trigger,
    ) -> Result<oneshot::Receiver<JobRun>, TriggerError> {
        let index = self
            .find(name)
            .ok_or_else(|| TriggerError::Unknown(name.to_string()))?;
        if self.closing.load(Ordering::Acquire) {
            return Err(TriggerError::ShuttingDown);
        }
        {
            let mut state = self.entries[index]
                .state
                .lock()
                .map_err(|_| TriggerError::ShuttingDown)?;
            if let Some((since, _)) = state.running {
                return Err(TriggerError::AlreadyRunning {
                    name: name.to_string(),
                    since,
                });
            }
            state.running = Some((Utc::now(), trigger));
        }
        let (tx, rx) = oneshot::channel();
        self.spawn(index, trigger, Some(tx));
        Ok(rx)
    }

    fn spawn(
        self: &Arc<Self>,
        index: usize,
        trigger: Trigger,
        waiter: Option<oneshot::Sender<JobRun>>,
    ) {
        let registry = self.clone();
        self.tracker.spawn_on(
            async move {
                let mut waiter = waiter;
                let mut trigger = trigger;
                loop {
                    let run = registry.run_once(index, trigger).await;
                    if let Some(w) = waiter.take() {
                        let _ = w.send(run);
                    }
                    let again = match registry.entries[index].state.lock() {
                        Ok(mut state) => {
                            let again = state.queued && !registry.closing.load(Ordering::Acquire);
                            state.queued = false;
                            state.running = again.then(|| (Utc::now(), Trigger::Schedule));
                            again
                        }
                        Err(_) => false,
                    };
                    if !again {
                        break;
                    }
                    trigger = Trigger::Schedule;
                }
            },
            &self.runtime,
        );
    }

    async fn run_once(&self, index: usize, trigger: Trigger) -> JobRun {
        let spec = &self.entries[index].spec;
        let cancel = self.cancel_all.child_token();
        let ctx = JobContext {
            name: spec.name.clone(),
            writer: self.deps.writer.clone(),
            readers: self.deps.readers.clone(),
            notifier: self.deps.notifier.clone(),
            cancel: cancel.clone(),
            deadline: spec.timeout.map(|t| Instant::now() + t),
            database: self.deps.database.clone(),
        };
        let started_at = Utc::now();
        let clock = Instant::now();
        tracing::info!(job = %spec.name, trigger = trigger.as_str(), "job started");
        let mut future = spec.job.run(&ctx);
        let timeout = async {
            match spec.timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        let finished = tokio::select! {
            result = &mut future => Some(result),
            _ = timeout => None,
            _ = self.cancel_all.cancelled() => None,
        };
        let (outcome, report) = match finished {
            Some(Ok(report)) => (Outcome::Ok, report),
            Some(Err(report)) => (Outcome::Failed, report),
            None => {
                let outcome = if self.cancel_all.is_cancelled() {
                    Outcome::Cancelled
                } else {
                    Outcome::TimedOut
                };
                cancel.cancel();
                let why = match (outcome, spec.timeout) {
                    (Outcome::TimedOut, Some(t)) => format!("timed out after {} s", t.as_secs()),
                    _ => "cancelled by shutdown".to_string(),
                };
                match tokio::time::timeout(CANCEL_GRACE, &mut future).await {
                    Ok(result) => {
                        let report = result.unwrap_or_else(|e| e);
                        (
                            outcome,
                            JobReport {
                                message: format!("{why}; {}", report.message),
                                output: report.output,
                                unchanged: false,
                            },
                        )
                    }
                    Err(_) => (
                        outcome,
                        JobReport::from(format!(
                            "{why}; did not stop within {} s and was abandoned",
                            CANCEL_GRACE.as_secs()
                        )),
                    ),
                }
            }
        };
        drop(future);
        let run = JobRun {
            job: spec.name.clone(),
            trigger,
            started_at,
            duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
            outcome,
            message: truncate_start(report.message, MESSAGE_LIMIT),
            output: report.output.map(|o| keep_tail(o, OUTPUT_LIMIT)),
        };
        match outcome {
            Outcome::Ok => {
                tracing::info!(job = %run.job, duration_ms = run.duration_ms, message = %run.message, "job done")
            }
            _ => {
                tracing::error!(job = %run.job, outcome = outcome.as_str(), duration_ms = run.duration_ms, message = %run.message, "job did not succeed")
            }
        }
        self.deps
            .metrics
            .job_runs
            .with_label_values(&[&run.job, run.outcome.as_str()])
            .inc();
        self.deps
            .metrics
            .job_run_seconds
            .with_label_values(&[&run.job])
            .observe(run.duration_ms as f64 / 1000.0);
        if trigger == Trigger::Schedule && outcome == Outcome::Ok && report.unchanged {
            if let Ok(mut state) = self.entries[index].state.lock() {
                state.last_unrecorded = Some(run.clone());
            }
        } else {
            self.record(&run).await;
        }
        self.notify(spec.notify_on, &run);
        run
    }

    /// The newest scheduled run of `name` that changed nothing and so was not written
    /// to the history (`GET /api/jobs` shows it when it is the newest run).
    pub fn last_unrecorded(&self, name: &str) -> Option<JobRun> {
        let index = self.find(name)?;
        self.entries[index]
            .state
            .lock()
            .ok()
            .and_then(|s| s.last_unrecorded.clone())
    }

    /// Writes the run to the history table; a busy writer is retried briefly.
    async fn record(&self, run: &JobRun) {
        for _ in 0..20 {
            let recorded = self
                .deps
                .writer
                .record_job_run(run.to_row(), self.deps.history_keep)
                .await;
            match recorded {
                Ok(_) => return,
                Err(WriteError::Busy) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => {
                    tracing::warn!(job = %run.job, error = %e, "could not record the job run");
                    return;
                }
            }
        }
        tracing::warn!(job = %run.job, "could not record the job run: the writer stayed busy");
    }

    fn notify(&self, policy: NotifyOn, run: &JobRun) {
        let key = format!("job:{}", run.job);
        let details = serde_json::json!({
            "job": run.job,
            "trigger": run.trigger,
            "outcome": run.outcome,
            "duration_ms": run.duration_ms,
            "output": run.output,
        });
        let notifier = &self.deps.notifier;
        match (run.outcome, policy) {
            (_, NotifyOn::Never) | (Outcome::Cancelled, _) => {}
            (Outcome::Ok, NotifyOn::Always) => {
                notifier.resolve(&key, format!("job {} succeeded again", run.job));
                notifier.alert(
                    &format!("job_done:{}", run.job),
                    Severity::Info,
                    format!("job {}: {}", run.job, run.message),
                    details,
                );
            }
            (Outcome::Ok, NotifyOn::Failure) => {
                notifier.resolve(&key, format!("job {} succeeded again", run.job));
            }
            (Outcome::Failed | Outcome::TimedOut, _) => notifier.alert(
                &key,
                Severity::Warning,
                format!("job {} {}: {}", run.job, run.outcome.as_str(), run.message),
                details,
            ),
        }
    }

    /// Stops accepting runs, waits for running ones up to `wait`, then cancels the
    /// rest and waits for them to stop (each at most [`CANCEL_GRACE`] plus recording).
    pub async fn shutdown(&self, wait: Duration) {
        self.closing.store(true, Ordering::Release);
        self.tracker.close();
        if tokio::time::timeout(wait, self.tracker.wait())
            .await
            .is_err()
        {
            let running: Vec<String> = self
                .entries
                .iter()
                .filter(|e| e.state.lock().is_ok_and(|s| s.running.is_some()))
                .map(|e| e.spec.name.clone())
                .collect();
            tracing::warn!(jobs = ?running, wait_secs = wait.as_secs(), "jobs still running at shutdown; cancelling them");
        }
        self.cancel_all.cancel();
        self.tracker.wait().await;
    }
}

fn truncate_start(mut s: String, limit: usize) -> String {
    if s.len() > limit {
        let mut cut = limit;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push('…');
    }
    s
}

/// The last `limit` bytes of `s`, cut on a character boundary.
pub fn keep_tail(s: String, limit: usize) -> String {
    if s.len() <= limit {
        return s;
    }
    let mut start = s.len() - limit;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

#[cfg(test)]
mod tests {
    use super::{keep_tail, truncate_start};

    #[test]
    fn every_overlap_and_notify_value_has_its_file_name() {
        use super::{NotifyOn, Overlap};
        assert_eq!(Overlap::Skip.as_str(), "skip");
        assert_eq!(Overlap::Queue.as_str(), "queue");
        assert_eq!(NotifyOn::Failure.as_str(), "failure");
        assert_eq!(NotifyOn::Always.as_str(), "always");
        assert_eq!(NotifyOn::Never.as_str(), "never");
    }

    #[test]
    fn long_texts_keep_their_start_or_their_tail() {
        assert_eq!(truncate_start("abcdef".into(), 3), "abc…");
        assert_eq!(truncate_start("abc".into(), 3), "abc");
        assert_eq!(keep_tail("abcdef".into(), 2), "…ef");
        // Never cuts inside a character.
        assert_eq!(keep_tail("aé".into(), 1), "…");
        assert_eq!(truncate_start("éa".into(), 1), "…");
    }
}

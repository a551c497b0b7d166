//! dbwarden's own maintenance as jobs, with schedules from `config.toml`.
//!
//! Each run only sends a message to the actor that owns the work. They have no
//! timeout (their actors bound the work), never overlap, and do not notify through
//! the registry: the actors already raise precise alerts of their own. When a run
//! is cancelled (shutdown), the actor's SQLite work is interrupted.

use std::future::Future;
use std::sync::Arc;

use super::{Job, JobContext, JobFuture, JobReport, JobResult, JobSpec, NotifyOn, Overlap};
use crate::auditor::AuditorHandle;
use crate::backup::actor::BackupHandle;
use crate::checkpointer::Checkpointer;
use crate::config::Settings;
use crate::cron::Schedule;
use crate::db::integrity::CheckKind;
use crate::replica::shipper::ShipperHandles;

pub const BACKUP: &str = "backup";
pub const BACKUP_REVERIFY: &str = "backup-reverify";
pub const CHECKPOINT: &str = "checkpoint";
pub const QUICK_CHECK: &str = "quick-check";
pub const FULL_CHECK: &str = "full-check";

/// The built-in jobs. A closed set: adding one means adding a variant here, and the
/// compiler then asks for its name, its schedule and the job that runs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    Checkpoint,
    QuickCheck,
    FullCheck,
    Backup,
    BackupReverify,
}

impl Builtin {
    pub const ALL: [Builtin; 5] = [
        Builtin::Checkpoint,
        Builtin::QuickCheck,
        Builtin::FullCheck,
        Builtin::Backup,
        Builtin::BackupReverify,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Builtin::Checkpoint => CHECKPOINT,
            Builtin::QuickCheck => QUICK_CHECK,
            Builtin::FullCheck => FULL_CHECK,
            Builtin::Backup => BACKUP,
            Builtin::BackupReverify => BACKUP_REVERIFY,
        }
    }

    pub fn schedule(self, settings: &Settings) -> Schedule {
        match self {
            Builtin::Checkpoint => settings.checkpoint.schedule.clone(),
            Builtin::QuickCheck => settings.integrity.quick_schedule.clone(),
            Builtin::FullCheck => settings.integrity.full_schedule.clone(),
            Builtin::Backup => settings.backup.schedule.clone(),
            Builtin::BackupReverify => settings.backup.reverify_schedule.clone(),
        }
    }
}

/// (name, schedule) of each built-in job, as configured, the drills included.
pub fn schedules(settings: &Settings) -> Vec<(String, Schedule)> {
    Builtin::ALL
        .into_iter()
        .map(|b| (b.name().to_string(), b.schedule(settings)))
        .chain(
            settings
                .replicas
                .iter()
                .map(|r| (drill_job_name(&r.name), r.drill_schedule.clone())),
        )
        .collect()
}

/// The job that runs restore drills of the replica `replica`.
pub fn drill_job_name(replica: &str) -> String {
    format!("drill-{replica}")
}

/// One `drill-<name>` job per replica, on the replica's `drill_schedule`; each run asks
/// the replica's shipper for a drill (see [`crate::replica::drill`]).
pub fn drill_specs(settings: &Settings, shippers: &ShipperHandles) -> Vec<JobSpec> {
    settings
        .replicas
        .iter()
        .map(|replica| JobSpec {
            name: drill_job_name(&replica.name),
            schedule: replica.drill_schedule.clone(),
            kind: "builtin".into(),
            timeout: None,
            enabled: true,
            overlap: Overlap::Skip,
            notify_on: NotifyOn::Never,
            job: Arc::new(DrillJob {
                replica: replica.name.clone(),
                shippers: shippers.clone(),
            }),
        })
        .collect()
}

/// The built-in jobs, bound to the actors that do the work.
pub fn specs(
    settings: &Settings,
    backups: &BackupHandle,
    auditor: &AuditorHandle,
    checkpointer: &Arc<Checkpointer>,
) -> Vec<JobSpec> {
    Builtin::ALL
        .into_iter()
        .map(|builtin| {
            let job: Arc<dyn Job> = match builtin {
                Builtin::Checkpoint => Arc::new(CheckpointJob(checkpointer.clone())),
                Builtin::QuickCheck => Arc::new(CheckJob(auditor.clone(), CheckKind::Quick)),
                Builtin::FullCheck => Arc::new(CheckJob(auditor.clone(), CheckKind::Full)),
                Builtin::Backup => Arc::new(BackupJob(backups.clone())),
                Builtin::BackupReverify => Arc::new(ReverifyJob(backups.clone())),
            };
            JobSpec {
                name: builtin.name().to_string(),
                schedule: builtin.schedule(settings),
                kind: "builtin".into(),
                timeout: None,
                enabled: true,
                overlap: Overlap::Skip,
                notify_on: NotifyOn::Never,
                job,
            }
        })
        .collect()
}

/// Awaits `work`; on cancellation calls `interrupt` once and still awaits the answer,
/// so the actor is never left mid-task.
async fn interruptible<T>(
    ctx: &JobContext,
    work: impl Future<Output = T>,
    interrupt: impl Fn(),
) -> T {
    tokio::pin!(work);
    tokio::select! {
        result = &mut work => result,
        _ = ctx.cancelled() => {
            interrupt();
            work.await
        }
    }
}

struct CheckpointJob(Arc<Checkpointer>);

impl Job for CheckpointJob {
    fn run<'a>(&'a self, _ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            match self.0.tick().await {
                Ok(r) if r.starved => Err(JobReport::from(format!(
                    "starved: {} bytes of WAL held by a reader",
                    r.pending_bytes
                ))),
                Ok(r) if !r.changed => Ok(JobReport::unchanged(format!(
                    "{} frames, {} checkpointed; nothing changed since the previous checkpoint",
                    r.log_frames, r.checkpointed_frames
                ))),
                Ok(r) => Ok(JobReport::from(format!(
                    "{} frames, {} checkpointed",
                    r.log_frames, r.checkpointed_frames
                ))),
                Err(e) => Err(JobReport::from(e.to_string())),
            }
        })
    }
}

struct CheckJob(AuditorHandle, CheckKind);

impl Job for CheckJob {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            let result = interruptible(ctx, self.0.check(self.1), || self.0.interrupt()).await;
            match result {
                Ok(r) if r.ok => Ok(JobReport::from(format!("ok in {} ms", r.duration_ms))),
                Ok(r) => Err(JobReport::from(format!(
                    "FAILED: {}",
                    r.problems.join("; ")
                ))),
                Err(e) => Err(JobReport::from(e.to_string())),
            }
        })
    }
}

struct BackupJob(BackupHandle);

impl Job for BackupJob {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            let result: JobResult =
                match interruptible(ctx, self.0.take(), || self.0.interrupt()).await {
                    Ok(m) => Ok(JobReport::from(format!(
                        "{} ({} bytes, events up to {})",
                        m.name, m.size_bytes, m.last_event_id
                    ))),
                    Err(e) => Err(JobReport::from(e.to_string())),
                };
            result
        })
    }
}

struct ReverifyJob(BackupHandle);

impl Job for ReverifyJob {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            match interruptible(ctx, self.0.reverify(), || self.0.interrupt()).await {
                Ok(bad) if bad.is_empty() => Ok(JobReport::from("every stored backup verified")),
                Ok(bad) => Err(JobReport::from(format!(
                    "{} backup(s) failed re-verification and were marked bad: {}",
                    bad.len(),
                    bad.iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
                Err(e) => Err(JobReport::from(e.to_string())),
            }
        })
    }
}

struct DrillJob {
    replica: String,
    shippers: ShipperHandles,
}

impl Job for DrillJob {
    fn run<'a>(&'a self, _ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            // A drill stops with its shipper at shutdown; it has nothing to interrupt.
            match self.shippers.drill(&self.replica).await {
                Ok(outcome) if outcome.ok() => Ok(JobReport::from(outcome.summary())),
                Ok(outcome) => Err(JobReport::from(format!("FAILED: {}", outcome.summary()))),
                Err(e) => Err(JobReport::from(e.to_string())),
            }
        })
    }
}

//! The real cron scheduler with seconds-level schedules.

mod common;

use std::time::Duration;

use common::{settings_in, TestApp};
use dbwarden::backup::catalog;
use dbwarden::jobs::{Job, JobContext, JobFuture, JobReport, JobSpec, Overlap};
use dbwarden::supervisor::Service;

/// A Rust job that takes `ms` milliseconds (and stops early when cancelled).
struct Sleeper(u64);

impl Job for Sleeper {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(self.0)) => Ok(JobReport::from("slept")),
                _ = ctx.cancelled() => Err(JobReport::from("cancelled")),
            }
        })
    }
}

/// (start in ms since the epoch, duration in ms) of each recorded run, oldest first.
fn every_second() -> dbwarden::cron::Schedule {
    dbwarden::cron::Schedule::parse("* * * * * *").expect("schedule")
}

fn recorded_runs(app: &TestApp, job: &str) -> Vec<(i64, i64, String)> {
    let conn = app.open();
    let mut stmt = conn
        .prepare(
            "SELECT started_at, duration_ms, outcome FROM dbwarden_job_runs
              WHERE job = ?1 ORDER BY id",
        )
        .expect("prepare");
    stmt.query_map([job], |r| {
        let started: String = r.get(0)?;
        let at = chrono::DateTime::parse_from_rfc3339(&started)
            .expect("rfc3339")
            .timestamp_millis();
        Ok((at, r.get(1)?, r.get(2)?))
    })
    .expect("query")
    .collect::<Result<Vec<_>, _>>()
    .expect("rows")
}

async fn run_for(job: JobSpec, window: Duration) -> (TestApp, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let name = job.name.clone();
    let settings = settings_in(dir.path(), &[]);
    let mut app = TestApp::start(dir, Service::builder(settings).job(job)).await;
    tokio::time::sleep(window).await;
    app.stop().await;
    (app, name)
}

#[actix_rt::test]
async fn a_job_still_running_is_not_started_twice() {
    let spec = JobSpec::new("slow", every_second(), Sleeper(2500));
    let (app, name) = run_for(spec, Duration::from_millis(4800)).await;
    let runs = recorded_runs(&app, &name);
    assert!(!runs.is_empty(), "the job ran");
    assert!(
        runs.len() <= 2,
        "a 2.5 s job ticking every second ran at most twice in 4.8 s: {runs:?}"
    );
    for pair in runs.windows(2) {
        assert!(
            pair[1].0 >= pair[0].0 + pair[0].1,
            "runs never overlap: {runs:?}"
        );
    }
}

#[actix_rt::test]
async fn a_queued_tick_runs_right_after_the_run_it_waited_for() {
    let spec = JobSpec::new("queued", every_second(), Sleeper(1500)).overlap(Overlap::Queue);
    let (app, name) = run_for(spec, Duration::from_millis(5200)).await;
    let runs = recorded_runs(&app, &name);
    assert!(runs.len() >= 2, "several runs: {runs:?}");
    for pair in runs.windows(2) {
        let end_of_first = pair[0].0 + pair[0].1;
        let gap = pair[1].0 - end_of_first;
        assert!(gap >= 0, "runs never overlap: {runs:?}");
        // With `skip` the next run would wait for the next whole-second tick (~500 ms
        // after a 1.5 s run that started on a tick); queued, it starts at once.
        assert!(gap < 250, "the queued run started right after: {runs:?}");
    }
    // The run cut by shutdown is recorded as cancelled; all earlier ones finished.
    let (last, earlier) = runs.split_last().expect("runs");
    assert!(earlier.iter().all(|r| r.2 == "ok"), "{runs:?}");
    assert!(last.2 == "ok" || last.2 == "cancelled", "{runs:?}");
}

#[actix_rt::test]
async fn scheduled_backups_run_on_their_schedule() {
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__BACKUP__SCHEDULE", "* * * * * *"),
        ("DBWARDEN__BACKUP__KEEP_LAST", "100"),
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    app.stop().await;
    let backups = catalog::list(&app.dir.path().join("backups")).expect("list");
    assert!(
        backups.len() >= 2,
        "a backup every second for 3.5 s: {}",
        backups.len()
    );
    assert!(backups
        .iter()
        .all(|m| m.status == catalog::BackupStatus::Good));
}

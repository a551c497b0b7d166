//! The real cron scheduler with seconds-level schedules.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{settings_in, TestApp};
use dbwarden::backup::catalog;
use dbwarden::jobs::{Job, JobContext, JobFuture, JobReport, JobSpec, Overlap};
use dbwarden::supervisor::Service;

/// A Rust job that runs until the test lets it finish (one permit per run; it stops
/// early when cancelled), counting its runs and how many were in progress at once.
#[derive(Clone)]
struct Gate {
    release: Arc<tokio::sync::Semaphore>,
    started: Arc<AtomicUsize>,
    running: Arc<AtomicUsize>,
    most_at_once: Arc<AtomicUsize>,
    finished: Arc<AtomicUsize>,
}

impl Default for Gate {
    fn default() -> Gate {
        Gate {
            release: Arc::new(tokio::sync::Semaphore::new(0)),
            started: Arc::default(),
            running: Arc::default(),
            most_at_once: Arc::default(),
            finished: Arc::default(),
        }
    }
}

impl Job for Gate {
    fn run<'a>(&'a self, ctx: &'a JobContext) -> JobFuture<'a> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.most_at_once.fetch_max(now, Ordering::SeqCst);
            let result = tokio::select! {
                permit = self.release.acquire() => {
                    permit.expect("gate open").forget();
                    Ok(JobReport::from("released"))
                }
                _ = ctx.cancelled() => Err(JobReport::from("cancelled")),
            };
            self.running.fetch_sub(1, Ordering::SeqCst);
            self.finished.fetch_add(1, Ordering::SeqCst);
            result
        })
    }
}

/// A schedule that ticks at three consecutive seconds starting a few seconds from now,
/// and not again within the minute; and the moment just after its last tick.
fn three_ticks() -> (dbwarden::cron::Schedule, chrono::DateTime<chrono::Utc>) {
    use chrono::Timelike;
    let first =
        chrono::Utc::now().with_nanosecond(0).expect("whole second") + chrono::Duration::seconds(4);
    let seconds: Vec<String> = (0..3)
        .map(|i| ((first.second() + i) % 60).to_string())
        .collect();
    let schedule = dbwarden::cron::Schedule::parse(&format!("{} * * * * *", seconds.join(",")))
        .expect("schedule");
    (schedule, first + chrono::Duration::milliseconds(3000))
}

/// (start in ms since the epoch, duration in ms, outcome) of each recorded run, oldest
/// first.
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

async fn wait_until(what: &str, done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs a gated job on three ticks: the first starts it, the other two arrive while it
/// is held; after the last tick it is let go (with `permits` permits). Answers the job's
/// counters and its recorded runs once nothing more can start.
async fn three_ticks_during_one_run(
    overlap: Overlap,
    permits: usize,
) -> (Gate, Vec<(i64, i64, String)>) {
    let gate = Gate::default();
    let (schedule, after_last_tick) = three_ticks();
    let spec = JobSpec::new("gated", schedule, gate.clone()).overlap(overlap);
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = settings_in(dir.path(), &[]);
    let mut app = TestApp::start(dir, Service::builder(settings).job(spec)).await;
    wait_until("the first tick started the job", || {
        gate.started.load(Ordering::SeqCst) == 1
    })
    .await;
    // The other two ticks come while the first run is held.
    let wait = (after_last_tick - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(500)).await;
    assert_eq!(
        gate.started.load(Ordering::SeqCst),
        1,
        "held: nothing else started"
    );
    gate.release.add_permits(permits);
    wait_until("the released runs finished", || {
        gate.finished.load(Ordering::SeqCst) == gate.started.load(Ordering::SeqCst)
    })
    .await;
    // No tick is left this minute: a run started now could only come from a queue.
    tokio::time::sleep(Duration::from_millis(500)).await;
    app.stop().await;
    let runs = recorded_runs(&app, "gated");
    (gate, runs)
}

#[actix_rt::test]
async fn a_job_still_running_is_not_started_twice() {
    let (gate, runs) = three_ticks_during_one_run(Overlap::Skip, 5).await;
    assert_eq!(
        gate.started.load(Ordering::SeqCst),
        1,
        "the two ticks that came while it ran were skipped: {runs:?}"
    );
    assert_eq!(gate.most_at_once.load(Ordering::SeqCst), 1);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0].2, "ok", "{runs:?}");
}

#[actix_rt::test]
async fn a_queued_tick_runs_right_after_the_run_it_waited_for() {
    let (gate, runs) = three_ticks_during_one_run(Overlap::Queue, 5).await;
    // The two ticks that came meanwhile collapse into one run after the first.
    assert_eq!(gate.started.load(Ordering::SeqCst), 2, "{runs:?}");
    assert_eq!(gate.most_at_once.load(Ordering::SeqCst), 1, "never at once");
    assert_eq!(runs.len(), 2, "{runs:?}");
    let end_of_first = runs[0].0 + runs[0].1;
    assert!(runs[1].0 >= end_of_first, "runs never overlap: {runs:?}");
    assert!(runs.iter().all(|r| r.2 == "ok"), "{runs:?}");
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

//! The real cron scheduler with seconds-level schedules.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::TestApp;
use dbwarden::backup::catalog;
use dbwarden::scheduler::{JobSpec, Scheduler};

#[actix_rt::test]
async fn a_job_still_running_is_not_started_twice() {
    let spec = JobSpec {
        name: "slow".into(),
        schedule: "* * * * * *".into(),
        run: Arc::new(|| {
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(2500)).await;
                Ok("slept".to_string())
            })
        }),
    };
    let scheduler = Scheduler::start(vec![spec], dbwarden::notifier::Notifier::log_only())
        .await
        .expect("start");
    tokio::time::sleep(Duration::from_millis(4800)).await;
    let stats = scheduler.stats[0].1.clone();
    scheduler.shutdown().await;
    let (runs, skipped) = (
        stats.runs.load(Ordering::Relaxed),
        stats.skipped.load(Ordering::Relaxed),
    );
    assert!(runs >= 1, "runs {runs}");
    assert!(
        skipped >= 1,
        "ticks during a run are skipped: runs {runs}, skipped {skipped}"
    );
    assert!(
        runs <= 2,
        "a 2.5 s job ticking every second ran at most twice in 4.8 s: {runs}"
    );
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

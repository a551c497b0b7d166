//! Durability against the real binary: events acknowledged before a SIGKILL are all
//! present after restart; SIGTERM under load exits 0 with everything acknowledged on
//! disk and the WAL checkpointed away.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{assert_all_present, load, start, Acked};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/events.db");
    let mut acked_before: Option<HashMap<i64, Acked>> = None;
    for round in 0..4 {
        let mut running = start(dir.path());
        if let Some(acked) = acked_before.take() {
            // Checked with the restarted service running, before anything else opened
            // the database: the last connection to close would checkpoint the WAL away.
            assert!(
                running
                    .startup_log
                    .iter()
                    .any(|l| l.contains("did not stop cleanly")),
                "a restart after SIGKILL reports the unclean startup: {:#?}",
                running.startup_log
            );
            assert_all_present(&db, &acked);
        }
        if round == 3 {
            let pid = running.child.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let _ = running.child.wait();
            break;
        }
        let base = running.base.clone();
        let loader = tokio::spawn(load(base, 8, Duration::from_millis(1500)));
        // Kill while the clients are still sending.
        tokio::time::sleep(Duration::from_millis(700 + 200 * round)).await;
        running.child.kill().expect("SIGKILL");
        running.child.wait().expect("reap");
        let acked = loader.await.expect("loader").acked;
        assert!(
            !acked.is_empty(),
            "round {round}: some writes were acknowledged"
        );
        acked_before = Some(acked);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_cleanly_with_everything_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/events.db");
    let mut running = start(dir.path());
    let loader = tokio::spawn(load(running.base.clone(), 8, Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let pid = running.child.id().to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = running.child.wait().expect("wait");
    assert!(exit.success(), "exit status {exit:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "stopped within the shutdown bound"
    );
    let acked = loader.await.expect("loader").acked;
    assert!(!acked.is_empty());
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the final checkpoint left no WAL content");
    assert_all_present(&db, &acked);
}

//! Crash loop: the real binary under concurrent HTTP appends, scheduled checkpoints
//! (every second), scheduled backups (every two seconds) and backups asked over HTTP,
//! SIGKILLed at a random moment, restarted on the same directory, round after round.
//! After every kill: every acknowledged event is present, `integrity_check` is ok, the
//! summary equals a recomputation, every backup under a final name verifies, and the
//! temporary files an interrupted backup left are removed and reported at restart.
//!
//! `cargo test` runs 6 rounds; `DBWARDEN_CRASH_LOOP_ROUNDS=100 cargo test --release
//! --test crash_loop -- --nocapture` runs the long mode behind RELIABILITY.md.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use common::process::{assert_all_present, load, start_with, Acked};
use dbwarden::db::verified_copy::TEMP_SUFFIX;

const SETTINGS: &[(&str, &str)] = &[
    ("DBWARDEN__BACKUP__DIR", "backups"),
    ("DBWARDEN__BACKUP__SCHEDULE", "*/2 * * * * *"),
    ("DBWARDEN__BACKUP__KEEP_LAST", "3"),
    ("DBWARDEN__BACKUP__KEEP_DAILY", "0"),
    ("DBWARDEN__BACKUP__KEEP_WEEKLY", "0"),
    ("DBWARDEN__CHECKPOINT__SCHEDULE", "* * * * * *"),
    ("DBWARDEN__JOBS__DIR", "no-jobs"),
];

fn leftovers(backups: &Path) -> Vec<String> {
    std::fs::read_dir(backups)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(TEMP_SUFFIX))
                .collect()
        })
        .unwrap_or_default()
}

/// Every file under a backup's final name verifies; answers how many there are.
fn assert_backups_verify(backups: &Path) -> usize {
    let all = common::final_backups(backups);
    for (path, problem) in &all {
        assert!(problem.is_none(), "{}: {problem:?}", path.display());
    }
    all.len()
}

/// A small deterministic generator for the kill moments (no extra dependency).
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing_acknowledged() {
    let rounds: u64 = std::env::var("DBWARDEN_CRASH_LOOP_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/events.db");
    let backups = dir.path().join("backups");
    let mut seed = 0x2545_F491_4F6C_DD1D_u64;
    let mut all_acked: HashMap<i64, Acked> = HashMap::new();
    let mut last_round: HashMap<i64, Acked> = HashMap::new();
    let (mut kills, mut leftovers_seen, mut backups_checked) = (0, 0, 0);
    let mut backups_answered = 0;
    for round in 0..rounds {
        let left = leftovers(&backups);
        let mut running = start_with(dir.path(), SETTINGS);
        if !left.is_empty() {
            leftovers_seen += left.len();
            // Exactly the ones found before the restart were removed and reported. (Their
            // names may be in use again at once: a backup the restarted service began in
            // the same second takes the same name.)
            let reported = format!("removed {} temporary backup file(s)", left.len());
            assert!(
                running.startup_log.iter().any(|l| l.contains(&reported)),
                "round {round}: removed leftovers {left:?} are reported: {:#?}",
                running.startup_log
            );
        }
        if round > 0 {
            // The previous round's events (earlier rounds' were checked after theirs;
            // integrity and the summary cover the whole database each time, and every
            // event is checked again at the end).
            assert_all_present(&db, &last_round);
        }
        let base = running.base.clone();
        let client = reqwest::Client::new();
        // Counts the backups the service answered as verified.
        let verified = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let answered = verified.clone();
        let backup_asker = tokio::spawn(async move {
            loop {
                if let Ok(res) = client.post(format!("{base}/api/backups")).send().await {
                    if res.status().is_success() {
                        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
        let loader = tokio::spawn(load(running.base.clone(), 4, Duration::from_millis(2500)));
        // Every third round dies in the middle of a backup: killed as soon as a
        // temporary backup file appears, so the next start has leftovers to clean.
        let kill_after = if round % 3 == 0 {
            let started = std::time::Instant::now();
            while leftovers(&backups).is_empty() {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "round {round}: no backup began"
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            started.elapsed().as_millis() as u64
        } else {
            let after = 200 + next(&mut seed) % 2000;
            tokio::time::sleep(Duration::from_millis(after)).await;
            after
        };
        running.child.kill().expect("SIGKILL");
        running.child.wait().expect("reap");
        kills += 1;
        backup_asker.abort();
        backups_answered += verified.load(std::sync::atomic::Ordering::Relaxed);
        // Checked while nothing runs (a running service applies retention).
        backups_checked += assert_backups_verify(&backups);
        last_round = loader.await.expect("loader").acked;
        all_acked.extend(last_round.iter().map(|(k, v)| (*k, v.clone())));
        eprintln!(
            "round {round}: killed after {kill_after} ms, {} acknowledged this round",
            last_round.len()
        );
    }
    // A last clean start: everything is still there.
    let mut running = start_with(dir.path(), SETTINGS);
    assert_all_present(&db, &all_acked);
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status();
    let _ = running.child.wait();
    backups_checked += assert_backups_verify(&backups);
    println!(
        "crash loop: {kills} SIGKILLs, {} acknowledged events all present, {backups_answered} backups answered as verified, {backups_checked} backup checks all verified, {leftovers_seen} leftover temporary files removed and reported",
        all_acked.len()
    );
    assert!(!all_acked.is_empty());
    assert!(
        backups_answered > 0,
        "some backups were taken and answered as verified"
    );
    assert!(
        backups_checked > 0,
        "some files under a backup's final name were verified"
    );
    assert!(
        leftovers_seen > 0,
        "a kill during a backup left a temporary file that the restart removed"
    );
}

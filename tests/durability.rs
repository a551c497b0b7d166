//! Durability against the real binary: events acknowledged before a SIGKILL are all
//! present after restart; SIGTERM under load exits 0 with everything acknowledged on
//! disk and the WAL checkpointed away.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

struct Running {
    child: Child,
    base: String,
    /// Every stderr line up to the "started" line.
    startup_log: Vec<String>,
}

fn start(dir: &Path) -> Running {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir)
        .env("DBWARDEN__DATABASE__PATH", dir.join("data/events.db"))
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dbwarden");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        let mut seen = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if sent {
                continue;
            }
            seen.push(line.clone());
            if line.contains("dbwarden started") {
                if let Some(addr) = line
                    .split("addr=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                {
                    let _ = tx.send((addr.to_string(), std::mem::take(&mut seen)));
                    sent = true;
                }
            }
        }
    });
    let (addr, startup_log) = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("service reported its address");
    Running {
        child,
        base: format!("http://{addr}"),
        startup_log,
    }
}

/// Appends from `clients` concurrent clients until `stop` is set; returns every
/// acknowledged (row id → aggregate id).
async fn load(base: String, clients: usize, run_for: Duration) -> HashMap<i64, String> {
    let acked = Arc::new(Mutex::new(HashMap::new()));
    let deadline = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let acked = acked.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let agg = format!("c{c}-{n}");
                let body = json!([
                    {"aggregate_type": "corruption", "aggregate_id": agg, "event_type": "CorruptionDetected", "event_data": {"file_path": format!("/m/{agg}.mkv")}},
                    {"aggregate_type": "corruption", "aggregate_id": agg, "event_type": "DownloadFailed", "event_data": {"error": "e"}}
                ]);
                let Ok(res) = client.post(format!("{base}/api/events")).json(&body).send().await else { break };
                if res.status() != 201 {
                    continue;
                }
                let Ok(v) = res.json::<serde_json::Value>().await else { break };
                let mut acked = acked.lock().expect("lock");
                for id in v["ids"].as_array().expect("ids") {
                    acked.insert(id.as_i64().expect("id"), agg.clone());
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let acked = acked.lock().expect("lock").clone();
    acked
}

fn assert_all_present(db: &PathBuf, acked: &HashMap<i64, String>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let problems =
        dbwarden::db::snapshot::integrity_problems(&conn, dbwarden::db::snapshot::CheckKind::Full)
            .expect("check");
    assert!(problems.is_empty(), "integrity: {problems:?}");
    let mut stmt = conn
        .prepare("SELECT aggregate_id FROM events WHERE id = ?1")
        .expect("prepare");
    for (id, agg) in acked {
        let found: String = stmt
            .query_row([id], |r| r.get(0))
            .unwrap_or_else(|_| panic!("acknowledged event {id} lost"));
        assert_eq!(&found, agg);
    }
    common::assert_summary_exact(&conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_sigkill() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/events.db");
    let mut acked_before: Option<HashMap<i64, String>> = None;
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
        let acked = loader.await.expect("loader");
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
    let acked = loader.await.expect("loader");
    assert!(!acked.is_empty());
    let wal = PathBuf::from(format!("{}-wal", db.display()));
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal_len, 0, "the final checkpoint left no WAL content");
    assert_all_present(&db, &acked);
}

//! The real binary as a child process: start it on a temp dir, load it with HTTP
//! clients, check what is on disk afterwards.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;

pub struct Running {
    pub child: Child,
    pub base: String,
    /// Every stderr line up to the "started" line.
    pub startup_log: Vec<String>,
}

pub fn start(dir: &Path) -> Running {
    start_with(dir, &[])
}

/// Starts the binary over `dir` with extra environment settings.
pub fn start_with(dir: &Path, env: &[(&str, &str)]) -> Running {
    start_under(&[], dir, env)
}

/// A failing test must not leave the service running.
impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Starts the binary behind a wrapper command (e.g. `fiu-run -x`), which must exec it.
pub fn start_under(wrapper: &[&str], dir: &Path, env: &[(&str, &str)]) -> Running {
    let binary = env!("CARGO_BIN_EXE_dbwarden");
    let mut command = match wrapper.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(binary);
            c
        }
        None => Command::new(binary),
    };
    let mut child = command
        .current_dir(dir)
        .env("DBWARDEN__DATABASE__PATH", dir.join("data/events.db"))
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        // These tests load the writer as hard as they can; the rate limiter has its own.
        .env("DBWARDEN__API__RATE_LIMIT_PER_SECOND", "0")
        .envs(env.iter().copied())
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
pub async fn load(base: String, clients: usize, run_for: Duration) -> HashMap<i64, String> {
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

pub fn assert_all_present(db: &PathBuf, acked: &HashMap<i64, String>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let problems =
        dbwarden::db::integrity::problems(&conn, dbwarden::db::integrity::CheckKind::Full)
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
    super::assert_summary_exact(&conn);
}

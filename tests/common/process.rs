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

/// An acknowledged event as the client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct Acked {
    pub aggregate_id: String,
    pub event_type: String,
    pub event_data: serde_json::Value,
}

/// What a load run saw: every acknowledged event by row id, and the requests that were
/// not acknowledged (by status; 0 for a request that got no answer).
#[derive(Debug, Default)]
pub struct Load {
    pub acked: HashMap<i64, Acked>,
    pub refused: std::collections::BTreeMap<u16, usize>,
}

impl Load {
    pub fn refused_total(&self) -> usize {
        self.refused.values().sum()
    }
}

/// Appends from `clients` concurrent clients for `run_for`; each request is a batch of
/// two events of one aggregate, answered with their row ids in order.
pub async fn load(base: String, clients: usize, run_for: Duration) -> Load {
    let seen = Arc::new(Mutex::new(Load::default()));
    let deadline = Instant::now() + run_for;
    let mut tasks = Vec::new();
    for c in 0..clients {
        let seen = seen.clone();
        let base = base.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let agg = format!("c{c}-{n}");
                let events = [
                    Acked {
                        aggregate_id: agg.clone(),
                        event_type: "CorruptionDetected".into(),
                        event_data: json!({"file_path": format!("/m/{agg}.mkv")}),
                    },
                    Acked {
                        aggregate_id: agg.clone(),
                        event_type: "DownloadFailed".into(),
                        event_data: json!({"error": "e", "n": n}),
                    },
                ];
                let body: Vec<serde_json::Value> = events
                    .iter()
                    .map(|e| {
                        json!({"aggregate_type": "corruption", "aggregate_id": e.aggregate_id,
                               "event_type": e.event_type, "event_data": e.event_data})
                    })
                    .collect();
                let res = match client
                    .post(format!("{base}/api/events"))
                    .json(&body)
                    .send()
                    .await
                {
                    Ok(res) => res,
                    Err(_) => {
                        *seen.lock().expect("lock").refused.entry(0).or_default() += 1;
                        break;
                    }
                };
                let status = res.status().as_u16();
                if status != 201 {
                    *seen
                        .lock()
                        .expect("lock")
                        .refused
                        .entry(status)
                        .or_default() += 1;
                    continue;
                }
                let Ok(v) = res.json::<serde_json::Value>().await else {
                    // The answer was cut off (the service died): not acknowledged.
                    *seen.lock().expect("lock").refused.entry(0).or_default() += 1;
                    break;
                };
                let ids = v["ids"].as_array().expect("ids");
                assert_eq!(ids.len(), events.len(), "one id per event: {v}");
                let mut seen = seen.lock().expect("lock");
                for (id, event) in ids.iter().zip(events) {
                    seen.acked.insert(id.as_i64().expect("id"), event);
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("a load client panicked");
    }
    let mut seen = seen.lock().expect("lock");
    std::mem::take(&mut *seen)
}

/// Every acknowledged event is in the database under its row id, with its aggregate,
/// type and data; integrity holds and the summary equals a recomputation.
pub fn assert_all_present(db: &PathBuf, acked: &HashMap<i64, Acked>) {
    let conn =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open");
    let problems =
        dbwarden::db::integrity::problems(&conn, dbwarden::db::integrity::CheckKind::Full)
            .expect("check");
    assert!(problems.is_empty(), "integrity: {problems:?}");
    let mut stmt = conn
        .prepare("SELECT aggregate_id, event_type, event_data FROM events WHERE id = ?1")
        .expect("prepare");
    for (id, sent) in acked {
        let (aggregate_id, event_type, data): (String, String, String) = stmt
            .query_row([id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap_or_else(|_| panic!("acknowledged event {id} lost"));
        let stored = Acked {
            aggregate_id,
            event_type,
            event_data: serde_json::from_str(&data).expect("stored data is JSON"),
        };
        assert_eq!(&stored, sent, "event {id} as stored");
    }
    super::assert_summary_exact(&conn);
}

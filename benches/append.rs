//! Durable append throughput and latency, all on the same schema, in one run:
//!
//! - (a) raw rusqlite, batches of 1000 events per transaction, summary triggers on
//!   (the limit for this schema);
//! - (e) the same without the summary triggers (what the triggers cost);
//! - (b) one transaction per event (Healarr's pattern);
//! - (c) dbwarden's library path: the DbWriter actor, batches of 1000 from one
//!   caller, and 64 concurrent callers sending single events;
//! - (d) dbwarden over HTTP (the release binary on loopback): 1, 16 and 64
//!   concurrent clients sending single events, and one client sending batches of 1000;
//!   peak RSS of the service after the 64-client run.
//!
//! ```text
//! cargo bench --bench append
//! DBWARDEN_BENCH_EVENTS=50000 cargo bench --bench append     # shorter
//! DBWARDEN_BENCH_DIR=/mnt/slow cargo bench --bench append    # another disk
//! ```
//!
//! Every database uses `synchronous=FULL` and WAL, like the service.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dbwarden::config::{ConfigSource, Settings};
use dbwarden::db;
use dbwarden::events::NewEvent;
use dbwarden::writer::DbWriter;
use rusqlite::Connection;

const LIFECYCLE: &[&str] = &[
    "CorruptionDetected",
    "RemediationQueued",
    "DeletionStarted",
    "DeletionCompleted",
    "SearchStarted",
    "SearchCompleted",
    "DownloadProgress",
    "DownloadFailed",
    "FileDetected",
    "VerificationSuccess",
];

/// The i-th event of a realistic workload: aggregates of ten lifecycle events.
fn nth_event(run: &str, i: usize) -> NewEvent {
    let step = LIFECYCLE[i % LIFECYCLE.len()];
    let data = match step {
        "CorruptionDetected" => {
            serde_json::json!({"file_path": format!("/media/tv/show/{i}.mkv"), "path_id": 1, "corruption_type": "CorruptHeader", "file_size": 123456})
        }
        "DownloadFailed" => serde_json::json!({"error": "indexer unavailable", "status": "failed"}),
        _ => serde_json::json!({"media_id": i / 10, "progress": 50}),
    };
    NewEvent::new(
        "corruption",
        &format!("{run}-{:08}", i / LIFECYCLE.len()),
        step,
        data,
    )
    .expect("a valid event")
}

struct Row {
    name: String,
    events: usize,
    elapsed: Duration,
    latency: Option<(Duration, Duration)>,
    note: String,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn settings_for(path: &Path) -> Settings {
    Settings::load_with_env(
        &ConfigSource::Default,
        [
            (
                "DBWARDEN__DATABASE__PATH".to_string(),
                path.display().to_string(),
            ),
            (
                "DBWARDEN__API__LISTEN".to_string(),
                "127.0.0.1:0".to_string(),
            ),
        ],
    )
    .expect("settings")
}

fn fresh_db(dir: &Path, name: &str) -> (Connection, PathBuf) {
    let path = dir.join(format!("{name}.db"));
    let (conn, _) = db::open_and_migrate(&settings_for(&path).database).expect("migrate");
    (conn, path)
}

/// 1000 events per transaction, inserted with one statement per row or with the
/// multi-row statements the writer uses.
fn raw_batched(dir: &Path, name: &str, n: usize, triggers: bool, multi_row: bool) -> Row {
    let (mut conn, _) = fresh_db(dir, name);
    if !triggers {
        conn.execute_batch(
            "DROP TRIGGER dbwarden_summary_on_event_insert;
             DROP TRIGGER dbwarden_summary_on_event_delete;
             DROP TRIGGER dbwarden_summary_on_event_update;",
        )
        .expect("drop triggers");
    }
    let events: Vec<NewEvent> = (0..n).map(|i| nth_event(name, i)).collect();
    let mut batch_times = Vec::new();
    let started = Instant::now();
    for chunk in events.chunks(1000) {
        let t = Instant::now();
        let tx = conn.transaction().expect("tx");
        if multi_row {
            db::queries::insert_events(&tx, chunk).expect("insert");
        } else {
            for e in chunk {
                db::queries::insert_event(&tx, e).expect("insert");
            }
        }
        tx.commit().expect("commit");
        batch_times.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    batch_times.sort();
    Row {
        name: name.into(),
        events: n,
        elapsed,
        latency: Some((pct(&batch_times, 0.5), pct(&batch_times, 0.99))),
        note: "latency per 1000-event commit".into(),
    }
}

fn per_event_transactions(dir: &Path, n: usize) -> Row {
    let (mut conn, _) = fresh_db(dir, "b-per-event");
    let events: Vec<NewEvent> = (0..n).map(|i| nth_event("b", i)).collect();
    let mut times = Vec::with_capacity(n);
    let started = Instant::now();
    for e in &events {
        let t = Instant::now();
        let tx = conn.transaction().expect("tx");
        db::queries::insert_event(&tx, e).expect("insert");
        tx.commit().expect("commit");
        times.push(t.elapsed());
    }
    let elapsed = started.elapsed();
    times.sort();
    Row {
        name: "(b) one transaction per event".into(),
        events: n,
        elapsed,
        latency: Some((pct(&times, 0.5), pct(&times, 0.99))),
        note: String::new(),
    }
}

fn library_path(dir: &Path, n: usize, concurrent_singles: usize) -> Vec<Row> {
    let (conn, _) = fresh_db(dir, "c-library");
    let system = actix_rt::System::new();
    system.block_on(async move {
        let (writer, arbiter) = DbWriter::start(
            conn,
            1024,
            512,
            dbwarden::notifier::Notifier::log_only(),
            std::sync::Arc::new(dbwarden::metrics::Metrics::new().expect("metrics")),
            None,
        );
        let mut rows = Vec::new();

        let events: Vec<NewEvent> = (0..n).map(|i| nth_event("c", i)).collect();
        let batches: Vec<Vec<NewEvent>> = events.chunks(1000).map(|c| c.to_vec()).collect();
        let mut times = Vec::new();
        let started = Instant::now();
        for b in batches {
            let t = Instant::now();
            writer.append(b).await.expect("append");
            times.push(t.elapsed());
        }
        let elapsed = started.elapsed();
        times.sort();
        rows.push(Row {
            name: "(c) library, batches of 1000".into(),
            events: n,
            elapsed,
            latency: Some((pct(&times, 0.5), pct(&times, 0.99))),
            note: "latency per 1000-event append".into(),
        });

        let per_caller = n / 4 / concurrent_singles;
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..concurrent_singles {
            let w = writer.clone();
            tasks.push(actix_rt::spawn(async move {
                let mut lat = Vec::with_capacity(per_caller);
                for i in 0..per_caller {
                    let e = nth_event(&format!("c64-{c}"), i);
                    let t = Instant::now();
                    w.append(vec![e]).await.expect("append");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut lat = Vec::new();
        for t in tasks {
            lat.extend(t.await.expect("task"));
        }
        let elapsed = started.elapsed();
        lat.sort();
        let batches = writer
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed);
        rows.push(Row {
            name: format!("(c) library, {concurrent_singles} callers × single events"),
            events: per_caller * concurrent_singles,
            elapsed,
            latency: Some((pct(&lat, 0.5), pct(&lat, 0.99))),
            note: format!("{batches} commits in all"),
        });
        writer.shutdown().await.expect("shutdown");
        arbiter.stop();
        rows
    })
}

struct Service {
    child: std::process::Child,
    base: String,
}

fn start_service(dir: &Path) -> Service {
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir)
        .env("DBWARDEN__DATABASE__PATH", dir.join("d-http.db"))
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:0")
        .env("DBWARDEN__API__MAX_BODY_BYTES", "4194304")
        .env("DBWARDEN__API__RATE_LIMIT_PER_SECOND", "0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn dbwarden");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split("addr=")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
            {
                if line.contains("dbwarden started") {
                    let _ = tx.send(addr.to_string());
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("service address");
    Service {
        child,
        base: format!("http://{addr}"),
    }
}

fn peak_rss_mb(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

async fn http_phase(
    base: &str,
    label: &str,
    clients: usize,
    requests_per_client: usize,
    batch: usize,
) -> Row {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let client = client.clone();
        let url = format!("{base}/api/events");
        let label = label.to_string();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(requests_per_client);
            for r in 0..requests_per_client {
                let events: Vec<serde_json::Value> = (0..batch)
                    .map(|k| {
                        let e = nth_event(&format!("{label}-{c}"), r * batch + k);
                        serde_json::json!({"aggregate_type": e.aggregate_type(), "aggregate_id": e.aggregate_id(), "event_type": e.event_type(), "event_data": serde_json::from_str::<serde_json::Value>(e.event_data()).expect("data")})
                    })
                    .collect();
                let body = if batch == 1 { events[0].to_string() } else { serde_json::Value::Array(events).to_string() };
                let t = Instant::now();
                let res = client.post(&url).header("content-type", "application/json").body(body).send().await.expect("post");
                assert_eq!(res.status(), 201, "{}", res.text().await.unwrap_or_default());
                let _ = res.bytes().await;
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed();
    lat.sort();
    Row {
        name: label.to_string(),
        events: clients * requests_per_client * batch,
        elapsed,
        latency: Some((pct(&lat, 0.5), pct(&lat, 0.99))),
        note: if batch > 1 {
            "latency per 1000-event request".into()
        } else {
            "latency per request".into()
        },
    }
}

fn http_rows(dir: &Path, n: usize) -> (Vec<Row>, f64) {
    let mut service = start_service(dir);
    let base = service.base.clone();
    let pid = service.child.id();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (rows, rss) = rt.block_on(async move {
        let singles = n / 10;
        let mut rows = Vec::new();
        rows.push(
            http_phase(
                &base,
                "(d) HTTP, 1 client × single events",
                1,
                singles / 4,
                1,
            )
            .await,
        );
        rows.push(
            http_phase(
                &base,
                "(d) HTTP, 16 clients × single events",
                16,
                singles / 16,
                1,
            )
            .await,
        );
        rows.push(
            http_phase(
                &base,
                "(d) HTTP, 64 clients × single events",
                64,
                singles / 64,
                1,
            )
            .await,
        );
        let rss = peak_rss_mb(pid);
        rows.push(
            http_phase(
                &base,
                "(d) HTTP, 1 client × batches of 1000",
                1,
                n / 1000,
                1000,
            )
            .await,
        );
        (rows, rss)
    });
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = service.child.wait();
    (rows, rss)
}

fn main() {
    let n: usize = std::env::var("DBWARDEN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let per_event_n: usize = (n / 40).max(1000);
    let base_dir = std::env::var("DBWARDEN_BENCH_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| std::env::temp_dir());
    let dir = tempfile::tempdir_in(&base_dir).expect("tempdir");
    let dir = Arc::new(dir);
    println!(
        "SQLite {}; {} cores; databases in {}",
        rusqlite::version(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        base_dir.display()
    );

    let a = raw_batched(
        dir.path(),
        "(a) raw rusqlite, batches of 1000, multi-row INSERTs, triggers on",
        n,
        true,
        true,
    );
    let e = raw_batched(
        dir.path(),
        "(e) raw rusqlite, batches of 1000, multi-row INSERTs, no summary triggers",
        n,
        false,
        true,
    );
    let a1 = raw_batched(
        dir.path(),
        "(a1) as (a), one INSERT per row",
        n,
        true,
        false,
    );
    let e1 = raw_batched(
        dir.path(),
        "(e1) as (e), one INSERT per row",
        n,
        false,
        false,
    );
    let b = per_event_transactions(dir.path(), per_event_n);
    let c = library_path(dir.path(), n, 64);
    let (d, rss) = http_rows(dir.path(), n);

    println!();
    println!("| path | events | events/s | p50 | p99 | ratio | note |");
    println!("|---|---:|---:|---:|---:|---|---|");
    let show = |row: &Row, ratio: String| {
        let (p50, p99) = row.latency.unwrap_or_default();
        println!(
            "| {} | {} | {:.0} | {:.2} ms | {:.2} ms | {} | {} |",
            row.name,
            row.events,
            row.rate(),
            p50.as_secs_f64() * 1e3,
            p99.as_secs_f64() * 1e3,
            ratio,
            row.note
        );
    };
    show(&e, "—".into());
    show(&a, format!("(a)/(e) = {:.0}%", 100.0 * a.rate() / e.rate()));
    show(&e1, format!("/(e) = {:.0}%", 100.0 * e1.rate() / e.rate()));
    show(
        &a1,
        format!("(a1)/(e1) = {:.0}%", 100.0 * a1.rate() / e1.rate()),
    );
    show(&b, format!("(b)/(a) = {:.1}%", 100.0 * b.rate() / a.rate()));
    for row in &c {
        show(row, format!("/(a) = {:.0}%", 100.0 * row.rate() / a.rate()));
    }
    for row in &d {
        show(
            row,
            format!(
                "/(a) = {:.0}%, /(b) = {:.1}×",
                100.0 * row.rate() / a.rate(),
                row.rate() / b.rate()
            ),
        );
    }
    println!();
    println!("peak RSS of the service after the 64-client run: {rss:.1} MB");
}

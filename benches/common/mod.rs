//! What the benchmarks share: a big events database, a writer appending one event per
//! transaction while something else runs (its latencies and the largest `-wal` seen),
//! and timing helpers.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dbwarden::config::{ConfigSource, Settings};
use dbwarden::db::{self, CheckpointMode};
use dbwarden::events::NewEvent;

pub fn settings_for(dir: &Path) -> Settings {
    Settings::load_with_env(
        &ConfigSource::Default,
        [
            (
                "DBWARDEN__DATABASE__PATH".to_string(),
                dir.join("big.db").display().to_string(),
            ),
            (
                "DBWARDEN__BACKUP__DIR".to_string(),
                dir.join("backups").display().to_string(),
            ),
            ("DBWARDEN__BACKUP__KEEP_LAST".to_string(), "100".to_string()),
        ],
    )
    .expect("settings")
}

pub fn build(settings: &Settings, target_mb: u64) -> u64 {
    build_with(settings, target_mb, |_| "x".repeat(900))
}

/// Events of ~1 KB each, `pad(n)` in the `pad` field of event `n`, until the database
/// holds `target_mb` MB.
pub fn build_with(settings: &Settings, target_mb: u64, pad: impl Fn(usize) -> String) -> u64 {
    let (mut conn, _) = db::open_and_migrate(&settings.database).expect("migrate");
    let mut i = 0usize;
    loop {
        let size = std::fs::metadata(&settings.database.path)
            .map(|m| m.len())
            .unwrap_or(0);
        if size >= target_mb << 20 {
            break;
        }
        let events: Vec<NewEvent> = (0..5000)
            .map(|k| {
                let n = i + k;
                NewEvent::new(
                    "corruption",
                    &format!("agg-{}", n / 10),
                    ["CorruptionDetected", "DownloadProgress", "DownloadFailed", "VerificationSuccess"][n % 4],
                    serde_json::json!({"file_path": format!("/media/{n}.mkv"), "error": if n % 4 == 2 { Some("x") } else { None }, "pad": pad(n)}),
                )
            .expect("a valid event")
            })
            .collect();
        i += events.len();
        let tx = conn.transaction().expect("tx");
        db::queries::insert_events(&tx, &events).expect("insert");
        tx.commit().expect("commit");
        db::wal_checkpoint(&conn, CheckpointMode::Truncate).expect("checkpoint");
    }
    db::wal_checkpoint(&conn, CheckpointMode::Truncate).expect("checkpoint");
    std::fs::metadata(&settings.database.path)
        .map(|m| m.len())
        .unwrap_or(0)
}

/// A writer appending one event per transaction until stopped: latencies and the
/// largest `-wal` size seen.
pub struct Load {
    stop: Arc<AtomicBool>,
    lat: Arc<Mutex<Vec<Duration>>>,
    wal_max: Arc<Mutex<u64>>,
    thread: std::thread::JoinHandle<()>,
}

pub fn start_load(settings: &Settings) -> Load {
    let stop = Arc::new(AtomicBool::new(false));
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    let wal_max: Arc<Mutex<u64>> = Arc::default();
    let (s, l, w, cfg) = (
        stop.clone(),
        lat.clone(),
        wal_max.clone(),
        settings.database.clone(),
    );
    let thread = std::thread::spawn(move || {
        let conn = db::open_writer(&cfg).expect("writer");
        let wal = PathBuf::from(format!("{}-wal", cfg.path.display()));
        let mut n = 0;
        while !s.load(Ordering::Relaxed) {
            n += 1;
            let e = NewEvent::new(
                "corruption",
                &format!("live-{n}"),
                "CorruptionDetected",
                serde_json::json!({"n": n}),
            )
            .expect("a valid event");
            let t = Instant::now();
            db::queries::insert_event(&conn, &e).expect("append");
            l.lock().expect("lock").push(t.elapsed());
            let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            let mut max = w.lock().expect("lock");
            *max = (*max).max(size);
            drop(max);
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = db::wal_checkpoint(&conn, CheckpointMode::Truncate);
    });
    Load {
        stop,
        lat,
        wal_max,
        thread,
    }
}

pub struct LoadResult {
    pub p50: Duration,
    pub p99: Duration,
    pub appends: usize,
    pub wal_max_mb: f64,
}

pub fn stop_load(load: Load) -> LoadResult {
    load.stop.store(true, Ordering::Relaxed);
    let _ = load.thread.join();
    let mut lat = load.lat.lock().expect("lock").clone();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len().max(1) - 1) as f64 * p) as usize)
            .copied()
            .unwrap_or_default()
    };
    let wal = *load.wal_max.lock().expect("lock");
    LoadResult {
        p50: pct(0.5),
        p99: pct(0.99),
        appends: lat.len(),
        wal_max_mb: wal as f64 / 1048576.0,
    }
}

pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed())
}

pub fn fsync(path: &Path) {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .expect("fsync");
}

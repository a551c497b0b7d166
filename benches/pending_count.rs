//! "How many corruptions are pending?" — the seed's legacy view against the
//! materialized summary and the per-state count table, at 1k, 100k and 1M
//! corruptions (about 9 events each), in one run.
//!
//! ```text
//! cargo bench --bench pending_count
//! DBWARDEN_BENCH_SIZES=1000,100000 cargo bench --bench pending_count
//! ```
//!
//! Databases are built in a temp dir with the real migrations; events go in through
//! the triggers, as in production.

use std::time::{Duration, Instant};

use dbwarden::db::{migrations, queries};
use rusqlite::{params, Connection};

/// The seed's slow view: eight correlated subqueries per aggregate.
const LEGACY_VIEW: &str = "
CREATE VIEW legacy_corruption_status AS
SELECT aggregate_id AS corruption_id,
  (SELECT event_type FROM events e2 WHERE e2.aggregate_id = e.aggregate_id ORDER BY id DESC LIMIT 1) AS current_state,
  (SELECT COUNT(*) FROM events e3 WHERE e3.aggregate_id = e.aggregate_id AND e3.event_type LIKE '%Failed') AS retry_count,
  (SELECT json_extract(event_data, '$.file_path') FROM events e4 WHERE e4.aggregate_id = e.aggregate_id AND e4.event_type = 'CorruptionDetected' LIMIT 1) AS file_path,
  (SELECT json_extract(event_data, '$.path_id') FROM events e5 WHERE e5.aggregate_id = e.aggregate_id AND e5.event_type = 'CorruptionDetected' LIMIT 1) AS path_id,
  (SELECT json_extract(event_data, '$.error') FROM events e6 WHERE e6.aggregate_id = e.aggregate_id AND json_extract(event_data, '$.error') IS NOT NULL ORDER BY id DESC LIMIT 1) AS last_error,
  (SELECT json_extract(event_data, '$.corruption_type') FROM events e7 WHERE e7.aggregate_id = e.aggregate_id AND e7.event_type = 'CorruptionDetected' LIMIT 1) AS corruption_type,
  (SELECT MIN(created_at) FROM events e8 WHERE e8.aggregate_id = e.aggregate_id) AS detected_at,
  (SELECT MAX(created_at) FROM events e9 WHERE e9.aggregate_id = e.aggregate_id) AS last_updated_at
FROM events e WHERE aggregate_type = 'corruption' GROUP BY aggregate_id;
";

const LIFECYCLE: &[&str] = &[
    "CorruptionDetected",
    "RemediationQueued",
    "DeletionStarted",
    "DeletionCompleted",
    "SearchStarted",
    "SearchCompleted",
    "DownloadProgress",
    "DownloadProgress",
    "FileDetected",
];
const ENDINGS: &[&str] = &[
    "VerificationSuccess",
    "DownloadFailed",
    "ImportBlocked",
    "MaxRetriesReached",
    "VerificationStarted",
];

fn build(path: &std::path::Path, corruptions: usize) -> (Connection, Duration, usize) {
    let mut conn = Connection::open(path).expect("open");
    conn.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;")
        .expect("pragmas");
    migrations::migrate(&mut conn).expect("migrate");
    conn.execute_batch(LEGACY_VIEW).expect("legacy view");
    let started = Instant::now();
    let mut events = 0;
    let tx = conn.transaction().expect("tx");
    {
        let mut insert = tx
            .prepare("INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at) VALUES ('corruption', ?1, ?2, ?3, ?4)")
            .expect("prepare");
        for i in 0..corruptions {
            let id = format!("{i:08x}-0000-4000-8000-000000000000");
            let at = format!("2026-01-{:02} 01:18:00", 1 + i % 28);
            let steps: Vec<&str> = if i % 10 == 0 {
                vec![LIFECYCLE[0]] // still pending
            } else {
                LIFECYCLE
                    .iter()
                    .copied()
                    .chain([ENDINGS[i % ENDINGS.len()]])
                    .collect()
            };
            for step in steps {
                let data = match step {
                    "CorruptionDetected" => format!(
                        r#"{{"file_path":"/media/tv/{i}.mkv","path_id":{},"corruption_type":"CorruptHeader"}}"#,
                        i % 4
                    ),
                    "DownloadFailed" => r#"{"error":"indexer unavailable"}"#.to_string(),
                    _ => r#"{"media_id":1}"#.to_string(),
                };
                insert.execute(params![id, step, data, at]).expect("insert");
                events += 1;
            }
        }
    }
    tx.commit().expect("commit");
    (conn, started.elapsed(), events)
}

fn time_many(n: usize, mut f: impl FnMut() -> i64) -> (i64, Vec<Duration>) {
    let mut samples = Vec::with_capacity(n);
    let mut last = 0;
    for _ in 0..n {
        let t = Instant::now();
        last = f();
        samples.push(t.elapsed());
    }
    samples.sort();
    (last, samples)
}

fn pct(samples: &[Duration], p: f64) -> Duration {
    samples[((samples.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    let sizes: Vec<usize> = std::env::var("DBWARDEN_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("size"))
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    println!(
        "SQLite {}; {} cores",
        rusqlite::version(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    );
    println!("| corruptions | events | build (s) | legacy view COUNT | summary COUNT(*) by state | count table lookup p50 | p99 | max | speed-up vs view |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for size in sizes {
        let (conn, build_time, events) = build(&dir.path().join(format!("bench-{size}.db")), size);
        // Warm the page cache the same way for every contender.
        let _: i64 = conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("warm");
        let view_runs = if size >= 1_000_000 { 1 } else { 3 };
        let (view_count, view) = time_many(view_runs, || {
            conn.query_row("SELECT COUNT(*) FROM legacy_corruption_status WHERE current_state = 'CorruptionDetected'", [], |r| r.get(0))
                .expect("legacy")
        });
        let (table_count, table) = time_many(50, || {
            conn.query_row("SELECT COUNT(*) FROM corruption_summary WHERE current_state = 'CorruptionDetected'", [], |r| r.get(0))
                .expect("summary count")
        });
        let (lookup_count, lookups) =
            time_many(100_000, || queries::pending_count(&conn).expect("lookup"));
        assert_eq!(view_count, table_count, "the view and the summary agree");
        assert_eq!(lookup_count, table_count, "the count table agrees");
        let view_med = pct(&view, 0.5);
        println!(
            "| {size} | {events} | {:.1} | {:.3} ms | {:.3} ms | {:.2} µs | {:.2} µs | {:.1} µs | {:.0}× |",
            build_time.as_secs_f64(),
            view_med.as_secs_f64() * 1e3,
            pct(&table, 0.5).as_secs_f64() * 1e3,
            pct(&lookups, 0.5).as_secs_f64() * 1e6,
            pct(&lookups, 0.99).as_secs_f64() * 1e6,
            lookups.last().expect("max").as_secs_f64() * 1e6,
            view_med.as_secs_f64() / pct(&lookups, 0.5).as_secs_f64(),
        );
    }
}

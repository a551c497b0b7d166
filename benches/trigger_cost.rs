//! CPU cost of the summary triggers alone: N lifecycle events (the append benchmark's
//! workload) inserted with multi-row INSERTs into an in-memory database, so no fsync
//! or disk noise is measured. Wall-clock numbers on a shared VM vary by ±20% from run
//! to run; the instruction count under callgrind does not, which makes this the way
//! to compare two versions of the triggers:
//!
//! ```text
//! cargo bench --bench trigger_cost --no-run
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/deps/trigger_cost-* 2>&1 | grep refs
//! DBWARDEN_BENCH_EVENTS=100000 cargo bench --bench trigger_cost      # wall clock
//! ```

use std::time::Instant;

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

fn data(event_type: &str, i: usize) -> String {
    match event_type {
        "CorruptionDetected" => format!(
            r#"{{"file_path":"/media/tv/show {i}/ep.mkv","path_id":1,"corruption_type":"CorruptHeader","file_size":1234}}"#
        ),
        "DownloadFailed" => r#"{"error":"indexer unreachable","status":"failed"}"#.to_string(),
        "FileDetected" => format!(r#"{{"file_path":"/media/tv/show {i}/new.mkv"}}"#),
        _ => format!(r#"{{"media_id":{i}}}"#),
    }
}

fn main() {
    let n: usize = std::env::var("DBWARDEN_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut conn = Connection::open_in_memory().expect("memory db");
    dbwarden::db::migrations::migrate(&mut conn).expect("migrate");
    let rows = 100;
    let mut sql = String::from(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at) VALUES ",
    );
    for r in 0..rows {
        sql.push_str(if r == 0 {
            "(?,?,?,?,?)"
        } else {
            ",(?,?,?,?,?)"
        });
    }
    let started = Instant::now();
    let tx = conn.transaction().expect("tx");
    {
        let mut stmt = tx.prepare(&sql).expect("prepare");
        let mut values: Vec<String> = Vec::with_capacity(rows * 5);
        for chunk in (0..n).collect::<Vec<_>>().chunks(rows) {
            if chunk.len() < rows {
                break;
            }
            values.clear();
            for &i in chunk {
                let event_type = LIFECYCLE[i % LIFECYCLE.len()];
                values.extend([
                    "corruption".to_string(),
                    format!("agg-{}", i / LIFECYCLE.len()),
                    event_type.to_string(),
                    data(event_type, i),
                    format!("2026-01-06 01:{:02}:{:02}", (i / 60) % 60, i % 60),
                ]);
            }
            stmt.execute(rusqlite::params_from_iter(values.iter()))
                .expect("insert");
        }
    }
    tx.commit().expect("commit");
    let elapsed = started.elapsed();
    let stored: i64 = conn
        .query_row("SELECT count(*) FROM corruption_summary", [], |r| r.get(0))
        .expect("count");
    println!(
        "{n} events, {stored} summary rows, {:.0} events/s (in memory, triggers on)",
        n as f64 / elapsed.as_secs_f64()
    );
}

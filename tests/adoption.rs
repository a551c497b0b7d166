//! Adopting a Healarr database: a verified copy is written first, every event
//! survives byte for byte, Healarr's trigger and legacy view are replaced, the summary
//! is rebuilt exactly, and every other table is left as it was.

mod common;

use dbwarden::db::{self, integrity, migrations};
use rusqlite::{params, Connection};

const HEALARR_SCHEMA: &str = "
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP);
CREATE TABLE events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    aggregate_type TEXT NOT NULL,
    aggregate_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    event_data JSON NOT NULL,
    event_version INTEGER NOT NULL DEFAULT 1,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    user_id TEXT
);
CREATE INDEX idx_events_aggregate ON events(aggregate_type, aggregate_id);
CREATE INDEX idx_events_type ON events(event_type);
CREATE INDEX idx_events_created ON events(created_at);
CREATE INDEX idx_events_agg_type ON events(aggregate_id, event_type);
CREATE INDEX idx_events_file_path ON events(json_extract(event_data, '$.file_path')) WHERE event_type = 'CorruptionDetected';
CREATE TABLE scan_paths (id INTEGER PRIMARY KEY AUTOINCREMENT, local_path TEXT NOT NULL UNIQUE, arr_path TEXT NOT NULL, enabled BOOLEAN DEFAULT 1, auto_remediate BOOLEAN DEFAULT 0);
CREATE TABLE arr_instances (id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, url TEXT NOT NULL, api_key TEXT NOT NULL);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO scan_paths (local_path, arr_path, auto_remediate) VALUES ('/media/tv', '/tv', 1), ('/media/movies', '/movies', 0);
INSERT INTO arr_instances (name, url, api_key) VALUES ('sonarr', 'http://sonarr:8989', 'enc:abc');
INSERT INTO settings (key, value) VALUES ('theme', 'dark'), ('retention_days', '90');
";

// Healarr's own migration 4: the summary table with a foreign key, its trigger (with
// the defects the reference lists) and the slow legacy view.
const HEALARR_SUMMARY: &str = "
CREATE TABLE corruption_summary (
    corruption_id TEXT PRIMARY KEY, current_state TEXT NOT NULL, retry_count INTEGER DEFAULT 0,
    file_path TEXT, path_id INTEGER, last_error TEXT, corruption_type TEXT,
    detected_at TIMESTAMP, last_updated_at TIMESTAMP,
    FOREIGN KEY (path_id) REFERENCES scan_paths(id));
CREATE INDEX idx_corruption_summary_state ON corruption_summary(current_state);
CREATE TRIGGER trg_update_corruption_summary AFTER INSERT ON events
WHEN NEW.aggregate_type = 'corruption'
BEGIN
    INSERT OR REPLACE INTO corruption_summary (corruption_id, current_state, retry_count, file_path,
        path_id, last_error, corruption_type, detected_at, last_updated_at)
    SELECT NEW.aggregate_id, NEW.event_type,
        (SELECT COUNT(*) FROM events WHERE aggregate_id = NEW.aggregate_id AND event_type LIKE '%Failed'),
        json_extract(NEW.event_data, '$.file_path'), json_extract(NEW.event_data, '$.path_id'),
        json_extract(NEW.event_data, '$.error'), NULL,
        COALESCE((SELECT detected_at FROM corruption_summary WHERE corruption_id = NEW.aggregate_id), NEW.created_at),
        NEW.created_at;
END;
CREATE VIEW corruption_status AS
SELECT aggregate_id AS corruption_id,
    (SELECT event_type FROM events e2 WHERE e2.aggregate_id = e.aggregate_id ORDER BY id DESC LIMIT 1) AS current_state,
    (SELECT COUNT(*) FROM events e3 WHERE e3.aggregate_id = e.aggregate_id AND e3.event_type LIKE '%Failed') AS retry_count,
    NULL AS file_path, NULL AS path_id, NULL AS last_error, NULL AS corruption_type,
    MIN(created_at) AS detected_at, MAX(created_at) AS last_updated_at
FROM events e WHERE aggregate_type = 'corruption' GROUP BY aggregate_id;
";

const LIFECYCLE: &[&str] = &[
    "CorruptionDetected",
    "RemediationQueued",
    "DeletionStarted",
    "DeletionCompleted",
    "SearchStarted",
    "DownloadProgress",
    "DownloadFailed",
    "NotificationFailed",
    "FileDetected",
    "VerificationStarted",
    "VerificationSuccess",
];

fn go_time(i: usize) -> String {
    format!(
        "2026-01-06 01:{:02}:{:02}.123456789 +0000 UTC",
        (i / 60) % 60,
        i % 60
    )
}

/// Inserts a corruption's lifecycle; `how` picks TEXT, BLOB or the literal null.
fn insert_lifecycle(conn: &Connection, n: usize, steps: usize, how: usize, tick: &mut usize) {
    let id = format!("6f1c2a0e-0000-4000-8000-{n:012}");
    for (step, event_type) in LIFECYCLE.iter().take(steps).enumerate() {
        let data = match *event_type {
            "CorruptionDetected" => serde_json::json!({
                "file_path": format!("/media/tv/show {n}/ep ü {step}.mkv"),
                "file_size": 1234, "path_id": 1 + n % 2, "corruption_type": "CorruptHeader",
                "error_details": "moov atom not found", "auto_remediate": true, "dry_run": false, "source": "scan"}),
            "DownloadFailed" => {
                serde_json::json!({"error": format!("indexer down {n}"), "status": "failed"})
            }
            "NotificationFailed" => serde_json::json!({"provider": "discord", "error": "timeout"}),
            "FileDetected" => {
                serde_json::json!({"file_path": format!("/media/tv/show {n}/replacement.mkv")})
            }
            _ => serde_json::json!({"media_id": n}),
        };
        let value: rusqlite::types::Value = match (how + step) % 3 {
            0 => data.to_string().into(),
            1 => data.to_string().into_bytes().into(),
            _ if *event_type == "CorruptionDetected" => data.to_string().into(),
            _ => "null".to_string().into(),
        };
        *tick += 1;
        conn.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at) VALUES ('corruption', ?1, ?2, ?3, ?4)",
            params![id, event_type, value, go_time(*tick)],
        )
        .expect("insert event");
    }
}

type Dump = Vec<(i64, String, String, String, String, Vec<u8>, Option<String>)>;

fn dump_events(conn: &Connection) -> Dump {
    let mut stmt = conn
        .prepare("SELECT id, aggregate_type, aggregate_id, event_type, typeof(event_data), CAST(event_data AS BLOB), created_at FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn dump_table(conn: &Connection, sql: &str) -> Vec<String> {
    let mut stmt = conn.prepare(sql).expect("prepare");
    let cols = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            let mut line = Vec::new();
            for i in 0..cols {
                line.push(format!("{:?}", r.get_ref(i)?));
            }
            Ok(line.join("|"))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn build_healarr_db(path: &std::path::Path) {
    let conn = Connection::open(path).expect("create");
    conn.execute_batch("PRAGMA journal_mode=WAL;").expect("wal");
    conn.execute_batch(HEALARR_SCHEMA).expect("schema");
    for v in 1..=13 {
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?1)", [v])
            .expect("version");
    }
    let mut tick = 0;
    // Older rows written before Healarr had its summary (BLOB and null data included).
    for n in 0..20 {
        insert_lifecycle(&conn, n, 1 + n % LIFECYCLE.len(), n, &mut tick);
    }
    conn.execute_batch(HEALARR_SUMMARY)
        .expect("healarr summary");
    // Newer rows written through Healarr's own (defective) trigger: TEXT data only,
    // as its json_extract needs.
    for n in 20..40 {
        insert_lifecycle(&conn, n, 1 + n % LIFECYCLE.len(), 0, &mut tick);
    }
    conn.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at) VALUES ('scan', 'scan-1', 'ScanCompleted', '{\"files\":10}', ?1)",
        [go_time(999)],
    )
    .expect("scan event");
}

#[test]
fn adopts_a_healarr_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    let path = settings.database.path.clone();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    build_healarr_db(&path);

    let before = Connection::open(&path).expect("open");
    let events_before = dump_events(&before);
    let others_before: Vec<Vec<String>> = [
        "SELECT * FROM schema_migrations",
        "SELECT * FROM scan_paths",
        "SELECT * FROM arr_instances",
        "SELECT * FROM settings",
    ]
    .iter()
    .map(|q| dump_table(&before, q))
    .collect();
    assert!(
        events_before.iter().any(|e| e.4 == "blob"),
        "fixture holds BLOB event_data"
    );
    assert!(
        events_before.iter().any(|e| e.5 == b"null"),
        "fixture holds literal null event_data"
    );
    // Healarr's trigger got this wrong: its state follows notification events.
    let wrong: i64 = before
        .query_row(
            "SELECT count(*) FROM corruption_summary WHERE current_state = 'NotificationFailed'",
            [],
            |r| r.get(0),
        )
        .expect("healarr summary");
    assert!(wrong > 0, "fixture reproduces Healarr's defective summary");
    drop(before);

    let (conn, report) = db::open_and_migrate(&settings.database).expect("adoption");
    assert_eq!(report.applied.len(), migrations::MIGRATIONS.len());

    // The verified copy exists beside it and holds the database as it was.
    let copies: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.to_string_lossy().contains(".healarr-") && p.extension().is_some_and(|x| x == "bak")
        })
        .collect();
    assert_eq!(copies.len(), 1, "one pre-adoption copy: {copies:?}");
    integrity::verify_file(&copies[0]).expect("copy passes integrity_check");
    let copy = Connection::open(&copies[0]).expect("open copy");
    assert_eq!(dump_events(&copy), events_before, "copy holds every event");
    let unadopted: i64 = copy
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'dbwarden_migrations'",
            [],
            |r| r.get(0),
        )
        .expect("copy schema");
    assert_eq!(unadopted, 0, "the copy is from before any migration");

    // Every event survived byte for byte, storage class included.
    assert_eq!(dump_events(&conn), events_before);
    common::assert_summary_exact(&conn);
    let others_after: Vec<Vec<String>> = [
        "SELECT * FROM schema_migrations",
        "SELECT * FROM scan_paths",
        "SELECT * FROM arr_instances",
        "SELECT * FROM settings",
    ]
    .iter()
    .map(|q| dump_table(&conn, q))
    .collect();
    assert_eq!(
        others_after, others_before,
        "other Healarr tables untouched"
    );

    let healarr_trigger: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'trg_update_corruption_summary'", [], |r| r.get(0))
        .expect("trigger");
    assert_eq!(healarr_trigger, 0, "Healarr's trigger replaced");
    let fks: i64 = conn
        .query_row(
            "SELECT count(*) FROM pragma_foreign_key_list('corruption_summary')",
            [],
            |r| r.get(0),
        )
        .expect("fk list");
    assert_eq!(fks, 0, "no foreign key on path_id");
    let (view_rows, table_rows): (i64, i64) = conn
        .query_row("SELECT (SELECT count(*) FROM corruption_status), (SELECT count(*) FROM corruption_summary)", [], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("view");
    assert_eq!(view_rows, table_rows);
    assert_eq!(table_rows, 40);

    // Healarr keeps writing directly after adoption: the summary stays exact.
    let mut tick = 5000;
    insert_lifecycle(&conn, 7, LIFECYCLE.len(), 1, &mut tick);
    common::assert_summary_exact(&conn);
    drop(conn);

    // A second start is a no-op: nothing applied, no second copy.
    let (_conn, again) = db::open_and_migrate(&settings.database).expect("second start");
    assert!(again.applied.is_empty());
    let copies_after = std::fs::read_dir(path.parent().expect("parent"))
        .expect("list")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.file_name().to_string_lossy().contains(".healarr-"))
        })
        .count();
    assert_eq!(copies_after, 1);
}

#[test]
fn refuses_a_changed_or_newer_migration() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    let (conn, _) = db::open_and_migrate(&settings.database).expect("fresh");
    conn.execute(
        "UPDATE dbwarden_migrations SET checksum = 'bogus' WHERE name = '0001_event_store'",
        [],
    )
    .expect("tamper");
    drop(conn);
    let err = db::open_and_migrate(&settings.database)
        .expect_err("changed migration refused")
        .to_string();
    assert!(
        err.contains("0001_event_store") && err.contains("changed"),
        "{err}"
    );

    let conn = Connection::open(&settings.database.path).expect("open");
    conn.execute(
        "UPDATE dbwarden_migrations SET checksum = ?1 WHERE name = '0001_event_store'",
        [migrations::checksum(migrations::MIGRATIONS[0].sql)],
    )
    .expect("restore");
    conn.execute(
        "INSERT INTO dbwarden_migrations VALUES ('9999_from_the_future', 'x', 'now')",
        [],
    )
    .expect("future");
    drop(conn);
    let err = db::open_and_migrate(&settings.database)
        .expect_err("newer database refused")
        .to_string();
    assert!(
        err.contains("newer dbwarden") && err.contains("9999_from_the_future"),
        "{err}"
    );
}

/// A Healarr database named by a bare file name (`database.path = "healarr.db"`, in the
/// working directory) gets its verified pre-adoption copy beside it like any other.
/// (Found by mutation testing: treating the empty parent of a bare name as a directory
/// went unnoticed.)
#[test]
fn a_healarr_database_given_by_a_bare_file_name_is_protected_before_adoption() {
    let dir = tempfile::tempdir().expect("tempdir");
    build_healarr_db(&dir.path().join("healarr.db"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir.path())
        .arg("migrate")
        .env("DBWARDEN__DATABASE__PATH", "healarr.db")
        .env("DBWARDEN__BACKUP__DIR", "backups")
        .env("DBWARDEN__API__LISTEN", "127.0.0.1:1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run dbwarden");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let copies: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("healarr.db.healarr-") && n.ends_with(".bak"))
        .collect();
    assert_eq!(copies.len(), 1, "{copies:?}");
    let copy = Connection::open(dir.path().join(&copies[0])).expect("open the copy");
    assert!(
        adopt_free(&copy),
        "the copy is the Healarr database as it was, not the adopted one"
    );
}

/// True for a database dbwarden has not migrated.
fn adopt_free(conn: &Connection) -> bool {
    conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE name = 'dbwarden_migrations'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .expect("sqlite_master")
        == 0
}

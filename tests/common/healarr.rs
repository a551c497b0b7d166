//! A Healarr database and Healarr's write paths, built from the facts in
//! `shared/reference/healarr-compat.md` and what Healarr's source does (read, not
//! copied): its events table and index names, its event INSERT (JSON bound as a
//! BLOB, Go's time format, `user_id` ''), its daily prune with an RFC 3339 cutoff, its
//! summary trigger (the lifecycle-only INSERT OR REPLACE of its migration 012), and
//! what its upgrade from an older schema version does to an adopted database.
#![allow(dead_code)]

use rusqlite::{params, Connection};
use serde_json::Value;

/// Healarr's events table and its own four indexes (names as Healarr creates them),
/// its migrations table and some of its other tables, with rows.
pub const SCHEMA: &str = "
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
CREATE INDEX idx_aggregate ON events(aggregate_type, aggregate_id);
CREATE INDEX idx_event_type ON events(event_type);
CREATE INDEX idx_created_at ON events(created_at);
CREATE INDEX idx_events_aggregate_event ON events(aggregate_id, event_type);
CREATE INDEX idx_events_file_path ON events(json_extract(event_data, '$.file_path')) WHERE event_type = 'CorruptionDetected';
CREATE TABLE scan_paths (id INTEGER PRIMARY KEY, local_path TEXT NOT NULL UNIQUE, arr_path TEXT NOT NULL, enabled BOOLEAN DEFAULT 1, auto_remediate BOOLEAN DEFAULT 0);
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO scan_paths (local_path, arr_path, auto_remediate) VALUES ('/media/tv', '/tv', 1), ('/media/movies', '/movies', 0);
INSERT INTO settings (key, value) VALUES ('retention_days', '90');
CREATE TABLE corruption_summary (
    corruption_id TEXT PRIMARY KEY, current_state TEXT NOT NULL, retry_count INTEGER DEFAULT 0,
    file_path TEXT, path_id INTEGER, last_error TEXT, corruption_type TEXT,
    detected_at TIMESTAMP, last_updated_at TIMESTAMP);
CREATE VIEW corruption_status AS
    SELECT corruption_id, current_state, retry_count, file_path, path_id, last_error,
           corruption_type, detected_at, last_updated_at FROM corruption_summary;
";

/// Healarr's summary trigger since its migration 012: on every lifecycle insert the
/// row is replaced; state, error and time from the new event; retries counted over
/// the aggregate's events; detection fields from the new event when it is a
/// CorruptionDetected, else kept from the row; detection time kept from the row.
pub const TRIGGER_012: &str = "
CREATE TRIGGER trg_update_corruption_summary AFTER INSERT ON events
WHEN NEW.aggregate_type = 'corruption' AND NEW.event_type NOT IN ('NotificationSent', 'NotificationFailed')
BEGIN
    INSERT OR REPLACE INTO corruption_summary (corruption_id, current_state, retry_count,
        file_path, path_id, last_error, corruption_type, detected_at, last_updated_at)
    SELECT NEW.aggregate_id, NEW.event_type,
        (SELECT count(*) FROM events WHERE aggregate_id = NEW.aggregate_id
           AND event_type IN ('DeletionFailed', 'SearchFailed', 'VerificationFailed', 'DownloadFailed', 'DownloadTimeout')),
        coalesce(CASE WHEN NEW.event_type = 'CorruptionDetected' THEN json_extract(NEW.event_data, '$.file_path') END,
                 (SELECT file_path FROM corruption_summary WHERE corruption_id = NEW.aggregate_id)),
        coalesce(CASE WHEN NEW.event_type = 'CorruptionDetected' THEN json_extract(NEW.event_data, '$.path_id') END,
                 (SELECT path_id FROM corruption_summary WHERE corruption_id = NEW.aggregate_id)),
        json_extract(NEW.event_data, '$.error'),
        coalesce(CASE WHEN NEW.event_type = 'CorruptionDetected' THEN json_extract(NEW.event_data, '$.corruption_type') END,
                 (SELECT corruption_type FROM corruption_summary WHERE corruption_id = NEW.aggregate_id)),
        coalesce((SELECT detected_at FROM corruption_summary WHERE corruption_id = NEW.aggregate_id), NEW.created_at),
        NEW.created_at;
END;
";

/// Creates a Healarr database at `path` at schema `version` (its migrations up to it
/// recorded), with Healarr's summary trigger installed.
pub fn create(path: &std::path::Path, version: i64) -> Connection {
    let conn = Connection::open(path).expect("create healarr db");
    conn.execute_batch("PRAGMA journal_mode=WAL;").expect("wal");
    conn.execute_batch(SCHEMA).expect("healarr schema");
    conn.execute_batch(TRIGGER_012).expect("healarr trigger");
    for v in 1..=version {
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?1)", [v])
            .expect("version");
    }
    conn
}

/// Go's default time format, as Healarr's driver stores `time.Now().UTC()`.
pub fn go_time(day: u32, second: u32) -> String {
    format!(
        "2026-09-{day:02} {:02}:{:02}:{:02}.683900602 +0000 UTC",
        (second / 3600) % 24,
        (second / 60) % 60,
        second % 60
    )
}

/// Healarr's event INSERT: `json.Marshal` output bound as a BLOB, user_id ''.
pub fn insert(conn: &Connection, aggregate: &str, event_type: &str, data: Value, created_at: &str) {
    conn.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, event_version, created_at, user_id)
         VALUES ('corruption', ?1, ?2, ?3, 1, ?4, '')",
        params![
            aggregate,
            event_type,
            serde_json::to_vec(&data).expect("json"),
            created_at
        ],
    )
    .expect("healarr insert");
}

/// A corruption id like Healarr's (a UUID v4).
pub fn corruption_id(n: usize) -> String {
    format!("6f1c2a0e-0000-4000-8000-{n:012}")
}

/// One corruption's life on `day` as Healarr writes it: detected, queued, deleted,
/// searching, download progress, and for every third one a failure and a
/// notification; every fifth one is resolved.
pub fn write_lifecycle(conn: &Connection, n: usize, day: u32) {
    let id = corruption_id(n);
    let mut second = (n as u32) * 20;
    let mut at = || {
        second += 1;
        go_time(day, second)
    };
    insert(
        conn,
        &id,
        "CorruptionDetected",
        serde_json::json!({
            "file_path": format!("/media/tv/Show {n}/S01E01.mkv"), "file_size": 1234,
            "path_id": 1 + n % 2, "corruption_type": "CorruptHeader",
            "error_details": "moov atom not found", "auto_remediate": true, "dry_run": false, "source": "scan"}),
        &at(),
    );
    insert(
        conn,
        &id,
        "RemediationQueued",
        serde_json::json!({"media_id": n}),
        &at(),
    );
    insert(
        conn,
        &id,
        "DeletionCompleted",
        serde_json::json!({"media_id": n}),
        &at(),
    );
    insert(
        conn,
        &id,
        "SearchStarted",
        serde_json::json!({"file_path": format!("/media/tv/Show {n}/S01E01.mkv")}),
        &at(),
    );
    for p in [10, 50, 90] {
        insert(
            conn,
            &id,
            "DownloadProgress",
            serde_json::json!({"status": "downloading", "progress": p}),
            &at(),
        );
    }
    if n.is_multiple_of(3) {
        insert(
            conn,
            &id,
            "DownloadFailed",
            serde_json::json!({"error": format!("indexer down {n}"), "status": "failed"}),
            &at(),
        );
        conn.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at, user_id)
             VALUES ('corruption', ?1, 'NotificationFailed', ?2, ?3, '')",
            params![id, br#"{"provider":"discord","error":"timeout"}"#.to_vec(), at()],
        )
        .expect("notification");
    }
    if n.is_multiple_of(5) {
        insert(
            conn,
            &id,
            "FileDetected",
            serde_json::json!({"file_path": format!("/media/tv/Show {n}/S01E01.replacement.mkv")}),
            &at(),
        );
        insert(
            conn,
            &id,
            "VerificationSuccess",
            serde_json::json!({}),
            &at(),
        );
    }
}

/// Healarr's daily maintenance prune: `DELETE FROM events WHERE created_at < ?` with
/// the cutoff formatted as RFC 3339.
pub fn prune(conn: &Connection, cutoff_rfc3339: &str) -> usize {
    conn.execute("DELETE FROM events WHERE created_at < ?1", [cutoff_rfc3339])
        .expect("healarr prune")
}

/// What a newer Healarr does when it opens a database at an older schema version:
/// its migration 007 deletes summary rows without a file path, its 012 re-creates its
/// summary trigger and rewrites state and retries from the events (ordering by
/// created_at), the versions are recorded, and its views are re-created.
pub fn upgrade(conn: &Connection, to_version: i64) {
    let from: i64 = conn
        .query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })
        .expect("version");
    conn.execute_batch("BEGIN;").expect("begin");
    if from < 7 {
        conn.execute_batch("DELETE FROM corruption_summary WHERE file_path IS NULL;")
            .expect("007");
    }
    if from < 12 {
        conn.execute_batch("DROP TRIGGER IF EXISTS trg_update_corruption_summary;")
            .expect("drop");
        conn.execute_batch(TRIGGER_012).expect("012 trigger");
        conn.execute_batch(
            "UPDATE corruption_summary SET
                 current_state = (SELECT e.event_type FROM events e
                                   WHERE e.aggregate_id = corruption_summary.corruption_id
                                     AND e.aggregate_type = 'corruption'
                                     AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed')
                                   ORDER BY e.created_at DESC, e.id DESC LIMIT 1),
                 retry_count = (SELECT count(*) FROM events e
                                 WHERE e.aggregate_id = corruption_summary.corruption_id
                                   AND e.event_type IN ('DeletionFailed', 'SearchFailed', 'VerificationFailed', 'DownloadFailed', 'DownloadTimeout'))
             WHERE EXISTS (SELECT 1 FROM events e WHERE e.aggregate_id = corruption_summary.corruption_id
                             AND e.aggregate_type = 'corruption'
                             AND e.event_type NOT IN ('NotificationSent', 'NotificationFailed'));",
        )
        .expect("012 repair");
    }
    for v in (from + 1)..=to_version {
        conn.execute("INSERT INTO schema_migrations (version) VALUES (?1)", [v])
            .expect("record version");
    }
    conn.execute_batch("COMMIT;").expect("commit");
    recreate_views(conn);
}

/// Healarr drops and re-creates its views on every start.
pub fn recreate_views(conn: &Connection) {
    conn.execute_batch(
        "DROP VIEW IF EXISTS corruption_status;
         DROP VIEW IF EXISTS dashboard_stats;
         CREATE VIEW corruption_status AS
             SELECT corruption_id, current_state, retry_count, file_path, path_id, last_error,
                    corruption_type, detected_at, last_updated_at FROM corruption_summary;
         CREATE VIEW dashboard_stats AS
             SELECT count(CASE WHEN current_state = 'VerificationSuccess' THEN 1 END) AS resolved_corruptions
               FROM corruption_summary;",
    )
    .expect("healarr views");
}

/// Healarr's corruption list reads `file_path`, `detected_at` and `last_updated_at`
/// into non-null Go strings: a NULL in any row makes the list fail. Returns the ids of
/// rows it would fail on.
pub fn rows_healarrs_list_fails_on(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare(
            "SELECT corruption_id FROM corruption_status
              WHERE file_path IS NULL OR detected_at IS NULL OR last_updated_at IS NULL
                 OR current_state IS NULL",
        )
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// (name, columns) of every index on `events`, for duplicate checks.
pub fn event_indexes(conn: &Connection) -> Vec<(String, String)> {
    let mut stmt = conn
        .prepare(
            "SELECT il.name, group_concat(coalesce(ii.name, '<expr>'), ',')
               FROM pragma_index_list('events') il, pragma_index_info(il.name) ii
              GROUP BY il.name ORDER BY il.name",
        )
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

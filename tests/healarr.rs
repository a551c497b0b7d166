//! dbwarden beside the real Healarr's behaviour: its own indexes are reused, its
//! prunes keep the detection facts its readers need, and its upgrade of an adopted
//! database (a foreign trigger, deleted and rewritten rows) is found and repaired.

mod common;

use common::healarr;
use dbwarden::db::{self, guard, queries};
use rusqlite::Connection;

fn adopted(dir: &std::path::Path, version: i64, corruptions: usize) -> dbwarden::config::Settings {
    // Checks run when a test asks, not at startup.
    let settings = common::settings_in(dir, &[("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "false")]);
    let path = settings.database.path.clone();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let conn = healarr::create(&path, version);
    for n in 0..corruptions {
        healarr::write_lifecycle(&conn, n, 1);
    }
    drop(conn);
    let (conn, report) = db::open_and_migrate(&settings.database).expect("adoption");
    assert!(!report.applied.is_empty());
    common::assert_summary_exact(&conn);
    settings
}

#[test]
fn adoption_reuses_healarrs_own_indexes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = adopted(dir.path(), 13, 10);
    let conn = Connection::open(&settings.database.path).expect("open");
    let indexes = healarr::event_indexes(&conn);
    let names: Vec<&str> = indexes.iter().map(|(n, _)| n.as_str()).collect();
    for theirs in [
        "idx_aggregate",
        "idx_event_type",
        "idx_created_at",
        "idx_events_aggregate_event",
        "idx_events_file_path",
    ] {
        assert!(names.contains(&theirs), "{theirs} kept: {names:?}");
    }
    let mut columns: Vec<&str> = indexes.iter().map(|(_, c)| c.as_str()).collect();
    columns.sort_unstable();
    let before = columns.len();
    columns.dedup();
    assert_eq!(
        columns.len(),
        before,
        "no two indexes on the same columns: {indexes:?}"
    );
    // The summary triggers still seek by index (not a scan) with Healarr's indexes.
    let plan: Vec<String> = {
        let mut stmt = conn
            .prepare(
                "EXPLAIN QUERY PLAN SELECT 1 FROM events e
                  WHERE e.aggregate_type = 'corruption' AND e.aggregate_id = 'x' AND e.id > 5",
            )
            .expect("plan");
        let rows = stmt.query_map([], |r| r.get::<_, String>(3)).expect("rows");
        rows.map(|r| r.expect("row")).collect()
    };
    assert!(
        plan.iter().any(|p| p.contains("idx_aggregate")),
        "the aggregate seek uses Healarr's index: {plan:?}"
    );
}

#[test]
fn an_earlier_adoptions_duplicate_indexes_are_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = adopted(dir.path(), 13, 3);
    // What an earlier dbwarden created beside Healarr's indexes.
    let conn = Connection::open(&settings.database.path).expect("open");
    conn.execute_batch(
        "CREATE INDEX idx_events_aggregate ON events(aggregate_type, aggregate_id);
         CREATE INDEX idx_events_type ON events(event_type);
         CREATE INDEX idx_events_created_at ON events(created_at);
         CREATE INDEX idx_events_aggregate_event_type ON events(aggregate_id, event_type);",
    )
    .expect("old duplicates");
    drop(conn);
    let (conn, report) = db::open_and_migrate(&settings.database).expect("reopen");
    let mut dropped: Vec<&str> = report
        .indexes_reused
        .iter()
        .map(|(ours, _)| ours.as_str())
        .collect();
    dropped.sort_unstable();
    assert_eq!(
        dropped,
        [
            "idx_events_aggregate",
            "idx_events_aggregate_event_type",
            "idx_events_created_at",
            "idx_events_type"
        ]
    );
    let names: Vec<String> = healarr::event_indexes(&conn)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert!(!names.iter().any(|n| n == "idx_events_type"), "{names:?}");
    // Should Healarr's own go away, ours come back.
    conn.execute_batch("DROP INDEX idx_event_type;")
        .expect("drop theirs");
    drop(conn);
    let (conn, report) = db::open_and_migrate(&settings.database).expect("reopen");
    assert_eq!(report.indexes_created, ["idx_events_type"]);
    assert!(healarr::event_indexes(&conn)
        .iter()
        .any(|(n, _)| n == "idx_events_type"));
}

/// (corruption id, file path, detection time) of every summary row.
fn detection_facts(conn: &Connection) -> Vec<(String, Option<String>, Option<String>)> {
    let mut stmt = conn
        .prepare("SELECT corruption_id, file_path, detected_at FROM corruption_summary ORDER BY 1")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

#[test]
fn facts_healarr_had_already_pruned_survive_adoption() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    let path = settings.database.path.clone();
    std::fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
    let conn = healarr::create(&path, 13);
    for n in 0..6 {
        healarr::write_lifecycle(&conn, n, 1);
    }
    // The next day's events keep the corruptions alive past the prune.
    for n in 0..6 {
        healarr::insert(
            &conn,
            &healarr::corruption_id(n),
            "DownloadProgress",
            serde_json::json!({"progress": 99}),
            &healarr::go_time(3, 10 + n as u32),
        );
    }
    let expected = detection_facts(&conn);
    assert!(healarr::prune(&conn, "2026-09-02T00:00:00Z") > 0);
    let detected_left: i64 = conn
        .query_row(
            "SELECT count(*) FROM events WHERE event_type = 'CorruptionDetected'",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(detected_left, 0, "Healarr's prune took every detection");
    drop(conn);

    let (conn, _) = db::open_and_migrate(&settings.database).expect("adoption");
    let after = detection_facts(&conn);
    assert_eq!(after, expected, "file paths and detection times kept");
    assert_eq!(
        healarr::rows_healarrs_list_fails_on(&conn),
        Vec::<String>::new()
    );
    common::assert_summary_exact(&conn);
    let no_stash: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name = 'dbwarden_adoption_summary'",
            [],
            |r| r.get(0),
        )
        .expect("stash");
    assert_eq!(no_stash, 0, "the stash is dropped");
}

#[test]
fn healarrs_prune_after_adoption_keeps_what_its_list_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = adopted(dir.path(), 13, 30);
    let conn = Connection::open(&settings.database.path).expect("open");
    // Healarr keeps writing directly: later events on day 3, then its daily prune.
    for n in 0..30 {
        healarr::insert(
            &conn,
            &healarr::corruption_id(n),
            "DownloadProgress",
            serde_json::json!({"status": "downloading", "progress": 95}),
            &healarr::go_time(3, n as u32),
        );
    }
    let before = common::stored_summary(&conn);
    assert!(healarr::prune(&conn, "2026-09-02T00:00:00Z") > 0);
    let after = common::stored_summary(&conn);
    assert_eq!(after.len(), before.len(), "every corruption lives on");
    for (id, row) in &after {
        let was = &before[id];
        assert_eq!(row.file_path, was.file_path, "{id}: file path kept");
        assert!(row.file_path.is_some(), "{id}");
        assert_eq!(row.path_id, was.path_id, "{id}: path id kept");
        assert_eq!(row.corruption_type, was.corruption_type, "{id}: type kept");
        assert_eq!(
            row.detected_at, was.detected_at,
            "{id}: detection time kept"
        );
        assert_eq!(row.current_state, "DownloadProgress");
    }
    assert_eq!(
        healarr::rows_healarrs_list_fails_on(&conn),
        Vec::<String>::new()
    );
    common::assert_summary_exact(&conn);
    assert_eq!(
        queries::summary_differences(&conn).expect("diff"),
        Vec::<String>::new()
    );
}

/// Adopt at Healarr schema 6, let a newer Healarr upgrade it, keep writing as
/// Healarr does: the summary drifts, then dbwarden finds it and repairs it.
fn upgraded_by_healarr(dir: &std::path::Path) -> dbwarden::config::Settings {
    let settings = adopted(dir, 6, 40);
    let conn = Connection::open(&settings.database.path).expect("open");
    // A corruption whose detection no longer carries a path: its row goes with 007.
    healarr::insert(
        &conn,
        "no-path",
        "RemediationQueued",
        serde_json::json!({}),
        &healarr::go_time(2, 1),
    );
    healarr::upgrade(&conn, 13);
    for n in 0..200 {
        let id = healarr::corruption_id(n % 40);
        let kind = if n.is_multiple_of(7) {
            "SearchFailed"
        } else {
            "DownloadProgress"
        };
        healarr::insert(
            &conn,
            &id,
            kind,
            serde_json::json!({"progress": n}),
            &healarr::go_time(4, n as u32),
        );
    }
    settings
}

#[test]
fn healarrs_upgrade_is_found_and_repaired_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = upgraded_by_healarr(dir.path());
    let conn = Connection::open(&settings.database.path).expect("open");
    let drift = queries::summary_differences(&conn).expect("diff");
    assert!(!drift.is_empty(), "the two triggers disagree");
    let found = guard::inspect(&conn, false).expect("inspect");
    assert_eq!(found.foreign_triggers.len(), 1, "{found:?}");
    assert_eq!(
        found.foreign_triggers[0].name,
        "trg_update_corruption_summary"
    );
    assert_eq!(found.healarr_version_change, Some((Some(6), 13)));
    drop(conn);

    let (conn, report) = db::open_and_migrate(&settings.database).expect("reopen");
    let repair = report.summary_repair.expect("repaired at startup");
    assert_eq!(repair.triggers_removed, ["trg_update_corruption_summary"]);
    assert!(repair.rows_changed > 0);
    common::assert_summary_exact(&conn);
    assert!(guard::inspect(&conn, true)
        .expect("inspect")
        .foreign_triggers
        .is_empty());
    // Healarr keeps writing directly: exact from now on.
    for n in 0..200 {
        healarr::insert(
            &conn,
            &healarr::corruption_id(n % 40),
            if n % 5 == 0 {
                "DownloadTimeout"
            } else {
                "DownloadProgress"
            },
            serde_json::json!({"progress": n}),
            &healarr::go_time(5, n as u32),
        );
    }
    common::assert_summary_exact(&conn);
    // A second start finds nothing.
    drop(conn);
    let (_, report) = db::open_and_migrate(&settings.database).expect("third start");
    assert!(report.summary_repair.is_none());
}

#[actix_rt::test]
async fn the_running_service_repairs_at_its_next_quick_check_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = adopted(dir.path(), 6, 40);
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    settings.notify.channels = vec![dbwarden::config::ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
    let mut app = common::TestApp::start(
        tempfile::tempdir().expect("scratch"),
        dbwarden::supervisor::Service::builder(settings.clone()),
    )
    .await;
    // Healarr, upgraded, opens the same database while dbwarden runs.
    let healarr_conn = Connection::open(&settings.database.path).expect("healarr's connection");
    healarr_conn
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy");
    healarr::upgrade(&healarr_conn, 13);
    for n in 0..100 {
        healarr::insert(
            &healarr_conn,
            &healarr::corruption_id(n % 40),
            "SearchFailed",
            serde_json::json!({"error": "none found"}),
            &healarr::go_time(4, n as u32),
        );
    }
    assert!(!queries::summary_differences(&healarr_conn)
        .expect("diff")
        .is_empty());
    let run = app.run_job("quick-check").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "summary_repaired").await;
    let message = alert["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("trg_update_corruption_summary") && message.contains("from 6 to 13"),
        "{alert}"
    );
    common::assert_summary_exact(&healarr_conn);
    for n in 0..50 {
        healarr::insert(
            &healarr_conn,
            &healarr::corruption_id(n % 40),
            "DownloadProgress",
            serde_json::json!({"progress": n}),
            &healarr::go_time(5, n as u32),
        );
    }
    common::assert_summary_exact(&healarr_conn);
    drop(healarr_conn);
    app.stop().await;
}

#[actix_rt::test]
async fn the_full_check_repairs_drift_made_behind_the_summarys_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = adopted(dir.path(), 13, 20);
    let mut app = common::TestApp::start(
        tempfile::tempdir().expect("scratch"),
        dbwarden::supervisor::Service::builder(settings.clone()),
    )
    .await;
    let other = Connection::open(&settings.database.path).expect("open");
    other
        .execute(
            "UPDATE corruption_summary SET retry_count = retry_count + 3",
            [],
        )
        .expect("tamper");
    let run = app.run_job("quick-check").await;
    assert_eq!(run["outcome"], "ok");
    assert!(
        !queries::summary_differences(&other)
            .expect("diff")
            .is_empty(),
        "the quick check only looks at the schema"
    );
    let run = app.run_job("full-check").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    common::assert_summary_exact(&other);
    drop(other);
    app.stop().await;
}

#[actix_rt::test]
async fn check_repair_goes_through_the_running_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = adopted(dir.path(), 6, 10);
    let mut app = common::TestApp::start(
        tempfile::tempdir().expect("scratch"),
        dbwarden::supervisor::Service::builder(settings.clone()),
    )
    .await;
    let other = Connection::open(&settings.database.path).expect("open");
    other
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("busy");
    healarr::upgrade(&other, 13);
    healarr::write_lifecycle(&other, 77, 6);
    let addr = app.base.trim_start_matches("http://").to_string();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .args(["check", "--repair"])
        .env("DBWARDEN__DATABASE__PATH", &settings.database.path)
        .env("DBWARDEN__API__LISTEN", &addr)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run the command");
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert!(
        shown.contains("removed trigger trg_update_corruption_summary")
            && shown.contains("from 6 to 13"),
        "{shown}"
    );
    common::assert_summary_exact(&other);
    drop(other);
    app.stop().await;
}

//! IntegrityAuditor and Checkpointer against real faults: a corrupted index page and a
//! reader that never lets go of its snapshot.

mod common;

use std::time::{Duration, Instant};

use dbwarden::checkpointer::Checkpointer;
use dbwarden::db::integrity::CheckKind;
use dbwarden::supervisor::Service;
use rusqlite::Connection;
use serde_json::{json, Value};

async fn health(client: &reqwest::Client, base: &str) -> (u16, Value) {
    let res = client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .expect("health");
    (res.status().as_u16(), res.json().await.expect("json"))
}

#[actix_rt::test]
async fn a_corrupt_database_fails_health_blocks_backups_and_recovers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = common::receiver(0, Duration::ZERO);
    let settings = common::alerting(
        common::settings_in(
            dir.path(),
            &[("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "true")],
        ),
        &alerts,
    );
    {
        let (conn, _) = dbwarden::db::open_and_migrate(&settings.database).expect("migrate");
        for i in 0..3000 {
            conn.execute(
                "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', '{}')",
                [format!("agg-{i}")],
            )
            .expect("insert");
        }
        dbwarden::db::wal_checkpoint(&conn, dbwarden::db::CheckpointMode::Truncate)
            .expect("checkpoint");
    }
    let (offset, original) = common::corrupt_index_page(&settings.database.path, "idx_events_type");
    let db_path = settings.database.path.clone();
    let service = Service::start(settings)
        .await
        .expect("starts on a damaged database");
    let base = format!("http://{}", service.addr);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let (status, body) = loop {
        let (status, body) = health(&client, &base).await;
        if body["integrity"]["result"] != "unknown" || Instant::now() > deadline {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(body["integrity"]["result"], "failing", "{body}");
    assert_eq!(body["status"], "failing");
    assert_eq!(status, 503);
    assert!(!body["integrity"]["quick"]["problems"]
        .as_array()
        .expect("problems")
        .is_empty());

    let res = client
        .post(format!("{base}/api/backups"))
        .send()
        .await
        .expect("backup");
    assert_eq!(res.status(), 503, "no backup of a failing database");
    let body: Value = res.json().await.expect("json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("integrity"),
        "{body}"
    );
    let backups = dir.path().join("backups");
    assert_eq!(std::fs::read_dir(&backups).expect("dir").count(), 0);
    let critical = |got: &[common::Received]| {
        got.iter()
            .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
            .any(|a| {
                a["key"] == "integrity_quick_check"
                    && a["severity"] == "critical"
                    && a["resolved"] == false
            })
    };
    let got = common::wait_for(&alerts.got, 2, Duration::from_secs(5)).await;
    assert!(critical(&got), "the critical alert fired: {got:#?}");

    // The damage is undone (the page's original bytes put back); the next pass clears
    // the failure and backups resume.
    common::write_at(&db_path, offset, &original);
    let record = service
        .auditor()
        .check(CheckKind::Quick)
        .await
        .expect("check");
    assert!(record.ok, "{record:?}");
    let (status, body) = health(&client, &base).await;
    assert_eq!(
        (status, body["status"].clone()),
        (200, json!("healthy")),
        "{body}"
    );
    let full = service
        .auditor()
        .check(CheckKind::Full)
        .await
        .expect("full check");
    assert!(full.ok, "{full:?}");
    let res = client
        .post(format!("{base}/api/backups"))
        .send()
        .await
        .expect("backup");
    assert_eq!(res.status(), 201);
    service.shutdown(true).await;
}

/// A Checkpointer of the running service's writer, alerting to `alerts`.
fn checkpointer(
    app: &common::TestApp,
    alert_bytes: i64,
    alerts: &common::Receiver,
    metrics: &std::sync::Arc<dbwarden::metrics::Metrics>,
) -> Checkpointer {
    let mut notify = common::settings_in(app.dir.path(), &[]).notify;
    notify.channels = vec![dbwarden::config::ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
    Checkpointer::new(
        app.service.as_ref().expect("service").writer.clone(),
        4096,
        alert_bytes,
        dbwarden::notifier::Notifier::start(&notify),
        metrics.clone(),
    )
}

/// Alerts of `key` received so far, in order: `resolved` of each.
fn alerts_of(alerts: &common::Receiver, key: &str) -> Vec<(String, bool)> {
    alerts
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter_map(|r| serde_json::from_str::<Value>(&r.body).ok())
        .filter(|a| a["key"] == key)
        .map(|a| {
            (
                a["severity"].as_str().unwrap_or_default().to_string(),
                a["resolved"] == true,
            )
        })
        .collect()
}

#[actix_rt::test]
async fn a_reader_that_never_lets_go_is_reported_as_starvation() {
    let mut app = common::TestApp::spawn(&[("DBWARDEN__DATABASE__BUSY_TIMEOUT_MS", "200")]).await;
    let alerts = common::receiver(0, Duration::ZERO);
    let metrics = std::sync::Arc::new(dbwarden::metrics::Metrics::new().expect("metrics"));
    app.post_json("/api/events", &json!({"aggregate_type": "corruption", "aggregate_id": "a", "event_type": "CorruptionDetected", "event_data": {}}))
        .await;
    let reader = Connection::open(&app.db_path).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("snapshot");
    for i in 0..50 {
        let res = app
            .post_json("/api/events", &json!({"aggregate_type": "corruption", "aggregate_id": format!("b{i}"), "event_type": "CorruptionDetected", "event_data": {}}))
            .await;
        assert_eq!(res.status(), 201);
    }
    // What the reader holds back, measured with a threshold nothing reaches.
    let measured = checkpointer(&app, i64::MAX, &alerts, &metrics)
        .tick()
        .await
        .expect("tick");
    let held = measured.pending_bytes;
    assert!(held > 0 && !measured.over_threshold, "{measured:?}");
    // Exactly at the threshold is not over it.
    let at_threshold = checkpointer(&app, held, &alerts, &metrics)
        .tick()
        .await
        .expect("tick");
    assert_eq!(
        (at_threshold.mode, at_threshold.over_threshold),
        ("passive", false),
        "{at_threshold:?}"
    );

    let checkpointer = checkpointer(&app, 1, &alerts, &metrics);
    let starved = checkpointer.tick().await.expect("tick");
    assert!(starved.over_threshold && starved.starved, "{starved:?}");
    assert_eq!(checkpointer.board.last().expect("kept").mode, "restart");
    let exposition = metrics
        .render(&dbwarden::metrics::Snapshot::default())
        .expect("render");
    assert!(
        exposition
            .lines()
            .any(|l| l == r#"dbwarden_checkpoints_total{mode="restart",result="busy"} 1"#),
        "{exposition}"
    );
    common::wait_for(&alerts.got, 2, Duration::from_secs(10)).await;
    assert_eq!(
        alerts_of(&alerts, "wal_over_threshold"),
        vec![("warning".to_string(), false)]
    );
    assert_eq!(
        alerts_of(&alerts, "checkpoint_starvation"),
        vec![("critical".to_string(), false)]
    );

    reader.execute_batch("COMMIT").expect("let go");
    let fine = checkpointer.tick().await.expect("tick");
    assert!(!fine.starved && fine.pending_bytes == 0, "{fine:?}");
    common::wait_for(&alerts.got, 4, Duration::from_secs(10)).await;
    assert_eq!(
        alerts_of(&alerts, "wal_over_threshold"),
        vec![("warning".to_string(), false), ("info".to_string(), true)],
        "resolved once under the threshold"
    );
    assert_eq!(
        alerts_of(&alerts, "checkpoint_starvation"),
        vec![("critical".to_string(), false), ("info".to_string(), true)],
        "resolved once checkpoints complete"
    );
    app.stop().await;
}

/// The full check runs `foreign_key_check` as well; the quick one does not.
#[test]
fn the_full_check_reports_a_row_that_refers_to_a_missing_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    {
        let (conn, _) = dbwarden::db::open_and_migrate(&settings.database).expect("migrate");
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             CREATE TABLE parent (id INTEGER PRIMARY KEY);
             CREATE TABLE child (parent_id INTEGER REFERENCES parent(id));
             INSERT INTO child VALUES (7);",
        )
        .expect("a dangling reference");
    }
    let check = |kind| {
        dbwarden::auditor::check_database(&settings.database, kind, &|_| {})
            .expect("the check runs")
            .0
    };
    let full = check(CheckKind::Full);
    assert!(!full.ok, "{full:?}");
    assert_eq!(
        full.problems,
        vec!["foreign key: row 1 of child refers to a missing row of parent".to_string()]
    );
    let quick = check(CheckKind::Quick);
    assert!(
        quick.ok,
        "quick_check does not look at foreign keys: {quick:?}"
    );
}

/// A database big enough that its full check takes a while, built in one statement.
fn big_database(settings: &dbwarden::config::Settings, events: usize) {
    let (conn, _) = dbwarden::db::open_and_migrate(&settings.database).expect("migrate");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data)
         SELECT 'corruption', 'agg-' || (i / 3), 'CorruptionDetected', json_object('file_path', '/media/' || i || '.mkv') FROM n",
        [events as i64],
    )
    .expect("fill");
}

/// At shutdown a running check is interrupted rather than waited for: asked to stop
/// while it runs, the check answers with an error instead of a verdict.
#[actix_rt::test]
async fn a_running_check_is_interrupted_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    big_database(&settings, 200_000);
    let mut app = common::TestApp::start(dir, Service::builder(settings)).await;
    let auditor = app.service.as_ref().expect("service").auditor().clone();
    let check = actix_rt::spawn({
        let auditor = auditor.clone();
        async move { auditor.check(CheckKind::Full).await }
    });
    while !check.is_finished() {
        auditor.interrupt();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let result = check.await.expect("the check task");
    let error = result.expect_err("an interrupted check gives no verdict");
    assert!(error.to_string().contains("interrupt"), "{error}");
    app.stop().await;
}

/// The check's duration reaches `/metrics` in seconds, as its record says it in ms.
#[actix_rt::test]
async fn the_check_duration_metric_is_the_records_duration_in_seconds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    big_database(&settings, 20_000);
    let mut app = common::TestApp::start(dir, Service::builder(settings)).await;
    let auditor = app.service.as_ref().expect("service").auditor().clone();
    let record = auditor.check(CheckKind::Full).await.expect("check");
    assert!(record.ok, "{record:?}");
    assert!(
        record.duration_ms > 0,
        "the check must take a measurable time for this test to mean anything"
    );
    let metrics = app.get_text("/metrics").await;
    let sum: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix("dbwarden_integrity_check_duration_seconds_sum{kind=\"full\"} ")
        })
        .and_then(|v| v.parse().ok())
        .expect("the full check's duration sum");
    assert!(
        (sum - record.duration_ms as f64 / 1000.0).abs() < 1e-9,
        "{sum} s for a {} ms check",
        record.duration_ms
    );
    app.stop().await;
}

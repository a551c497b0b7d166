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
    let mut settings = common::settings_in(
        dir.path(),
        &[("DBWARDEN__INTEGRITY__QUICK_AT_STARTUP", "true")],
    );
    settings.notify.channels = vec![dbwarden::config::ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
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

#[actix_rt::test]
async fn a_reader_that_never_lets_go_is_reported_as_starvation() {
    let mut app = common::TestApp::spawn(&[("DBWARDEN__DATABASE__BUSY_TIMEOUT_MS", "200")]).await;
    let writer = app.service.as_ref().expect("service").writer.clone();
    let checkpointer = Checkpointer::new(
        writer,
        4096,
        1,
        dbwarden::notifier::Notifier::log_only(),
        std::sync::Arc::new(dbwarden::metrics::Metrics::new().expect("metrics")),
    );
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
    let starved = checkpointer.tick().await.expect("tick");
    assert!(starved.over_threshold && starved.starved, "{starved:?}");
    assert_eq!(checkpointer.board.last().expect("kept").mode, "restart");
    reader.execute_batch("COMMIT").expect("let go");
    let fine = checkpointer.tick().await.expect("tick");
    assert!(!fine.starved && fine.pending_bytes == 0, "{fine:?}");
    app.stop().await;
}

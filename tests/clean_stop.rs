//! A clean stop beside a long-lived reader (Healarr's connection, a backup tool,
//! Litestream) leaves the WAL in place, since no checkpoint can reset it under the
//! reader; the next start must not report that as a crash.

mod common;

use std::time::Duration;

use dbwarden::supervisor::Service;
use serde_json::json;

#[actix_rt::test]
async fn a_clean_stop_beside_a_reader_is_not_reported_as_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alerts = common::receiver(0, Duration::ZERO);
    let settings = common::alerting(common::settings_in(dir.path(), &[]), &alerts);
    let service = Service::start(settings.clone()).await.expect("start");
    let client = reqwest::Client::new();
    let res = client
        .post(format!("http://{}/api/events", service.addr))
        .json(&json!({"aggregate_type": "corruption", "aggregate_id": "a", "event_type": "CorruptionDetected", "event_data": {}}))
        .send()
        .await
        .expect("append");
    assert_eq!(res.status(), 201);
    // Another program holds a read transaction across the stop.
    let reader = rusqlite::Connection::open(&settings.database.path).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("read");
    let report = service.shutdown(true).await;
    let checkpoint = report.final_checkpoint.expect("final checkpoint ran");
    assert!(checkpoint.busy, "the reader kept the WAL from being reset");
    assert!(
        dbwarden::db::hot_wal_bytes(&settings.database.path).is_some(),
        "the WAL stays with content"
    );
    reader.execute_batch("COMMIT").expect("end the read");
    drop(reader);

    let service = Service::start(settings.clone()).await.expect("restart");
    // Startup alerts are queued before `service_started`, on one channel, in order:
    // once the second start's arrived, an unclean-start alert would have too.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let startups = alerts
            .got
            .lock()
            .expect("lock")
            .iter()
            .filter(|r| r.body.contains("\"service_started\""))
            .count();
        if startups == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second start was never reported"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let unclean = alerts
        .got
        .lock()
        .expect("lock")
        .iter()
        .filter(|r| r.body.contains("unclean_startup"))
        .count();
    assert_eq!(unclean, 0, "a clean stop is not a crash");
    service.shutdown(true).await;
}

//! A panic anywhere in the process turns into the ordered shutdown and exit code 70
//! (so systemd restarts the service), never a silently dead part. Its own test binary:
//! the panic hook is process-wide.

mod common;

use std::time::Duration;

use dbwarden::supervisor::{run, EXIT_PANIC};
use serde_json::json;

#[actix_rt::test]
async fn a_panic_turns_into_the_ordered_shutdown_with_exit_70() {
    let dir = tempfile::tempdir().expect("tempdir");
    let listen = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("free port");
        probe.local_addr().expect("addr").to_string()
    };
    let settings = common::settings_in(dir.path(), &[("DBWARDEN__API__LISTEN", &listen)]);
    let db = settings.database.path.clone();
    let base = format!("http://{listen}");
    let client = reqwest::Client::new();
    let driver = actix_rt::spawn(async move {
        // Wait for the service, write through it, then make a part of the process panic.
        let mut ids = Vec::new();
        for _ in 0..100 {
            if let Ok(res) = client
                .post(format!("{base}/api/events"))
                .json(&json!({"aggregate_type": "corruption", "aggregate_id": "x", "event_type": "CorruptionDetected", "event_data": {}}))
                .send()
                .await
            {
                if res.status() == 201 {
                    ids.push(res.json::<serde_json::Value>().await.expect("json")["ids"][0].as_i64().expect("id"));
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        std::thread::spawn(|| panic!("injected: a worker thread dies"));
        ids
    });
    let code = tokio::time::timeout(Duration::from_secs(30), run(settings))
        .await
        .expect("the service stopped by itself")
        .expect("started");
    assert_eq!(code, EXIT_PANIC);
    let ids = driver.await.expect("driver");
    assert_eq!(ids.len(), 1, "an event was acknowledged before the panic");
    let wal = std::fs::metadata(format!("{}-wal", db.display()))
        .map(|m| m.len())
        .unwrap_or(0);
    assert_eq!(
        wal, 0,
        "the shutdown was the ordered one: final checkpoint done"
    );
    let conn = rusqlite::Connection::open(&db).expect("open");
    let n: i64 = conn
        .query_row("SELECT count(*) FROM events WHERE id = ?1", [ids[0]], |r| {
            r.get(0)
        })
        .expect("count");
    assert_eq!(n, 1);
}

//! Suites that need root (mounts). Ignored by `cargo test`; `.ci/run` runs them as
//! root with `cargo test --test root -- --ignored`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

/// A small tmpfs mounted for the test's lifetime.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).expect("mount point");
        let status = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("run mount");
        assert!(status.success(), "mounting a tmpfs needs root");
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect()
}

#[actix_rt::test]
#[ignore = "needs root: mounts a tmpfs"]
async fn a_backup_into_a_full_filesystem_fails_cleanly_and_writes_go_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("small");
    let _fs = Tmpfs::mount(&backups, "256k");
    let settings = common::settings_in(
        dir.path(),
        &[("DBWARDEN__BACKUP__DIR", &backups.display().to_string())],
    );
    {
        let (conn, _) = dbwarden::db::open_and_migrate(&settings.database).expect("migrate");
        let tx = conn.unchecked_transaction().expect("tx");
        for i in 0..4000 {
            tx.execute(
                "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', ?2)",
                rusqlite::params![format!("agg-{i}"), json!({"pad": "x".repeat(200)}).to_string()],
            )
            .expect("insert");
        }
        tx.commit().expect("commit");
    }
    let service = dbwarden::supervisor::Service::start(settings)
        .await
        .expect("start");
    let base = format!("http://{}", service.addr);
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{base}/api/backups"))
        .send()
        .await
        .expect("backup");
    assert_eq!(
        res.status(),
        507,
        "{}",
        res.text().await.unwrap_or_default()
    );
    assert!(
        files_in(&backups).is_empty(),
        "no temporary or partial file left: {:?}",
        files_in(&backups)
    );
    let res = client
        .post(format!("{base}/api/events"))
        .json(&json!({"aggregate_type": "corruption", "aggregate_id": "after", "event_type": "CorruptionDetected", "event_data": {}}))
        .send()
        .await
        .expect("append");
    assert_eq!(res.status(), 201, "the service keeps taking writes");
    service.shutdown(true).await;
}

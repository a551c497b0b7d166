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
        // Lazy: a connection the test still holds must not leave the mount behind.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
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

/// A service over `dir` whose alerts go to `alerts`, with extra settings.
async fn service_with_alerts(
    dir: &Path,
    alerts: &common::Receiver,
    extra: &[(&str, &str)],
) -> dbwarden::supervisor::Service {
    let mut settings = common::alerting(common::settings_in(dir, extra), alerts);
    settings.notify.cooldown_secs = 0;
    dbwarden::supervisor::Service::start(settings)
        .await
        .expect("start")
}

async fn health_of(client: &reqwest::Client, base: &str) -> serde_json::Value {
    client
        .get(format!("{base}/api/health"))
        .send()
        .await
        .expect("the service answers")
        .json()
        .await
        .expect("json")
}

async fn append(client: &reqwest::Client, base: &str, id: &str) -> reqwest::StatusCode {
    client
        .post(format!("{base}/api/events"))
        .json(&json!({"aggregate_type": "corruption", "aggregate_id": id, "event_type": "CorruptionDetected", "event_data": {"pad": "y".repeat(2000)}}))
        .send()
        .await
        .expect("append")
        .status()
}

#[actix_rt::test]
#[ignore = "needs root: mounts a tmpfs"]
async fn a_full_database_disk_refuses_writes_clearly_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db_dir = dir.path().join("db");
    let _fs = Tmpfs::mount(&db_dir, "2m");
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    let service = service_with_alerts(dir.path(), &alerts, &[]).await;
    let base = format!("http://{}", service.addr);
    let client = reqwest::Client::new();
    // Fill the file system but for a little room.
    let filler = db_dir.join("filler");
    let mut size = 0u64;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).expect("filler");
        while f.write_all(&[0u8; 64 * 1024]).is_ok() {
            size += 64 * 1024;
        }
        let _ = f.sync_all();
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .expect("filler")
        .set_len(size.saturating_sub(96 * 1024))
        .expect("make a little room");
    let mut acked = Vec::new();
    let mut refused = None;
    for i in 0..400 {
        let id = format!("fill-{i}");
        match append(&client, &base, &id).await {
            s if s == 201 => acked.push(id),
            s => {
                refused = Some(s);
                break;
            }
        }
    }
    let refused = refused.expect("the disk filled up");
    assert_eq!(refused, 507, "a full disk is a clear 507");
    let health = health_of(&client, &base).await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"].to_string().contains("full"),
        "health says why: {health}"
    );
    common::wait_for_alert(&alerts, |a| {
        a["key"] == "storage_failing" && a["resolved"] == false
    })
    .await;

    // Space comes back: the service recovers by itself.
    std::fs::remove_file(&filler).expect("free space");
    assert_eq!(append(&client, &base, "after").await, 201);
    acked.push("after".into());
    let health = health_of(&client, &base).await;
    assert_eq!(health["status"], "healthy", "{health}");
    common::wait_for_alert(&alerts, |a| {
        a["key"] == "storage_failing" && a["resolved"] == true
    })
    .await;
    service.shutdown(true).await;
    let conn = rusqlite::Connection::open(dir.path().join("db/events.db")).expect("open");
    for id in &acked {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM events WHERE aggregate_id = ?1",
                [id],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(n, 1, "acknowledged {id} is on disk");
    }
    common::assert_summary_exact(&conn);
}

#[actix_rt::test]
#[ignore = "needs root: mounts and remounts a tmpfs"]
async fn a_backup_directory_removed_or_read_only_fails_backups_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("bk");
    let fs = Tmpfs::mount(&backups, "64m");
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    let service = service_with_alerts(
        dir.path(),
        &alerts,
        &[("DBWARDEN__BACKUP__DIR", &backups.display().to_string())],
    )
    .await;
    let base = format!("http://{}", service.addr);
    let client = reqwest::Client::new();
    assert_eq!(append(&client, &base, "a").await, 201);
    let backup = |client: reqwest::Client, base: String| async move {
        client
            .post(format!("{base}/api/backups"))
            .send()
            .await
            .expect("backup")
            .status()
    };
    assert_eq!(backup(client.clone(), base.clone()).await, 201);

    // Read-only (root ignores permission bits, so the mount itself goes read-only).
    let status = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&backups)
        .status()
        .expect("remount");
    assert!(status.success());
    let status = backup(client.clone(), base.clone()).await;
    assert!(status.is_server_error(), "{status}");
    common::wait_for_alert(&alerts, |a| a["key"] == "backup_failed").await;
    assert_eq!(append(&client, &base, "b").await, 201, "writes go on");
    let status = Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(&backups)
        .status()
        .expect("remount");
    assert!(status.success());

    // Removed: the directory is not silently recreated (it may be an unmounted
    // mount point); backups fail and say so.
    drop(fs);
    std::fs::remove_dir_all(&backups).expect("remove the backup dir");
    let status = backup(client.clone(), base.clone()).await;
    assert!(status.is_server_error(), "{status}");
    assert!(!backups.exists(), "not recreated");
    assert_eq!(append(&client, &base, "c").await, 201, "writes go on");
    let health = health_of(&client, &base).await;
    assert_ne!(health["status"], "failing", "{health}");
    service.shutdown(true).await;
}

/// Enables or disables libfiu failure points in a process started under `fiu-run`.
fn fiu_ctrl(pid: u32, commands: &[String]) {
    let mut cmd = Command::new("fiu-ctrl");
    for c in commands {
        cmd.args(["-c", c]);
    }
    let status = cmd.arg(pid.to_string()).status().expect("run fiu-ctrl");
    assert!(status.success(), "fiu-ctrl {commands:?}");
}

const FAULTS: &[(&str, &str)] = &[
    ("posix/io/rw/pwrite", "0.02"),
    ("posix/io/sync/fsync", "0.2"),
    ("posix/io/sync/fdatasync", "0.2"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs fiu-utils (libfiu), which .ci/run installs as root"]
async fn io_errors_on_write_and_fsync_lose_nothing_acknowledged() {
    assert!(
        Command::new("fiu-run").arg("-h").output().is_ok(),
        "fiu-run is missing: apt-get install fiu-utils"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("data/events.db");
    let env = [
        ("DBWARDEN__BACKUP__DIR", "backups"),
        ("DBWARDEN__BACKUP__SCHEDULE", "*/2 * * * * *"),
        ("DBWARDEN__CHECKPOINT__SCHEDULE", "* * * * * *"),
        ("DBWARDEN__JOBS__DIR", "no-jobs"),
    ];
    let mut running = common::process::start_under(&["fiu-run", "-x"], dir.path(), &env);
    let pid = running.child.id();
    fiu_ctrl(
        pid,
        &FAULTS
            .iter()
            .map(|(name, p)| format!("enable_random name={name},probability={p}"))
            .collect::<Vec<_>>(),
    );
    let during =
        common::process::load(running.base.clone(), 4, std::time::Duration::from_secs(3)).await;
    // The faults fired: some writes failed (a 5xx from a commit that did not happen).
    assert!(
        during.refused.keys().any(|&status| status >= 500),
        "the injected I/O errors failed some writes: {:?}",
        during.refused
    );
    let client = reqwest::Client::new();
    let mut acked = during.acked;
    fiu_ctrl(
        pid,
        &FAULTS
            .iter()
            .map(|(name, _)| format!("disable name={name}"))
            .collect::<Vec<_>>(),
    );
    // Without faults the same process writes again: it recovered by itself.
    let after = common::process::load(
        running.base.clone(),
        2,
        std::time::Duration::from_millis(500),
    )
    .await;
    assert!(
        !after.acked.is_empty() && after.refused_total() == 0,
        "every write after the faults stopped succeeded: {:?}",
        after.refused
    );
    acked.extend(after.acked);
    // A backup that failed under the faults keeps health degraded until the next
    // scheduled one (every 2 s here) is verified.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let health = loop {
        let health = health_of(&client, &running.base).await;
        if health["status"] == "healthy" || std::time::Instant::now() > deadline {
            break health;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    assert_eq!(health["status"], "healthy", "{health}");
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let exit = running.child.wait().expect("wait");
    assert_eq!(exit.code(), Some(0), "a clean exit after SIGTERM: {exit:?}");
    assert!(!acked.is_empty());
    common::process::assert_all_present(&db, &acked);
    println!(
        "libfiu: {} acknowledged events all present after I/O errors",
        acked.len()
    );
}

#[actix_rt::test]
#[ignore = "needs root: switches to PUID/PGID"]
async fn as_root_with_puid_and_pgid_it_runs_as_that_user() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    // The directory must be reachable by the user it switches to.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let running = common::process::start_with(
        dir.path(),
        &[
            ("PUID", "4242"),
            ("PGID", "4343"),
            ("DBWARDEN__BACKUP__AT_STARTUP", "false"),
        ],
    );
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/api/events", running.base))
        .json(&json!({"aggregate_type": "corruption", "aggregate_id": "a", "event_type": "CorruptionDetected", "event_data": {}}))
        .send()
        .await
        .expect("append");
    assert_eq!(res.status(), 201);
    let db = std::fs::metadata(dir.path().join("data/events.db")).expect("database");
    assert_eq!(
        (db.uid(), db.gid()),
        (4242, 4343),
        "the database belongs to PUID:PGID"
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", running.child.id()))
        .expect("proc status");
    let uid_line = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .unwrap_or_default();
    assert!(
        uid_line.split_whitespace().skip(1).all(|id| id == "4242"),
        "real, effective, saved and fs uid are all 4242: {uid_line}"
    );
    let groups = status
        .lines()
        .find(|l| l.starts_with("Groups:"))
        .unwrap_or_default();
    assert_eq!(groups.trim(), "Groups:", "no supplementary groups kept");
    drop(running);
    // A half-given pair is refused as configuration (78).
    let out = Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir.path())
        .env("PUID", "4242")
        .arg("status")
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(i32::from(dbwarden::exit::CONFIG)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("PGID"));
}

//! Verified backups: taken under write load, refused from a corrupt source, kept by
//! retention as the policy says, re-verified against bit rot, and checked by
//! `dbwarden verify`.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::TestApp;
use dbwarden::backup::{self, catalog, BackupError};
use dbwarden::config::Settings;
use dbwarden::db;
use rusqlite::Connection;
use serde_json::{json, Value};

/// A backup as `dbwarden backup` takes it: the directory is created first.
fn take(settings: &Settings) -> Result<catalog::Manifest, BackupError> {
    backup::ensure_dir(&settings.backup.dir)?;
    backup::take_backup(&settings.database, &settings.backup, &|_| {})
}

fn fill(settings: &Settings, events: usize) {
    let (conn, _) = db::open_and_migrate(&settings.database).expect("migrate");
    let tx = conn.unchecked_transaction().expect("tx");
    for i in 0..events {
        tx.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', ?2)",
            rusqlite::params![format!("agg-{i}"), json!({"file_path": format!("/media/{i}.mkv"), "pad": "x".repeat(200)}).to_string()],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    db::wal_checkpoint(&conn, db::CheckpointMode::Truncate).expect("checkpoint");
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[actix_rt::test]
async fn backups_taken_while_writers_append_hold_a_prefix_of_acknowledged_events() {
    let mut app = TestApp::spawn(&[]).await;
    let acked: Arc<Mutex<HashMap<i64, (String, i64)>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, url, acked, stop) = (
            app.client.clone(),
            app.url("/api/events"),
            acked.clone(),
            stop.clone(),
        );
        writers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 1;
                let agg = format!("w{w}-{n}");
                let body = json!([
                    {"aggregate_type": "corruption", "aggregate_id": agg, "event_type": "CorruptionDetected", "event_data": {"file_path": "/m"}},
                    {"aggregate_type": "corruption", "aggregate_id": agg, "event_type": "DownloadFailed", "event_data": {"error": "x"}}
                ]);
                let res = client.post(&url).json(&body).send().await.expect("post");
                assert_eq!(res.status(), 201);
                let ids: Value = res.json().await.expect("json");
                let (a, b) = (ids["ids"][0].as_i64().expect("id"), ids["ids"][1].as_i64().expect("id"));
                let mut acked = acked.lock().expect("lock");
                acked.insert(a, (agg.clone(), b));
            }
        }));
    }
    // Each backup with the events acknowledged before it was asked for: those, at
    // least, it must hold (recorded here, not taken from the manifest under test).
    let mut manifests = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        let acked_before: Vec<i64> = acked.lock().expect("lock").keys().copied().collect();
        let res = app.post("/api/backups").await;
        assert_eq!(res.status(), 201);
        let manifest = res.json::<catalog::Manifest>().await.expect("manifest");
        manifests.push((manifest, acked_before));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }
    let listed = app.get_json("/api/backups").await;
    assert!(!listed["backups"].as_array().expect("backups").is_empty());
    let dir = app.dir.path().join("backups");
    let acked = acked.lock().expect("lock").clone();
    let mut checked = 0;
    for (m, acked_before) in &manifests {
        assert!(
            !acked_before.is_empty(),
            "writes were acknowledged before the backup"
        );
        let path = dir.join(&m.name);
        if !path.exists() {
            continue; // removed by retention (keep_last 4)
        }
        let report = backup::verify_file(&path).expect("verify");
        assert!(report.is_ok(), "{report:?}");
        let conn = Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .expect("open backup");
        let present = |id: i64| -> bool {
            conn.query_row("SELECT count(*) FROM events WHERE id = ?1", [id], |r| {
                r.get::<_, i64>(0)
            })
            .expect("count")
                == 1
        };
        for (first, (_, second)) in &acked {
            // No torn transaction: both events of a request, or neither.
            assert_eq!(
                present(*first),
                present(*second),
                "request {first}/{second} torn in {}",
                m.name
            );
        }
        for first in acked_before {
            assert!(
                present(*first),
                "event {first}, acknowledged before the backup was asked for, missing from {}",
                m.name
            );
        }
        // A prefix: every id up to the newest one in the copy, which the manifest names.
        let (max, count): (i64, i64) = conn
            .query_row(
                "SELECT coalesce(max(id), 0), count(*) FROM events",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("bounds");
        assert_eq!(max, m.last_event_id, "the manifest names the newest event");
        assert_eq!(count, max, "no gap below the newest event in {}", m.name);
        common::assert_summary_exact(&conn);
        checked += 1;
    }
    assert!(checked >= 4, "retention keeps the last four");
    let mode = std::fs::metadata(&dir).expect("dir").permissions().mode();
    assert_eq!(mode & 0o777, 0o700, "backup dir is 0700");
    for name in files_in(&dir) {
        let mode = std::fs::metadata(dir.join(&name))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "{name} is not readable by others");
    }
    app.stop().await;
}

#[test]
fn a_corrupt_source_is_refused_and_good_backups_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "0");
    fill(&settings, 3000);
    let good = take(&settings).expect("backup of a healthy database");
    common::corrupt_index_page(&settings.database.path, "idx_events_type");
    let err = take(&settings).expect_err("corrupt source refused");
    assert!(matches!(err, BackupError::SourceCorrupt(_)), "{err}");
    let backups = dir.path().join("backups");
    assert_eq!(
        files_in(&backups),
        vec![good.name.clone(), format!("{}.json", good.name)],
        "no temporary file, the good backup intact"
    );
    assert!(
        backup::apply_retention(&settings.backup)
            .expect("retention")
            .is_empty(),
        "the last good backup is never deleted"
    );
    assert!(backup::verify_file(&backups.join(&good.name))
        .expect("verify")
        .is_ok());
}

#[test]
fn retention_follows_the_policy_and_never_touches_foreign_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "2");
    fill(&settings, 10);
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).expect("dir");
    std::fs::write(backups.join("notes.txt"), "mine").expect("foreign");
    std::fs::write(
        backups.join("dbwarden-handmade.db"),
        "not ours: no manifest",
    )
    .expect("foreign");
    let names: Vec<String> = (0..4)
        .map(|_| take(&settings).expect("backup").name)
        .collect();
    let mut expected = vec![
        "dbwarden-handmade.db".to_string(),
        names[2].clone(),
        format!("{}.json", names[2]),
        names[3].clone(),
        format!("{}.json", names[3]),
        "notes.txt".to_string(),
    ];
    expected.sort();
    assert_eq!(files_in(&backups), expected);
}

#[test]
fn reverification_marks_bit_rot_bad_and_retention_keeps_the_last_good() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "1");
    fill(&settings, 500);
    let backups = dir.path().join("backups");
    let older = take(&settings).expect("first");
    assert!(
        backup::reverify_all(&settings.backup)
            .expect("reverify")
            .is_empty(),
        "healthy backups stay good"
    );
    // Rot one byte of the newest backup, then take no new one: it must be found.
    let newest = {
        let all = catalog::list(&backups).expect("list");
        all.last().expect("one").clone()
    };
    assert_eq!(newest.name, older.name);
    let path = backups.join(&newest.name);
    let mut bytes = std::fs::read(&path).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).expect("rot");
    let bad = backup::reverify_all(&settings.backup).expect("reverify");
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].problem.as_deref().unwrap_or("").contains("SHA-256"),
        "{:?}",
        bad[0]
    );
    let stored =
        catalog::read_manifest(&catalog::manifest_path(&backups, &newest.name)).expect("manifest");
    assert_eq!(
        stored.status,
        catalog::BackupStatus::Bad,
        "the verdict is persisted"
    );
    // A new good backup; retention with keep_last 1 keeps it and the bad one.
    let fresh = take(&settings).expect("new backup");
    let remaining: Vec<String> = catalog::list(&backups)
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert_eq!(remaining, vec![newest.name.clone(), fresh.name.clone()]);
}

/// Retention deletes what is left of a doomed backup whose file is already gone (its
/// manifest), and stops, keeping the manifest, when the file cannot be removed.
#[test]
fn retention_clears_a_vanished_backup_and_stops_at_one_it_cannot_remove() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "1");
    fill(&settings, 20);
    let backups = dir.path().join("backups");
    let first = take(&settings).expect("first");
    std::fs::remove_file(backups.join(&first.name)).expect("the file vanishes");
    let second = take(&settings).expect("second");
    assert_eq!(
        files_in(&backups),
        [second.name.clone(), format!("{}.json", second.name)],
        "the vanished backup's manifest went with it"
    );
    // The next doomed backup cannot be removed (a directory stands in its place).
    std::fs::remove_file(backups.join(&second.name)).expect("remove");
    std::fs::create_dir(backups.join(&second.name)).expect("a directory instead");
    let third = take(&settings).expect("third");
    let err = backup::apply_retention(&settings.backup).expect_err("retention stops");
    assert!(err.to_string().contains(&second.name), "{err}");
    assert!(
        files_in(&backups).contains(&format!("{}.json", second.name)),
        "its manifest is kept: {:?}",
        files_in(&backups)
    );
    assert!(files_in(&backups).contains(&third.name));
}

/// A backup whose bytes still match its manifest but fail `quick_check` (written
/// damaged, with the manifest to match) is marked bad by re-verification, with the
/// check's own words.
#[test]
fn reverification_runs_quick_check_even_when_the_checksum_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "5");
    fill(&settings, 2000);
    let backups = dir.path().join("backups");
    let taken = take(&settings).expect("backup");
    let path = backups.join(&taken.name);
    let mut bytes = std::fs::read(&path).expect("read");
    let page_size = usize::from(u16::from_be_bytes([bytes[16], bytes[17]]));
    // The cell area of a page in the middle: its b-tree no longer adds up.
    let page = (bytes.len() / page_size) / 2;
    for b in &mut bytes[page * page_size + page_size / 2..(page + 1) * page_size] {
        *b = 0xff;
    }
    std::fs::write(&path, &bytes).expect("damage");
    let manifest_path = catalog::manifest_path(&backups, &taken.name);
    let mut manifest = catalog::read_manifest(&manifest_path).expect("manifest");
    manifest.sha256 = catalog::sha256_file(&path).expect("sha");
    catalog::write_manifest(&backups, &manifest).expect("manifest matches the damage");
    let bad = backup::reverify_all(&settings.backup).expect("reverify");
    assert_eq!(bad.len(), 1, "{bad:?}");
    let problem = bad[0].problem.clone().unwrap_or_default();
    assert!(problem.starts_with("quick_check: "), "{problem}");
}

#[test]
fn paths_with_spaces_quotes_and_unicode_work() {
    let dir = tempfile::tempdir().expect("tempdir");
    let odd = dir.path().join("dä ta 'q\" x");
    let backups = dir.path().join("b ack'up \"ü\"");
    let settings = common::settings_in(
        dir.path(),
        &[
            (
                "DBWARDEN__DATABASE__PATH",
                &odd.join("ev ents.db").display().to_string(),
            ),
            ("DBWARDEN__BACKUP__DIR", &backups.display().to_string()),
        ],
    );
    fill(&settings, 5);
    let m = take(&settings).expect("backup into an odd path");
    assert!(backup::verify_file(&backups.join(&m.name))
        .expect("verify")
        .is_ok());
}

#[actix_rt::test]
async fn leftover_temporary_files_are_removed_at_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backups = dir.path().join("backups");
    std::fs::create_dir_all(&backups).expect("dir");
    std::fs::write(
        backups.join("dbwarden-20260101T000000Z.db.dbwarden-tmp"),
        "half a copy",
    )
    .expect("leftover");
    std::fs::write(backups.join("someone-else.dbwarden-tmp"), "not ours").expect("foreign");
    let settings = common::settings_in(dir.path(), &[]);
    let service = dbwarden::supervisor::Service::start(settings)
        .await
        .expect("start");
    assert_eq!(
        files_in(&backups),
        vec!["someone-else.dbwarden-tmp".to_string()]
    );
    service.shutdown(true).await;
}

#[test]
fn verify_command_reports_good_and_bad_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    fill(&settings, 3000);
    let good = take(&settings).expect("backup");
    let good_path = dir.path().join("backups").join(&good.name);
    let run = |file: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
            .current_dir(dir.path())
            .arg("verify")
            .arg(file)
            .output()
            .expect("run verify")
    };
    let out = run(&good_path);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let broken = dir.path().join("broken.db");
    std::fs::copy(&settings.database.path, &broken).expect("copy");
    common::corrupt_index_page(&broken, "idx_events_type");
    let out = run(&broken);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("integrity_problems"));
    let out = run(&dir.path().join("missing.db"));
    assert_eq!(out.status.code(), Some(i32::from(dbwarden::exit::NOT_OK)));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.db"));
}

fn dbwarden_cli(dir: &Path, args: &[&str], settings: &Settings) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir)
        .args(args)
        .env("DBWARDEN__DATABASE__PATH", &settings.database.path)
        .env("DBWARDEN__BACKUP__DIR", &settings.backup.dir)
        .env("DBWARDEN__API__LISTEN", settings.api.listen.to_string())
        .env_remove("RUST_LOG")
        .output()
        .expect("run dbwarden")
}

fn event_count(path: &Path) -> i64 {
    Connection::open(path)
        .expect("open")
        .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
        .expect("count")
}

#[test]
fn restore_round_trip_keeps_the_current_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    fill(&settings, 100);
    let backup = take(&settings).expect("backup");
    fill(&settings, 50); // written after the backup: gone after the restore
    assert_eq!(event_count(&settings.database.path), 150);

    let dry = dbwarden_cli(dir.path(), &["restore", "--latest", "--dry-run"], &settings);
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    assert!(String::from_utf8_lossy(&dry.stdout).contains("would restore"));
    assert_eq!(
        event_count(&settings.database.path),
        150,
        "a dry run changes nothing"
    );

    let out = dbwarden_cli(dir.path(), &["restore", "--latest"], &settings);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(event_count(&settings.database.path), 100);
    assert_eq!(backup.last_event_id, 100);
    let db_dir = settings.database.path.parent().expect("dir");
    let kept: Vec<_> = std::fs::read_dir(db_dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.to_string_lossy().contains(".pre-restore-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(
        event_count(&kept[0]),
        150,
        "the replaced database was kept whole"
    );
    assert!(backup::verify_file(&kept[0]).expect("verify").is_ok());
    let conn = Connection::open(&settings.database.path).expect("open");
    common::assert_summary_exact(&conn);
}

/// A database that is not SQLite at all (overwritten, half a file) is replaced by the
/// restore; there is nothing to keep a verified copy of, and no copy is attempted.
/// (Found by mutation testing: nothing showed that an unreadable database is not
/// treated as one to copy.)
#[test]
fn restore_replaces_a_database_that_cannot_be_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    fill(&settings, 20);
    take(&settings).expect("backup");
    std::fs::write(&settings.database.path, b"not a database, not even close").expect("ruin");
    // Nothing beside it either: no `-wal` or `-shm` to remove is not an error.
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", settings.database.path.display()));
    }
    let out = dbwarden_cli(dir.path(), &["restore", "--latest"], &settings);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(event_count(&settings.database.path), 20);
    let db_dir = settings.database.path.parent().expect("dir");
    let kept = std::fs::read_dir(db_dir)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains(".pre-restore-"))
        .count();
    assert_eq!(kept, 0, "nothing readable to keep");
}

#[actix_rt::test]
async fn restore_is_refused_while_the_service_runs() {
    let mut app = TestApp::spawn(&[]).await;
    let settings = common::settings_in(app.dir.path(), &[]);
    let res = app.post("/api/backups").await;
    assert_eq!(res.status(), 201);
    let out = dbwarden_cli(app.dir.path(), &["restore", "--latest"], &settings);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("held by another dbwarden"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    app.stop().await;
    let out = dbwarden_cli(app.dir.path(), &["restore", "--latest"], &settings);
    assert!(
        out.status.success(),
        "after the service stopped: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_corrupt_backup_is_never_restored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    fill(&settings, 3000);
    let m = take(&settings).expect("backup");
    let path = settings.backup.dir.join(&m.name);
    common::corrupt_index_page(&path, "idx_events_type");
    let out = dbwarden_cli(
        dir.path(),
        &["restore", &path.display().to_string()],
        &settings,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains("refusing to restore") && said.contains("SHA-256 differs from its manifest"),
        "the reason is the checksum its manifest records: {said}"
    );
    // The same damaged file without a manifest beside it: the reason is the check.
    let orphan = dir.path().join("orphan.db");
    std::fs::copy(&path, &orphan).expect("copy");
    let out = dbwarden_cli(
        dir.path(),
        &["restore", &orphan.display().to_string()],
        &settings,
    );
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("integrity_check"), "{said}");
    assert_eq!(
        event_count(&settings.database.path),
        3000,
        "the database is untouched"
    );
}

/// `database.path` as a bare file name (relative to the working directory, no directory
/// part): restore stages and syncs in `.`. (Found by mutation testing.)
#[test]
fn restore_works_with_a_bare_database_file_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
            .current_dir(dir.path())
            .args(args)
            .env("DBWARDEN__DATABASE__PATH", "events.db")
            .env("DBWARDEN__BACKUP__DIR", "backups")
            .env("DBWARDEN__API__LISTEN", "127.0.0.1:1")
            .env_remove("RUST_LOG")
            .output()
            .expect("run dbwarden")
    };
    for args in [&["migrate"][..], &["backup"], &["restore", "--latest"]] {
        let out = run(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(event_count(&dir.path().join("events.db")), 0);
}

/// A stale `-wal` that cannot be removed stops the restore with an error naming it,
/// before the database is replaced. (Found by mutation testing: ignoring every error
/// there, not only "not found", went unnoticed.)
#[test]
fn a_stale_wal_that_cannot_be_removed_stops_the_restore() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_in(dir.path(), &[]);
    fill(&settings, 20);
    take(&settings).expect("backup");
    // Not a database (so nothing is kept aside), with a directory where its WAL would be.
    std::fs::write(&settings.database.path, b"ruined").expect("ruin");
    let wal = PathBuf::from(format!("{}-wal", settings.database.path.display()));
    let _ = std::fs::remove_file(&wal);
    std::fs::create_dir(&wal).expect("a directory in the way");
    let out = dbwarden_cli(dir.path(), &["restore", "--latest"], &settings);
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("events.db-wal"), "names the file: {said}");
    assert_eq!(
        std::fs::read(&settings.database.path).expect("read"),
        b"ruined",
        "the database was not replaced"
    );
}

#[actix_rt::test]
async fn the_backup_command_works_while_the_service_runs() {
    let mut app = TestApp::spawn(&[]).await;
    let res = app
        .post_json(
            "/api/events",
            &json!({"aggregate_type": "corruption", "aggregate_id": "live", "event_type": "CorruptionDetected", "event_data": {}}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // The command finds the running service where it listens.
    let addr = app.base.trim_start_matches("http://").to_string();
    let settings = common::settings_in(app.dir.path(), &[("DBWARDEN__API__LISTEN", &addr)]);
    let out = dbwarden_cli(app.dir.path(), &["backup"], &settings);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let manifest: catalog::Manifest =
        serde_json::from_slice(&out.stdout).expect("manifest on stdout");
    assert_eq!(
        manifest.last_event_id, 1,
        "the copy holds what the running service committed"
    );
    let listed = app.get_json("/api/backups").await;
    assert_eq!(
        listed["backups"][0]["name"],
        manifest.name.as_str(),
        "the service sees the CLI's backup"
    );
    let health = app.get_json("/api/health").await;
    assert!(
        health["backup"]["last_attempt_at"].is_string(),
        "the service's BackupActor took it: {health}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn health_says_when_backups_stop_and_when_they_are_back() {
    let mut app = TestApp::spawn(&[]).await;
    let backups_dir = app.dir.path().join("backups");
    let res = app.post("/api/backups").await;
    assert_eq!(res.status(), 201);
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert!(health["backup"]["last_verified_at"].is_string(), "{health}");
    assert_eq!(health["backup"]["last_error"], Value::Null);

    // The backup disk goes away: every attempt fails, and health says so.
    std::fs::rename(&backups_dir, app.dir.path().join("unmounted")).expect("unmount");
    for _ in 0..2 {
        let res = app.post("/api/backups").await;
        assert!(res.status().is_server_error(), "{}", res.status());
    }
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("latest backup attempt failed"),
        "{reasons}"
    );
    assert!(
        health["backup"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("backup directory is missing")),
        "{health}"
    );
    assert!(health["backup"]["last_attempt_at"].is_string());
    let text = app.get_text("/metrics").await;
    assert_eq!(
        common::metric(&text, "dbwarden_backups_healthy").as_deref(),
        Some("0")
    );

    // Back: the next verified backup clears it.
    std::fs::rename(app.dir.path().join("unmounted"), &backups_dir).expect("remount");
    assert_eq!(app.post("/api/backups").await.status(), 201);
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "healthy", "{health}");
    assert_eq!(health["backup"]["last_error"], Value::Null);
    let text = app.get_text("/metrics").await;
    assert_eq!(
        common::metric(&text, "dbwarden_backups_healthy").as_deref(),
        Some("1")
    );
    app.stop().await;
}

#[actix_rt::test]
async fn health_says_when_the_newest_backup_is_too_old_or_bad() {
    let mut app = TestApp::spawn(&[("DBWARDEN__BACKUP__MAX_AGE_SECS", "3600")]).await;
    let res = app.post("/api/backups").await;
    assert_eq!(res.status(), 201);
    let manifest: catalog::Manifest = res.json().await.expect("manifest");
    assert_eq!(
        app.get_json("/api/health").await["backup"]["max_age_seconds"],
        3600
    );
    // Two hours pass without a backup (the manifest is dated back).
    let dir = app.dir.path().join("backups");
    let mut old = manifest.clone();
    old.verified_at -= chrono::Duration::hours(2);
    old.created_at -= chrono::Duration::hours(2);
    catalog::write_manifest(&dir, &old).expect("date back");
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("2 h old, more than backup.max_age_secs (60 min)"),
        "{health}"
    );
    assert_eq!(
        health["backup"]["age_seconds"].as_i64().map(|s| s / 60),
        Some(120)
    );

    // A fresh backup, then bit rot in it: re-verification marks it bad.
    assert_eq!(app.post("/api/backups").await.status(), 201);
    assert_eq!(app.get_json("/api/health").await["status"], "healthy");
    let newest = catalog::list(&dir).expect("catalog").pop().expect("newest");
    let file = dir.join(&newest.name);
    let len = std::fs::metadata(&file).expect("size").len();
    common::write_at(&file, len / 2, b"bit rot");
    let run = app.run_job("backup-reverify").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("failed re-verification"),
        "{health}"
    );
    app.stop().await;
}

/// Re-verification of healthy backups raises nothing; once one went bad it raises
/// a critical `backup_bad` alert naming how many.
#[actix_rt::test]
async fn reverification_alerts_only_when_a_backup_went_bad() {
    let alerts = common::receiver(0, Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::alerting(common::settings_in(dir.path(), &[]), &alerts);
    let mut app = TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    assert_eq!(app.post("/api/backups").await.status(), 201);
    let run = app.run_job("backup-reverify").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let backups = app.dir.path().join("backups");
    let newest = catalog::list(&backups)
        .expect("catalog")
        .pop()
        .expect("newest");
    let file = backups.join(&newest.name);
    let len = std::fs::metadata(&file).expect("size").len();
    common::write_at(&file, len / 2, b"bit rot");
    let run = app.run_job("backup-reverify").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "backup_bad").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or_default()
            .starts_with("1 stored backup(s) failed re-verification"),
        "the first backup_bad alert is the bad run's: {alert}"
    );
    app.stop().await;
}

/// Two backups of one database into one directory at the same moment (the service's
/// startup backup and `dbwarden backup` from a shell, say): one of them waits its turn
/// or is refused by name; neither fails on the other's half-written file, and every
/// file under a final name verifies against its manifest.
#[test]
fn two_backups_into_one_directory_at_once_never_trip_over_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "100");
    fill(&settings, 3000);
    backup::ensure_dir(&settings.backup.dir).expect("dir");
    for round in 0..6 {
        let barrier = Arc::new(std::sync::Barrier::new(2));
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let (settings, barrier) = (settings.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    backup::take_backup(&settings.database, &settings.backup, &|_| {})
                })
            })
            .collect();
        let results: Vec<_> = handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect();
        for r in &results {
            if let Err(e) = r {
                assert!(
                    matches!(e, BackupError::DirectoryBusy { .. }),
                    "round {round}: only a clear refusal may fail a backup: {e}"
                );
            }
        }
        assert!(results.iter().any(Result::is_ok), "round {round}");
    }
    for (file, problem) in common::final_backups(&settings.backup.dir) {
        assert_eq!(problem, None, "{}", file.display());
        let manifest = catalog::read_manifest(&catalog::manifest_path(
            &settings.backup.dir,
            &file.file_name().expect("name").to_string_lossy(),
        ))
        .expect("every final file has its manifest");
        assert_eq!(
            manifest.sha256,
            catalog::sha256_file(&file).expect("hash"),
            "{}",
            file.display()
        );
    }
}

/// A power cut between a backup's rename and its manifest leaves a verified file under
/// its final name with no manifest: the next backup verifies and records it, and
/// retention counts it from then on, so such files never pile up.
#[test]
fn a_backup_that_lost_its_manifest_is_recorded_again_and_retention_counts_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_keeping_last(dir.path(), "1");
    fill(&settings, 500);
    let first = take(&settings).expect("first backup");
    let manifest_file = catalog::manifest_path(&settings.backup.dir, &first.name);
    std::fs::remove_file(&manifest_file).expect("the cut");
    assert!(catalog::list(&settings.backup.dir)
        .expect("list")
        .is_empty());
    // A damaged orphan is recorded too, as bad (kept for inspection, never counted).
    let damaged = catalog::new_name(
        &settings.backup.dir,
        chrono::Utc::now() - chrono::Duration::days(3),
    );
    std::fs::copy(
        settings.backup.dir.join(&first.name),
        settings.backup.dir.join(&damaged),
    )
    .expect("copy");
    common::corrupt_index_page(&settings.backup.dir.join(&damaged), "idx_events_type");

    let adopted = backup::adopt_orphans(&settings.backup.dir).expect("adopt");
    assert_eq!(adopted.len(), 2, "{adopted:?}");
    let recovered = adopted
        .iter()
        .find(|m| m.name == first.name)
        .expect("recovered");
    assert_eq!(recovered.status, catalog::BackupStatus::Good);
    assert_eq!(recovered.sha256, first.sha256);
    assert_eq!(recovered.last_event_id, first.last_event_id);
    assert_eq!(
        recovered.created_at.timestamp(),
        first.created_at.timestamp()
    );
    let bad = adopted.iter().find(|m| m.name == damaged).expect("damaged");
    assert_eq!(bad.status, catalog::BackupStatus::Bad);
    assert!(bad
        .problem
        .as_deref()
        .unwrap_or("")
        .contains("failed verification"));

    // Taken again later: retention (keep 1) now removes the recovered one, keeps the bad one.
    std::fs::remove_file(&manifest_file).expect("lose it again");
    let second = take(&settings).expect("second backup");
    let names: Vec<String> = catalog::list(&settings.backup.dir)
        .expect("list")
        .into_iter()
        .map(|m| m.name)
        .collect();
    assert!(names.contains(&second.name), "{names:?}");
    assert!(
        !names.contains(&first.name),
        "retention counted the recovered backup: {names:?}"
    );
    assert!(
        names.contains(&damaged),
        "a bad backup is never deleted: {names:?}"
    );
    assert!(!settings.backup.dir.join(&first.name).exists());
}

//! Security defaults: loopback by default, and nothing the service creates is readable
//! or writable by other users. (The token and the rate and size limits are tested in
//! tests/api.rs and tests/hostile.rs.)

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::process::start_under;

#[test]
fn the_default_listen_address_is_loopback() {
    // The embedded defaults are what `cargo run --release` uses without a config file.
    let defaults = dbwarden::config::Settings::load_with_env(
        &dbwarden::config::ConfigSource::Default,
        Vec::<(String, String)>::new(),
    )
    .expect("defaults");
    assert!(
        defaults.listen_addr().ip().is_loopback(),
        "{}",
        defaults.api.listen
    );
    assert!(defaults.api.token.is_none());
}

fn walk(dir: &Path, out: &mut Vec<(String, u32)>) {
    for entry in std::fs::read_dir(dir).expect("list").filter_map(Result::ok) {
        let path = entry.path();
        let meta = std::fs::symlink_metadata(&path).expect("stat");
        out.push((
            path.display().to_string(),
            meta.permissions().mode() & 0o777,
        ));
        if meta.is_dir() {
            walk(&path, out);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_the_service_creates_is_open_to_other_users() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The common umask (022) set for the service itself, whatever the test's own is:
    // under it, a file created without explicit permissions would be readable by all.
    let mut running = start_under(
        &["sh", "-c", "umask 022 && exec \"$0\" \"$@\""],
        dir.path(),
        &[
            ("DBWARDEN__BACKUP__DIR", "backups"),
            ("DBWARDEN__LOGGING__DIR", "logs"),
            ("DBWARDEN__BACKUP__AT_STARTUP", "false"),
            ("DBWARDEN__JOBS__DIR", "no-jobs"),
        ],
    );
    let client = reqwest::Client::new();
    let res = client
        .post(format!("{}/api/events", running.base))
        .json(&serde_json::json!({"aggregate_type": "corruption", "aggregate_id": "a", "event_type": "CorruptionDetected", "event_data": {}}))
        .send()
        .await
        .expect("append");
    assert_eq!(res.status(), 201);
    let res = client
        .post(format!("{}/api/backups", running.base))
        .send()
        .await
        .expect("backup");
    assert_eq!(res.status(), 201);
    // Checked while running (WAL and shared memory exist) and after a clean stop.
    let mut seen = Vec::new();
    walk(dir.path(), &mut seen);
    let _ = Command::new("kill")
        .args(["-TERM", &running.child.id().to_string()])
        .status();
    assert!(running.child.wait().expect("wait").success());
    walk(dir.path(), &mut seen);
    let names: Vec<&str> = seen.iter().map(|(p, _)| p.as_str()).collect();
    for wanted in [
        "events.db",
        "events.db-wal",
        "events.db.lock",
        ".db.json",
        "logs/",
    ] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "{wanted} was created: {names:#?}"
        );
    }
    let open: Vec<_> = seen.iter().filter(|(_, mode)| mode & 0o077 != 0).collect();
    assert!(open.is_empty(), "open to group or others: {open:#?}");
}

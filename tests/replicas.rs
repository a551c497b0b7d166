//! Replicas: verified backups shipped off the machine, over HTTP to a real S3 server in
//! this process (s3s) and to a `file://` directory, and restored on a "new machine"
//! (a fresh directory with only the settings and the identity) by the real binary.

mod common;
#[path = "common/s3.rs"]
mod s3;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::events_of;
use dbwarden::backup::{self, catalog};
use dbwarden::config::Settings;
use dbwarden::db;
use dbwarden::replica::{self, catalog::CopyStatus, Replica};
use s3::S3Server;
use tokio_util::sync::CancellationToken;

const BUCKET: &str = "dbwarden-test";

/// An age identity file as `age-keygen` writes one; answers (path, recipient).
fn identity_file(dir: &Path, name: &str) -> (PathBuf, String) {
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let path = dir.join(name);
    use age::secrecy::ExposeSecret;
    std::fs::write(
        &path,
        format!(
            "# created: by the test\n# public key: {recipient}\n{}\n",
            identity.to_string().expose_secret()
        ),
    )
    .expect("identity file");
    (path, recipient)
}

/// The `[[replicas]]` tables of a test: a `file://` one and an S3 one on `server`.
fn replicas_toml(shared: &Path, server: &S3Server, recipient: &str) -> String {
    let secret = shared.join("s3-secret");
    std::fs::write(&secret, format!("{}\n", s3::SECRET_KEY)).expect("secret file");
    format!(
        r#"
[[replicas]]
name = "nas"
url = "file://{nas}"
age_recipients = ["{recipient}"]
cpu_priority = "low"

[[replicas]]
name = "s3"
url = "s3://{bucket}/hosts/one"
cpu_priority = "low"
endpoint = "{endpoint}"
allow_http = true
access_key_id = "{access}"
secret_access_key_file = "{secret}"
age_recipients = ["{recipient}"]
"#,
        nas = shared.join("nas").display(),
        endpoint = server.endpoint(),
        bucket = server.bucket,
        access = s3::ACCESS_KEY,
        secret = secret.display(),
    )
}

/// What most tests start from: a temp root, an S3 server, an age identity, and the
/// `[[replicas]]` tables pointing at the server (`s3`) and at `root/nas` (`nas`).
/// They ship at `cpu_priority = "low"`: the tests run side by side on a busy CPU, where
/// `SCHED_IDLE` shipping would wait for the other tests to finish (the policy itself is
/// tested in `replica::tests`).
struct World {
    root: tempfile::TempDir,
    server: S3Server,
    identity: PathBuf,
    replicas: String,
}

impl World {
    async fn new() -> World {
        let root = tempfile::tempdir().expect("tempdir");
        let server = S3Server::start(&root.path().join("s3"), BUCKET).await;
        let (identity, recipient) = identity_file(root.path(), "identity.txt");
        let replicas = replicas_toml(root.path(), &server, &recipient);
        World {
            root,
            server,
            identity,
            replicas,
        }
    }

    /// Both replicas with `age_identity_file` set, as drills need.
    fn with_identity_file(mut self) -> World {
        self.replicas = self.replicas.replace(
            "age_recipients = [",
            &format!(
                "age_identity_file = \"{}\"\nage_recipients = [",
                self.identity.display()
            ),
        );
        self
    }

    /// A directory for the test's restores (made on first use).
    fn scratch(&self) -> PathBuf {
        let dir = self.root.path().join("restored");
        std::fs::create_dir_all(&dir).expect("scratch dir");
        dir
    }

    /// Both replicas streaming every 200 ms, with `extra` settings for each.
    fn streaming(mut self, extra: &str) -> World {
        self.replicas = self.replicas.replace(
            "age_recipients = [",
            &format!("sync_interval_ms = 200\n{extra}age_recipients = ["),
        );
        self
    }

    /// The running service on these replicas: it, its live database's path, and the
    /// replicas (`nas`, `s3`) as the test reads them.
    async fn start(&self) -> (common::TestApp, PathBuf, Vec<Replica>) {
        self.start_with(&[]).await
    }

    /// [`World::start`] with `env` settings too (`DBWARDEN__SECTION__KEY`).
    async fn start_with(&self, env: &[(&str, &str)]) -> (common::TestApp, PathBuf, Vec<Replica>) {
        self.start_with_jobs(env, &[]).await
    }

    /// [`World::start_with`] with job files (file name, text) in its jobs directory.
    async fn start_with_jobs(
        &self,
        env: &[(&str, &str)],
        jobs: &[(&str, &str)],
    ) -> (common::TestApp, PathBuf, Vec<Replica>) {
        let dir = tempfile::tempdir().expect("tempdir");
        for (file, text) in jobs {
            common::write_job(dir.path(), file, text);
        }
        let settings = common::settings_with_file(dir.path(), &self.replicas, env);
        let live = settings.database.path.clone();
        let replicas = settings
            .replicas
            .iter()
            .map(|r| Replica::open(r).expect("open"))
            .collect();
        let app =
            common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
        (app, live, replicas)
    }

    /// Bytes the service has sent to the S3 server so far.
    fn sent_to_s3(&self) -> u64 {
        self.server
            .proxy
            .sent_bytes
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Where S3's traffic stands: bytes received and requests so far.
    fn s3_mark(&self) -> (u64, usize) {
        (self.sent_to_s3(), self.server.proxy.requests().len())
    }

    /// Fails, listing the requests, when S3 received anything since `mark`.
    fn assert_nothing_sent_to_s3_since(&self, mark: (u64, usize)) {
        let requests = self.server.proxy.requests();
        assert_eq!(
            self.sent_to_s3(),
            mark.0,
            "an idle service sent something to S3: {:?}",
            requests.get(mark.1..).unwrap_or_default()
        );
    }

    /// The settings of a machine whose database and backups are under `root/machine`.
    fn machine(&self) -> Settings {
        common::settings_with_file(&self.root.path().join("machine"), &self.replicas, &[])
    }
}

/// `n` events of several types and aggregates, written straight into the database.
fn fill(settings: &Settings, n: usize) {
    let (conn, _) = db::open_and_migrate(&settings.database).expect("migrate");
    let tx = conn.unchecked_transaction().expect("tx");
    for i in 0..n {
        let event_type = [
            "CorruptionDetected",
            "RemediationQueued",
            "VerificationSuccess",
        ][i % 3];
        tx.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, ?2, ?3)",
            rusqlite::params![
                format!("agg-{}", i / 3),
                event_type,
                serde_json::json!({"file_path": format!("/media/{i}.mkv"), "n": i}).to_string()
            ],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    db::wal_checkpoint(&conn, db::CheckpointMode::Truncate).expect("checkpoint");
}

fn take(settings: &Settings) -> catalog::Manifest {
    backup::ensure_dir(&settings.backup.dir).expect("backup dir");
    backup::take_backup(&settings.database, &settings.backup, &|_| {}).expect("backup")
}

async fn ship_to_all(settings: &Settings, local: &catalog::Manifest) {
    for replica_settings in &settings.replicas {
        let replica = Replica::open(replica_settings).expect("open replica");
        replica::ship::ship(
            &replica,
            &settings.backup.dir,
            local,
            &CancellationToken::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("ship to {}: {e}", replica_settings.name));
    }
}

/// Runs `script` with `sh -c`, its output captured.
fn sh(script: &str) -> std::process::Output {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .output()
        .expect("sh")
}

fn dbwarden(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .arg("--config")
        .arg(config)
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run dbwarden")
}

/// A second machine: its own database and backup paths, the same replica settings.
fn new_machine(root: &Path, replicas: &str) -> PathBuf {
    let dir = root.join("new-machine");
    std::fs::create_dir_all(&dir).expect("dir");
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = \"{}\"\n\n[backup]\ndir = \"{}\"\n{replicas}",
            dir.join("data/restored.db").display(),
            dir.join("data/backups").display()
        ),
    )
    .expect("config");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_on_each_replica_is_restored_on_a_new_machine_with_only_the_settings_and_the_identity(
) {
    let world = World::new().await;
    let (root, server) = (world.root.path(), &world.server);
    let replicas = &world.replicas;
    let settings = world.machine();
    fill(&settings, 3_000);
    let local = take(&settings);
    ship_to_all(&settings, &local).await;
    let source_events = events_of(&settings.backup.dir.join(&local.name));
    assert_eq!(source_events.len(), 3_000);

    // What the bucket's owner sees: no SQLite file, no event data.
    let bytes = server
        .read(&format!("hosts/one/backups/{}.zst.age", local.name))
        .await
        .expect("the copy is an object in the bucket");
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"), "an age file");
    assert!(
        !bytes.windows(9).any(|w| w == b"/media/10"),
        "no plaintext event data in the stored copy"
    );
    let manifest_text = String::from_utf8(
        server
            .read(&format!("hosts/one/backups/{}.manifest.json", local.name))
            .await
            .expect("manifest object"),
    )
    .expect("utf-8");
    assert!(
        !manifest_text.contains(&local.sha256),
        "the database's hash is sealed"
    );

    let config = new_machine(root, replicas);
    let listed = dbwarden(&config, &["replicas", "list"]);
    let listed_text = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.status.success(), "{listed:?}");
    for name in ["nas", "s3"] {
        assert!(
            listed_text.contains(&format!("{name} ("))
                && listed_text.contains("1 copies, 1 complete"),
            "{listed_text}"
        );
    }
    assert!(listed_text.contains(&local.name), "{listed_text}");

    for name in ["nas", "s3"] {
        let output = root.join(format!("restored-from-{name}.db"));
        let restored = dbwarden(
            &config,
            &[
                "restore",
                "--from",
                name,
                "--latest",
                "--identity",
                world.identity.to_str().expect("utf-8"),
                "--output",
                output.to_str().expect("utf-8"),
            ],
        );
        assert!(
            restored.status.success(),
            "restore from {name}: {}",
            String::from_utf8_lossy(&restored.stderr)
        );
        assert_eq!(events_of(&output), source_events, "restored from {name}");
        assert!(
            !root.join(".dbwarden-replica-restore").exists(),
            "the staging directory is removed"
        );
    }

    // And in place, by backup id, on the new machine's own database path.
    let restored = dbwarden(
        &config,
        &[
            "restore",
            "--from",
            "s3",
            "--backup",
            &local.name,
            "--identity",
            world.identity.to_str().expect("utf-8"),
        ],
    );
    assert!(
        restored.status.success(),
        "{}",
        String::from_utf8_lossy(&restored.stderr)
    );
    let new_db = root.join("new-machine/data/restored.db");
    assert_eq!(events_of(&new_db), source_events);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_identity_or_a_flipped_byte_restores_nothing_and_says_why() {
    let world = World::new().await;
    let (root, server) = (world.root.path(), &world.server);
    let (stranger, _) = identity_file(root, "someone-else.txt");
    let replicas = &world.replicas;
    let settings = world.machine();
    fill(&settings, 500);
    let local = take(&settings);
    ship_to_all(&settings, &local).await;
    let config = new_machine(root, replicas);
    let output = root.join("out.db");
    let restore = |identity: &Path| {
        dbwarden(
            &config,
            &[
                "restore",
                "--from",
                "s3",
                "--latest",
                "--identity",
                identity.to_str().expect("utf-8"),
                "--output",
                output.to_str().expect("utf-8"),
            ],
        )
    };

    let wrong = restore(&stranger);
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cannot decrypt"), "{stderr}");
    assert!(!output.exists(), "nothing restored");

    // One byte of the stored object flipped in the bucket.
    let key = format!("hosts/one/backups/{}.zst.age", local.name);
    let middle = server.read(&key).await.expect("the copy").len() / 2;
    server.flip_byte(&key, middle as i64).await;
    let flipped = restore(&world.identity);
    let stderr = String::from_utf8_lossy(&flipped.stderr);
    assert_eq!(flipped.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("differs from its manifest"), "{stderr}");
    assert!(!output.exists(), "nothing restored");
    let staging = root.join(".dbwarden-replica-restore");
    assert!(!staging.exists(), "no temporary file left");

    // The same copy from the file:// replica is intact and restores.
    let nas = dbwarden(
        &config,
        &[
            "restore",
            "--from",
            "nas",
            "--latest",
            "--identity",
            world.identity.to_str().expect("utf-8"),
            "--output",
            output.to_str().expect("utf-8"),
        ],
    );
    assert!(
        nas.status.success(),
        "{}",
        String::from_utf8_lossy(&nas.stderr)
    );
    assert_eq!(events_of(&output).len(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_without_its_manifest_never_counts() {
    let world = World::new().await;
    let server = &world.server;
    let settings = world.machine();
    fill(&settings, 200);
    let first = take(&settings);
    ship_to_all(&settings, &first).await;
    fill(&settings, 100);
    // Distinct names need distinct seconds.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = take(&settings);
    ship_to_all(&settings, &second).await;
    // The second upload's manifest never arrived (the power went between the two).
    server
        .remove(&format!("hosts/one/backups/{}.manifest.json", second.name))
        .await;
    let replica = Replica::open(&settings.replicas[1]).expect("open");
    let copies = replica::catalog::list(&replica).await.expect("list");
    let status: Vec<(String, CopyStatus)> =
        copies.iter().map(|c| (c.name.clone(), c.status)).collect();
    assert_eq!(
        status,
        vec![
            (first.name.clone(), CopyStatus::Complete),
            (second.name.clone(), CopyStatus::Incomplete)
        ]
    );
    assert_eq!(
        copies[1].problem.as_deref(),
        Some("no manifest: the upload did not finish")
    );
    // An object that is not dbwarden's, under the prefix, is ignored.
    server
        .write("hosts/one/backups/notes.txt", b"not ours".to_vec())
        .await;
    assert_eq!(
        replica::catalog::list(&replica).await.expect("list").len(),
        2
    );
}

/// `n` events of random hex (~1.2 KB each), which zstd cannot shrink below a third:
/// a database whose copy takes several multipart parts.
fn fill_noise(db: &dbwarden::config::DatabaseSettings, n: usize) {
    let (conn, _) = db::open_and_migrate(db).expect("migrate");
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data)
         SELECT 'corruption', 'agg-' || i, 'CorruptionDetected', json_object('noise', hex(randomblob(600))) FROM n",
        [n as i64],
    )
    .expect("fill");
}

/// Copies on `replica`, (name, complete?) oldest first.
async fn copies_on(replica: &Replica) -> Vec<(String, bool)> {
    match replica::catalog::list(replica).await {
        Ok(copies) => copies
            .into_iter()
            .map(|c| (c.name, c.status == CopyStatus::Complete))
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits (up to 180 s) until `replica` holds every one of `names` as a complete copy.
/// The bound is generous: shipping a 36 MB copy takes half a minute on a loaded 2-core
/// machine, and only a copy that never comes should fail a test.
async fn wait_for_copies(replica: &Replica, names: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    loop {
        let there = copies_on(replica).await;
        if names
            .iter()
            .all(|n| there.iter().any(|(c, complete)| c == n && *complete))
        {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} never held {names:?}; it holds {there:?}",
            replica.name()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Appends a few events and takes a backup through the API; the backup's name.
async fn append_and_back_up(app: &common::TestApp, n: usize) -> String {
    append_events(app, "backed-up", n).await;
    // Backup names carry the second they were taken in.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let res = app.post("/api/backups").await;
    assert_eq!(
        res.status(),
        201,
        "a local backup is taken whatever the replicas do"
    );
    let manifest: catalog::Manifest = res.json().await.expect("manifest");
    manifest.name
}

/// The running service ships each verified backup by itself. While the S3 server is
/// down, appends and local backups go on, the file replica keeps up, health names the
/// stale replica and an alert is sent; once the server is back, the next backup brings
/// the replica up to date, the missed copy first, and the alert is resolved.
#[actix_rt::test]
async fn the_service_ships_each_backup_and_catches_up_in_order_after_the_replica_was_down() {
    let world = World::new().await;
    let server = &world.server;
    let replicas = &world.replicas;
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut settings = common::alerting(
        common::settings_with_file(dir.path(), replicas, &[]),
        &alerts,
    );
    // Below the 60 s a settings file may ask for, so that the test need not wait.
    settings.replicas[1].max_age_secs = Some(2);
    let (nas, s3) = (
        Replica::open(&settings.replicas[0]).expect("open nas"),
        Replica::open(&settings.replicas[1]).expect("open s3"),
    );
    let app = common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;

    let first = append_and_back_up(&app, 10).await;
    wait_for_copies(&nas, &[&first]).await;
    wait_for_copies(&s3, &[&first]).await;

    server.stop().await;
    // Past max_age_secs, so the failure that follows finds the replica stale.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let missed = append_and_back_up(&app, 10).await;
    wait_for_copies(&nas, &[&first, &missed]).await;
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "replica_stale:s3").await;
    assert_eq!(alert["resolved"], false, "{alert}");
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    assert!(
        reasons.contains("replica s3: no copy newer than 2 s"),
        "{health}"
    );
    assert!(!reasons.contains("replica nas"), "{health}");
    let s3_health = health["replicas"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "s3"))
        .expect("s3 in health")
        .clone();
    assert!(
        s3_health["failures"].as_u64().unwrap_or(0) >= 1,
        "{s3_health}"
    );
    assert!(s3_health["last_error"].is_string(), "{s3_health}");
    assert!(
        !server
            .exists(&format!("hosts/one/backups/{missed}.manifest.json"))
            .await,
        "nothing reached the stopped server"
    );

    server.restart().await;
    let after = append_and_back_up(&app, 10).await;
    wait_for_copies(&s3, &[&first, &missed, &after]).await;
    let copies = replica::catalog::list(&s3).await.expect("list");
    let shipped_at = |name: &str| {
        copies
            .iter()
            .find(|c| c.name == name)
            .and_then(|c| c.manifest.as_ref())
            .map(|m| m.uploaded_at)
            .expect("a manifest with its upload time")
    };
    assert!(
        shipped_at(&missed) <= shipped_at(&after),
        "the missed copy is shipped before the newer one"
    );
    let resolved = common::wait_for_alert(&alerts, |a| {
        a["key"] == "replica_stale:s3" && a["resolved"] == true
    })
    .await;
    assert!(
        resolved["message"].as_str().unwrap_or("").contains("s3"),
        "{resolved}"
    );
    let metrics = app.get_text("/metrics").await;
    for line in [
        "dbwarden_replica_shipped_copies_total{replica=\"s3\"} 3",
        "dbwarden_replica_shipped_copies_total{replica=\"nas\"} 3",
        "dbwarden_replica_copies{replica=\"s3\"} 3",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in:\n{metrics}"
        );
    }
    // A restore from the replica is refused while the service runs, before any download.
    let connections = server
        .proxy
        .passed
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut restore = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
    restore
        .arg("--config")
        .arg(app.dir.path().join("config.toml"))
        .args(["restore", "--from", "s3", "--latest", "--identity"])
        .arg(&world.identity)
        .envs(common::test_env(app.dir.path(), &[]));
    let refused = restore.output().expect("run dbwarden");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("held by another dbwarden process"),
        "{refused:?}"
    );
    assert_eq!(
        server
            .proxy
            .passed
            .load(std::sync::atomic::Ordering::Relaxed),
        connections,
        "nothing was downloaded"
    );
    let failures = metrics
        .lines()
        .find_map(|l| l.strip_prefix("dbwarden_replica_failures_total{replica=\"s3\"} "))
        .and_then(|n| n.parse::<u64>().ok())
        .expect("s3 failures counted");
    assert!(failures >= 1, "{metrics}");
    let mut app = app;
    app.stop().await;
}

/// The restore drill of a running service: the newest copy and an older one restored
/// and checked, their verdicts beside them; a flipped byte fails the drill (critical
/// alert, health degraded, the copy bad, the older good ones kept) and the next backup
/// ships the bad copy again from the local backup; a bucket emptied behind dbwarden's
/// back fails the drill with the reason, and shipping starts over.
#[actix_rt::test]
async fn drills_restore_copies_and_a_flipped_byte_or_an_emptied_bucket_fails_them() {
    let world = World::new().await.with_identity_file();
    let server = &world.server;
    let replicas = &world.replicas;
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::alerting(
        common::settings_with_file(dir.path(), replicas, &[]),
        &alerts,
    );
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    let app = common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    let mut names = Vec::new();
    for _ in 0..3 {
        names.push(append_and_back_up(&app, 20).await);
    }
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    wait_for_copies(&s3, &all).await;

    let run = app.run_job("drill-s3").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let message = run["message"].as_str().unwrap_or_default().to_string();
    assert!(
        message.contains(&names[2]) && message.contains(&names[0]),
        "the newest and the oldest never drilled: {message}"
    );
    assert!(!message.contains(&names[1]), "{message}");
    assert!(
        message.contains("integrity_check ok") && message.contains("60 events"),
        "{message}"
    );
    let copies = replica::catalog::list(&s3).await.expect("list");
    let drilled: Vec<_> = copies
        .iter()
        .filter(|c| c.drill.as_ref().is_some_and(|d| d.ok))
        .map(|c| c.name.clone())
        .collect();
    assert_eq!(drilled, vec![names[0].clone(), names[2].clone()]);
    let second = app.run_job("drill-s3").await;
    assert!(
        second["message"]
            .as_str()
            .unwrap_or_default()
            .contains(&names[1]),
        "the next drill takes the copy never drilled: {second}"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dbwarden_replica_drill_ok{replica=\"s3\"} 1"),
        "{metrics}"
    );

    // One byte of the newest stored copy changes on the server.
    let key = format!("hosts/one/backups/{}.zst.age", names[2]);
    let middle = server.read(&key).await.expect("the copy").len() / 2;
    server.flip_byte(&key, middle as i64).await;
    let failed = app.run_job("drill-s3").await;
    assert_eq!(failed["outcome"], "failed", "{failed}");
    assert!(
        failed["message"]
            .as_str()
            .unwrap_or_default()
            .contains("the stored object differs from its manifest"),
        "{failed}"
    );
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "replica_drill:s3").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("replica s3: the restore drill"),
        "{health}"
    );
    let status: Vec<(String, CopyStatus)> = replica::catalog::list(&s3)
        .await
        .expect("list")
        .into_iter()
        .map(|c| (c.name, c.status))
        .collect();
    assert_eq!(
        status,
        vec![
            (names[0].clone(), CopyStatus::Complete),
            (names[1].clone(), CopyStatus::Complete),
            (names[2].clone(), CopyStatus::Bad),
        ],
        "the copy is bad, the older good ones kept"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "dbwarden_replica_drill_ok{replica=\"s3\"} 0"),
        "{metrics}"
    );

    // The next backup ships the bad copy again from its local backup, and the new one.
    let fourth = append_and_back_up(&app, 5).await;
    wait_for_copies(&s3, &[&names[2], &fourth]).await;
    let healed = app.run_job("drill-s3").await;
    assert_eq!(healed["outcome"], "ok", "{healed}");
    let resolved = common::wait_for_alert(&alerts, |a| {
        a["key"] == "replica_drill:s3" && a["resolved"] == true
    })
    .await;
    assert!(
        resolved["message"]
            .as_str()
            .unwrap_or_default()
            .contains("passed"),
        "{resolved}"
    );

    // Everything under the prefix deleted behind dbwarden's back.
    server.remove_all("hosts/one").await;
    let empty = app.run_job("drill-s3").await;
    assert_eq!(empty["outcome"], "failed", "{empty}");
    assert!(
        empty["message"]
            .as_str()
            .unwrap_or_default()
            .contains("no complete copy"),
        "{empty}"
    );
    assert!(copies_on(&s3).await.is_empty());
    let fifth = append_and_back_up(&app, 5).await;
    wait_for_copies(&s3, &[&fifth]).await;
    assert_eq!(
        copies_on(&s3).await,
        vec![(fifth.clone(), true)],
        "an empty replica gets the newest copy only"
    );
    let mut app = app;
    app.stop().await;
}

/// `dbwarden replicas drill` with no service running drills in its own process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_command_drills_each_replica_and_exits_1_on_a_bad_copy() {
    let world = World::new().await.with_identity_file();
    let root = world.root.path();
    let settings = world.machine();
    fill(&settings, 300);
    let local = take(&settings);
    ship_to_all(&settings, &local).await;
    let config = root.join("machine/config.toml");
    let env: Vec<(String, String)> = common::test_env(&root.join("machine"), &[]);
    let drill = |args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
        command.arg("--config").arg(&config).args(args);
        for (k, v) in &env {
            command.env(k, v);
        }
        command.output().expect("run dbwarden")
    };
    let out = drill(&["replicas", "drill"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(
        stdout.contains("nas: drill passed") && stdout.contains("s3: drill passed"),
        "{stdout}"
    );
    assert!(stdout.contains("300 events"), "{stdout}");
    assert!(
        !settings.backup.dir.join(".replica-drill-s3").exists(),
        "the staging directory is removed"
    );

    let object = root.join(format!("nas/backups/{}.zst.age", local.name));
    let mut bytes = std::fs::read(&object).expect("read copy");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x80;
    std::fs::write(&object, &bytes).expect("flip a byte");
    let out = drill(&["replicas", "drill", "nas"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(stdout.contains("nas: drill FAILED"), "{stdout}");
    assert!(!stdout.contains("s3:"), "only the replica named: {stdout}");
    let listed = drill(&["replicas", "list", "nas"]);
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("BAD"),
        "{listed:?}"
    );
}

/// Two services configured with the same replicas: the second writes nothing there,
/// says in health and an alert which service holds each one, and takes over once the
/// first stopped in order (and so released its leases).
#[actix_rt::test]
async fn a_second_service_on_the_same_prefix_refuses_it_and_names_the_holder() {
    let world = World::new().await;
    let replicas = &world.replicas;
    let alerts = common::receiver(0, std::time::Duration::ZERO);
    let start = |dir: tempfile::TempDir| {
        let settings = common::alerting(
            common::settings_with_file(dir.path(), replicas, &[]),
            &alerts,
        );
        common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings))
    };
    let first = start(tempfile::tempdir().expect("tempdir")).await;
    let settings = common::settings_with_file(first.dir.path(), replicas, &[]);
    let (nas, s3) = (
        Replica::open(&settings.replicas[0]).expect("open nas"),
        Replica::open(&settings.replicas[1]).expect("open s3"),
    );
    let from_first = append_and_back_up(&first, 5).await;
    wait_for_copies(&nas, &[&from_first]).await;
    wait_for_copies(&s3, &[&from_first]).await;
    let (lease, _) = replica::lease::read(&s3)
        .await
        .expect("read")
        .expect("a lease");
    assert_eq!(lease.database, first.db_path);

    let second = start(tempfile::tempdir().expect("tempdir")).await;
    let from_second = append_and_back_up(&second, 5).await;
    for replica in ["nas", "s3"] {
        let alert =
            common::wait_for_alert(&alerts, |a| a["key"] == format!("replica_lease:{replica}"))
                .await;
        assert!(
            alert["message"]
                .as_str()
                .unwrap_or_default()
                .contains(&first.db_path.display().to_string()),
            "the holder is named: {alert}"
        );
    }
    let health = second.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    let reasons = health["reasons"].to_string();
    for replica in ["nas", "s3"] {
        assert!(
            reasons.contains(&format!(
                "replica {replica}: written by another dbwarden service ({}:{}",
                replica::host_name(),
                first.db_path.display()
            )),
            "{health}"
        );
    }
    for replica in [&nas, &s3] {
        assert!(
            !copies_on(replica)
                .await
                .iter()
                .any(|(name, _)| name == &from_second),
            "the second service wrote nothing to {}",
            replica.name()
        );
    }

    let mut first = first;
    first.stop().await;
    assert!(
        replica::lease::read(&s3).await.expect("read").is_none(),
        "a clean stop releases the lease"
    );
    let later = append_and_back_up(&second, 5).await;
    wait_for_copies(&s3, &[&from_first, &later]).await;
    wait_for_copies(&nas, &[&from_first, &later]).await;
    let (lease, _) = replica::lease::read(&s3)
        .await
        .expect("read")
        .expect("a lease");
    assert_eq!(lease.database, second.db_path);
    let health = second.get_json("/api/health").await;
    assert!(
        !health["reasons"].to_string().contains("written by another"),
        "{health}"
    );
    let mut second = second;
    second.stop().await;
}

/// The lease itself: a lease its holder stopped renewing is taken over; a fresh one of
/// another service is not; the service's own is taken back after a kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_taken_over_only_once_its_holder_stopped_renewing_it() {
    use object_store::ObjectStoreExt;
    let world = World::new().await;
    let settings = world.machine();
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    let put_lease = |holder: &str, renewed_hours_ago: i64| {
        let now = chrono::Utc::now();
        let record = replica::lease::LeaseRecord {
            holder: holder.to_string(),
            host: "elsewhere".into(),
            database: "/srv/other/events.db".into(),
            acquired_at: now - chrono::Duration::hours(renewed_hours_ago),
            renewed_at: now - chrono::Duration::hours(renewed_hours_ago),
        };
        let store = s3.store.clone();
        let location = s3.layout.lease();
        async move {
            store
                .put(&location, serde_json::to_vec(&record).expect("json").into())
                .await
                .expect("put lease");
        }
    };
    let mut ours = replica::lease::Lease::new(&settings.database.path);
    put_lease("elsewhere:/srv/other/events.db", 1).await;
    let refused = ours
        .hold(&s3)
        .await
        .expect_err("a fresh lease of another service");
    assert!(
        refused
            .to_string()
            .contains("elsewhere:/srv/other/events.db"),
        "{refused}"
    );

    put_lease("elsewhere:/srv/other/events.db", 25).await;
    ours.hold(&s3)
        .await
        .expect("a lease not renewed for a day is taken over");
    let (record, _) = replica::lease::read(&s3)
        .await
        .expect("read")
        .expect("lease");
    assert_eq!(record.database, settings.database.path);

    // Killed, then started again: the same host and database take their lease back.
    let mut restarted = replica::lease::Lease::new(&settings.database.path);
    restarted.hold(&s3).await.expect("our own lease");
    let (again, _) = replica::lease::read(&s3)
        .await
        .expect("read")
        .expect("lease");
    assert!(again.renewed_at >= record.renewed_at);
    assert_eq!(
        again.acquired_at, record.acquired_at,
        "the same lease, renewed"
    );
}

/// Errors and slow answers from the replica (500, 503, 403, then a slow network)
/// only delay shipping: every append and every local backup is acknowledged while
/// they last, nothing reaches the replica during the errors, and once it answers again
/// every missed copy arrives, in order.
#[actix_rt::test]
async fn errors_and_slow_answers_from_the_replica_only_delay_shipping() {
    let world = World::new().await;
    let server = &world.server;
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_with_file(dir.path(), &world.replicas, &[]);
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    let app = common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    let first = append_and_back_up(&app, 5).await;
    wait_for_copies(&s3, &[&first]).await;

    let failures = || async {
        let health = app.get_json("/api/health").await;
        health["replicas"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == "s3"))
            .map(|r| (r["failures"].as_u64().unwrap_or(0), r["last_error"].clone()))
            .expect("s3 in health")
    };
    let mut missed = Vec::new();
    for status in [500, 503, 403] {
        server.set_fault(s3::Fault::Status(status));
        let (failed_before, _) = failures().await;
        let answered_before = server
            .proxy
            .faulted
            .load(std::sync::atomic::Ordering::Relaxed);
        missed.push(append_and_back_up(&app, 5).await);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let (failed, last_error) = failures().await;
            if failed > failed_before {
                assert!(last_error.is_string(), "{last_error}");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no failed attempt under {status}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert!(
            server
                .proxy
                .faulted
                .load(std::sync::atomic::Ordering::Relaxed)
                > answered_before,
            "the fault was injected: requests were answered {status}"
        );
        let health = app.get_json("/api/health").await;
        assert_ne!(health["status"], "failing", "{health}");
    }
    for name in &missed {
        assert!(
            !server
                .exists(&format!("hosts/one/backups/{name}.manifest.json"))
                .await,
            "{name} reached the replica while it answered errors"
        );
    }

    // Slow, but answering: the next backup brings everything, oldest first.
    server.set_fault(s3::Fault::Delay(std::time::Duration::from_millis(300)));
    let slow = append_and_back_up(&app, 5).await;
    let mut expected: Vec<&str> = missed.iter().map(String::as_str).collect();
    expected.push(&slow);
    wait_for_copies(&s3, &expected).await;
    server.set_fault(s3::Fault::None);
    let copies = replica::catalog::list(&s3).await.expect("list");
    let uploaded: Vec<_> = expected
        .iter()
        .map(|n| {
            copies
                .iter()
                .find(|c| c.name == *n)
                .and_then(|c| c.manifest.as_ref())
                .map(|m| m.uploaded_at)
                .expect("uploaded")
        })
        .collect();
    assert!(
        uploaded.windows(2).all(|w| w[0] <= w[1]),
        "in order: {uploaded:?}"
    );
    // The round that shipped them records its success once its retention pass is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (_, last_error) = failures().await;
        if last_error.is_null() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never caught up: {last_error}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let mut app = app;
    app.stop().await;
}

/// The server goes away in the middle of an upload (its connections cut while a part
/// is on its way over a slow link) and comes back: the cut copy never counts, and the
/// replica then gets a whole copy that a drill restores.
#[actix_rt::test]
async fn a_server_that_goes_away_mid_upload_never_holds_a_counted_half_copy() {
    let world = World::new().await.with_identity_file();
    let server = &world.server;
    let replicas = world
        .replicas
        .replace("name = \"s3\"\n", "name = \"s3\"\npart_size_mib = 5\n");
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_with_file(dir.path(), &replicas, &[]);
    fill_noise(&settings.database, 30_000);
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    server.set_fault(s3::Fault::Throttle(2 << 20));
    let app = common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    let cut = append_and_back_up(&app, 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while server
        .proxy
        .sent_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        <= 6 << 20
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the upload never got going"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
    app.health_when(
        std::time::Duration::from_secs(90),
        "the cut upload never failed",
        |h| h["replicas"][1]["failures"].as_u64().unwrap_or(0) > 0,
    )
    .await;
    server.restart().await;
    assert!(
        !server
            .exists(&format!("hosts/one/backups/{cut}.manifest.json"))
            .await
            && !server
                .exists(&format!("hosts/one/backups/{cut}.zst.age"))
                .await,
        "no part of the cut copy counts"
    );
    let next = append_and_back_up(&app, 1).await;
    wait_for_copies(&s3, &[&next]).await;
    assert!(
        !copies_on(&s3)
            .await
            .iter()
            .any(|(name, complete)| name == &cut && *complete),
        "the cut copy never became complete"
    );
    let drill = app.run_job("drill-s3").await;
    assert_eq!(drill["outcome"], "ok", "{drill}");
    let mut app = app;
    app.stop().await;
}

/// Files in the `file://` replica's `backups/` that object_store's staging names
/// (`<object>#<digits>`): what an upload cut short leaves there.
fn staging_files(nas: &Path) -> Vec<String> {
    std::fs::read_dir(nas.join("backups"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| {
                    n.rsplit_once('#').is_some_and(|(_, t)| {
                        !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

/// SIGKILL while a copy is being uploaded to both replicas (a first part sent, the
/// others held back by the rate limit): nothing half-uploaded ever counts, the next
/// start aborts the cut S3 upload (its id was in the ledger) and deletes what the cut
/// upload left on the `file://` replica (its staging file; a stranger's file of the
/// same shape stays), and ships again; the copy then restores in a drill.
#[actix_rt::test]
async fn a_kill_during_an_upload_leaves_no_counted_copy_and_the_next_start_ships_again() {
    let world = World::new().await.with_identity_file();
    let server = &world.server;
    let nas = world.root.path().join("nas");
    let dir = world.root.path().join("service");
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    // Backup copies only: the staging files and bytes counted here are theirs.
    let unstreamed = world
        .replicas
        .replace("cpu_priority", "stream = false\ncpu_priority");
    let limited = unstreamed
        .replace(
            "name = \"s3\"\n",
            "name = \"s3\"\npart_size_mib = 5\nmax_bytes_per_second = 65536\n",
        )
        .replace(
            "name = \"nas\"\n",
            "name = \"nas\"\npart_size_mib = 5\nmax_bytes_per_second = 65536\n",
        );
    std::fs::write(dir.join("config.toml"), &limited).expect("config");
    {
        // ~36 MB of events, a copy of a few 5 MiB parts.
        let mut db = common::settings_with_file(&dir, &limited, &[]).database;
        db.path = dir.join("data/events.db");
        fill_noise(&db, 30_000);
    }
    std::fs::write(dir.join("config.toml"), &limited).expect("config");
    let env = [
        ("DBWARDEN__BACKUP__DIR", "backups"),
        ("DBWARDEN__JOBS__DIR", "jobs"),
    ];
    let mut running = common::process::start_with(&dir, &env);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while server
        .proxy
        .sent_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        <= 5 << 20
        || staging_files(&nas).is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the uploads never sent their first parts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    running.child.kill().expect("SIGKILL");
    running.child.wait().expect("reaped");
    let left = staging_files(&nas);
    assert_eq!(
        left.len(),
        1,
        "the cut upload left its staging file: {left:?}"
    );
    let ledger = dbwarden::replica::uploads::Ledger::of(&dir.join("backups"), "s3")
        .read()
        .expect("the upload ledger");
    assert_eq!(
        ledger.len(),
        1,
        "the S3 upload was written down: {ledger:?}"
    );
    let cut = &ledger[0];
    assert!(
        server.upload_is_open(&cut.object, &cut.upload_id).await,
        "the cut upload is still open on the server: {cut:?}"
    );
    let stranger = nas.join("backups/holiday-photos.tar#1");
    std::fs::write(&stranger, "not dbwarden's").expect("a stranger's file");
    let settings = common::settings_with_file(&dir, &limited, &[]);
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    let local = catalog::list(&dir.join("backups")).expect("local backups");
    assert_eq!(local.len(), 1, "the startup backup was taken: {local:?}");
    assert!(
        copies_on(&s3).await.iter().all(|(_, complete)| !complete),
        "a half-uploaded copy never counts"
    );
    assert!(
        !server
            .exists(&format!("hosts/one/backups/{}.zst.age", local[0].name))
            .await,
        "the multipart upload was never completed"
    );

    // Started again without the rate limit: the copy is shipped whole.
    std::fs::write(dir.join("config.toml"), &unstreamed).expect("config");
    let running = common::process::start_with(&dir, &env);
    // This start takes a backup of its own (`backup.at_startup`); a replica with no
    // complete copy gets the newest backup, and the older one too only if its shipper
    // listed the backups before that one was taken. So: the newest, on both.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let newest = loop {
        let now = catalog::list(&dir.join("backups")).expect("local backups");
        if now.len() == 2 {
            break now[1].name.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the second start took no backup: {now:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    wait_for_copies(&s3, &[&newest]).await;
    let nas_replica = Replica::open(&settings.replicas[0]).expect("open nas");
    wait_for_copies(&nas_replica, &[&newest]).await;
    assert!(
        !server.upload_is_open(&cut.object, &cut.upload_id).await,
        "the cut upload was aborted at the next start: {cut:?}"
    );
    let now = staging_files(&nas);
    assert!(
        !now.contains(&left[0]) && now.contains(&"holiday-photos.tar#1".to_string()),
        "the cut upload's staging file {} is gone, the stranger's stays: {now:?}",
        left[0]
    );
    let drill = reqwest::Client::new()
        .post(format!("{}/api/jobs/drill-s3/run?wait=true", running.base))
        .send()
        .await
        .expect("drill")
        .json::<serde_json::Value>()
        .await
        .expect("run");
    assert_eq!(drill["outcome"], "ok", "{drill}");
    drop(running);
}

/// Retention on each replica, with its own numbers: only complete copies count; a
/// copy a drill failed and objects that are not dbwarden's are never deleted; a
/// leftover upload is deleted once a newer complete copy exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_keeps_its_own_number_of_copies_and_never_what_is_not_a_good_copy() {
    let world = World::new().await;
    let server = &world.server;
    let replicas = world
        .replicas
        .replace(
            "name = \"s3\"\n",
            "name = \"s3\"\nkeep_last = 2\nkeep_daily = 0\nkeep_weekly = 0\n",
        )
        .replace("name = \"nas\"\n", "name = \"nas\"\nkeep_last = 5\n");
    let settings = common::settings_with_file(&world.root.path().join("machine"), &replicas, &[]);
    let mut names = Vec::new();
    for _ in 0..4 {
        fill(&settings, 50);
        let local = take(&settings);
        ship_to_all(&settings, &local).await;
        names.push(local.name);
        std::thread::sleep(std::time::Duration::from_millis(1100));
    }
    let (nas, s3) = (
        Replica::open(&settings.replicas[0]).expect("open nas"),
        Replica::open(&settings.replicas[1]).expect("open s3"),
    );
    // The oldest copy on S3 is marked bad by a drill's verdict; a stranger's object
    // and a manifest-less leftover older than the newest copy sit beside them.
    let verdict = serde_json::json!({"at": chrono::Utc::now(), "ok": false, "detail": "flipped", "host": "h"});
    server
        .write(
            &format!("hosts/one/backups/{}.drill.json", names[0]),
            verdict.to_string().into_bytes(),
        )
        .await;
    server
        .write("hosts/one/backups/notes.txt", b"not ours".to_vec())
        .await;
    let leftover = "dbwarden-20200101T000000Z.db";
    server
        .write(
            &format!("hosts/one/backups/{leftover}.zst.age"),
            b"half an upload".to_vec(),
        )
        .await;

    for replica in [&nas, &s3] {
        let copies = replica::catalog::list(replica).await.expect("list");
        replica::retention::prune(replica, &copies)
            .await
            .expect("prune");
    }
    let kept = |copies: Vec<(String, bool)>| copies.into_iter().map(|(n, _)| n).collect::<Vec<_>>();
    assert_eq!(
        kept(copies_on(&nas).await),
        names,
        "keep_last = 5 keeps all four"
    );
    assert_eq!(
        kept(copies_on(&s3).await),
        vec![names[0].clone(), names[2].clone(), names[3].clone()],
        "keep_last = 2: the newest two, and the bad one kept as evidence; the leftover gone"
    );
    assert!(
        server.exists("hosts/one/backups/notes.txt").await,
        "not ours: untouched"
    );
    assert!(
        !server
            .exists(&format!("hosts/one/backups/{leftover}.zst.age"))
            .await
    );
    assert!(
        !server
            .exists(&format!("hosts/one/backups/{}.manifest.json", names[1]))
            .await
    );
}

/// Every malformed replica setting is refused at load, naming the key and the reason.
#[test]
fn bad_replica_settings_name_the_key_and_the_reason() {
    let temp = tempfile::tempdir().expect("tempdir");
    let root = temp.path();
    let (identity, recipient) = identity_file(root, "identity.txt");
    let (stranger, _) = identity_file(root, "stranger.txt");
    let ok = format!(
        "name = \"r\"\nurl = \"file://{}\"\nage_recipients = [\"{recipient}\"]\n",
        root.join("nas").display()
    );
    let s3 = format!(
        "name = \"r\"\nurl = \"s3://bucket/p\"\nendpoint = \"https://s3.example.com\"\naccess_key_id = \"a\"\nsecret_access_key = \"b\"\nage_recipients = [\"{recipient}\"]\n"
    );
    #[rustfmt::skip]
    let cases: Vec<(String, &str, &str)> = vec![
        (ok.replace("file://", "ftp://"), "replicas[0].url", "unknown scheme `ftp`"),
        (ok.replace("file://", "file://host"), "replicas[0].url", "no host"),
        ("name = \"r\"\nurl = \"s3:///nobucket\"\nencryption = \"none\"\n".into(), "replicas[0].url", "names no bucket"),
        (ok.replace("name = \"r\"", "name = \"no spaces\""), "replicas[0].name", "letters, digits"),
        (format!("{ok}keep_last = 0\n"), "replicas[0].keep_last", "out of range"),
        (format!("{ok}keep_weekly = 20000\n"), "replicas[0].keep_weekly", "out of range"),
        (format!("{ok}part_size_mib = 1\n"), "replicas[0].part_size_mib", "out of range"),
        (format!("{ok}lease_expire_secs = 60\n"), "replicas[0].lease_expire_secs", "out of range"),
        (format!("{ok}cpu_priority = \"high\"\n"), "replicas[0].cpu_priority", "`high` is not a CPU priority: use \"idle\", \"low\" or \"normal\""),
        (format!("{ok}max_bytes_per_second = 100\n"), "replicas[0].max_bytes_per_second", "out of range"),
        (format!("{ok}drill_schedule = \"every sunday\"\n"), "replicas[0].drill_schedule", ""),
        (format!("{ok}colour = \"blue\"\n"), "colour", "unknown field"),
        (ok.replace(&recipient, "age1notarecipient"), "replicas[0].age_recipients[0]", "not an age recipient"),
        (ok.replace(&format!("age_recipients = [\"{recipient}\"]\n"), ""), "replicas[0].age_recipients", "at least one age recipient"),
        (format!("{}encryption = \"none\"\n", ok), "replicas[0].age_recipients", "encryption = \"none\""),
        (format!("{ok}age_identity_file = \"{}\"\n", stranger.display()), "replicas[0].age_identity_file", "holds no identity for any of age_recipients"),
        (format!("{ok}age_identity_file = \"/nonexistent/key\"\n"), "replicas[0].age_identity_file", "cannot read"),
        (format!("{ok}endpoint = \"https://x\"\n"), "replicas[0].endpoint", "only applies to s3://"),
        (s3.replace("https://s3.example.com", "http://127.0.0.1:9000"), "replicas[0].endpoint", "allow_http = true"),
        (s3.replace("https://s3.example.com", "not a url"), "replicas[0].endpoint", "not an http(s) URL"),
        (s3.replace("secret_access_key = \"b\"\n", ""), "replicas[0].secret_access_key", "required with access_key_id"),
        (s3.replace("access_key_id = \"a\"\nsecret_access_key = \"b\"\n", ""), "replicas[0].access_key_id", "no credentials"),
        (s3.replace("secret_access_key = \"b\"", "secret_access_key_file = \"/nonexistent/secret\""), "replicas[0].secret_access_key_file", "cannot read"),
        (format!("{s3}options = {{ no_such_option = \"1\" }}\n"), "replicas[0].options.no_such_option", "not an option of s3"),
        (format!("{ok}\n[[replicas]]\n{ok}"), "replicas[1].name", "already the name of replicas[0]"),
        (format!("{ok}sync_interval_ms = 10\n"), "replicas[0].sync_interval_ms", "out of range"),
        (format!("{ok}max_lag_secs = 0\n"), "replicas[0].max_lag_secs", "out of range"),
        (format!("{ok}ack_timeout_ms = 5\n"), "replicas[0].ack_timeout_ms", "out of range"),
        (format!("{ok}stream_retention_secs = 5\n"), "replicas[0].stream_retention_secs", "out of range"),
        (format!("{ok}compact_interval_secs = 0\n"), "replicas[0].compact_interval_secs", "out of range"),
        (format!("{ok}compact_interval_secs = 700000\n"), "replicas[0].compact_interval_secs", "out of range"),
        (format!("{ok}stream = false\nack_writes = true\n"), "replicas[0].ack_writes", "needs stream = true"),
        (format!("{ok}ack_fallback_local = true\n"), "replicas[0].ack_fallback_local", "only applies with ack_writes = true"),
    ];
    for (i, (table, key, reason)) in cases.iter().enumerate() {
        let dir = root.join(format!("case{i}"));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("config.toml");
        std::fs::write(&file, format!("[[replicas]]\n{table}")).expect("write");
        let err = Settings::load_with_env(
            &dbwarden::config::ConfigSource::Explicit(file.clone()),
            common::test_env(&dir, &[]),
        )
        .expect_err(&format!("case {i} must be refused:\n{table}"));
        let text = err.to_string();
        assert!(text.contains(key), "case {i}: `{key}` not named in: {text}");
        assert!(
            text.contains(reason),
            "case {i}: `{reason}` not said in: {text}"
        );
    }
    // The valid ones load, with their defaults; the identity that matches is accepted.
    let file = root.join("good.toml");
    std::fs::write(
        &file,
        format!(
            "[[replicas]]\n{ok}age_identity_file = \"{}\"\n\n[[replicas]]\n{}",
            identity.display(),
            s3.replace("name = \"r\"", "name = \"s3\"")
        ),
    )
    .expect("write");
    let settings = Settings::load_with_env(
        &dbwarden::config::ConfigSource::Explicit(file),
        common::test_env(root, &[]),
    )
    .expect("valid replicas load");
    assert_eq!(settings.replicas.len(), 2);
    assert_eq!(settings.replicas[0].keep_last, 7);
    assert_eq!(settings.replicas[1].part_size_mib, 8);
    assert!(
        !settings
            .to_masked_toml()
            .contains("secret_access_key = \"b\""),
        "the secret is masked"
    );
}

/// A streamed segment is a standard file too: `age -d | zstd -d` alone gives the plain
/// segment FORMAT.md describes (an upload joins several spooled pieces here), every
/// frame of which checks. Needs `age` and `zstd`.
#[actix_rt::test]
#[ignore = "needs Debian's age and zstd, which .ci/run installs"]
async fn a_streamed_segment_opens_with_age_and_zstd_alone() {
    use dbwarden::replica::segment::{SegmentReader, MAGIC};
    for tool in ["age", "zstd"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: apt-get install age zstd"
        );
    }
    let world = World::new().await.streaming("");
    let (mut app, live, replicas) = world.start().await;
    // Rounds closer together than the 200 ms interval: uploads of several pieces.
    for round in 0..8 {
        append_events(&app, &format!("by-hand-{round}"), 3).await;
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
    }
    let scratch = world.root.path().join("by-hand");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let (caught_up, got) = wait_until_streamed(
        &replicas[0],
        &world.identity,
        &events_of(&live),
        &scratch.join("restored.db"),
    )
    .await;
    assert!(caught_up, "the file replica rebuilds only {got} events");
    app.stop().await;
    let mut segments = Vec::new();
    let generations = world.root.path().join("nas/generations");
    for generation in std::fs::read_dir(&generations).expect("generations") {
        let dir = generation.expect("entry").path().join("segments");
        for file in std::fs::read_dir(&dir).into_iter().flatten() {
            segments.push(file.expect("entry").path());
        }
    }
    assert!(
        !segments.is_empty(),
        "no segment under {}",
        generations.display()
    );
    let mut commits = 0;
    for stored in &segments {
        // FORMAT.md: the decrypted stream's last 40 bytes are the digest trailer, whose
        // last 32 are the SHA-256 of every byte before it.
        let digests = format!(
            "age -d -i '{}' '{}' > /tmp/dbwarden-seg.$$ && head -c -40 /tmp/dbwarden-seg.$$ | sha256sum | cut -c1-64 \
             && tail -c 32 /tmp/dbwarden-seg.$$ | od -An -v -tx1 | tr -d ' \\n'; rm -f /tmp/dbwarden-seg.$$",
            world.identity.display(),
            stored.display()
        );
        let digests = String::from_utf8_lossy(&sh(&digests).stdout).to_string();
        let (computed, stated) = digests.split_once('\n').expect("two digests");
        assert!(
            computed.len() == 64 && computed == stated,
            "{}: {digests}",
            stored.display()
        );
        let script = format!(
            "age -d -i '{}' '{}' | zstd -d -q -c",
            world.identity.display(),
            stored.display()
        );
        let plain = sh(&script);
        assert!(plain.status.success(), "{script}");
        assert!(plain.stdout.starts_with(MAGIC), "{}", stored.display());
        let mut reader = SegmentReader::new(&plain.stdout[..], &stored.display().to_string())
            .expect("a segment's header");
        while reader
            .next_frame()
            .unwrap_or_else(|e| panic!("{}: {e}", stored.display()))
            .is_some()
        {}
        commits += reader.header.commits.len();
    }
    assert!(
        commits >= 8 && segments.len() < commits,
        "{commits} commits in {} segments: some must hold several",
        segments.len()
    );
}

/// A replica written by an older dbwarden stays restorable: `tests/fixtures/format1-replica`
/// is a generation streamed by the release of 2026-12-07 (segment format 1, whose header
/// holds the SHA-256 of the frames), five commits of ten events each, two seconds apart.
#[test]
fn a_generation_streamed_in_segment_format_1_restores_to_the_latest_and_to_an_event() {
    let root = tempfile::tempdir().expect("tempdir");
    let nas = root.path().join("nas");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1-replica");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(&fixture)
        .arg(&nas)
        .status()
        .expect("cp");
    assert!(copied.success(), "copy {}", fixture.display());
    let config = new_machine(
        root.path(),
        &format!(
            "\n[[replicas]]\nname = \"old\"\nurl = \"file://{}\"\nencryption = \"none\"\nstream = true\n",
            nas.display()
        ),
    );
    let ids_of = |db: &Path| -> Vec<i64> {
        events_of(db)
            .iter()
            .map(|row| {
                row.split('|')
                    .next()
                    .and_then(|id| id.parse().ok())
                    .expect("id")
            })
            .collect()
    };
    // Event 25 was written by the third commit, with events 21 to 30.
    for (target, last) in [(["--latest", ""], 50), (["--event-id", "25"], 30)] {
        let out_db = root.path().join(format!("restored-{last}.db"));
        let mut args = vec!["restore", "--from", "old"];
        args.extend(target.iter().filter(|a| !a.is_empty()));
        let out_path = out_db.display().to_string();
        args.extend(["--output", &out_path]);
        let out = dbwarden(&config, &args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(ids_of(&out_db), (1..=last).collect::<Vec<_>>(), "{args:?}");
    }
}

/// A copy is a standard file: Debian's `age`, `zstd` and `sqlite3` open it without
/// dbwarden. Needs those three programs (`.ci/run` installs them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Debian's age, zstd and sqlite3, which .ci/run installs"]
async fn a_copy_opens_with_age_zstd_and_sqlite3_alone() {
    for tool in ["age", "zstd", "sqlite3"] {
        assert!(
            Command::new(tool).arg("--version").output().is_ok(),
            "{tool} is missing: apt-get install age zstd sqlite3"
        );
    }
    let world = World::new().await;
    let (root, server) = (world.root.path(), &world.server);
    let settings = world.machine();
    fill(&settings, 1_000);
    let local = take(&settings);
    ship_to_all(&settings, &local).await;
    let downloaded = root.join("downloaded.zst.age");
    std::fs::write(
        &downloaded,
        server
            .read(&format!("hosts/one/backups/{}.zst.age", local.name))
            .await
            .expect("the copy in the bucket"),
    )
    .expect("save the download");
    for stored in [
        root.join(format!("nas/backups/{}.zst.age", local.name)),
        downloaded,
    ] {
        let out = root.join("by-hand.db");
        let _ = std::fs::remove_file(&out);
        let script = format!(
            "age -d -i '{}' '{}' | zstd -d -q -o '{}'",
            world.identity.display(),
            stored.display(),
            out.display()
        );
        let decoded = sh(&script);
        assert!(
            decoded.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&decoded.stderr)
        );
        let count = Command::new("sqlite3")
            .arg(&out)
            .arg("PRAGMA integrity_check; SELECT count(*) FROM events;")
            .output()
            .expect("sqlite3");
        assert_eq!(
            String::from_utf8_lossy(&count.stdout),
            "ok\n1000\n",
            "{}",
            stored.display()
        );
        assert_eq!(
            catalog::sha256_file(&out).expect("hash"),
            local.sha256,
            "the very file that was verified locally"
        );
    }
}

/// A generation streamed to each replica (its snapshot big enough to go up in several
/// parts of 5 MiB) is rebuilt from the replica alone: to its last commit, and to the
/// commit that wrote a given event, every event equal to the live database's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_generation_is_rebuilt_from_each_replica_alone() {
    use dbwarden::db::pin::ReadPin;
    use dbwarden::replica::stream::{self, Target};
    use dbwarden::replica::tailer::{Pass, Tailer};

    let mut world = World::new().await;
    world.replicas = world.replicas.replace(
        "age_recipients = [",
        "part_size_mib = 5\nage_recipients = [",
    );
    let settings = world.machine();
    fill_noise(&settings.database, 9_000);
    let (conn, _) = db::open_and_migrate(&settings.database).expect("migrate");
    conn.execute_batch("PRAGMA wal_autocheckpoint=0")
        .expect("no automatic checkpoint");
    let live = settings.database.path.clone();
    let open = || rusqlite::Connection::open(&live).expect("pin connection");
    let pin = ReadPin::new(&live, [open(), open()]);
    let spool = world.root.path().join("spool");
    let (mut tailer, info) =
        Tailer::start(&live, pin, &spool, chrono::Utc::now()).expect("generation");
    let replicas: Vec<Replica> = settings
        .replicas
        .iter()
        .map(|r| Replica::open(r).expect("open"))
        .collect();
    // Where the service keeps its upload ledgers (it makes the directory at start).
    backup::ensure_dir(&settings.backup.dir).expect("backup dir");
    let ledger = |replica: &Replica| {
        dbwarden::replica::uploads::Ledger::of(&settings.backup.dir, replica.name())
    };
    for replica in &replicas {
        stream::upload_snapshot(replica, tailer.dir(), &info, &ledger(replica))
            .await
            .expect("snapshot");
    }
    let insert = |n: usize| {
        for i in 0..n {
            conn.execute(
                "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', '{}')",
                [format!("streamed-{i}")],
            )
            .expect("insert");
        }
    };
    for _ in 0..3 {
        insert(4);
        match tailer.pass(chrono::Utc::now()).expect("pass") {
            Pass::Spooled { header, path } => {
                for replica in &replicas {
                    stream::upload_segment(replica, vec![path.clone()], &header, &ledger(replica))
                        .await
                        .expect("segment");
                }
            }
            other => panic!("expected a segment: {other:?}"),
        }
    }
    let everything = events_of(&live);
    assert_eq!(everything.len(), 9_012);
    for replica in &replicas {
        assert!(
            ledger(replica).read().expect("ledger").is_empty(),
            "{}: a finished upload is still in the ledger",
            replica.name()
        );
    }
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity file");
    for replica in &replicas {
        let generations = stream::list(replica).await.expect("list");
        assert_eq!(generations.len(), 1, "{}", replica.name());
        assert_eq!(generations[0].segments.len(), 3, "{}", replica.name());
        let snapshot_bytes = generations[0]
            .snapshot
            .as_ref()
            .expect("complete")
            .object_bytes;
        assert!(
            snapshot_bytes > 5 << 20,
            "the snapshot ({snapshot_bytes} bytes) went up in one part"
        );
        let staging = world.root.path().join("staging");
        let latest = world
            .root
            .path()
            .join(format!("{}-latest.db", replica.name()));
        let restored = stream::restore(
            replica,
            &generations[0],
            &Target::Latest,
            &identities,
            &staging,
            &latest,
        )
        .await
        .expect("restore the latest");
        assert_eq!(restored.event_count, 9_012);
        assert_eq!(events_of(&latest), everything, "{}", replica.name());
        // The 6th streamed event: the 2nd commit of the second pass.
        let target = 9_006;
        let to_event = world
            .root
            .path()
            .join(format!("{}-event.db", replica.name()));
        let restored = stream::restore(
            replica,
            &generations[0],
            &Target::EventId(target),
            &identities,
            &staging,
            &to_event,
        )
        .await
        .expect("restore to an event");
        assert_eq!(restored.last_event_id, target);
        assert_eq!(
            events_of(&to_event),
            everything[..target as usize].to_vec(),
            "{}",
            replica.name()
        );
    }
}

/// Appends `n` events through the API; answers the ids acknowledged.
async fn append_events(app: &common::TestApp, tag: &str, n: usize) -> Vec<i64> {
    let events: Vec<serde_json::Value> = (0..n)
        .map(|i| serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("{tag}-{i}"), "event_type": "CorruptionDetected", "event_data": {"file_path": format!("/media/{tag}/{i}.mkv")}}))
        .collect();
    let res = app
        .post_json("/api/events", &serde_json::json!(events))
        .await;
    assert_eq!(res.status(), 201, "the append is acknowledged");
    let body: serde_json::Value = res.json().await.expect("ids");
    body["ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|id| id.as_i64().expect("an id"))
        .collect()
}

/// Restores the newest generation of `replica` to `target` into a new file.
async fn restore_stream(
    replica: &Replica,
    target: &dbwarden::replica::stream::Target,
    identity: &Path,
    out: &Path,
) -> Result<dbwarden::replica::stream::Restored, replica::ReplicaError> {
    use dbwarden::replica::stream;
    let identities = dbwarden::config::read_identities(identity).expect("identity file");
    let generations = stream::list(replica).await?;
    let newest = generations
        .iter()
        .rev()
        .find(|g| g.snapshot.is_some())
        .ok_or_else(|| replica::ReplicaError::Empty {
            replica: replica.name().to_string(),
        })?;
    let _ = std::fs::remove_file(out);
    let staging = out.with_extension("staging");
    stream::restore(replica, newest, target, &identities, &staging, out).await
}

/// Waits (up to 60 s) until the newest generation of `replica` rebuilds exactly
/// `expected`; answers whether it did, and how many events it last rebuilt.
async fn wait_until_streamed(
    replica: &Replica,
    identity: &Path,
    expected: &[String],
    out: &Path,
) -> (bool, usize) {
    use dbwarden::replica::stream::Target;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let restored = restore_stream(replica, &Target::Latest, identity, out).await;
        let got = if restored.is_ok() {
            events_of(out)
        } else {
            Vec::new()
        };
        if got == expected {
            return (true, got.len());
        }
        if std::time::Instant::now() > deadline {
            return (false, got.len());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The running service streams every commit to each replica by itself: appends
/// through the API, the checkpoints between them, and, last, a direct writer's inserts
/// on its own connection (which runs SQLite's automatic checkpoint after every commit),
/// found by the tailer's own polling since the DbWriter knows nothing of them. Each
/// replica alone then rebuilds the database exactly: to its last commit, and to the
/// commit that acknowledged a given event. Health shows what was streamed.
#[actix_rt::test]
async fn the_service_streams_every_commit_and_each_replica_alone_rebuilds_it() {
    use dbwarden::replica::stream::Target;

    let world = World::new().await.streaming("");
    let (app, live, replicas) = world.start().await;

    let first = append_events(&app, "first", 5).await;
    let second = append_events(&app, "second", 5).await;
    let checkpoint = app.run_job("checkpoint").await;
    assert_eq!(checkpoint["outcome"], "ok", "{checkpoint}");
    let third = append_events(&app, "third", 5).await;
    let identity = world.identity.clone();
    let scratch = world.scratch();
    let acknowledged = events_of(&live);
    assert_eq!(acknowledged.len(), 15);
    for replica in &replicas {
        let out = scratch.join(format!("{}-acknowledged.db", replica.name()));
        let (caught_up, got) = wait_until_streamed(replica, &identity, &acknowledged, &out).await;
        assert!(caught_up, "{}: rebuilds {got} of 15 events", replica.name());
    }
    // Then a direct writer, as Healarr is: its own connection, checkpointing on its
    // own. Nothing tells dbwarden of these commits.
    let direct = rusqlite::Connection::open(&live).expect("direct writer");
    direct
        .execute_batch("PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=1;")
        .expect("direct writer settings");
    for i in 0..3 {
        direct
            .execute(
                "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', '{}')",
                [format!("direct-{i}")],
            )
            .expect("a direct insert");
    }
    let everything = events_of(&live);
    assert_eq!(everything.len(), 18);
    for replica in &replicas {
        let latest = scratch.join(format!("{}-latest.db", replica.name()));
        let (caught_up, got) = wait_until_streamed(replica, &identity, &everything, &latest).await;
        assert!(
            caught_up,
            "{}: the replica never held the direct writer's commits; it rebuilds {got} of 18 events",
            replica.name()
        );
        let target = *second.last().expect("ids");
        let to_event = scratch.join(format!("{}-event.db", replica.name()));
        let restored = restore_stream(replica, &Target::EventId(target), &identity, &to_event)
            .await
            .expect("restore to an event");
        assert_eq!(restored.last_event_id, target, "{}", replica.name());
        let expected: Vec<String> = everything
            .iter()
            .filter(|e| {
                let id: i64 = e
                    .split('|')
                    .next()
                    .and_then(|i| i.parse().ok())
                    .expect("id");
                id <= target
            })
            .cloned()
            .collect();
        assert_eq!(expected.len(), first.len() + second.len());
        assert_eq!(events_of(&to_event), expected, "{}", replica.name());
    }
    assert!(third.iter().all(|id| *id > second[4]));
    let health = app.get_json("/api/health").await;
    for name in ["nas", "s3"] {
        let status = health["replicas"]
            .as_array()
            .and_then(|r| r.iter().find(|r| r["name"] == name))
            .expect("the replica in health")
            .clone();
        let stream = &status["stream"];
        assert_eq!(stream["snapshots_shipped"], 1, "{status}");
        assert!(
            stream["segments_shipped"].as_u64().unwrap_or(0) >= 1,
            "{status}"
        );
        assert!(stream["generation"].is_string(), "{status}");
        if name == "s3" {
            // The proxy's request log sees each of them (what the idle check lists).
            let segment_puts = world
                .server
                .proxy
                .requests()
                .iter()
                .filter(|r| r.starts_with("PUT ") && r.contains("/segments/"))
                .count() as u64;
            assert!(
                segment_puts >= stream["segments_shipped"].as_u64().unwrap_or(u64::MAX),
                "{segment_puts} segment PUTs seen: {status}"
            );
        }
    }

    // Idle: nothing committed, so nothing is sent to a replica, in 15 sync intervals.
    let puts = |text: &str| {
        common::metric(
            text,
            "dbwarden_replica_stream_requests_total{kind=\"put\",replica=\"s3\"}",
        )
    };
    let (mark, metrics_before) = (world.s3_mark(), app.get_text("/metrics").await);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let metrics = app.get_text("/metrics").await;
    world.assert_nothing_sent_to_s3_since(mark);
    assert!(puts(&metrics).is_some_and(|n| n != "0"), "{metrics}");
    assert_eq!(puts(&metrics), puts(&metrics_before));
    for name in ["nas", "s3"] {
        let lag = common::metric(
            &metrics,
            &format!("dbwarden_replica_stream_lag_seconds{{replica=\"{name}\"}}"),
        );
        assert_eq!(
            lag.as_deref(),
            Some("0"),
            "{name} holds every commit: {metrics}"
        );
    }

    // A new machine with only the settings and the identity: the CLI restores from
    // each replica alone, to the commit of an event and to the latest, and refuses an
    // event the replica never held.
    let config = new_machine(world.root.path(), &world.replicas);
    let identity = world.identity.clone();
    // `restore --from NAME <point> --identity F --output OUT`, off the test's thread,
    // which also serves the in-process S3 server.
    let restore = |name: &'static str, point: Vec<String>, out: PathBuf| {
        let (config, identity) = (config.clone(), identity.clone());
        tokio::task::spawn_blocking(move || {
            let mut args = vec!["restore".to_string(), "--from".into(), name.into()];
            args.extend(point);
            args.extend(["--identity".into(), identity.display().to_string()]);
            args.extend(["--output".into(), out.display().to_string()]);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            dbwarden(&config, &args)
        })
    };
    let target = *second.last().expect("ids");
    let up_to_target: Vec<String> = everything[..first.len() + second.len()].to_vec();
    for name in ["nas", "s3"] {
        let to_event = scratch.join(format!("{name}-cli-event.db"));
        let point = vec!["--event-id".to_string(), target.to_string()];
        let out = restore(name, point, to_event.clone()).await.expect("ran");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.contains(&format!("last event id {target}, 10 events")),
            "{stdout}"
        );
        assert_eq!(events_of(&to_event), up_to_target, "{name}");
        let latest = scratch.join(format!("{name}-cli-latest.db"));
        let out = restore(name, vec!["--latest".into()], latest.clone())
            .await
            .expect("ran");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(events_of(&latest), everything, "{name}");
        let never = scratch.join(format!("{name}-cli-never.db"));
        let point = vec!["--event-id".to_string(), "1000000".into()];
        let out = restore(name, point, never.clone()).await.expect("ran");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{name}: an event never written is restored?"
        );
        assert!(stderr.contains("event 1000000 is not there"), "{stderr}");
        assert!(!never.exists(), "nothing is left at --output");
    }
}

/// A replica that is down for a while only delays streaming: health names it once it
/// lags more than its `max_lag_secs`, appends go on being acknowledged, the file
/// replica keeps up, and once the server is back the replica catches up in order:
/// every commit there once, nothing missing, nothing twice.
#[actix_rt::test]
async fn a_replica_down_for_a_while_catches_up_with_every_commit_once() {
    use dbwarden::replica::stream::{self, Target};

    let mut world = World::new().await.streaming("");
    world.replicas = world
        .replicas
        .replace("name = \"s3\"\n", "name = \"s3\"\nmax_lag_secs = 1\n");
    let (app, live, replicas) = world.start().await;
    let (nas, s3) = (&replicas[0], &replicas[1]);
    let scratch = world.scratch();
    append_events(&app, "before", 5).await;
    let before = events_of(&live);
    for replica in [&nas, &s3] {
        let out = scratch.join(format!("{}-before.db", replica.name()));
        let (caught_up, got) = wait_until_streamed(replica, &world.identity, &before, &out).await;
        assert!(caught_up, "{}: rebuilds {got} of 5", replica.name());
    }

    world.server.stop().await;
    for i in 0..10 {
        append_events(&app, &format!("down-{i}"), 3).await;
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    let everything = events_of(&live);
    assert_eq!(
        everything.len(),
        35,
        "appends are acknowledged while S3 is down"
    );
    let out = scratch.join("nas-during.db");
    let (caught_up, got) = wait_until_streamed(nas, &world.identity, &everything, &out).await;
    assert!(caught_up, "the file replica keeps up: {got} of 35");
    let health = app
        .health_when(std::time::Duration::from_secs(30), "never degraded", |h| {
            h["status"] == "degraded"
        })
        .await;
    let reasons = health["reasons"].to_string();
    assert!(reasons.contains("replica s3: replication lags"), "{health}");
    assert!(!reasons.contains("replica nas"), "{health}");
    // The status page's lag chart has it too: S3's line rises, the NAS's does not.
    let worst = |history: &serde_json::Value, replica: &str| -> Option<f64> {
        history["replication_lag"]
            .as_array()?
            .iter()
            .find(|s| s["replica"] == replica)?["points"]
            .as_array()?
            .iter()
            .filter_map(|p| p["seconds"].as_f64())
            .reduce(f64::max)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let history = loop {
        let history = app.get_json("/api/status/history").await;
        if worst(&history, "s3").is_some_and(|s| s > 1.0) {
            break history;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "S3's lag never charted: {}",
            history["replication_lag"]
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let nas_worst = worst(&history, "nas").expect("the NAS has a lag line");
    let s3_worst = worst(&history, "s3").unwrap_or(0.0);
    assert!(
        nas_worst < s3_worst,
        "the NAS kept up: {}",
        history["replication_lag"]
    );

    world.server.restart().await;
    let out = scratch.join("s3-after.db");
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &everything, &out).await;
    assert!(caught_up, "S3 catches up: {got} of 35");
    // In order, each position once: the segments there chain without overlap.
    let generations = stream::list(s3).await.expect("list");
    let segments = &generations.last().expect("a generation").segments;
    for pair in segments.windows(2) {
        assert!(
            pair[1].first > pair[0].last,
            "segments overlap or repeat: {:?} then {:?}",
            pair[0],
            pair[1]
        );
    }
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
    let at_each = scratch.join("s3-point.db");
    let restored = stream::restore_point(
        s3,
        &Target::EventId(20),
        &identities,
        &scratch.join("staging"),
        &at_each,
    )
    .await
    .expect("a point from the time S3 was down");
    assert!(restored.last_event_id >= 20);
    app.health_when(std::time::Duration::from_secs(30), "still degraded", |h| {
        h["status"] == "healthy"
    })
    .await;
}

/// A spooled piece damaged on disk before S3 got it (S3 refused every request; the NAS
/// had it already) can never be uploaded: S3's streamer finds that piece, the generation ends
/// before it (a gap, as health says) and a new one begins from a fresh snapshot. S3
/// never stores the damaged frames, and its newest generation rebuilds every event,
/// as the NAS's does; retrying the piece would have held S3 back forever.
#[actix_rt::test]
async fn a_spooled_piece_damaged_on_disk_ends_its_generation_and_a_new_one_carries_every_commit() {
    use dbwarden::replica::segment::Position;
    use dbwarden::replica::stream;

    let world = World::new().await.streaming("");
    let (app, live, replicas) = world.start().await;
    let (nas, s3) = (&replicas[0], &replicas[1]);
    let scratch = world.scratch();
    append_events(&app, "before", 5).await;
    let before = events_of(&live);
    let out = scratch.join("s3-before.db");
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &before, &out).await;
    assert!(caught_up, "S3 rebuilds {got} of 5");
    let old_generation = stream::list(s3).await.expect("list").len();

    // Refused at once (403 is not retried by the S3 client), so no upload holds bytes
    // it read from the spool before the damage.
    world.server.set_fault(s3::Fault::Status(403));
    let held_by_s3: Vec<PathBuf> = spooled_pieces(&live);
    for i in 0..6 {
        append_events(&app, &format!("down-{i}"), 3).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let everything = events_of(&live);
    let out = scratch.join("nas-during.db");
    let (caught_up, got) = wait_until_streamed(nas, &world.identity, &everything, &out).await;
    assert!(caught_up, "the NAS has every commit: {got} of 23");
    let mut not_on_s3: Vec<PathBuf> = spooled_pieces(&live)
        .into_iter()
        .filter(|p| !held_by_s3.contains(p))
        .collect();
    not_on_s3.sort();
    assert!(not_on_s3.len() >= 2, "pieces waiting for S3: {not_on_s3:?}");
    let damaged = &not_on_s3[not_on_s3.len() / 2];
    damage_piece(damaged);
    // Any upload that read the pieces before the damage has been refused by now.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let damaged_first: Position = damaged
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('_'))
        .and_then(|(first, _)| first.parse().ok())
        .expect("a piece is named by its first position");

    world.server.set_fault(s3::Fault::None);
    let out = scratch.join("s3-after.db");
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &everything, &out).await;
    assert!(caught_up, "S3's newest generation rebuilds {got} of 23");
    let generations = stream::list(s3).await.expect("list");
    assert!(
        generations.len() > old_generation,
        "a new generation began on S3: {:?}; the damaged piece {damaged:?}",
        generations
            .iter()
            .map(|g| g.segments.iter().map(|s| (s.first, s.last)).collect())
            .collect::<Vec<Vec<_>>>()
    );
    let ended = &generations[old_generation - 1];
    assert!(
        ended.segments.iter().all(|s| s.last < damaged_first),
        "S3 holds nothing from the damaged piece on: {:?}, the piece begins at {damaged_first}",
        ended.segments
    );
    let health = app.get_json("/api/health").await;
    let gap = health["replication"]["last_gap"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        gap.contains("does not read") && health["replication"]["gaps"] == 1,
        "{health}"
    );
    let out = scratch.join("nas-after.db");
    let (caught_up, got) = wait_until_streamed(nas, &world.identity, &everything, &out).await;
    assert!(
        caught_up,
        "the NAS's newest generation rebuilds {got} of 23"
    );
}

/// A piece both replicas hold, damaged on disk before either compacted it (the first
/// compaction comes 10 s after the start): compaction cannot merge it, and instead of
/// failing at every interval (the spool would keep every piece since, for ever) the
/// generation ends there and a new one begins; each replica still restores every event,
/// from the old generation and from the new one.
#[actix_rt::test]
async fn a_piece_compaction_cannot_read_ends_its_generation_instead_of_failing_for_ever() {
    let world = World::new().await.streaming("compact_interval_secs = 10\n");
    let (app, live, replicas) = world.start().await;
    let scratch = world.scratch();
    for i in 0..4 {
        append_events(&app, &format!("r{i}"), 3).await;
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    }
    let everything = events_of(&live);
    for replica in &replicas {
        let out = scratch.join(format!("{}-before.db", replica.name()));
        let (caught_up, got) =
            wait_until_streamed(replica, &world.identity, &everything, &out).await;
        assert!(caught_up, "{}: rebuilds {got} of 12", replica.name());
    }
    let mut pieces = spooled_pieces(&live);
    pieces.sort();
    let damaged = pieces.last().expect("a spooled piece").clone();
    damage_piece(&damaged);

    let health = app
        .health_when(
            std::time::Duration::from_secs(60),
            "the generation never ended",
            |h| h["replication"]["gaps"] == 1,
        )
        .await;
    let gap = health["replication"]["last_gap"]["reason"].to_string();
    assert!(gap.contains("does not read"), "{health}");
    assert!(!damaged.exists(), "the damaged piece left the spool");
    for replica in &replicas {
        // The old generation holds every event too: first wait for the new one's
        // snapshot, so the restore below is of the new generation.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let generations = loop {
            let generations = dbwarden::replica::stream::list(replica)
                .await
                .expect("list");
            if generations.iter().filter(|g| g.snapshot.is_some()).count() == 2 {
                break generations;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}: no new generation: {generations:?}",
                replica.name()
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        let out = scratch.join(format!("{}-after.db", replica.name()));
        let (caught_up, got) =
            wait_until_streamed(replica, &world.identity, &everything, &out).await;
        assert!(
            caught_up,
            "{}: the new generation rebuilds {got} of 12",
            replica.name()
        );
        let out = scratch.join(format!("{}-old.db", replica.name()));
        let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
        dbwarden::replica::stream::restore(
            replica,
            &generations[0],
            &dbwarden::replica::stream::Target::Latest,
            &identities,
            &out.with_extension("staging"),
            &out,
        )
        .await
        .expect("the old generation restores");
        assert_eq!(events_of(&out), everything, "{}", replica.name());
    }
}

/// Flips eight bytes of a spooled piece's compressed frames (past its two lines) and
/// checks that it no longer reads, so the fault surely is one.
fn damage_piece(piece: &Path) {
    use dbwarden::replica::segment::SegmentReader;
    let mut bytes = std::fs::read(piece).expect("read piece");
    let body = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(1)
        .map(|(i, _)| i + 1)
        .expect("a piece's two lines");
    let len = bytes.len();
    for k in 1..=8 {
        bytes[body + (len - body) * k / 10] ^= 0x5a;
    }
    std::fs::write(piece, &bytes).expect("damage piece");
    let file = std::fs::File::open(piece).expect("open piece");
    let reads = SegmentReader::new(std::io::BufReader::new(file), "damaged")
        .and_then(SegmentReader::read_through);
    assert!(reads.is_err(), "the damaged piece still reads");
}

/// With `ack_writes = true` on S3 a write is answered only once its commit is there.
/// Under 16 concurrent writers behind a slow uplink, the moment the last answer came the
/// service is cut off from S3 and the local disk is "lost": a restore of S3 alone holds
/// every event that was acknowledged. Cut off, writes are answered 503 with
/// `Retry-After` and health says why; once S3 is back, writes are acknowledged again.
#[actix_rt::test]
async fn with_ack_writes_every_acknowledged_event_is_on_the_replica_before_its_answer() {
    use dbwarden::replica::stream::Target;

    let mut world = World::new().await;
    world.replicas = world.replicas.replace(
        "name = \"s3\"\n",
        "name = \"s3\"\nack_writes = true\nack_timeout_ms = 3000\nsync_interval_ms = 5000\n",
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let settings = common::settings_with_file(dir.path(), &world.replicas, &[]);
    // S3 as seen past the proxy: what is there whatever the service can reach.
    let mut direct = settings.replicas[1].clone();
    direct.endpoint = Some(world.server.direct_endpoint());
    let s3 = Replica::open(&direct).expect("open s3");
    let app = std::rc::Rc::new(
        common::TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await,
    );
    // A slow uplink: each upload takes a while, so commits wait for it.
    world.server.set_fault(s3::Fault::Throttle(64 << 10));
    let mut writers = Vec::new();
    for w in 0..16 {
        let app = app.clone();
        writers.push(actix_rt::spawn(async move {
            let mut acked = Vec::new();
            for i in 0..8 {
                let event = serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("w{w}-{i}"), "event_type": "CorruptionDetected", "event_data": {"w": w, "i": i}});
                let res = app.post_json("/api/events", &event).await;
                assert_eq!(res.status(), 201, "acknowledged while S3 takes commits");
                let body: serde_json::Value = res.json().await.expect("ids");
                acked.push(body["ids"][0].as_i64().expect("an id"));
            }
            acked
        }));
    }
    let mut acked = Vec::new();
    for writer in writers {
        acked.extend(writer.await.expect("a writer"));
    }
    // The machine is lost the moment the last answer came: nothing more reaches S3.
    world.server.set_fault(s3::Fault::Refuse);
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
    let scratch = world.root.path().join("restored");
    let restored = dbwarden::replica::stream::restore_point(
        &s3,
        &Target::Latest,
        &identities,
        &scratch.join("staging"),
        &scratch.join("from-s3.db"),
    )
    .await
    .expect("restore S3 alone");
    let there: std::collections::BTreeSet<i64> = events_of(&restored.path)
        .iter()
        .map(|e| {
            e.split('|')
                .next()
                .and_then(|i| i.parse().ok())
                .expect("id")
        })
        .collect();
    let missing: Vec<&i64> = acked.iter().filter(|id| !there.contains(id)).collect();
    assert_eq!(acked.len(), 128);
    assert!(
        missing.is_empty(),
        "acknowledged, yet not on S3: {missing:?}"
    );

    // Cut off: a write is not acknowledged, and says so.
    let event = serde_json::json!({"aggregate_type": "corruption", "aggregate_id": "cut-off", "event_type": "CorruptionDetected", "event_data": {}});
    let res = app.post_json("/api/events", &event).await;
    assert_eq!(res.status(), 503);
    assert!(
        res.headers().get("retry-after").is_some(),
        "{:?}",
        res.headers()
    );
    let body: serde_json::Value = res.json().await.expect("error body");
    assert_eq!(body["error"]["code"], "not_replicated", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("replica s3"),
        "{body}"
    );
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "degraded", "{health}");
    assert!(
        health["reasons"]
            .to_string()
            .contains("replica s3: writes are answered 503"),
        "{health}"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        common::metric(&metrics, "dbwarden_replication_ack_refused_total")
            .is_some_and(|n| n != "0"),
        "{metrics}"
    );

    // Back: writes are acknowledged again once the replica takes commits.
    world.server.set_fault(s3::Fault::None);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let res = app.post_json("/api/events", &event).await;
        if res.status() == 201 {
            break;
        }
        assert_eq!(res.status(), 503);
        assert!(
            std::time::Instant::now() < deadline,
            "writes never acknowledged again"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// The spool's segment files (`*.seg`) under the backup directory of the service whose
/// live database is `live`.
fn spooled_pieces(live: &Path) -> Vec<PathBuf> {
    let spool = live
        .parent()
        .and_then(Path::parent)
        .expect("the test's directory")
        .join("backups")
        .join("stream-spool");
    let mut pieces = Vec::new();
    for generation in std::fs::read_dir(&spool).into_iter().flatten().flatten() {
        for file in std::fs::read_dir(generation.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            if file.path().extension().is_some_and(|e| e == "seg") {
                pieces.push(file.path());
            }
        }
    }
    pieces
}

/// Compaction (every 3 s here) merges the segments shipped since the last one into one
/// object and deletes them, from the spool's local pieces: on each replica the chain
/// ends up with far fewer segments than were uploaded, with no overlap, and every
/// commit stays restorable exactly (by event id, and the latest). A restore that listed
/// the segments before a compaction deleted some of them lists again and still
/// restores exactly. Once compacted by every replica, pieces leave the spool.
#[actix_rt::test]
async fn compaction_merges_what_was_shipped_and_every_commit_stays_restorable_even_mid_restore() {
    use dbwarden::replica::stream::{self, Target};

    let world = World::new().await.streaming("compact_interval_secs = 3\n");
    let (app, live, replicas) = world.start().await;
    let scratch = world.scratch();
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
    let mut commits: Vec<i64> = Vec::new();
    let write = |round: usize| {
        let app = &app;
        async move {
            let mut ends = Vec::new();
            for i in 0..8 {
                let ids = append_events(app, &format!("r{round}-{i}"), 2).await;
                ends.push(*ids.last().expect("an id"));
                // Longer than the sync interval: each commit its own segment.
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            ends
        }
    };
    commits.extend(write(0).await);
    let everything = events_of(&live);
    for replica in &replicas {
        let out = scratch.join(format!("{}-first.db", replica.name()));
        let (caught_up, got) =
            wait_until_streamed(replica, &world.identity, &everything, &out).await;
        assert!(caught_up, "{}: rebuilds {got} of 16", replica.name());
    }

    // A listing taken now, then kept while compaction replaces what it names.
    commits.extend(write(1).await);
    let everything = events_of(&live);
    let s3 = &replicas[1];
    let out = scratch.join("s3-second.db");
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &everything, &out).await;
    assert!(caught_up, "s3: rebuilds {got} of 32");
    let stale = stream::list(s3)
        .await
        .expect("list")
        .pop()
        .expect("a generation");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let now = stream::list_segments(s3, &stale.name).await.expect("list");
        if stale.segments.iter().any(|s| !now.contains(s)) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "compaction never replaced a listed segment: {} listed, {} there",
            stale.segments.len(),
            now.len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for (target, expected) in [
        (Target::Latest, everything.clone()),
        (
            Target::EventId(commits[10]),
            everything[..commits[10] as usize].to_vec(),
        ),
    ] {
        let out = scratch.join("stale-listing.db");
        let _ = std::fs::remove_file(&out);
        let restored = stream::restore(
            s3,
            &stale,
            &target,
            &identities,
            &scratch.join("staging"),
            &out,
        )
        .await
        .expect("a restore from a listing compaction made stale");
        assert_eq!(events_of(&out), expected, "{target:?}: {restored:?}");
    }

    // Everything compacted: few segments, chained, each commit restorable.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !spooled_pieces(&live).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "pieces stay in the spool: {:?}",
            spooled_pieces(&live)
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let metrics = app.get_text("/metrics").await;
    for replica in &replicas {
        let name = replica.name();
        let figure = |family: &str| -> u64 {
            common::metric(&metrics, &format!("{family}{{replica=\"{name}\"}}"))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        let uploaded = figure("dbwarden_replica_stream_segments_total");
        let merged = figure("dbwarden_replica_stream_compactions_total");
        let replaced = figure("dbwarden_replica_stream_segments_compacted_total");
        assert!(uploaded >= 12, "{name}: {uploaded} segments uploaded");
        assert!(
            merged >= 1 && replaced >= 2,
            "{name}: {merged} merged, {replaced} replaced"
        );
        let generation = stream::list(replica)
            .await
            .expect("list")
            .pop()
            .expect("a generation");
        let segments = &generation.segments;
        assert!(
            (segments.len() as u64) < uploaded / 2,
            "{name}: {} segments left of {uploaded} uploaded",
            segments.len()
        );
        for pair in segments.windows(2) {
            assert!(
                pair[1].first > pair[0].last,
                "{name}: segments overlap: {:?} then {:?}",
                pair[0],
                pair[1]
            );
        }
        for &id in &commits {
            let out = scratch.join(format!("{name}-{id}.db"));
            let restored = stream::restore_point(
                replica,
                &Target::EventId(id),
                &identities,
                &scratch.join("staging"),
                &out,
            )
            .await
            .expect("every commit is restorable after compaction");
            assert_eq!(restored.last_event_id, id, "{name}");
            assert_eq!(
                events_of(&out),
                everything[..id as usize].to_vec(),
                "{name}: event {id}"
            );
        }
    }
}

/// A generation as old as the shortest `stream_retention_secs` is followed by a new one
/// (a fresh snapshot) at the next commit, and the replica still rebuilds every commit.
#[actix_rt::test]
async fn a_generation_as_old_as_the_retention_window_is_followed_by_a_fresh_one() {
    let world = World::new().await.streaming("stream_retention_secs = 10\n");
    let (app, live, replicas) = world.start().await;
    let nas = &replicas[0];
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut round = 0;
    loop {
        append_events(&app, &format!("r{round}"), 2).await;
        round += 1;
        let generations = dbwarden::replica::stream::list(nas).await.expect("list");
        if generations.iter().filter(|g| g.snapshot.is_some()).count() >= 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no second generation: {generations:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    let everything = events_of(&live);
    let out = world.root.path().join("nas-latest.db");
    let (caught_up, got) = wait_until_streamed(nas, &world.identity, &everything, &out).await;
    assert!(
        caught_up,
        "the newest generation rebuilds {got} of {}",
        everything.len()
    );
    let health = app.get_json("/api/health").await;
    assert!(
        health["replication"]["generations"].as_u64().unwrap_or(0) >= 2,
        "{health}"
    );
}

/// Waits for `n` more scheduled checkpoint runs (their start times, in order).
async fn checkpoint_runs(app: &common::TestApp, n: usize) -> Vec<serde_json::Value> {
    let mut seen: Vec<serde_json::Value> = Vec::new();
    let mut last = app.job("checkpoint").await["last_run"]["started_at"].clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while seen.len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the checkpoint job stopped running: {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let run = app.job("checkpoint").await["last_run"].clone();
        if run["started_at"] != last {
            last = run["started_at"].clone();
            seen.push(run);
        }
    }
    seen
}

/// Rows in the job history, as a direct reader of the live database counts them.
fn history_rows(app: &common::TestApp) -> i64 {
    app.open()
        .query_row("SELECT count(*) FROM dbwarden_job_runs", [], |r| r.get(0))
        .expect("count")
}

/// A checkpoint every second on an idle database: once what changed is checkpointed,
/// its runs are not written to the history (a row would be a change, and a streaming
/// replica would upload it every run), so nothing is sent to S3; a direct writer's
/// commit makes the next run count as a change again.
#[actix_rt::test]
async fn an_idle_database_stays_unchanged_and_nothing_is_sent_while_checkpoints_run() {
    let world = World::new().await.streaming("");
    let (app, live, replicas) = world
        .start_with(&[("DBWARDEN__CHECKPOINT__SCHEDULE", "* * * * * *")])
        .await;
    append_events(&app, "idle", 3).await;
    // The run that checkpoints the appends is recorded; its record is only history, so
    // the run after it has nothing new.
    let runs = checkpoint_runs(&app, 3).await;
    let quiet = |run: &serde_json::Value| {
        run["outcome"] == "ok"
            && run["message"]
                .as_str()
                .is_some_and(|m| m.contains("nothing changed"))
    };
    assert!(quiet(&runs[2]), "{runs:?}");
    let everything = events_of(&live);
    let out = world.root.path().join("s3-latest.db");
    let (caught_up, got) =
        wait_until_streamed(&replicas[1], &world.identity, &everything, &out).await;
    assert!(caught_up, "{got} of {}", everything.len());

    let (mark, rows_before) = (world.s3_mark(), history_rows(&app));
    let runs = checkpoint_runs(&app, 4).await;
    assert!(runs.iter().all(quiet), "{runs:?}");
    assert_eq!(history_rows(&app), rows_before, "a quiet run was recorded");
    world.assert_nothing_sent_to_s3_since(mark);
    let metrics = app.get_text("/metrics").await;
    let counted = common::metric(
        &metrics,
        "dbwarden_job_runs_total{job=\"checkpoint\",outcome=\"ok\"}",
    )
    .and_then(|n| n.parse::<u64>().ok())
    .unwrap_or(0);
    assert!(counted >= 7, "every run is counted: {metrics}");

    // A direct writer's commit is a change: the next run is recorded, then quiet again.
    rusqlite::Connection::open(&live)
        .expect("open")
        .execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', 'direct', 'CorruptionDetected', '{}')",
            [],
        )
        .expect("a direct insert");
    let runs = checkpoint_runs(&app, 3).await;
    assert!(!quiet(&runs[0]), "{runs:?}");
    assert!(quiet(&runs[2]), "{runs:?}");
    assert_eq!(history_rows(&app), rows_before + 1, "{runs:?}");
}

/// A drill of a streaming replica also restores its stream: to the newest generation's
/// last commit and to a random time, each checked; a segment with one byte flipped on
/// the replica fails the drill, naming the stream.
#[actix_rt::test]
async fn a_drill_restores_the_stream_and_a_flipped_byte_in_a_segment_fails_it() {
    let world = World::new().await.with_identity_file().streaming("");
    let (app, live, replicas) = world.start().await;
    let s3 = &replicas[1];
    for round in 0..3 {
        append_events(&app, &format!("d{round}"), 4).await;
    }
    let everything = events_of(&live);
    let out = world.root.path().join("s3-latest.db");
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &everything, &out).await;
    assert!(caught_up, "{got} of {}", everything.len());

    let run = app.run_job("drill-s3").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let message = run["message"].to_string();
    assert!(
        message.contains(" latest: ok (restored and checked to commit at"),
        "{run}"
    );
    assert!(message.contains("stream at "), "{run}");
    assert!(message.contains("12 events up to id 12"), "{run}");
    // The point is compared with the latest state, event by event.
    assert!(
        message.contains("events the latest state keeps up to id")
            && message.contains("are all in it, unchanged"),
        "{run}"
    );

    // The newest event deleted: the commits after it record the highest id ever
    // assigned (12), the restored points hold up to id 11; the drill still passes.
    let res = app
        .client
        .delete(app.url("/api/corruptions/d2-3"))
        .send()
        .await
        .expect("delete");
    assert!(res.status().is_success(), "{}", res.status());
    let fewer = events_of(&live);
    assert_eq!(fewer.len(), 11);
    let (caught_up, got) = wait_until_streamed(s3, &world.identity, &fewer, &out).await;
    assert!(caught_up, "{got} of {}", fewer.len());
    let run = app.run_job("drill-s3").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    assert!(
        run["message"].to_string().contains("11 events up to id 11"),
        "{run}"
    );

    let segments: Vec<String> = world
        .server
        .list("hosts/one/generations/")
        .await
        .into_iter()
        .map(|m| m.location.to_string())
        .filter(|l| l.contains("/segments/"))
        .collect();
    let first = segments.first().expect("a segment on S3");
    world.server.flip_byte(first, 300).await;
    let run = app.run_job("drill-s3").await;
    assert_ne!(run["outcome"], "ok", "{run}");
    assert!(
        run["message"].to_string().contains("latest: FAILED"),
        "{run}"
    );
}

/// Every row of `table` as text, in its primary key's order (`key`).
fn rows_of(path: &Path, table: &str, key: &str) -> Vec<String> {
    let conn = db::open_file_read_only(path).expect("open");
    let mut stmt = conn
        .prepare(&format!("SELECT * FROM {table} ORDER BY {key}"))
        .expect("prepare");
    let columns = stmt.column_count();
    let rows = stmt
        .query_map([], |r| {
            (0..columns)
                .map(|i| {
                    r.get::<_, rusqlite::types::Value>(i)
                        .map(|v| format!("{v:?}"))
                })
                .collect::<Result<Vec<_>, _>>()
                .map(|v| v.join("|"))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// One step of the random workload.
#[derive(Debug, Clone)]
enum Step {
    /// One POST of `n` events for corruption `c`, of type `t`.
    Append { c: u8, t: u8, n: u8 },
    /// A direct writer's inserts on its own connection, one commit each.
    Direct { c: u8, n: u8 },
    /// `DELETE /api/corruptions/{c}`.
    Delete { c: u8 },
    /// The checkpoint job (the Checkpointer's schedule).
    Checkpoint,
    /// The `sql` job [`SQL_JOB`]: an UPDATE of the newest event and an INSERT.
    Sql,
    /// A prune of the `n` oldest events: by the `sql` job [`PRUNE_JOB`] through the
    /// DbWriter (`n` = 3), or as Healarr prunes, on the direct writer's connection with
    /// a `created_at` cutoff.
    Prune { direct: bool },
}

/// A `sql` job that changes an event and appends one, in one transaction.
const SQL_JOB: &str = r#"
name = "touch-newest"
kind = "sql"
schedule = "0 0 4 * * *"
enabled = false
statements = [
  "UPDATE events SET event_data = json_set(event_data, '$.touched', 1) WHERE id = (SELECT max(id) FROM events)",
  "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) SELECT 'corruption', aggregate_id, 'RemediationQueued', json_object('by', 'sql') FROM events WHERE id = (SELECT max(id) FROM events)",
]
"#;

/// A retention prune as the shipped example is (a DELETE, then an incremental vacuum
/// and ANALYZE), of the three oldest events.
const PRUNE_JOB: &str = r#"
name = "prune-oldest"
kind = "sql"
schedule = "0 0 4 * * *"
enabled = false
statements = [
  "DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 3)",
  "PRAGMA incremental_vacuum",
  "ANALYZE",
]
"#;

fn step() -> impl proptest::strategy::Strategy<Value = Step> {
    use proptest::prelude::*;
    prop_oneof![
        4 => (0..4u8, 0..4u8, 1..5u8).prop_map(|(c, t, n)| Step::Append { c, t, n }),
        2 => (0..4u8, 1..4u8).prop_map(|(c, n)| Step::Direct { c, n }),
        1 => (0..4u8).prop_map(|c| Step::Delete { c }),
        1 => Just(Step::Checkpoint),
        1 => Just(Step::Sql),
        1 => any::<bool>().prop_map(|direct| Step::Prune { direct }),
    ]
}

const TYPES: [&str; 4] = [
    "CorruptionDetected",
    "RemediationQueued",
    "VerificationSuccess",
    "DownloadFailed",
];

/// The state a restore must reproduce: the events and the corruption summary.
type State = (Vec<String>, Vec<String>);

fn state_of(path: &Path) -> State {
    (
        events_of(path),
        rows_of(path, "corruption_summary", "corruption_id"),
    )
}

async fn run_workload(steps: Vec<Step>) {
    use dbwarden::replica::stream::{self, Target};
    // A long interval, so that a segment holds several steps and the points restored
    // fall inside segments, not only at their ends; the tailer reads every 150 ms.
    let mut world = World::new().await;
    world.replicas = world.replicas.replace(
        "age_recipients = [",
        "sync_interval_ms = 1500\nage_recipients = [",
    );
    let (app, live, replicas) = world
        .start_with_jobs(
            &[],
            &[
                ("touch-newest.toml", SQL_JOB),
                ("prune-oldest.toml", PRUNE_JOB),
            ],
        )
        .await;
    let direct = rusqlite::Connection::open(&live).expect("direct writer");
    direct
        .busy_timeout(std::time::Duration::from_secs(5))
        .expect("timeout");
    let pause = || tokio::time::sleep(std::time::Duration::from_millis(400));
    pause().await;
    // After each step, once the tailer has read it: when, the state, and (for steps
    // that end with a commit of events) the newest event id.
    let mut points: Vec<(chrono::DateTime<chrono::Utc>, State, Option<i64>)> = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let newest = match step {
            Step::Append { c, t, n } => {
                let events: Vec<serde_json::Value> = (0..*n)
                    .map(|k| serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("c{c}"), "event_type": TYPES[*t as usize], "event_data": {"file_path": format!("/media/{c}.mkv"), "step": i, "k": k}}))
                    .collect();
                let res = app
                    .post_json("/api/events", &serde_json::json!(events))
                    .await;
                assert_eq!(res.status(), 201, "{step:?}");
                let body: serde_json::Value = res.json().await.expect("ids");
                body["ids"]
                    .as_array()
                    .and_then(|a| a.last())
                    .and_then(|v| v.as_i64())
            }
            Step::Direct { c, n } => {
                let mut last = None;
                for k in 0..*n {
                    direct
                        .execute(
                            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', json_object('file_path', ?2, 'step', ?3, 'k', ?4))",
                            rusqlite::params![format!("c{c}"), format!("/media/{c}.mkv"), i as i64, k],
                        )
                        .expect("direct insert");
                    last = Some(direct.last_insert_rowid());
                }
                last
            }
            Step::Delete { c } => {
                let res = app
                    .client
                    .delete(app.url(&format!("/api/corruptions/c{c}")))
                    .send()
                    .await
                    .expect("delete");
                assert!(
                    res.status().is_success() || res.status() == 404,
                    "{step:?}: {}",
                    res.status()
                );
                None
            }
            Step::Checkpoint => {
                assert_eq!(app.run_job("checkpoint").await["outcome"], "ok");
                None
            }
            Step::Sql => {
                let run = app.run_job("touch-newest").await;
                assert_eq!(run["outcome"], "ok", "{run}");
                // Its INSERT made the newest event (none when there was no event).
                Some(
                    direct
                        .query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))
                        .expect("newest id"),
                )
                .filter(|id: &i64| *id > 0)
            }
            Step::Prune { direct: false } => {
                let run = app.run_job("prune-oldest").await;
                assert_eq!(run["outcome"], "ok", "{run}");
                None
            }
            Step::Prune { direct: true } => {
                // Healarr's prune: everything created before a cutoff, here the
                // creation time of the third oldest event.
                direct
                    .execute(
                        "DELETE FROM events WHERE created_at < (SELECT created_at FROM events ORDER BY id LIMIT 1 OFFSET 2)",
                        [],
                    )
                    .expect("direct prune");
                None
            }
        };
        pause().await;
        points.push((chrono::Utc::now(), state_of(&live), newest));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (nas, s3) = (&replicas[0], &replicas[1]);
    let scratch = world.root.path().join("points");
    std::fs::create_dir_all(&scratch).expect("scratch");
    let final_events = events_of(&live);
    for replica in [nas, s3] {
        let out = scratch.join(format!("{}-latest.db", replica.name()));
        let (caught_up, got) =
            wait_until_streamed(replica, &world.identity, &final_events, &out).await;
        assert!(
            caught_up,
            "{}: {got} of {} events",
            replica.name(),
            final_events.len()
        );
        assert_eq!(
            state_of(&out),
            state_of(&live),
            "{}: the latest",
            replica.name()
        );
    }
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
    for (i, (at, expected, newest)) in points.iter().enumerate() {
        let mut targets = vec![(Target::At(*at), format!("at-{i}"))];
        targets.extend(newest.map(|id| (Target::EventId(id), format!("event-{i}"))));
        for (target, name) in targets {
            let out = scratch.join(format!("{name}.db"));
            let restored =
                stream::restore_point(nas, &target, &identities, &scratch.join("staging"), &out)
                    .await
                    .unwrap_or_else(|e| panic!("step {i} ({:?}) {target:?}: {e}", steps[i]));
            assert_eq!(
                &state_of(&out),
                expected,
                "step {i} ({:?}) {target:?}: {restored:?}",
                steps[i]
            );
        }
    }
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig {
        cases: 3,
        max_shrink_iters: 8,
        ..proptest::prelude::ProptestConfig::default()
    })]
    /// A random workload (appends through the API, a direct writer's inserts,
    /// deletions, checkpoints, a `sql` job, prunes by a `sql` job and by the direct
    /// writer) against the running service: the stream restores to the
    /// state after every step, by time and, for a step that ended with a commit of
    /// events, by that commit's event id; each replica's latest is the live database.
    #[test]
    fn a_random_workload_restores_to_the_state_after_every_step(
        steps in proptest::collection::vec(step(), 4..10)
    ) {
        actix_rt::System::new().block_on(run_workload(steps));
    }
}

/// Every kind of step at least once, whatever the random cases drew.
#[actix_rt::test]
async fn each_kind_of_step_restores_to_the_state_after_it() {
    run_workload(vec![
        Step::Append { c: 0, t: 0, n: 3 },
        Step::Sql,
        Step::Direct { c: 1, n: 2 },
        Step::Prune { direct: false },
        Step::Checkpoint,
        Step::Append { c: 1, t: 2, n: 2 },
        Step::Prune { direct: true },
        Step::Delete { c: 0 },
        Step::Sql,
    ])
    .await;
}

/// SIGKILL of the real binary while it streams under 8 concurrent appenders, with
/// `ack_writes = true` on S3, four times, restarting on the same directory each time
/// (each start begins a generation; what a run spooled and did not upload goes up
/// after it). Then the machine is lost: from S3 alone (the settings and the identity),
/// the latest restore holds every acknowledged event, and each run's generation
/// restores up to that run's last acknowledged event, holding every event acknowledged
/// up to it: no acknowledged commit is missing from any generation's chain.
#[actix_rt::test]
async fn kills_while_streaming_lose_no_acknowledged_event_on_the_replica() {
    use dbwarden::replica::stream::{self, Target};
    let world = World::new().await.streaming("");
    let config = world
        .replicas
        .replace("name = \"s3\"\n", "name = \"s3\"\nack_writes = true\n");
    let dir = world.root.path().join("service");
    std::fs::create_dir_all(dir.join("data")).expect("dir");
    std::fs::write(dir.join("config.toml"), &config).expect("config");
    let env = [
        ("DBWARDEN__BACKUP__DIR", "backups"),
        ("DBWARDEN__JOBS__DIR", "jobs"),
    ];
    let mut acked = std::collections::HashMap::new();
    let mut last_of_round = Vec::new();
    for round in 0..4u64 {
        let mut running = common::process::start_with(&dir, &env);
        let load = tokio::spawn(common::process::load(
            running.base.clone(),
            8,
            std::time::Duration::from_secs(60),
        ));
        tokio::time::sleep(std::time::Duration::from_millis(1_500 + 400 * round)).await;
        running.child.kill().expect("SIGKILL");
        running.child.wait().expect("reaped");
        let seen = load.await.expect("load");
        if let Some(max) = seen.acked.keys().max() {
            last_of_round.push(*max);
        }
        acked.extend(seen.acked);
    }
    assert!(
        last_of_round.len() == 4 && acked.len() > 40,
        "every run acknowledged appends: {} in all, last ids {last_of_round:?}",
        acked.len()
    );
    let settings = common::settings_with_file(&dir, &config, &[]);
    let s3 = Replica::open(&settings.replicas[1]).expect("open s3");
    let identities = dbwarden::config::read_identities(&world.identity).expect("identity");
    let elsewhere = world.root.path().join("new-machine");
    std::fs::create_dir_all(&elsewhere).expect("dir");
    let latest = elsewhere.join("latest.db");
    stream::restore_point(
        &s3,
        &Target::Latest,
        &identities,
        &elsewhere.join("staging"),
        &latest,
    )
    .await
    .expect("the latest restore from S3 alone");
    common::process::assert_all_present(&latest, &acked);
    for last in last_of_round {
        let out = elsewhere.join(format!("to-{last}.db"));
        let restored = stream::restore_point(
            &s3,
            &Target::EventId(last),
            &identities,
            &elsewhere.join("staging"),
            &out,
        )
        .await
        .unwrap_or_else(|e| panic!("to event {last}: {e}"));
        assert!(restored.last_event_id >= last, "{restored:?}");
        let upto: std::collections::HashMap<i64, common::process::Acked> = acked
            .iter()
            .filter(|(id, _)| **id <= last)
            .map(|(id, e)| (*id, e.clone()))
            .collect();
        common::process::assert_all_present(&out, &upto);
    }
}

/// The salt in a WAL's header: a restarted WAL has a new one.
fn wal_salt(database: &Path) -> Option<[u32; 2]> {
    let wal = dbwarden::db::walfile::WalFile::open(database).expect("open the WAL")?;
    Some(wal.header().expect("the WAL's header")?.salt)
}

/// The service streaming to both replicas, three events appended through it, and a
/// [direct writer](direct_writer) begun beside it.
async fn streaming_beside_a_direct_writer(
    pause: std::time::Duration,
) -> (
    World,
    common::TestApp,
    PathBuf,
    Vec<Replica>,
    std::sync::Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    let world = World::new().await.streaming("");
    let (app, live, replicas) = world.start().await;
    append_events(&app, "before", 3).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = direct_writer(&live, &stop, pause);
    (world, app, live, replicas, stop, writer)
}

/// Each replica rebuilds exactly the live database's events, and replication found no
/// gap and began no second generation.
async fn each_replica_rebuilds_everything_in_one_generation(
    world: &World,
    app: &common::TestApp,
    live: &Path,
    replicas: &[Replica],
) {
    let everything = events_of(live);
    let scratch = world.scratch();
    for replica in replicas {
        let out = scratch.join(format!("{}.db", replica.name()));
        let (caught_up, got) =
            wait_until_streamed(replica, &world.identity, &everything, &out).await;
        assert!(
            caught_up,
            "{}: rebuilds {got} of {} events",
            replica.name(),
            everything.len()
        );
    }
    let health = app.get_json("/api/health").await;
    assert_eq!(health["replication"]["gaps"], 0, "{health}");
    assert_eq!(health["replication"]["generations"], 1, "{health}");
}

/// A direct writer on its own connection (Healarr's settings: `synchronous=FULL`,
/// SQLite's automatic checkpoint on) committing one event per transaction, `pause`
/// after each (none: a tight loop), until `stop`: answers how many it committed.
fn direct_writer(
    live: &Path,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    pause: std::time::Duration,
) -> std::thread::JoinHandle<u64> {
    let (live, stop) = (live.to_path_buf(), stop.clone());
    std::thread::spawn(move || {
        let direct = rusqlite::Connection::open(&live).expect("direct writer");
        direct
            .execute_batch("PRAGMA busy_timeout=5000; PRAGMA synchronous=FULL;")
            .expect("direct writer settings");
        let mut n = 0u64;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            direct
                .execute(
                    "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, 'CorruptionDetected', '{}')",
                    [format!("direct-{n}")],
                )
                .expect("a direct insert");
            n += 1;
            std::thread::sleep(pause);
        }
        n
    })
}

/// Between checkpoints too, the WAL restarts under a direct writer that never stops:
/// once it is past SQLite's usual 1,000 frames, the tailer asks the WAL restarter for a
/// checkpoint that holds writers off until the WAL is all shipped and copied back, so
/// the WAL is overwritten in place instead of growing (a growing WAL halves such a
/// writer's commits). No checkpoint job runs here (the schedule is every 5 minutes):
/// three restarts must come from those asks. Nothing is lost to them.
#[actix_rt::test]
async fn the_wal_restarts_between_checkpoints_under_a_direct_writer_that_never_stops() {
    use std::sync::atomic::Ordering;

    // A millisecond between commits is still never a moment with every frame copied
    // back (the pin is a pass behind), and lets a debug build's tailer keep up with
    // the writer while other tests share the two cores: one that falls behind cannot
    // have the WAL restarted (the held step waits at most a second for its pass).
    let (world, app, live, replicas, stop, writer) =
        streaming_beside_a_direct_writer(std::time::Duration::from_millis(1)).await;
    let mut salt = None;
    let mut restarts = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while restarts < 3 && std::time::Instant::now() < deadline {
        let now = wal_salt(&live);
        if salt.is_some() && now != salt {
            restarts += 1;
        }
        salt = now;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let direct_commits = writer.join().expect("the direct writer");
    assert!(
        restarts >= 3,
        "the WAL restarted {restarts} times in 60 s under {direct_commits} direct commits"
    );
    each_replica_rebuilds_everything_in_one_generation(&world, &app, &live, &replicas).await;
}

/// A direct writer that never pauses (Healarr on its own connection, SQLite's
/// automatic checkpoint on) still lets the WAL restart at dbwarden's checkpoints while
/// it streams: the checkpoint holds writers off while the tailer reads to the WAL's
/// end, copies all of it back, and moves the pin past it. Without that the pin stays a
/// pass behind such a writer and the WAL grows for as long as it writes. Nothing is
/// lost to the restarts: no gap, and each replica rebuilds every commit.
#[actix_rt::test]
async fn a_direct_writer_that_never_pauses_still_lets_the_wal_restart_and_loses_nothing() {
    use std::sync::atomic::Ordering;

    let (world, app, live, replicas, stop, writer) =
        streaming_beside_a_direct_writer(std::time::Duration::ZERO).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let first_salt = wal_salt(&live).expect("a WAL");
    let mut restarted = false;
    for _ in 0..20 {
        let checkpoint = app.run_job("checkpoint").await;
        assert_eq!(checkpoint["outcome"], "ok", "{checkpoint}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        if wal_salt(&live) != Some(first_salt) {
            restarted = true;
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let direct_commits = writer.join().expect("the direct writer");
    assert!(
        restarted,
        "20 checkpoints and the WAL never restarted under {direct_commits} direct commits"
    );
    assert!(direct_commits > 0);
    each_replica_rebuilds_everything_in_one_generation(&world, &app, &live, &replicas).await;
}

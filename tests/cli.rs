//! The command line: `config check`, `migrate`, `check --summary`, and configuration
//! errors that name the key and where it came from.

use std::path::Path;
use std::process::{Command, Output};

fn dbwarden(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dbwarden"));
    cmd.current_dir(dir).args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run dbwarden")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn config_check_prints_effective_settings_with_secrets_masked() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("my.toml"),
        "[api]\ntoken = \"hunter2-very-secret\"\nlisten = \"127.0.0.1:9999\"\n",
    )
    .expect("write");
    let out = dbwarden(
        dir.path(),
        &["config", "check", "--config", "my.toml"],
        &[("DBWARDEN__DATABASE__READERS", "7")],
    );
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("listen = \"127.0.0.1:9999\""), "{shown}");
    assert!(
        shown.contains("readers = 7"),
        "env overrides the file: {shown}"
    );
    assert!(!shown.contains("hunter2"), "token masked: {shown}");
    assert!(shown.contains("token = \"********\""), "{shown}");
}

#[test]
fn without_a_config_file_the_embedded_defaults_apply() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dbwarden(dir.path(), &["config", "check"], &[]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    assert!(shown.contains("path = \"./data/dbwarden.db\""), "{shown}");
    assert!(shown.contains("listen = \"127.0.0.1:8484\""), "{shown}");
}

#[test]
fn config_errors_name_the_key_and_its_origin() {
    let dir = tempfile::tempdir().expect("tempdir");
    // (file contents, environment, what the message must mention)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "[api]\nlisten = \"127.0.0.1:1\"\nlistn = \"x\"\n",
            vec![],
            vec!["api.listn", "bad.toml"],
        ),
        ("[apii]\nlisten = \"x\"\n", vec![], vec!["apii", "bad.toml"]),
        (
            "[database]\nreaders = \"many\"\n",
            vec![],
            vec!["readers", "bad.toml"],
        ),
        (
            "[database]\nreaders = 0\n",
            vec![],
            vec!["database.readers", "bad.toml", "out of range"],
        ),
        (
            "[api]\nlisten = \"localhost\"\n",
            vec![],
            vec!["api.listen", "bad.toml"],
        ),
        ("[api]\ntoken = \"\"\n", vec![], vec!["api.token"]),
        (
            "[logging]\nlevel = \"loud[\"\n",
            vec![],
            vec!["logging.level"],
        ),
        (
            "[backup]\nschedule = \"*/5 * * * *\"\n",
            vec![],
            vec!["backup.schedule", "bad.toml", "*/5 * * * *"],
        ),
        (
            "[backup]\nreverify_schedule = \"0 0 25 * * *\"\n",
            vec![],
            vec!["backup.reverify_schedule", "bad.toml"],
        ),
        ("not toml at all = = =", vec![], vec!["bad.toml"]),
        (
            "",
            vec![("DBWARDEN__WRITER__MAILBOX_CAPACITY", "0")],
            vec!["writer.mailbox_capacity", "environment"],
        ),
        (
            "",
            vec![("DBWARDEN__WRITER__MAILBOXCAPACITY", "5")],
            vec!["writer.mailboxcapacity", "environment"],
        ),
        (
            "",
            vec![("DBWARDEN__API__MAX_BODY_BYTES", "lots")],
            vec!["max_body_bytes"],
        ),
    ];
    for (file, env, needles) in cases {
        std::fs::write(dir.path().join("bad.toml"), file).expect("write");
        let out = dbwarden(
            dir.path(),
            &["config", "check", "--config", "bad.toml"],
            &env,
        );
        let shown = text(&out);
        assert_eq!(
            out.status.code(),
            Some(i32::from(dbwarden::exit::CONFIG)),
            "{file:?} {env:?}: {shown}"
        );
        for needle in needles {
            assert!(
                shown.contains(needle),
                "{file:?} {env:?}: expected `{needle}` in: {shown}"
            );
        }
        assert!(!shown.contains("panicked"), "{shown}");
    }
    let out = dbwarden(
        dir.path(),
        &["config", "check", "--config", "missing.toml"],
        &[],
    );
    assert!(!out.status.success());
    assert!(text(&out).contains("missing.toml"), "{}", text(&out));
}

#[test]
fn migrate_then_check_the_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("DBWARDEN__DATABASE__PATH", "state/events.db")];
    let out = dbwarden(dir.path(), &["check", "--summary"], &env);
    assert!(!out.status.success(), "no database yet: {}", text(&out));

    let out = dbwarden(dir.path(), &["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let applied = format!(
        "{} migration(s) applied",
        dbwarden::db::migrations::MIGRATIONS.len()
    );
    assert!(text(&out).contains(&applied), "{}", text(&out));
    let db = dir.path().join("state/events.db");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&db).expect("db").permissions());
    assert_eq!(
        mode & 0o077,
        0,
        "database file not readable by others: {mode:o}"
    );
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(dir.path().join("state"))
            .expect("dir")
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "database dir private: {mode:o}");

    let conn = rusqlite::Connection::open(&db).expect("open");
    conn.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', 'x', 'CorruptionDetected', '{}')",
        [],
    )
    .expect("insert");
    let out = dbwarden(dir.path(), &["check"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("quick_check: ok"), "{}", text(&out));
    assert!(text(&out).contains("summary: exact"), "{}", text(&out));
    let out = dbwarden(dir.path(), &["check", "--full"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("integrity_check + foreign_key_check: ok"),
        "{}",
        text(&out)
    );

    conn.execute(
        "UPDATE corruption_summary SET current_state = 'VerificationSuccess'",
        [],
    )
    .expect("tamper");
    drop(conn);
    let out = dbwarden(dir.path(), &["check", "--summary"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("difference"), "{}", text(&out));
}

#[test]
fn logging_dir_gets_a_rolled_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("DBWARDEN__DATABASE__PATH", "state/events.db"),
        ("DBWARDEN__LOGGING__DIR", "logs"),
    ];
    let out = dbwarden(dir.path(), &["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let logs: Vec<_> = std::fs::read_dir(dir.path().join("logs"))
        .expect("log dir created")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let name = logs[0]
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with("dbwarden.") && name.ends_with(".log"),
        "{name}"
    );
    let content = std::fs::read_to_string(&logs[0]).expect("read log");
    assert!(
        content.contains("migration applied"),
        "the guard flushed the file: {content}"
    );
}

fn write_jobs(dir: &Path) {
    let jobs = dir.join("jobs");
    std::fs::create_dir_all(&jobs).expect("jobs dir");
    std::fs::write(
        jobs.join("count.toml"),
        "name = \"count\"\nkind = \"query\"\nschedule = \"0 0 3 * * *\"\nsql = \"SELECT count(*) FROM events\"\nalert_above = 100\n",
    )
    .expect("write");
    std::fs::write(
        jobs.join("fail.toml"),
        "name = \"fail\"\nkind = \"command\"\nschedule = \"0 0 3 * * *\"\nargv = [\"sh\", \"-c\", \"echo nope; exit 4\"]\n",
    )
    .expect("write");
}

const JOB_ENV: &[(&str, &str)] = &[
    ("DBWARDEN__DATABASE__PATH", "state/events.db"),
    ("DBWARDEN__BACKUP__DIR", "state/backups"),
    ("DBWARDEN__BACKUP__AT_STARTUP", "false"),
    ("DBWARDEN__JOBS__DIR", "jobs"),
];

#[test]
fn jobs_validate_and_list_show_every_job() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_jobs(dir.path());
    let out = dbwarden(dir.path(), &["jobs", "validate"], JOB_ENV);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("2 job(s) valid"), "{}", text(&out));

    let out = dbwarden(dir.path(), &["jobs", "list"], JOB_ENV);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    for line in ["backup ", "checkpoint ", "quick-check ", "count ", "fail "] {
        assert!(shown.contains(line), "{line} in {shown}");
    }
    let count = shown
        .lines()
        .find(|l| l.starts_with("count "))
        .expect("count listed");
    assert!(
        count.contains("query") && count.contains("03:00:00 UTC") && count.contains("local"),
        "{count}"
    );

    std::fs::write(
        dir.path().join("jobs").join("broken.toml"),
        "name = \"broken\"\nkind = \"sql\"\nschedule = \"0 0 3 * * *\"\nstatements = \"DELETE\"\n",
    )
    .expect("write");
    let out = dbwarden(dir.path(), &["jobs", "validate"], JOB_ENV);
    assert_eq!(out.status.code(), Some(1));
    let shown = text(&out);
    assert!(
        shown.contains("broken.toml") && shown.contains("`statements`"),
        "{shown}"
    );
    // The service refuses to start with it, naming the file and key too.
    let out = dbwarden(dir.path(), &["run"], JOB_ENV);
    assert!(!out.status.success());
    let shown = text(&out);
    assert!(
        shown.contains("broken.toml") && shown.contains("`statements`"),
        "{shown}"
    );
}

#[test]
fn jobs_run_runs_one_job_once_and_exits_with_its_result() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_jobs(dir.path());
    let out = dbwarden(dir.path(), &["jobs", "run", "count"], JOB_ENV);
    assert!(out.status.success(), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run as JSON");
    assert_eq!(run["outcome"], "ok");
    assert_eq!(run["trigger"], "cli");
    assert!(run["message"].as_str().unwrap_or("").contains("value 0"));

    let out = dbwarden(dir.path(), &["jobs", "run", "fail"], JOB_ENV);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let run: serde_json::Value = serde_json::from_slice(&out.stdout).expect("run as JSON");
    assert_eq!(run["outcome"], "failed");
    assert_eq!(run["output"], "nope\n");

    // Built-in jobs run the same way.
    let out = dbwarden(dir.path(), &["jobs", "run", "backup"], JOB_ENV);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_dir(dir.path().join("state/backups"))
            .expect("backups")
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".db"))
            .count(),
        1
    );

    let out = dbwarden(dir.path(), &["jobs", "run", "nope"], JOB_ENV);
    assert_eq!(out.status.code(), Some(i32::from(dbwarden::exit::USAGE)));
    assert!(
        text(&out).contains("no job is named `nope`"),
        "{}",
        text(&out)
    );

    // Each run is in the history.
    let conn = rusqlite::Connection::open(dir.path().join("state/events.db")).expect("open");
    let runs: i64 = conn
        .query_row("SELECT count(*) FROM dbwarden_job_runs", [], |r| r.get(0))
        .expect("history");
    assert_eq!(runs, 3);
}

#[test]
fn completions_and_manpage_come_from_the_command_definition() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dbwarden(dir.path(), &["completions", "bash"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let script = String::from_utf8_lossy(&out.stdout);
    for word in [
        "_dbwarden",
        "backup",
        "restore",
        "jobs",
        "status",
        "completions",
    ] {
        assert!(script.contains(word), "{word} in the bash completion");
    }
    let out = dbwarden(dir.path(), &["completions", "zsh"], &[]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("#compdef dbwarden")
    );
    let out = dbwarden(dir.path(), &["completions", "tcsh"], &[]);
    assert_eq!(
        out.status.code(),
        Some(i32::from(dbwarden::exit::USAGE)),
        "an unknown shell is a usage error"
    );
    assert!(text(&out).contains("tcsh"), "{}", text(&out));
    let out = dbwarden(dir.path(), &["manpage"], &[]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.starts_with(".ie") && page.contains(".TH dbwarden 1"),
        "{page}"
    );
    assert!(page.contains("restore"), "subcommands are listed");
}

#[test]
fn status_without_a_service_says_so_and_exits_unavailable() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let out = dbwarden(
        dir.path(),
        &["status"],
        &[("DBWARDEN__API__LISTEN", &listen)],
    );
    assert_eq!(
        out.status.code(),
        Some(i32::from(dbwarden::exit::UNAVAILABLE))
    );
    assert!(
        text(&out).contains("no dbwarden service answers"),
        "{}",
        text(&out)
    );
}

#[test]
fn long_commands_show_progress_on_a_terminal_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [
        ("DBWARDEN__DATABASE__PATH", "db/events.db"),
        ("DBWARDEN__BACKUP__DIR", "backups"),
    ];
    assert!(dbwarden(dir.path(), &["migrate"], &env).status.success());
    // Through a pipe: the output is the result only.
    let out = dbwarden(dir.path(), &["backup"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("backing up"), "{}", text(&out));
    // On a terminal (a pty from util-linux `script`): a spinner with the phase.
    let binary = env!("CARGO_BIN_EXE_dbwarden");
    let out = Command::new("script")
        .args(["-qec", &format!("{binary} backup"), "/dev/null"])
        .current_dir(dir.path())
        .envs(env)
        .output()
        .expect("run script(1)");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("backing up"), "{}", text(&out));
}

/// A trigger another program added that writes the summary, as Healarr's does.
const FOREIGN_TRIGGER: &str = "CREATE TRIGGER trg_update_corruption_summary AFTER INSERT ON events
    WHEN NEW.aggregate_type = 'corruption'
    BEGIN INSERT OR REPLACE INTO corruption_summary (corruption_id, current_state, retry_count)
          VALUES (NEW.aggregate_id, NEW.event_type, 99); END;";

#[test]
fn check_finds_a_foreign_summary_trigger_and_repair_removes_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env = [("DBWARDEN__DATABASE__PATH", "state/events.db")];
    let out = dbwarden(dir.path(), &["migrate"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let conn = rusqlite::Connection::open(dir.path().join("state/events.db")).expect("open");
    conn.execute_batch(FOREIGN_TRIGGER)
        .expect("foreign trigger");
    conn.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', 'a', 'CorruptionDetected', '{}')",
        [],
    )
    .expect("insert");
    drop(conn);

    let out = dbwarden(dir.path(), &["check"], &env);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("trg_update_corruption_summary")
            && shown.contains("writes corruption_summary"),
        "{shown}"
    );
    assert!(shown.contains("check --repair"), "{shown}");

    let out = dbwarden(dir.path(), &["check", "--repair"], &env);
    assert!(out.status.success(), "{}", text(&out));
    let shown = text(&out);
    assert!(
        shown.contains("removed trigger trg_update_corruption_summary"),
        "{shown}"
    );
    assert!(shown.contains("1 corruption row(s) changed"), "{shown}");

    let out = dbwarden(dir.path(), &["check"], &env);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("summary: exact"), "{}", text(&out));
}

#[test]
fn startup_errors_say_each_cause_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("afile"), "").expect("a file");
    let out = dbwarden(
        dir.path(),
        &["run"],
        &[
            ("DBWARDEN__DATABASE__PATH", "state/events.db"),
            ("DBWARDEN__API__LISTEN", "127.0.0.1:0"),
            ("DBWARDEN__BACKUP__DIR", "afile/backups"),
        ],
    );
    assert_eq!(out.status.code(), Some(i32::from(dbwarden::exit::CONFIG)));
    let shown = String::from_utf8_lossy(&out.stderr);
    let last = shown.lines().last().unwrap_or_default();
    assert!(last.contains("afile/backups"), "{last}");
    assert_eq!(last.matches("Not a directory").count(), 1, "{last}");
    assert_eq!(last.matches("afile/backups").count(), 1, "{last}");

    std::fs::create_dir(dir.path().join("jobs")).expect("jobs dir");
    std::fs::write(
        dir.path().join("jobs/bad.toml"),
        "name = \"x\"\nkind = \"sqlx\"\nschedule = \"0 0 * * * *\"\n",
    )
    .expect("bad job");
    let out = dbwarden(
        dir.path(),
        &["run"],
        &[
            ("DBWARDEN__DATABASE__PATH", "state/events.db"),
            ("DBWARDEN__API__LISTEN", "127.0.0.1:0"),
        ],
    );
    assert_eq!(out.status.code(), Some(i32::from(dbwarden::exit::CONFIG)));
    let shown = String::from_utf8_lossy(&out.stderr);
    assert_eq!(shown.matches("bad.toml").count(), 1, "{shown}");
    assert_eq!(shown.matches("is not one of").count(), 1, "{shown}");
}

#[test]
fn config_check_prints_toml_that_reads_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(
        dir.path().join("my.toml"),
        "[[notify.channels]]\nkind = \"webhook\"\nurl = \"https://hooks.example/a\"\nsecret = \"hmac-secret-value\"\n\n[[notify.channels]]\nkind = \"heartbeat\"\nurl = \"https://hc.example/ping\"\n",
    )
    .expect("write");
    let out = dbwarden(dir.path(), &["config", "check", "--config", "my.toml"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!printed.contains("hmac-secret-value"), "{printed}");
    assert!(!printed.contains("null"), "{printed}");
    let parsed: toml::Table = toml::from_str(&printed).expect("the output is TOML");
    let channels = parsed["notify"]["channels"].as_array().expect("channels");
    assert_eq!(channels.len(), 2);
    assert_eq!(channels[0]["kind"].as_str(), Some("webhook"));
    assert_eq!(channels[0]["secret"].as_str(), Some("********"));
    assert_eq!(channels[1]["url"].as_str(), Some("https://hc.example/ping"));
    // What it prints is a settings file dbwarden accepts.
    std::fs::write(dir.path().join("printed.toml"), &printed).expect("write back");
    let out = dbwarden(
        dir.path(),
        &["config", "check", "--config", "printed.toml"],
        &[],
    );
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn status_of_a_stuck_service_gives_up_and_names_its_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Accepts connections, never answers.
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").expect("listener");
    let listen = stuck.local_addr().expect("addr").to_string();
    let holder = std::thread::spawn(move || {
        let held: Vec<_> = stuck.incoming().take(1).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(held);
    });
    let mut child = Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .current_dir(dir.path())
        .args(["status", "--timeout", "1"])
        .env("DBWARDEN__API__LISTEN", &listen)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("status");
    // Liveness only: the command must come back on its own.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("dbwarden status hung on a service that never answers");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    assert!(!out.status.success());
    let shown = String::from_utf8_lossy(&out.stderr);
    assert!(
        shown.contains(&listen) && shown.contains("did not answer within 1 s"),
        "{shown}"
    );
    drop(holder);
}

/// A point-in-time restore asked for wrongly is refused before anything is touched, with
/// the argument and the reason: a time that is not RFC 3339, an event id that is not a
/// number, a point without the replica to take it from, two points at once, and a
/// replica the settings do not have.
#[test]
fn a_bad_restore_point_names_the_argument_and_the_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &[&str]); 5] = [
        (
            &["restore", "--from", "s3", "--at", "yesterday"],
            &["'--at <RFC3339>'", "`yesterday` is not an RFC 3339 time"],
        ),
        (
            &["restore", "--from", "s3", "--event-id", "abc"],
            &["'--event-id <N>'", "invalid digit"],
        ),
        (
            &["restore", "--at", "2026-12-03T07:30:00Z"],
            &["required arguments were not provided", "--from <NAME>"],
        ),
        (
            &[
                "restore",
                "--from",
                "s3",
                "--at",
                "2026-12-03T07:30:00Z",
                "--event-id",
                "5",
            ],
            &["'--at <RFC3339>' cannot be used with '--event-id <N>'"],
        ),
        (
            &["restore", "--from", "nowhere", "--event-id", "5"],
            &["no replica named `nowhere`"],
        ),
    ];
    for (args, expected) in cases {
        let out = dbwarden(dir.path(), args, &[]);
        let shown = text(&out);
        assert!(!out.status.success(), "{args:?}: {shown}");
        for part in expected {
            assert!(shown.contains(part), "{args:?}: {shown}");
        }
    }
    assert!(
        !dir.path().join("data").exists(),
        "nothing was created: {:?}",
        std::fs::read_dir(dir.path()).map(|d| d.count())
    );
}

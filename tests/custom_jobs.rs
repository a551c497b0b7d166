//! Custom jobs (`jobs/*.toml`) end to end: the real service, the real scheduler with
//! seconds-level schedules, the HTTP API, and real child processes.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{settings_in, write_job, TestApp};
use dbwarden::supervisor::{Service, StartError};
use reqwest::StatusCode;
use rusqlite::params;
use serde_json::{json, Value};

/// A schedule that does not fire during a test (its year field is far away).
const NEVER: &str = "0 0 0 1 1 * 2099";

async fn start_with_jobs(jobs: &[(&str, &str)], extra: &[(&str, &str)]) -> TestApp {
    start_in(tempfile::tempdir().expect("tempdir"), jobs, extra).await
}

/// Starts the service over `dir` (which may hold a seeded database) with `jobs`.
async fn start_in(
    dir: tempfile::TempDir,
    jobs: &[(&str, &str)],
    extra: &[(&str, &str)],
) -> TestApp {
    for (file, text) in jobs {
        write_job(dir.path(), file, text);
    }
    let settings = settings_in(dir.path(), extra);
    TestApp::start(dir, Service::builder(settings)).await
}

/// A service with one command job `name` that ignores SIGTERM, as does the child it
/// leaves in its process group; the child's pid lands in the returned file.
async fn with_stubborn_job(
    name: &str,
    timeout_secs: u64,
    extra: &[(&str, &str)],
) -> (TestApp, std::path::PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("child.pid");
    // An ignored signal stays ignored across exec, so `sleep` ignores SIGTERM too.
    let job = format!(
        "name = \"{name}\"\nkind = \"command\"\nschedule = \"{NEVER}\"\ntimeout_secs = {timeout_secs}\nargv = [\"sh\", \"-c\", \"trap '' TERM; sleep 120 & echo $! > {}; wait\"]\n",
        pid_file.display()
    );
    let app = start_in(dir, &[(&format!("{name}.toml"), &job)], extra).await;
    (app, pid_file)
}

/// The job's entry in `GET /api/jobs`.
/// Waits until the scheduler ran `name` at least once; returns its last run.
async fn wait_for_scheduled_run(app: &TestApp, name: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let entry = app.job(name).await;
        if entry["last_run"].is_object() {
            assert_eq!(entry["last_run"]["trigger"], "schedule", "{entry}");
            return entry["last_run"].clone();
        }
        assert!(Instant::now() < deadline, "{name} never ran: {entry}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Appends one CorruptionDetected event through the API.
async fn append(app: &TestApp, id: &str) {
    let event = json!({"aggregate_type": "corruption", "aggregate_id": id, "event_type": "CorruptionDetected", "event_data": {}});
    let res = app.post_json("/api/events", &event).await;
    assert!(res.status().is_success(), "{}", res.status());
}

fn seed(dir: &Path, rows: &[(&str, &str, &str)]) {
    let settings = settings_in(dir, &[]);
    let (conn, _) = dbwarden::db::open_and_migrate(&settings.database).expect("migrate");
    for (agg, event, at) in rows {
        conn.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, created_at)
             VALUES ('corruption', ?1, ?2, '{}', ?3)",
            params![agg, event, at],
        )
        .expect("insert");
    }
}

fn aggregates(app: &TestApp) -> Vec<String> {
    app.open()
        .prepare("SELECT DISTINCT aggregate_id FROM events ORDER BY 1")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .map(|r| r.expect("row"))
        .collect()
}

/// Whether `pid` is still a live process (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

async fn read_pid(file: &Path) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(pid) = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "{} never written",
            file.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_rt::test]
async fn a_sql_job_runs_on_its_schedule_through_the_writer() {
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let job = r#"
name = "drop-c1"
kind = "sql"
schedule = "* * * * * *"
statements = ["DELETE FROM events WHERE aggregate_id = 'c1'", "ANALYZE"]
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    seed(
        dir.path(),
        &[
            ("c1", "CorruptionDetected", &now),
            ("c2", "CorruptionDetected", &now),
        ],
    );
    let mut app = start_in(dir, &[("drop-c1.toml", job)], &[]).await;
    let run = wait_for_scheduled_run(&app, "drop-c1").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    assert!(
        run["message"]
            .as_str()
            .unwrap_or("")
            .contains("row change(s)"),
        "{run}"
    );
    app.stop().await;
    assert_eq!(aggregates(&app), ["c2"]);
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn a_failing_sql_job_rolls_back_everything_it_did() {
    let job = format!(
        r#"
name = "half-bad"
kind = "sql"
schedule = "{NEVER}"
statements = [
  "DELETE FROM events WHERE aggregate_id = 'c1'",
  "INSERT INTO no_such_table VALUES (1)",
]
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    seed(
        dir.path(),
        &[("c1", "CorruptionDetected", "2026-01-01 00:00:00")],
    );
    let mut app = start_in(dir, &[("half-bad.toml", &job)], &[]).await;
    let run = app.run_job("half-bad").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    let message = run["message"].as_str().expect("message");
    assert!(
        message.contains("statement 1") && message.contains("no_such_table"),
        "{message}"
    );
    // Meanwhile appends still work: the writer was not left in a transaction.
    append(&app, "c9").await;
    app.stop().await;
    assert_eq!(aggregates(&app), ["c1", "c9"], "the DELETE was rolled back");
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn sql_jobs_may_not_touch_the_writers_transaction_settings_or_derived_tables() {
    let cases = [
        ("commit", "COMMIT", "transaction control"),
        ("savepoint", "SAVEPOINT x", "transaction control"),
        ("sync-off", "PRAGMA synchronous = OFF", "PRAGMA synchronous"),
        ("attach", "ATTACH DATABASE ':memory:' AS other", "ATTACH"),
        (
            "summary",
            "DELETE FROM corruption_summary",
            "corruption_summary is maintained by dbwarden",
        ),
        (
            "trigger",
            "DROP TRIGGER dbwarden_summary_on_event_insert",
            "triggers",
        ),
    ];
    let files: Vec<(String, String)> = cases
        .iter()
        .map(|(name, sql, _)| {
            (
                format!("{name}.toml"),
                format!(
                    "name = \"{name}\"\nkind = \"sql\"\nschedule = \"{NEVER}\"\nstatements = [\"DELETE FROM events WHERE aggregate_id = 'c1'\", \"{sql}\"]\n"
                ),
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    seed(
        dir.path(),
        &[("c1", "CorruptionDetected", "2026-01-01 00:00:00")],
    );
    for (file, text) in &files {
        write_job(dir.path(), file, text);
    }
    let settings = settings_in(dir.path(), &[]);
    let mut app = TestApp::start(dir, Service::builder(settings)).await;
    for (name, _, reason) in cases {
        let run = app.run_job(name).await;
        assert_eq!(run["outcome"], "failed", "{name}: {run}");
        let message = run["message"].as_str().expect("message");
        assert!(
            message.contains("statement 1") && message.contains(reason),
            "{name}: {message}"
        );
    }
    app.stop().await;
    assert_eq!(aggregates(&app), ["c1"], "every job was rolled back");
    let sync: i64 = app
        .open()
        .query_row("SELECT count(*) FROM corruption_summary", [], |r| r.get(0))
        .expect("summary");
    assert_eq!(sync, 1);
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn a_query_threshold_alert_reaches_the_webhook_and_resolves() {
    let alerts = common::receiver(0, Duration::ZERO);
    let job = format!(
        r#"
name = "too-many"
kind = "query"
schedule = "{NEVER}"
sql = "SELECT count(*) FROM corruption_summary"
alert_above = 1
"#
    );
    let dir = tempfile::tempdir().expect("tempdir");
    write_job(dir.path(), "too-many.toml", &job);
    let settings = common::alerting(settings_in(dir.path(), &[]), &alerts);
    let mut app = TestApp::start(dir, Service::builder(settings)).await;
    let ok = app.run_job("too-many").await;
    assert_eq!(ok["outcome"], "ok", "{ok}");
    for id in ["a", "b"] {
        append(&app, id).await;
    }
    let crossed = app.run_job("too-many").await;
    assert_eq!(crossed["outcome"], "failed", "{crossed}");
    assert!(crossed["message"]
        .as_str()
        .unwrap_or("")
        .contains("value 2 is above 1"));
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "job:too-many").await;
    assert_eq!(alert["resolved"], false, "{alert}");
    assert!(alert["message"]
        .as_str()
        .unwrap_or("")
        .contains("value 2 is above 1"));

    // Back in range: the alert is resolved.
    let res = app
        .client
        .delete(app.url("/api/corruptions/b"))
        .send()
        .await
        .expect("delete");
    assert!(res.status().is_success());
    assert_eq!(app.run_job("too-many").await["outcome"], "ok");
    common::wait_for_alert(&alerts, |a| {
        a["key"] == "job:too-many" && a["resolved"] == true
    })
    .await;
    app.stop().await;
}

#[actix_rt::test]
async fn a_query_job_alerts_from_its_schedule() {
    let alerts = common::receiver(0, Duration::ZERO);
    let job = r#"
name = "bloat"
kind = "query"
schedule = "* * * * * *"
sql = "SELECT (SELECT count(*) FROM corruption_summary) + (SELECT freelist_count FROM pragma_freelist_count())"
alert_above = 1
"#;
    let dir = tempfile::tempdir().expect("tempdir");
    let now = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    seed(
        dir.path(),
        &[
            ("c1", "CorruptionDetected", &now),
            ("c2", "CorruptionDetected", &now),
        ],
    );
    write_job(dir.path(), "bloat.toml", job);
    let settings = common::alerting(settings_in(dir.path(), &[]), &alerts);
    let mut app = TestApp::start(dir, Service::builder(settings)).await;
    let run = wait_for_scheduled_run(&app, "bloat").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "job:bloat").await;
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or("")
            .contains("is above 1"),
        "{alert}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn a_command_job_runs_on_its_schedule_and_keeps_its_output() {
    let job = r#"
name = "hello"
kind = "command"
schedule = "* * * * * *"
argv = ["sh", "-c", "echo hello from $DBWARDEN_JOB; echo token=${DBWARDEN__API__TOKEN:-unset}; echo oops >&2; exit 0"]
env = { EXTRA = "1" }
"#;
    let mut app = start_with_jobs(&[("hello.toml", job)], &[]).await;
    let run = wait_for_scheduled_run(&app, "hello").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let output = run["output"].as_str().expect("output kept");
    assert!(output.contains("hello from hello"), "{output}");
    assert!(output.contains("[stderr] oops"), "{output}");
    assert!(
        output.contains("token=unset"),
        "DBWARDEN__ variables are not passed on: {output}"
    );
    assert!(run["message"]
        .as_str()
        .unwrap_or("")
        .contains("exit status 0"));
    app.stop().await;
}

#[actix_rt::test]
async fn a_failing_command_fails_the_run_with_its_exit_status() {
    let job = format!(
        "name = \"fails\"\nkind = \"command\"\nschedule = \"{NEVER}\"\nargv = [\"sh\", \"-c\", \"echo broken; exit 3\"]\n"
    );
    let missing = format!(
        "name = \"missing\"\nkind = \"command\"\nschedule = \"{NEVER}\"\nargv = [\"/no/such/program\"]\n"
    );
    let mut app = start_with_jobs(&[("fails.toml", &job), ("missing.toml", &missing)], &[]).await;
    let run = app.run_job("fails").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["message"]
        .as_str()
        .unwrap_or("")
        .contains("exit status 3"));
    assert_eq!(run["output"], "broken\n");
    let run = app.run_job("missing").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["message"]
        .as_str()
        .unwrap_or("")
        .contains("cannot start `/no/such/program`"));
    app.stop().await;
}

#[actix_rt::test]
async fn a_command_that_ignores_sigterm_is_killed_with_its_process_group_at_timeout() {
    let (mut app, pid_path) = with_stubborn_job("stubborn", 1, &[]).await;
    let run = app.run_job("stubborn").await;
    assert_eq!(run["outcome"], "timed_out", "{run}");
    let message = run["message"].as_str().expect("message");
    assert!(
        message.contains("timed out after 1 s") && message.contains("ignored SIGTERM"),
        "{message}"
    );
    let child = read_pid(&pid_path).await;
    assert!(!alive(child), "the grandchild {child} was killed too");
    app.stop().await;
}

#[actix_rt::test]
async fn shutdown_cancels_running_jobs_and_leaves_nothing_running() {
    let (mut app, pid_file) =
        with_stubborn_job("long", 600, &[("DBWARDEN__JOBS__SHUTDOWN_WAIT_SECS", "1")]).await;
    let res = app.post("/api/jobs/long/run").await;
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let child = read_pid(&pid_file).await;
    assert!(alive(child));
    // A second trigger while it runs is refused.
    let res = app.post("/api/jobs/long/run").await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
    app.stop().await;
    assert!(!alive(child), "shutdown killed the job's process group");
    let (outcome, message): (String, String) = app
        .open()
        .query_row(
            "SELECT outcome, message FROM dbwarden_job_runs WHERE job = 'long'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the cancelled run was recorded");
    assert_eq!(outcome, "cancelled", "{message}");
}

#[actix_rt::test]
async fn an_http_job_sends_its_request_and_checks_the_status() {
    let target = common::receiver(0, Duration::ZERO);
    let ok = format!(
        r#"
name = "ping"
kind = "http"
schedule = "* * * * * *"
method = "POST"
url = "{}/ping"
headers = {{ "X-Job" = "dbwarden" }}
body = "hello"
expect_status = 200
"#,
        target.base
    );
    let wrong = format!(
        "name = \"wrong-status\"\nkind = \"http\"\nschedule = \"{NEVER}\"\nurl = \"{}/x\"\nexpect_status = 204\n",
        target.base
    );
    let mut app = start_with_jobs(&[("ping.toml", &ok), ("wrong.toml", &wrong)], &[]).await;
    let run = wait_for_scheduled_run(&app, "ping").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    let got = common::wait_for(&target.got, 1, Duration::from_secs(5)).await;
    let ping = got
        .iter()
        .find(|r| r.path == "/ping")
        .expect("request sent");
    assert_eq!(ping.method, "POST");
    assert_eq!(ping.header("x-job"), Some("dbwarden"));
    assert_eq!(ping.body, "hello");
    let run = app.run_job("wrong-status").await;
    assert_eq!(run["outcome"], "failed", "{run}");
    assert!(run["message"]
        .as_str()
        .unwrap_or("")
        .contains("HTTP 200 in"));
    app.stop().await;
}

#[actix_rt::test]
async fn the_retention_example_prunes_through_the_service_and_keeps_the_summary_exact() {
    let old = "2020-01-01 00:00:00.000000000 +0000 UTC"; // Go's format, as Healarr writes
    let recent = chrono::Utc::now().format("%Y-%m-%d %H:%M:%S").to_string();
    let dir = tempfile::tempdir().expect("tempdir");
    seed(
        dir.path(),
        &[
            ("old-resolved", "CorruptionDetected", old),
            ("old-resolved", "VerificationSuccess", old),
            ("old-ignored", "CorruptionDetected", old),
            ("old-ignored", "CorruptionIgnored", old),
            ("old-pending", "CorruptionDetected", old),
            ("new-resolved", "CorruptionDetected", &recent),
            ("new-resolved", "VerificationSuccess", &recent),
        ],
    );
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/prune-resolved.toml"),
    )
    .expect("example");
    let mut app = start_in(dir, &[("prune-resolved.toml", &example)], &[]).await;
    let run = app.run_job("prune-resolved").await;
    assert_eq!(run["outcome"], "ok", "{run}");
    app.stop().await;
    assert_eq!(aggregates(&app), ["new-resolved", "old-pending"]);
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn the_api_lists_every_job_with_its_last_and_next_run() {
    let job = "name = \"noop\"\nkind = \"query\"\nschedule = \"0 0 3 * * *\"\nsql = \"SELECT 1\"\nalert_above = 5\n";
    let off = format!(
        "name = \"off\"\nkind = \"query\"\nschedule = \"{NEVER}\"\nenabled = false\nsql = \"SELECT 1\"\nalert_above = 5\n"
    );
    let mut app = start_with_jobs(&[("noop.toml", job), ("off.toml", &off)], &[]).await;
    let all = app.get_json("/api/jobs").await;
    let names: Vec<&str> = all["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["name"].as_str())
        .collect();
    for builtin in [
        "checkpoint",
        "quick-check",
        "full-check",
        "backup",
        "backup-reverify",
    ] {
        assert!(names.contains(&builtin), "{builtin} in {names:?}");
    }
    let noop = app.job("noop").await;
    assert_eq!(noop["kind"], "query");
    assert!(noop["last_run"].is_null());
    let next = noop["next_run"].as_str().expect("next run");
    assert!(next.ends_with("T03:00:00Z"), "{next}");
    assert!(app.job("off").await["next_run"].is_null());

    app.run_job("noop").await;
    app.run_job("off").await;
    let noop = app.job("noop").await;
    assert_eq!(noop["last_run"]["outcome"], "ok", "{noop}");
    assert_eq!(noop["last_run"]["trigger"], "api");
    let runs = app.get_json("/api/jobs/off/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(1), "{runs}");

    // Mistakes are JSON errors naming what was wrong.
    let res = app.post("/api/jobs/nope/run").await;
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let body: Value = res.json().await.expect("json");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("nope"));
    let res = app.post("/api/jobs/noop/run?wait=maybe").await;
    assert_eq!(res.status(), StatusCode::BAD_REQUEST);
    let body: Value = res.json().await.expect("json");
    assert_eq!(body["error"]["field"], "wait");
    let res = app
        .client
        .get(app.url("/api/jobs/noop/run"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), StatusCode::METHOD_NOT_ALLOWED);
    app.stop().await;
}

#[actix_rt::test]
async fn run_history_is_bounded_per_job() {
    let job = format!(
        "name = \"often\"\nkind = \"query\"\nschedule = \"{NEVER}\"\nsql = \"SELECT 1\"\nalert_above = 5\n"
    );
    let mut app = start_with_jobs(
        &[("often.toml", &job)],
        &[("DBWARDEN__JOBS__HISTORY_KEEP", "3")],
    )
    .await;
    for _ in 0..5 {
        app.run_job("often").await;
    }
    let runs = app.get_json("/api/jobs/often/runs").await;
    assert_eq!(runs["runs"].as_array().map(Vec::len), Some(3), "{runs}");
    app.stop().await;
}

#[actix_rt::test]
async fn invalid_job_files_stop_startup_with_file_and_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_job(
        dir.path(),
        "bad.toml",
        "name = \"bad\"\nkind = \"sql\"\nschedule = \"every day\"\nstatements = [\"SELECT 1\"]\n",
    );
    let settings = settings_in(dir.path(), &[]);
    let err = match Service::start(settings).await {
        Ok(_) => panic!("startup must fail"),
        Err(e) => e,
    };
    assert!(matches!(err, StartError::Jobs(_)), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("bad.toml") && text.contains("`schedule`"),
        "{text}"
    );
    assert!(
        !dir.path().join("db").join("events.db").exists(),
        "nothing was created before the job files were checked"
    );
}

#[actix_rt::test]
async fn a_job_name_that_clashes_with_a_builtin_stops_startup() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_job(
        dir.path(),
        "backup.toml",
        &format!("name = \"backup\"\nkind = \"query\"\nschedule = \"{NEVER}\"\nsql = \"SELECT 1\"\nalert_above = 1\n"),
    );
    let settings = settings_in(dir.path(), &[]);
    let err = match Service::start(settings).await {
        Ok(_) => panic!("startup must fail"),
        Err(e) => e,
    };
    assert!(
        err.to_string().contains("job `backup` is defined twice"),
        "{err}"
    );
}

#[actix_rt::test]
async fn jobs_run_goes_through_the_running_service() {
    let job = format!(
        "name = \"count\"\nkind = \"query\"\nschedule = \"{NEVER}\"\nsql = \"SELECT count(*) FROM events\"\nalert_above = 100\n"
    );
    let mut app = start_with_jobs(&[("count.toml", &job)], &[]).await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let db = app.db_path.display().to_string();
    let jobs = app.dir.path().join("jobs").display().to_string();
    // The service holds the database lock, so the command must ask it over HTTP.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
        .args(["jobs", "run", "count"])
        .env("DBWARDEN__DATABASE__PATH", &db)
        .env("DBWARDEN__JOBS__DIR", &jobs)
        .env("DBWARDEN__API__LISTEN", &addr)
        .env_remove("RUST_LOG")
        .output()
        .await
        .expect("run the command");
    let shown = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{shown}");
    let run: Value = serde_json::from_slice(&out.stdout).expect("run as JSON");
    assert_eq!(run["outcome"], "ok", "{run}");
    assert_eq!(run["trigger"], "api", "run by the service: {run}");
    assert_eq!(app.job("count").await["last_run"]["trigger"], "api");
    app.stop().await;
}

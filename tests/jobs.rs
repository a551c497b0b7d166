//! Job definitions: the repo's examples, every invalid-definition case with its own
//! message, and the retention example's SQL keeping the summary exact.

mod common;

use dbwarden::db::migrations;
use dbwarden::jobs::{load_dir, load_file, JobKind};
use rusqlite::{params, Connection};

fn repo_jobs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs")
}

#[test]
fn the_repo_examples_are_valid() {
    let jobs = load_dir(&repo_jobs()).expect("examples valid");
    let kinds: Vec<(&str, &str)> = jobs
        .iter()
        .map(|j| (j.name.as_str(), j.kind.name()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("disk-space", "command"),
            ("prune-resolved", "sql"),
            ("too-many-failed", "query")
        ]
    );
}

#[test]
fn every_invalid_definition_gets_its_own_message() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ok =
        "name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"sql\"\nstatements = [\"SELECT 1\"]\n";
    // (file contents, key named, words the reason must contain)
    let cases: Vec<(String, &str, &str)> = vec![
        (ok.replace("0 * * * * *", "*/5 * * * *"), "schedule", "6-field"),
        (ok.replace("kind = \"sql\"", "kind = \"shell\""), "kind", "not one of"),
        (ok.replace("name = \"j\"\n", ""), "name", "required"),
        (ok.replace("statements = [\"SELECT 1\"]\n", ""), "statements", "required"),
        (format!("{ok}timeout_secs = \"ten\"\n"), "timeout_secs", "must be an integer, not a string"),
        (format!("{ok}timeout_secs = 0\n"), "timeout_secs", "out of range"),
        (format!("{ok}enabled = \"yes\"\n"), "enabled", "boolean"),
        (format!("{ok}overlap = \"parallel\"\n"), "overlap", "not one of skip, queue"),
        (format!("{ok}retries = 3\n"), "retries", "not a key of a `sql` job"),
        (ok.replace("[\"SELECT 1\"]", "[]"), "statements", "at least one"),
        (ok.replace("[\"SELECT 1\"]", "[1]"), "statements[0]", "string"),
        ("name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"query\"\nsql = \"SELECT 1\"\n".into(), "alert_above", "threshold"),
        ("name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"command\"\nargv = []\n".into(), "argv", "program"),
        ("name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"command\"\nargv = [\"ls\"]\nenv = { A = 1 }\n".into(), "env.A", "string"),
        ("name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"http\"\nurl = \"ftp://x\"\n".into(), "url", "http(s) URL"),
        ("name = \"j\"\nschedule = \"0 * * * * *\"\nkind = \"http\"\nurl = \"http://x\"\nexpect_status = 42\n".into(), "expect_status", "not an HTTP status"),
        (ok.replace("name = \"j\"", "name = \"no spaces please\""), "name", "letters, digits"),
        ("name = \"j\"\nschedule = = \n".into(), "-", "not valid TOML"),
    ];
    for (i, (text, key, reason)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("case{i}.toml"));
        std::fs::write(&path, text).expect("write");
        let errors = load_file(&path).expect_err(text);
        let e = &errors.0[0];
        assert_eq!(e.file, path.display().to_string());
        assert_eq!(e.key, *key, "case {i}: {e}");
        assert!(
            e.reason.contains(reason),
            "case {i}: expected `{reason}` in: {e}"
        );
    }
}

#[test]
fn duplicate_names_and_unreadable_files_are_reported_with_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let job = |name: &str| {
        format!("name = \"{name}\"\nschedule = \"0 * * * * *\"\nkind = \"sql\"\nstatements = [\"SELECT 1\"]\n")
    };
    std::fs::write(dir.path().join("a.toml"), job("same")).expect("write");
    std::fs::write(dir.path().join("b.toml"), job("same")).expect("write");
    std::fs::write(dir.path().join("c.toml"), "kind = 3").expect("write");
    // A directory where a file should be: reading it fails, as for a file we may not read.
    std::fs::create_dir(dir.path().join("d.toml")).expect("dir");
    std::fs::write(dir.path().join("notes.txt"), "not a job").expect("write");
    let errors = load_dir(dir.path()).expect_err("invalid");
    let text = errors.to_string();
    assert_eq!(errors.0.len(), 3, "{text}");
    assert!(
        text.contains("b.toml: `name`: job name `same` is already used by")
            && text.contains("a.toml"),
        "{text}"
    );
    assert!(text.contains("c.toml: `name`: is required"), "{text}");
    assert!(text.contains("d.toml: `-`: cannot be read"), "{text}");
}

// The retention example runs end to end through the service in tests/custom_jobs.rs.

#[test]
fn the_query_example_counts_the_failed_bucket() {
    let job = load_file(&repo_jobs().join("too-many-failed.toml")).expect("example");
    let JobKind::Query {
        sql, alert_above, ..
    } = job.kind
    else {
        panic!("query job")
    };
    assert_eq!(alert_above, Some(25.0));
    let mut conn = Connection::open_in_memory().expect("db");
    migrations::migrate(&mut conn).expect("migrate");
    for (agg, state) in [
        ("a", "DownloadFailed"),
        ("b", "SearchFailed"),
        ("c", "VerificationSuccess"),
    ] {
        conn.execute(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', ?1, ?2, '{}')",
            params![agg, state],
        )
        .expect("insert");
    }
    let n: f64 = conn.query_row(&sql, [], |r| r.get(0)).expect("one number");
    assert_eq!(n, 2.0);
}

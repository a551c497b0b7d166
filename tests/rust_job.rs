//! The compiled example `examples/quiet_store.rs` (a Rust `Job` registered with the
//! service) runs on the real scheduler and alerts through a configured channel.
//! `cargo test` builds the example before it runs the tests.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

fn example_binary() -> PathBuf {
    // target/<profile>/deps/rust_job-<hash> → target/<profile>/examples/quiet_store
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target profile dir");
    profile_dir.join("examples").join("quiet_store")
}

#[actix_rt::test]
async fn the_example_rust_job_runs_on_the_schedule_and_alerts() {
    let binary = example_binary();
    assert!(
        binary.exists(),
        "{} is missing: plain `cargo test` builds the examples (with `--test rust_job` alone, run `cargo build --examples` first)",
        binary.display()
    );
    let alerts = common::receiver(0, Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\npath = \"{db}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[backup]\ndir = \"{b}\"\nat_startup = false\n[jobs]\ndir = \"{j}\"\n[notify]\nchannels = [{{ kind = \"webhook\", url = \"{hook}/alerts\" }}]\n",
            db = dir.path().join("events.db").display(),
            b = dir.path().join("backups").display(),
            j = dir.path().join("jobs").display(),
            hook = alerts.base,
        ),
    )
    .expect("config");
    let mut child = Command::new(&binary)
        .args(["--config", &config.display().to_string()])
        .env("QUIET_SCHEDULE", "* * * * * *")
        .env("QUIET_RUNS", "2")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the example");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the example reported its address");

    // No events arrive: after two quiet runs the job alerts.
    let alert = common::wait_for_alert(&alerts, |a| a["key"] == "quiet-store:quiet-store").await;
    assert!(
        alert["message"]
            .as_str()
            .unwrap_or("")
            .contains("no new event"),
        "{alert}"
    );
    let jobs: Value = reqwest::get(format!("http://{addr}/api/jobs"))
        .await
        .expect("get jobs")
        .json()
        .await
        .expect("json");
    let job = jobs["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .find(|j| j["name"] == "quiet-store")
        .cloned()
        .expect("the Rust job is listed");
    assert_eq!(job["kind"], "rust");
    assert_eq!(job["last_run"]["outcome"], "ok", "{job}");

    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = child.wait().expect("wait");
    assert!(exit.success(), "stopped in order: {exit}");
}

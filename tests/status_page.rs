//! The status page: served without the token (it holds no data), self-contained, and
//! rendered by headless Chromium against a service with data (`.ci/run` installs
//! Debian's `chromium`): charts drawn, no console errors, a screenshot kept in
//! `target/status-page.png`.

mod common;

use std::process::Command;

use common::TestApp;
use serde_json::json;

#[actix_rt::test]
async fn the_page_is_public_self_contained_and_the_history_needs_the_token() {
    let mut app = TestApp::spawn(&[("DBWARDEN__API__TOKEN", "page-token")]).await;
    let res = app.client.get(app.url("/")).send().await.expect("page");
    assert_eq!(res.status(), 200);
    assert!(res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/html")));
    let html = res.text().await.expect("html");
    assert!(html.contains("<svg id=\"buckets-chart\""));
    for external in ["src=\"http", "href=\"http", "@import", "cdn"] {
        assert!(!html.contains(external), "no external asset ({external})");
    }
    let res = app
        .client
        .get(app.url("/api/status/history"))
        .send()
        .await
        .expect("history");
    assert_eq!(res.status(), 401);
    let history: serde_json::Value = app
        .client
        .get(app.url("/api/status/history"))
        .bearer_auth("page-token")
        .send()
        .await
        .expect("history")
        .json()
        .await
        .expect("json");
    assert!(history["alerts"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x["key"] == "service_started")));
    assert_eq!(
        history["replication_lag"],
        json!([]),
        "no replica streams, so no lag series"
    );
    app.stop().await;
}

/// Headless Chromium with the flags this machine needs (closed network, root).
fn chromium(profile: &std::path::Path, url: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=5000",
        "--window-size=1280,1400",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url);
    cmd
}

#[actix_rt::test]
#[ignore = "needs Debian's chromium, which .ci/run installs"]
async fn chromium_renders_the_page_with_charts_and_no_console_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let replica = format!(
        "[[replicas]]\nname = \"nas\"\nurl = \"file://{}\"\nencryption = \"none\"\ncpu_priority = \"low\"\n",
        dir.path().join("nas").display()
    );
    let settings = common::settings_with_file(dir.path(), &replica, &[]);
    let mut app = TestApp::start(dir, dbwarden::supervisor::Service::builder(settings)).await;
    for (id, event) in [
        ("a", "CorruptionDetected"),
        ("b", "DownloadFailed"),
        ("c", "VerificationSuccess"),
    ] {
        let res = app
            .post_json(
                "/api/events",
                &json!({"aggregate_type": "corruption", "aggregate_id": id, "event_type": event, "event_data": {}}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    for job in ["backup", "checkpoint", "quick-check"] {
        app.run_job(job).await;
    }
    // The backup reaches the replica on its shipper's thread; then a drill proves it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while app.get_json("/api/health").await["replicas"][0]["complete_copies"] != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the copy never reached the replica"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(app.run_job("drill-nas").await["outcome"], "ok");
    let profile = tempfile::tempdir().expect("profile");
    let screenshot =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/status-page.png");
    let (profile_dir, url) = (profile.path().to_path_buf(), app.url("/"));
    let (dir, page) = (profile_dir.clone(), url.clone());
    let out = tokio::task::spawn_blocking(move || chromium(&dir, &page, &["--dump-dom"]).output())
        .await
        .expect("task")
        .expect("chromium runs");
    let html = String::from_utf8_lossy(&out.stdout);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        html.contains("data-rendered=\"yes\""),
        "the page rendered its data:\n{html}"
    );
    let section = |id: &str| {
        let start = html
            .find(&format!("id=\"{id}\""))
            .unwrap_or_else(|| panic!("the page has a chart with id {id}:\n{html}"));
        html[start..]
            .split("</svg>")
            .next()
            .unwrap_or("")
            .to_string()
    };
    assert!(
        section("buckets-chart").matches("<rect").count() >= 7,
        "a bar per bucket"
    );
    assert!(
        section("backups-chart").contains("<rect"),
        "the backup timeline"
    );
    assert!(
        section("wal-chart").contains("<circle"),
        "a checkpoint point on the WAL chart"
    );
    assert!(
        section("lag-chart").contains("data-replica=\"nas\""),
        "the streaming replica's lag line"
    );
    assert!(html.contains("healthy"));
    let replicas = html
        .split("id=\"replicas\"")
        .nth(1)
        .and_then(|rest| rest.split("</table>").next())
        .unwrap_or_else(|| panic!("a replicas table:\n{html}"));
    assert!(
        replicas.contains("nas (file)") && replicas.contains("drill ok"),
        "the replica and its drill: {replicas}"
    );
    let console_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("CONSOLE") || l.contains("Uncaught"))
        .collect();
    assert!(console_errors.is_empty(), "console: {console_errors:#?}");
    let shot_arg = format!("--screenshot={}", screenshot.display());
    let shot =
        tokio::task::spawn_blocking(move || chromium(&profile_dir, &url, &[&shot_arg]).output())
            .await
            .expect("task")
            .expect("chromium screenshot");
    assert!(shot.status.success());
    assert!(
        std::fs::metadata(&screenshot).is_ok_and(|m| m.len() > 10_000),
        "screenshot at {}",
        screenshot.display()
    );
    app.stop().await;
}

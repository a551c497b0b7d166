//! `GET /metrics`: every family the issue names, with values that follow what the
//! service did; token protection; and `promtool check metrics` (run by `.ci/run`).

mod common;

use std::time::Duration;

use common::TestApp;
use dbwarden::config::ChannelSettings;
use dbwarden::supervisor::Service;
use serde_json::json;

/// The value of the sample `name{labels}` (labels exactly as rendered: sorted by
/// name), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

async fn scrape(app: &TestApp) -> String {
    let res = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .expect("scrape");
    assert_eq!(res.status(), 200);
    let content_type = res
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    res.text().await.expect("text")
}

async fn busy_service() -> TestApp {
    let alerts = common::receiver(0, Duration::ZERO);
    let dir = tempfile::tempdir().expect("tempdir");
    // A streaming replica on another directory, so its families are in the scrape.
    let replica = format!(
        "[[replicas]]\nname = \"nas\"\nurl = \"file://{}\"\nencryption = \"none\"\ncpu_priority = \"low\"\nsync_interval_ms = 200\n",
        dir.path().join("nas").display()
    );
    let mut settings = common::settings_with_file(dir.path(), &replica, &[]);
    settings.notify.channels = vec![ChannelSettings::Webhook {
        url: format!("{}/alerts", alerts.base),
        secret: None,
    }];
    let app = TestApp::start(dir, Service::builder(settings)).await;
    for (kind, id, event) in [
        ("corruption", "c1", "CorruptionDetected"),
        ("corruption", "c2", "DownloadFailed"),
        ("scan", "s1", "ScanStarted"),
    ] {
        let res = app
            .post_json(
                "/api/events",
                &json!({"aggregate_type": kind, "aggregate_id": id, "event_type": event, "event_data": {}}),
            )
            .await;
        assert_eq!(res.status(), 201);
    }
    let res = app
        .post_json("/api/events", &json!({"aggregate_type": "corruption"}))
        .await;
    assert_eq!(res.status(), 400);
    app.get_json("/api/corruptions/c1").await;
    for job in ["checkpoint", "quick-check", "backup"] {
        app.run_job(job).await;
    }
    // The startup notice reached the webhook.
    common::wait_for(&alerts.got, 1, Duration::from_secs(5)).await;
    app
}

#[actix_rt::test]
async fn metrics_follow_what_the_service_did() {
    let mut app = busy_service().await;
    let text = scrape(&app).await;
    let expect = |series: &str, value: f64| {
        assert_eq!(sample(&text, series), Some(value), "{series} in\n{text}");
    };
    expect(
        r#"dbwarden_events_appended_total{aggregate_type="corruption"}"#,
        2.0,
    );
    expect(
        r#"dbwarden_events_appended_total{aggregate_type="scan"}"#,
        1.0,
    );
    expect(r#"dbwarden_corruptions{bucket="pending"}"#, 1.0);
    expect(r#"dbwarden_corruptions{bucket="failed"}"#, 1.0);
    expect(r#"dbwarden_backups_total{outcome="ok"}"#, 1.0);
    expect("dbwarden_backups_stored", 1.0);
    // The startup check and the one run through the API.
    expect(
        r#"dbwarden_integrity_checks_total{kind="quick",outcome="ok"}"#,
        2.0,
    );
    expect(
        r#"dbwarden_checkpoints_total{mode="passive",result="ok"}"#,
        1.0,
    );
    expect(r#"dbwarden_job_runs_total{job="backup",outcome="ok"}"#, 1.0);
    expect(
        r#"dbwarden_http_requests_total{method="POST",route="/api/events",status="201"}"#,
        3.0,
    );
    expect(
        r#"dbwarden_http_requests_total{method="POST",route="/api/events",status="400"}"#,
        1.0,
    );
    expect(
        r#"dbwarden_http_requests_total{method="GET",route="/api/corruptions/{id}",status="200"}"#,
        1.0,
    );
    assert!(sample(&text, "dbwarden_write_batch_requests_count").unwrap_or(0.0) >= 1.0);
    assert!(sample(&text, "dbwarden_write_commit_duration_seconds_count").unwrap_or(0.0) >= 3.0);
    assert!(sample(&text, "dbwarden_backup_duration_seconds_count") == Some(1.0));
    assert!(sample(&text, "dbwarden_last_verified_backup_bytes").unwrap_or(0.0) > 0.0);
    assert!(sample(&text, "dbwarden_last_verified_backup_age_seconds").is_some());
    assert!(sample(&text, "dbwarden_wal_bytes").is_some());
    assert!(sample(&text, "dbwarden_wal_frames").is_some());
    assert_eq!(
        sample(&text, "dbwarden_writer_in_flight_requests"),
        Some(0.0)
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("dbwarden_notifications_total{channel=")
                && l.contains(r#"result="sent""#)
                && !l.ends_with(" 0")),
        "a sent notification is counted:\n{text}"
    );
    // Prometheus conventions: counters end in _total and say so.
    for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
        let mut parts = line.split_whitespace().skip(2);
        let (name, kind) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        assert!(name.starts_with("dbwarden_"), "{line}");
        assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
    }
    app.stop().await;
}

#[actix_rt::test]
async fn metrics_need_the_token_unless_public() {
    for (public, wanted) in [("false", 401), ("true", 200)] {
        let mut app = TestApp::spawn(&[
            ("DBWARDEN__API__TOKEN", "s3cret-token"),
            ("DBWARDEN__METRICS__PUBLIC", public),
        ])
        .await;
        let res = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .expect("scrape");
        assert_eq!(res.status(), wanted, "public = {public}");
        let res = app
            .client
            .get(app.url("/metrics"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .expect("scrape");
        assert_eq!(res.status(), 200);
        app.stop().await;
    }
}

#[actix_rt::test]
#[ignore = "needs promtool (Debian package prometheus), which .ci/run installs"]
async fn promtool_accepts_the_exposition() {
    let mut app = busy_service().await;
    let text = scrape(&app).await;
    app.stop().await;
    for family in [
        "dbwarden_replica_stream_lag_seconds",
        "dbwarden_replica_stream_requests_total",
        "dbwarden_replication_gaps_total",
    ] {
        assert!(text.contains(family), "{family} is checked too: {text}");
    }
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool is installed (apt-get install prometheus)");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

//! Hostile input against the real service: a corpus of malformed, oversized and
//! malicious requests. Every answer must be a 4xx with a JSON error body (never a 5xx,
//! never a dropped connection), and no rejected request may change the database.
//! Plus property tests at scale for the parsers behind the API and the files.

mod common;

use std::time::Duration;

use common::TestApp;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use reqwest::Method;
use serde_json::Value;

struct Probe {
    method: Method,
    path: String,
    content_type: Option<&'static str>,
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

fn post(path: &str, body: impl Into<Vec<u8>>) -> Probe {
    Probe {
        method: Method::POST,
        path: path.into(),
        content_type: Some("application/json"),
        body: body.into(),
        headers: Vec::new(),
    }
}

fn get(path: &str) -> Probe {
    Probe {
        method: Method::GET,
        path: path.into(),
        content_type: None,
        body: Vec::new(),
        headers: Vec::new(),
    }
}

const GOOD: &str = r#"{"aggregate_type":"corruption","aggregate_id":"a","event_type":"CorruptionDetected","event_data":{"file_path":"/m/a.mkv"}}"#;
const SQL: &[&str] = &[
    "'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "1); DELETE FROM corruption_summary; --",
    "x' UNION SELECT * FROM dbwarden_migrations --",
];

/// The corpus: every request here must be refused with a 4xx JSON error.
fn corpus() -> Vec<Probe> {
    let mut probes = Vec::new();
    // Truncated at every byte: never valid JSON.
    for cut in 0..GOOD.len() {
        probes.push(post("/api/events", &GOOD.as_bytes()[..cut]));
    }
    let batch = format!("[{GOOD},{GOOD}]");
    for cut in (0..batch.len()).step_by(7) {
        probes.push(post("/api/events", &batch.as_bytes()[..cut]));
    }
    // Invalid UTF-8 in various places.
    for bad in [
        b"\xff\xfe".to_vec(),
        [&GOOD.as_bytes()[..20], b"\xc3\x28", &GOOD.as_bytes()[20..]].concat(),
        GOOD.replace("corruption", "corr\u{0}uption").into_bytes(),
        GOOD.replace("\"a\"", "\"\\ud800\"").into_bytes(),
    ] {
        probes.push(post("/api/events", bad));
    }
    // Deeply nested JSON, inside and outside event_data.
    for depth in [200, 5_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        probes.push(post(
            "/api/events",
            GOOD.replace("{\"file_path\":\"/m/a.mkv\"}", &nested),
        ));
        probes.push(post("/api/events", nested));
    }
    // Huge strings (over the default 1 MiB body limit, and just under it).
    probes.push(post(
        "/api/events",
        GOOD.replace("\"a\"", &format!("\"{}\"", "a".repeat(2 << 20))),
    ));
    probes.push(post(
        "/api/events",
        GOOD.replace("\"a\"", &format!("\"{}\"", "a".repeat(300_000))),
    ));
    // Wrong types and missing fields, field by field.
    let fields = ["aggregate_type", "aggregate_id", "event_type", "event_data"];
    let base: Value = serde_json::from_str(GOOD).expect("good");
    for field in fields {
        let mut missing = base.clone();
        missing.as_object_mut().expect("object").remove(field);
        probes.push(post("/api/events", missing.to_string()));
        if field != "event_data" {
            for wrong in [
                Value::from(1),
                Value::from(true),
                Value::Null,
                serde_json::json!([]),
                serde_json::json!({}),
            ] {
                let mut v = base.clone();
                v[field] = wrong;
                probes.push(post("/api/events", v.to_string()));
            }
        }
    }
    for (field, value) in [
        ("event_version", serde_json::json!(-1)),
        ("event_version", serde_json::json!(1e300)),
        ("event_version", serde_json::json!("1")),
        ("created_at", serde_json::json!("yesterday")),
        ("created_at", serde_json::json!(1_700_000_000)),
        ("id", serde_json::json!("../../etc/passwd")),
        ("id", serde_json::json!(42)),
        ("unknown", serde_json::json!(1)),
        ("__proto__", serde_json::json!({})),
    ] {
        let mut v = base.clone();
        v[field] = value;
        probes.push(post("/api/events", v.to_string()));
    }
    // SQL fragments where they are not allowed (query parameters, path ids).
    for sql in SQL {
        let q = urlencode(sql);
        probes.push(get(&format!("/api/corruptions?status={q}")));
        probes.push(get(&format!("/api/corruptions?cursor={q}")));
        probes.push(get(&format!("/api/corruptions?path_id={q}")));
        probes.push(get(&format!("/api/corruptions?limit={q}")));
        probes.push(get(&format!("/api/jobs/{q}/runs")));
        probes.push(Probe {
            method: Method::POST,
            ..get(&format!("/api/jobs/{q}/run"))
        });
    }
    // Limits and cursors.
    for limit in ["-1", "0", "99999999999999999999", "1e3", "0x10", "", "NaN"] {
        probes.push(get(&format!("/api/corruptions?limit={limit}")));
        probes.push(get(&format!("/api/corruptions/a/history?limit={limit}")));
    }
    // (A well-formed cursor that was never issued is only a position in the keyset
    // order, so "AAAA" is answered normally; these are not well-formed.)
    for cursor in ["!!!", "A", "_w", &"Z".repeat(10_000), "%00", "..%2F.."] {
        probes.push(get(&format!("/api/corruptions?cursor={cursor}")));
        probes.push(get(&format!("/api/corruptions/a/history?cursor={cursor}")));
    }
    probes.push(get("/api/corruptions?limit=1&limit=2"));
    probes.push(get("/api/corruptions?nope=1"));
    // Path traversal and odd bytes in ids.
    for id in [
        "..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fdata",
        "%00",
        &"x".repeat(5_000),
    ] {
        probes.push(get(&format!("/api/corruptions/{id}")));
        probes.push(Probe {
            method: Method::DELETE,
            ..get(&format!("/api/corruptions/{id}"))
        });
    }
    probes.push(get("/api/../../etc/passwd"));
    // Very long headers.
    let mut long_header = get("/api/corruptions");
    long_header
        .headers
        .push(("x-filler".into(), "h".repeat(64 * 1024)));
    probes.push(long_header);
    let mut many_headers = get("/api/corruptions?limit=0");
    for i in 0..50 {
        many_headers.headers.push((format!("x-h{i}"), "v".into()));
    }
    probes.push(many_headers);
    // Wrong content types and methods.
    for ct in [
        "text/plain",
        "application/xml",
        "multipart/form-data",
        "application/jsonx",
    ] {
        probes.push(Probe {
            content_type: Some(ct),
            ..post("/api/events", GOOD)
        });
    }
    probes.push(Probe {
        content_type: None,
        ..post("/api/events", GOOD)
    });
    for method in [Method::PUT, Method::PATCH, Method::DELETE] {
        probes.push(Probe {
            method,
            ..post("/api/events", GOOD)
        });
    }
    probes.push(Probe {
        method: Method::POST,
        ..get("/api/health")
    });
    probes
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every row of the tables a write could touch (events, their keys, the summary and its
/// counts), as text, sorted: equal footprints mean nothing was written or changed.
fn footprint(app: &TestApp) -> Vec<String> {
    let conn = app.open();
    let mut rows = Vec::new();
    for table in [
        "events",
        "dbwarden_event_keys",
        "corruption_summary",
        "corruption_state_counts",
    ] {
        let mut stmt = conn
            .prepare(&format!("SELECT * FROM {table}"))
            .expect("prepare");
        let columns = stmt.column_count();
        let mut table_rows: Vec<String> = stmt
            .query_map([], |r| {
                let values: Vec<rusqlite::types::Value> =
                    (0..columns).map(|i| r.get(i)).collect::<Result<_, _>>()?;
                Ok(format!("{table}: {values:?}"))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        table_rows.sort();
        rows.extend(table_rows);
    }
    rows
}

#[actix_rt::test]
async fn every_hostile_request_gets_a_4xx_json_error_and_changes_nothing() {
    let mut app = TestApp::spawn(&[]).await;
    // Some data to protect.
    let res = app
        .post_json("/api/events", &serde_json::from_str(GOOD).expect("good"))
        .await;
    assert_eq!(res.status(), 201);
    // A fresh connection per probe: the server may close one after a refusal.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let before = footprint(&app);
    assert!(
        before
            .iter()
            .any(|row| row.starts_with("corruption_summary:")),
        "there is data to protect: {before:?}"
    );
    let probes = corpus();
    let total = probes.len();
    let mut failures = Vec::new();
    for probe in probes {
        let mut request = client.request(probe.method.clone(), app.url(&probe.path));
        if let Some(ct) = probe.content_type {
            request = request.header("content-type", ct);
        }
        for (k, v) in &probe.headers {
            request = request.header(k, v);
        }
        let shown = format!(
            "{} {} ({} body bytes)",
            probe.method,
            &probe.path[..probe.path.len().min(80)],
            probe.body.len()
        );
        let response = match request.body(probe.body).send().await {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{shown}: no answer: {e}"));
                continue;
            }
        };
        let status = response.status();
        let body: Option<Value> = response.json().await.ok();
        let coded = body
            .as_ref()
            .is_some_and(|b| b["error"]["code"].is_string() && b["error"]["message"].is_string());
        if !status.is_client_error() || !coded {
            failures.push(format!("{shown}: {status} {body:?}"));
        }
        if footprint(&app) != before {
            failures.push(format!("{shown}: changed the database"));
            break;
        }
    }
    app.stop().await;
    assert!(
        failures.is_empty(),
        "{} of {total} probes misbehaved:\n{}",
        failures.len(),
        failures.join("\n")
    );
    println!("hostile corpus: {total} requests, all 4xx JSON errors, database unchanged");
}

#[actix_rt::test]
async fn sql_text_in_every_event_field_is_stored_as_text() {
    let mut app = TestApp::spawn(&[]).await;
    for (i, sql) in SQL.iter().enumerate() {
        let event = serde_json::json!({
            "aggregate_type": "corruption",
            "aggregate_id": format!("{sql}{i}"),
            "event_type": sql,
            "event_data": {"file_path": sql, "error": sql},
        });
        let res = app.post_json("/api/events", &event).await;
        assert_eq!(res.status(), 201, "{sql}");
        let got = app
            .get_json(&format!(
                "/api/corruptions/{}",
                urlencode(&format!("{sql}{i}"))
            ))
            .await;
        assert_eq!(got["corruption_id"], format!("{sql}{i}"), "{got}");
    }
    app.stop().await;
    let conn = app.open();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('events', 'corruption_summary', 'dbwarden_migrations')",
            [],
            |r| r.get(0),
        )
        .expect("schema");
    assert_eq!(tables, 3, "nothing was dropped");
    assert_eq!(app.event_count(), SQL.len() as i64);
    common::assert_summary_exact(&conn);
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 2_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/hostile.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// Event parsing never panics; a refusal names a field.
    #[test]
    fn event_parsing_never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        if let Err(e) = dbwarden::events::parse_body(&body, 100) {
            prop_assert!(!e.field.is_empty());
        }
    }

    /// Near-valid JSON (a valid event with one byte changed) never panics either.
    #[test]
    fn mutated_events_never_panic(at in 0..GOOD.len(), byte in any::<u8>()) {
        let mut body = GOOD.as_bytes().to_vec();
        body[at] = byte;
        if let Err(e) = dbwarden::events::parse_body(&body, 100) {
            prop_assert!(!e.field.is_empty());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct("tests/hostile.proptest-regressions"))),
        ..ProptestConfig::default()
    })]

    /// A job file of any text is loaded or refused with its file and a key, never a panic.
    #[test]
    fn job_files_never_panic(text in job_text()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("job.toml");
        std::fs::write(&path, &text).expect("write");
        if let Err(errors) = dbwarden::jobs::load_file(&path) {
            for e in errors.0 {
                prop_assert!(e.file.ends_with("job.toml") && !e.key.is_empty(), "{e}");
            }
        }
    }

    /// A settings file of any text is loaded or refused with a message, never a panic.
    #[test]
    fn settings_files_never_panic(text in settings_text()) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("config.toml");
        std::fs::write(&path, &text).expect("write");
        let source = dbwarden::config::ConfigSource::Explicit(path);
        if let Err(e) = dbwarden::config::Settings::load_with_env(&source, Vec::<(String, String)>::new()) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

/// TOML-shaped text: known and unknown keys with values of every type, plus noise.
fn job_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("schedule"),
        Just("kind"),
        Just("timeout_secs"),
        Just("enabled"),
        Just("overlap"),
        Just("notify_on"),
        Just("statements"),
        Just("sql"),
        Just("alert_above"),
        Just("alert_below"),
        Just("argv"),
        Just("workdir"),
        Just("env"),
        Just("url"),
        Just("method"),
        Just("headers"),
        Just("body"),
        Just("expect_status"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        Just("\"sql\"".to_string()),
        Just("\"query\"".to_string()),
        Just("\"command\"".to_string()),
        Just("\"http\"".to_string()),
        Just("\"* * * * * *\"".to_string()),
        Just("\"x\"".to_string()),
        Just("\"http://127.0.0.1:1/\"".to_string()),
        Just("[\"a\", \"b\"]".to_string()),
        Just("[]".to_string()),
        Just("[1, 2]".to_string()),
        Just("{ A = \"b\" }".to_string()),
        Just("{ A = 1 }".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("1.5".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "[ -~]{0,12}".prop_map(|s| format!("\"{}\"", s.replace(['"', '\\'], ""))),
    ];
    let line = prop_oneof![
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
    ];
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

fn settings_text() -> impl Strategy<Value = String> {
    let section = prop_oneof![
        Just("database"),
        Just("writer"),
        Just("backup"),
        Just("checkpoint"),
        Just("integrity"),
        Just("notify"),
        Just("jobs"),
        Just("api"),
        Just("logging"),
        Just("nope"),
    ];
    let key = prop_oneof![
        Just("path"),
        Just("readers"),
        Just("schedule"),
        Just("keep_last"),
        Just("listen"),
        Just("token"),
        Just("level"),
        Just("dir"),
        Just("channels"),
        Just("vfs"),
        Just("mailbox_capacity"),
        Just("cooldown_secs"),
        Just("bogus"),
    ];
    let value = prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        Just("\"\"".to_string()),
        Just("\"x\"".to_string()),
        Just("\"127.0.0.1:0\"".to_string()),
        Just("\"0 0 * * * *\"".to_string()),
        Just("[]".to_string()),
        Just("[{ kind = \"webhook\" }]".to_string()),
        Just("{}".to_string()),
        Just("1.5".to_string()),
    ];
    let line = prop_oneof![
        1 => section.prop_map(|s| format!("[{s}]")),
        4 => (key, value).prop_map(|(k, v)| format!("{k} = {v}")),
        1 => "[ -~]{0,20}",
    ];
    proptest::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n"))
}

#[actix_rt::test]
async fn headers_beyond_the_http_parser_get_a_bare_431_and_the_service_goes_on() {
    let mut app = TestApp::spawn(&[]).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let res = client
        .get(app.url("/api/corruptions"))
        .header("x-filler", "h".repeat(1 << 20))
        .send()
        .await
        .expect("an answer, not a dropped connection");
    // The HTTP parser answers before any route runs, so this one has no JSON body.
    assert_eq!(res.status(), 431);
    let health = app.get_json("/api/health").await;
    assert_eq!(health["status"], "healthy", "{health}");
    app.stop().await;
}

#[actix_rt::test]
async fn a_flood_from_one_client_is_held_to_its_rate_with_json_429s() {
    let (rate, burst) = (20u64, 20u64);
    // The test's clients are on loopback, which is exempt unless told otherwise.
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__API__RATE_LIMIT_PER_SECOND", &rate.to_string()),
        ("DBWARDEN__API__RATE_LIMIT_BURST", &burst.to_string()),
        ("DBWARDEN__API__RATE_LIMIT_LOOPBACK", "true"),
    ])
    .await;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for t in 0..16 {
        let (client, url) = (app.client.clone(), app.url("/api/events"));
        tasks.push(actix_rt::spawn(async move {
            let mut seen = Vec::new();
            for i in 0..25 {
                let event = serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("f{t}-{i}"), "event_type": "CorruptionDetected", "event_data": {}});
                let res = client.post(&url).json(&event).send().await.expect("answer");
                let status = res.status().as_u16();
                let retry = res.headers().get("retry-after").is_some();
                let body: Value = res.json().await.unwrap_or(Value::Null);
                seen.push((status, retry, body));
            }
            seen
        }));
    }
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.expect("task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = answers.iter().filter(|(s, _, _)| *s == 201).count() as u64;
    let limited: Vec<_> = answers.iter().filter(|(s, _, _)| *s == 429).collect();
    assert_eq!(
        accepted + limited.len() as u64,
        answers.len() as u64,
        "only 201 or 429, never a 5xx"
    );
    assert!(
        accepted <= burst + (rate as f64 * elapsed).ceil() as u64 + 1,
        "{accepted} accepted in {elapsed:.2} s"
    );
    assert!(!limited.is_empty());
    assert!(
        accepted >= burst,
        "the burst is let through before the rate applies: {accepted} accepted"
    );
    for (_, retry_after, body) in &limited {
        assert!(*retry_after, "429 carries Retry-After");
        assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    }
    app.stop().await;
    assert_eq!(
        app.event_count() as u64,
        accepted,
        "exactly the accepted requests were written"
    );
}

/// Sends `n` event appends one after another; the statuses.
async fn append_n(app: &TestApp, n: usize) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..n {
        let event = serde_json::json!({"aggregate_type": "corruption", "aggregate_id": format!("l{i}"), "event_type": "CorruptionDetected", "event_data": {}});
        statuses.push(app.post_json("/api/events", &event).await.status().as_u16());
    }
    statuses
}

#[actix_rt::test]
async fn loopback_clients_are_not_limited_by_default() {
    // A tiny budget that 60 requests in a row would exhaust many times over.
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__API__RATE_LIMIT_PER_SECOND", "1"),
        ("DBWARDEN__API__RATE_LIMIT_BURST", "3"),
    ])
    .await;
    let statuses = append_n(&app, 60).await;
    assert!(statuses.iter().all(|s| *s == 201), "{statuses:?}");
    for _ in 0..5 {
        assert_eq!(app.post("/api/backups").await.status(), 201);
    }
    app.stop().await;
}

#[actix_rt::test]
async fn operations_keep_their_own_budget_when_traffic_is_limited() {
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__API__RATE_LIMIT_PER_SECOND", "1"),
        ("DBWARDEN__API__RATE_LIMIT_BURST", "3"),
        ("DBWARDEN__API__RATE_LIMIT_LOOPBACK", "true"),
    ])
    .await;
    let statuses = append_n(&app, 12).await;
    assert!(statuses.contains(&429), "traffic is limited: {statuses:?}");
    // The event traffic used up its bucket; a backup still has its own.
    assert_eq!(app.post("/api/backups").await.status(), 201);
    let run = app.post("/api/jobs/checkpoint/run?wait=true").await;
    assert_eq!(run.status(), 200);
    app.stop().await;
}

//! The HTTP API against the real service on port 0 over a temp dir.

mod common;

use std::time::Duration;

use common::TestApp;
use dbwarden::events::NewEvent;
use dbwarden::writer::WriteError;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn event(id: &str, event_type: &str, data: Value) -> Value {
    json!({"aggregate_type": "corruption", "aggregate_id": id, "event_type": event_type, "event_data": data})
}

async fn body(res: reqwest::Response) -> Value {
    res.json().await.expect("json body")
}

#[actix_rt::test]
async fn appends_and_answers_from_the_summary() {
    let mut app = TestApp::spawn(&[]).await;
    let res = app
        .post_json(
            "/api/events",
            &json!([
                event(
                    "c1",
                    "CorruptionDetected",
                    json!({"file_path": "/tv/a.mkv", "path_id": 1, "corruption_type": "ZeroByte"})
                ),
                event("c1", "DeletionFailed", json!({"error": "disk busy"})),
                event("c1", "NotificationFailed", json!({"error": "discord down"})),
                event(
                    "c2",
                    "CorruptionDetected",
                    json!({"file_path": "/tv/b.mkv", "path_id": 2})
                ),
                event(
                    "c3",
                    "CorruptionDetected",
                    json!({"file_path": "/tv/c.mkv"})
                ),
                event("c3", "VerificationSuccess", json!(null)),
            ]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let ids = body(res).await["ids"].as_array().expect("ids").clone();
    assert_eq!(ids.len(), 6);

    let c1 = app.get_json("/api/corruptions/c1").await;
    assert_eq!(
        c1["current_state"], "DeletionFailed",
        "notification events do not change the state"
    );
    assert_eq!(c1["retry_count"], 1, "NotificationFailed is not a retry");
    assert_eq!(c1["last_error"], "disk busy");
    assert_eq!(c1["file_path"], "/tv/a.mkv");
    assert_eq!(c1["bucket"], "failed");

    let history = app.get_json("/api/corruptions/c1/history").await;
    let types: Vec<&str> = history["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["event_type"].as_str().expect("type"))
        .collect();
    assert_eq!(
        types,
        ["CorruptionDetected", "DeletionFailed", "NotificationFailed"]
    );
    assert_eq!(history["events"][0]["event_data"]["path_id"], 1);

    let health_res = app
        .client
        .get(app.url("/api/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health_res.status(), StatusCode::OK);
    let health = body(health_res).await;
    assert_eq!(health["status"], "healthy");
    assert_eq!(health["pending_corruptions"], 1);
    assert_eq!(health["database"]["status"], "connected");
    assert!(health["database"]["wal_bytes"].as_i64().expect("wal bytes") >= 0);
    assert!(health["database"]["size_bytes"].as_i64().expect("size") > 0);

    let stats = app.get_json("/api/stats/dashboard").await;
    assert_eq!(stats["buckets"]["pending"], 1);
    assert_eq!(stats["buckets"]["failed"], 1);
    assert_eq!(stats["buckets"]["resolved"], 1);
    assert_eq!(stats["total"], 3);
    assert_eq!(stats["corruptions_today"], 3);
    assert_eq!(stats["success_rate"], 100);

    let failed = app.get_json("/api/corruptions?status=failed").await;
    assert_eq!(failed["items"].as_array().expect("items").len(), 1);
    let active = app.get_json("/api/corruptions?status=active").await;
    assert_eq!(active["items"].as_array().expect("items").len(), 2);
    let exact = app
        .get_json("/api/corruptions?status=VerificationSuccess")
        .await;
    assert_eq!(exact["items"][0]["corruption_id"], "c3");
    let by_path = app.get_json("/api/corruptions?path_id=2").await;
    assert_eq!(by_path["items"][0]["corruption_id"], "c2");

    app.stop().await;
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn client_ids_make_appends_idempotent() {
    let mut app = TestApp::spawn(&[]).await;
    let mut e = event("c1", "CorruptionDetected", json!({}));
    e["id"] = json!("67e55044-10b1-426f-9247-bb680e5fe0c8");
    let first = body(app.post_json("/api/events", &e).await).await;
    let again = app
        .post_json(
            "/api/events",
            &json!([e, event("c1", "RemediationQueued", json!({}))]),
        )
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    let again = body(again).await;
    assert_eq!(
        again["ids"][0], first["ids"][0],
        "same id → original row id"
    );
    app.stop().await;
    assert_eq!(
        app.event_count(),
        2,
        "the repeated event was not written twice"
    );
}

#[actix_rt::test]
async fn pages_are_stable_and_complete() {
    let mut app = TestApp::spawn(&[]).await;
    let batch: Vec<Value> = (0..25)
        .map(|i| {
            event(
                &format!("c{i:03}"),
                "CorruptionDetected",
                json!({"path_id": i % 3}),
            )
        })
        .collect();
    assert_eq!(
        app.post_json("/api/events", &json!(batch)).await.status(),
        StatusCode::CREATED
    );
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => app.url(&format!(
                "/api/corruptions?status=pending&limit=10&cursor={c}"
            )),
            None => app.url("/api/corruptions?status=pending&limit=10"),
        };
        let page = body(app.client.get(url).send().await.expect("page")).await;
        for item in page["items"].as_array().expect("items") {
            seen.push(item["corruption_id"].as_str().expect("id").to_string());
        }
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let expected: Vec<String> = (0..25).map(|i| format!("c{i:03}")).collect();
    assert_eq!(seen, expected);
    app.stop().await;
}

#[actix_rt::test]
async fn delete_removes_events_and_summary_row() {
    let mut app = TestApp::spawn(&[]).await;
    app.post_json(
        "/api/events",
        &json!([
            event("gone", "CorruptionDetected", json!({})),
            event("gone", "DeletionFailed", json!({"error": "x"})),
            event("kept", "CorruptionDetected", json!({}))
        ]),
    )
    .await;
    let res = app
        .client
        .delete(app.url("/api/corruptions/gone"))
        .send()
        .await
        .expect("delete");
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(body(res).await["deleted_events"], 2);
    let res = app
        .client
        .get(app.url("/api/corruptions/gone"))
        .send()
        .await
        .expect("get");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let res = app
        .client
        .delete(app.url("/api/corruptions/gone"))
        .send()
        .await
        .expect("delete again");
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let stats = app.get_json("/api/stats/dashboard").await;
    assert_eq!(stats["total"], 1);
    app.stop().await;
    common::assert_summary_exact(&app.open());
}

#[actix_rt::test]
async fn token_guards_everything_but_health() {
    let mut app = TestApp::spawn(&[("DBWARDEN__API__TOKEN", "s3cret-token")]).await;
    let health = app
        .client
        .get(app.url("/api/health"))
        .send()
        .await
        .expect("health");
    assert_eq!(health.status(), StatusCode::OK);
    for (token, expected) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("wrong"), StatusCode::UNAUTHORIZED),
        (Some("s3cret-token"), StatusCode::OK),
    ] {
        let mut req = app.client.get(app.url("/api/stats/dashboard"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.expect("stats");
        assert_eq!(res.status(), expected, "token {token:?}");
        if expected == StatusCode::UNAUTHORIZED {
            assert_eq!(body(res).await["error"]["code"], "unauthorized");
        }
    }
    for scheme in ["bearer", "BEARER", "Bearer"] {
        let res = app
            .client
            .get(app.url("/api/stats/dashboard"))
            .header("authorization", format!("{scheme} s3cret-token"))
            .send()
            .await
            .expect("stats");
        assert_eq!(res.status(), StatusCode::OK, "scheme {scheme}");
    }
    // Healarr's clients send their key as X-Api-Key.
    for (key, expected) in [
        ("s3cret-token", StatusCode::OK),
        ("nope", StatusCode::UNAUTHORIZED),
    ] {
        let res = app
            .client
            .get(app.url("/api/stats/dashboard"))
            .header("x-api-key", key)
            .send()
            .await
            .expect("stats");
        assert_eq!(res.status(), expected, "X-Api-Key {key}");
    }
    // The status page itself is open (it holds no data); the API behind it is not.
    let page = app.client.get(app.url("/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let res = app
        .post_json("/api/events", &event("c", "CorruptionDetected", json!({})))
        .await;
    assert_eq!(
        res.status(),
        StatusCode::UNAUTHORIZED,
        "writes need the token too"
    );
    app.stop().await;
    assert_eq!(app.event_count(), 0);
}

/// One bad request and the answer it must get.
struct Case<'a> {
    method: &'a str,
    path: &'a str,
    content_type: &'a str,
    payload: String,
    status: u16,
    code: &'a str,
    field: Option<&'a str>,
}

impl<'a> Case<'a> {
    fn new(
        method: &'a str,
        path: &'a str,
        content_type: &'a str,
        payload: String,
        status: u16,
        code: &'a str,
        field: Option<&'a str>,
    ) -> Case<'a> {
        Case {
            method,
            path,
            content_type,
            payload,
            status,
            code,
            field,
        }
    }
}

/// Each client mistake: status, error code and the field named. Nothing is written.
#[actix_rt::test]
async fn bad_input_gets_a_clear_4xx_and_writes_nothing() {
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__API__MAX_BODY_BYTES", "2048"),
        ("DBWARDEN__API__MAX_BATCH_EVENTS", "3"),
    ])
    .await;
    let good = r#"{"aggregate_type":"corruption","aggregate_id":"a","event_type":"CorruptionDetected","event_data":{}}"#;
    let long_id = format!("/api/corruptions/{}", "a".repeat(300));
    let cases: Vec<Case> = vec![
        Case::new("POST", "/api/events", "application/json", "{\"aggregate_type\":".into(), 400, "bad_request", Some("body")),
        Case::new("POST", "/api/events", "application/json", "".into(), 400, "bad_request", Some("body")),
        Case::new("POST", "/api/events", "application/json", "[]".into(), 400, "bad_request", Some("body")),
        Case::new("POST", "/api/events", "application/json", "\"text\"".into(), 400, "bad_request", Some("body")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_id":"a","event_type":"t","event_data":1}"#.into(), 400, "bad_request", Some("aggregate_type")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":" ","aggregate_id":"a","event_type":"t","event_data":1}"#.into(), 400, "bad_request", Some("aggregate_type")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":["a"],"event_type":"t","event_data":1}"#.into(), 400, "bad_request", Some("aggregate_id")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t"}"#.into(), 400, "bad_request", Some("event_data")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"extra":true}"#.into(), 400, "bad_request", Some("extra")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"id":"not-a-uuid"}"#.into(), 400, "bad_request", Some("id")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"created_at":"2026-13-45"}"#.into(), 400, "bad_request", Some("created_at")),
        Case::new("POST", "/api/events", "application/json", r#"{"aggregate_type":"c","aggregate_id":"a","event_type":"t","event_data":1,"event_version":0}"#.into(), 400, "bad_request", Some("event_version")),
        Case::new("POST", "/api/events", "application/json", format!("[{good},{good},{{\"aggregate_type\":\"c\"}}]"), 400, "bad_request", Some("events[2].aggregate_id")),
        Case::new("POST", "/api/events", "application/json", format!("[{good},{good},{good},{good}]"), 400, "bad_request", Some("body")),
        Case::new("POST", "/api/events", "application/json", format!("[{}]", vec![good; 30].join(",")), 413, "payload_too_large", None),
        Case::new("POST", "/api/events", "text/plain", good.into(), 415, "unsupported_media_type", None),
        Case::new("POST", "/api/events", "", good.into(), 415, "unsupported_media_type", None),
        Case::new("GET", "/api/events", "", "".into(), 405, "method_not_allowed", None),
        Case::new("GET", "/api/nowhere", "", "".into(), 404, "not_found", None),
        Case::new("GET", "/api/corruptions?limit=0", "", "".into(), 400, "bad_request", Some("limit")),
        Case::new("GET", "/api/corruptions?limit=100000", "", "".into(), 400, "bad_request", Some("limit")),
        Case::new("GET", "/api/corruptions?limit=-5", "", "".into(), 400, "bad_request", Some("limit")),
        Case::new("GET", "/api/corruptions?status=drop%20table", "", "".into(), 400, "bad_request", Some("status")),
        Case::new("GET", "/api/corruptions?path_id=abc", "", "".into(), 400, "bad_request", Some("path_id")),
        Case::new("GET", "/api/corruptions?cursor=%%%", "", "".into(), 400, "bad_request", Some("cursor")),
        Case::new("GET", "/api/corruptions?cursor=!!notbase64", "", "".into(), 400, "bad_request", Some("cursor")),
        Case::new("GET", "/api/corruptions?sort=asc", "", "".into(), 400, "bad_request", Some("sort")),
        Case::new("GET", "/api/corruptions?limit=1&limit=2", "", "".into(), 400, "bad_request", Some("limit")),
        Case::new("GET", "/api/corruptions/unknown-id", "", "".into(), 404, "not_found", None),
        Case::new("GET", "/api/corruptions/x/history?cursor=AAAA", "", "".into(), 400, "bad_request", Some("cursor")),
        Case::new("GET", &long_id, "", "".into(), 400, "bad_request", Some("id")),
        Case::new("DELETE", "/api/corruptions/nope", "", "".into(), 404, "not_found", None),
        Case::new("PATCH", "/api/corruptions/nope", "", "".into(), 405, "method_not_allowed", None),
    ];
    for Case {
        method,
        path,
        content_type,
        payload,
        status,
        code,
        field,
    } in cases
    {
        let mut req = app
            .client
            .request(method.parse().expect("method"), app.url(path));
        if !content_type.is_empty() {
            req = req.header("content-type", content_type);
        }
        let res = req.body(payload.clone()).send().await.expect("request");
        let got = res.status().as_u16();
        let text = res.text().await.expect("text");
        assert_eq!(got, status, "{method} {path} {payload:.60} → {text}");
        let json: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: JSON error body, got {text}"));
        assert_eq!(json["error"]["code"], code, "{method} {path}: {text}");
        assert!(
            !json["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{text}"
        );
        if let Some(f) = field {
            assert_eq!(json["error"]["field"], f, "{method} {path}: {text}");
        }
    }
    app.stop().await;
    assert_eq!(app.event_count(), 0, "no rejected request wrote anything");
}

/// Another connection holds the write lock while 40 appends arrive at a writer whose
/// mailbox holds `capacity`; answers (acknowledged ids, 503s) once the lock is released.
/// Every 503 carries `Retry-After: 1` and the `busy` code; everything acknowledged is on
/// disk afterwards.
async fn appends_behind_a_held_lock(capacity: usize) -> (Vec<i64>, usize) {
    let capacity = capacity.to_string();
    let mut app = TestApp::spawn(&[
        ("DBWARDEN__WRITER__MAILBOX_CAPACITY", capacity.as_str()),
        ("DBWARDEN__DATABASE__BUSY_TIMEOUT_MS", "10000"),
    ])
    .await;
    let blocker = rusqlite::Connection::open(&app.db_path).expect("blocker");
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = app.client.clone();
        let url = app.url("/api/events");
        tasks.push(tokio::spawn(async move {
            let res = client
                .post(url)
                .json(&event(&format!("c{i}"), "CorruptionDetected", json!({})))
                .send()
                .await
                .expect("post");
            let retry_after = res
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap_or("").to_string());
            (
                res.status(),
                retry_after,
                res.json::<Value>().await.expect("json"),
            )
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    blocker.execute_batch("ROLLBACK").expect("release");
    let mut acked = Vec::new();
    let mut busy = 0;
    for t in tasks {
        let (status, retry_after, json) = t.await.expect("task");
        match status {
            StatusCode::CREATED => acked.push(json["ids"][0].as_i64().expect("id")),
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(retry_after.as_deref(), Some("1"));
                assert_eq!(json["error"]["code"], "busy");
            }
            other => panic!("unexpected {other}: {json}"),
        }
    }
    app.stop().await;
    let conn = app.open();
    for id in &acked {
        let found: i64 = conn
            .query_row("SELECT count(*) FROM events WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .expect("count");
        assert_eq!(found, 1, "acknowledged event {id} is on disk");
    }
    (acked, busy)
}

/// Fault injection: the writer blocks and its bounded mailbox fills. Callers get 503
/// with Retry-After, never a queue without end.
#[actix_rt::test]
async fn a_full_mailbox_answers_503_with_retry_after() {
    let (acked, busy) = appends_behind_a_held_lock(2).await;
    assert!(
        busy > 0,
        "some writes were refused while the mailbox was full"
    );
    assert!(
        !acked.is_empty(),
        "the writer recovered once the lock was released"
    );
    // The mailbox's two, the request being committed, and at most one more taken
    // before the commit began: the configured bound, not actix's default of 16.
    assert!(
        acked.len() <= 4,
        "{} accepted behind a mailbox of 2",
        acked.len()
    );
}

/// The configured capacity is the bound: a mailbox of 64 takes all 40 requests.
#[actix_rt::test]
async fn a_mailbox_of_the_configured_size_takes_that_many() {
    let (acked, busy) = appends_behind_a_held_lock(64).await;
    assert_eq!((acked.len(), busy), (40, 0));
}

/// Blocks the writer behind another connection's write lock on a first append,
/// queues `requests` behind it, releases the lock, and returns the first append's
/// result, the requests' results and how many transactions the writer committed.
async fn group_commit(
    app: &TestApp,
    blocker: &rusqlite::Connection,
    requests: Vec<Vec<NewEvent>>,
) -> (
    Result<Vec<i64>, WriteError>,
    Vec<Result<Vec<i64>, WriteError>>,
    u64,
) {
    let writer = app.service.as_ref().expect("service").writer.clone();
    let batches = || {
        writer
            .stats()
            .batches
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    blocker
        .execute_batch("BEGIN IMMEDIATE")
        .expect("hold the write lock");
    let before = batches();
    let first = {
        let w = writer.clone();
        tokio::spawn(async move {
            w.append(vec![NewEvent::new(
                "corruption",
                "first",
                "CorruptionDetected",
                json!({}),
            )
            .expect("a valid event")])
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await; // the writer is now blocked in BEGIN
    let handles: Vec<_> = requests
        .into_iter()
        .map(|r| {
            let w = writer.clone();
            tokio::spawn(async move { w.append(r).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    blocker.execute_batch("ROLLBACK").expect("release");
    let first = first.await.expect("task");
    let mut results = Vec::new();
    for h in handles {
        results.push(h.await.expect("task"));
    }
    (first, results, batches() - before)
}

fn aggregate_ids_in_order(app: &TestApp) -> Vec<String> {
    let conn = app.open();
    let mut stmt = conn
        .prepare("SELECT aggregate_id FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("row")).collect()
}

fn three_requests(middle_extra: NewEvent) -> Vec<Vec<NewEvent>> {
    vec![
        vec![
            NewEvent::new("corruption", "a", "CorruptionDetected", json!({}))
                .expect("a valid event"),
        ],
        vec![
            NewEvent::new("corruption", "b", "CorruptionDetected", json!({}))
                .expect("a valid event"),
            middle_extra,
        ],
        vec![
            NewEvent::new("corruption", "c", "CorruptionDetected", json!({}))
                .expect("a valid event"),
        ],
    ]
}

/// An invalid event cannot be built, so it never reaches the writer: the library
/// constructor checks every field as the HTTP API does and names the one at fault.
/// (That one bad write fails alone inside a group commit is shown below with an event
/// the database itself refuses.)
#[test]
fn an_invalid_event_cannot_be_built() {
    for (aggregate_type, aggregate_id, event_type, field) in [
        ("corruption", "", "CorruptionDetected", "aggregate_id"),
        ("", "a", "CorruptionDetected", "aggregate_type"),
        ("corruption", "a", "bad\u{0}type", "event_type"),
    ] {
        let err = NewEvent::new(aggregate_type, aggregate_id, event_type, json!({}))
            .expect_err("refused");
        assert_eq!(err.field, field, "{err}");
    }
    let deep = (0..200).fold(json!(1), |inner, _| json!([inner]));
    let err = NewEvent::new("corruption", "a", "t", deep).expect_err("too deep");
    assert_eq!(err.field, "event_data");
}

/// Fault injection: a trigger of the user's own makes the database reject one event
/// (it passes our validation). The merged multi-row write of the group fails, is
/// rolled back, and is retried request by request: only the poisoned request fails.
#[actix_rt::test]
async fn a_request_the_database_rejects_fails_alone_within_a_group_commit() {
    let mut app = TestApp::spawn(&[("DBWARDEN__DATABASE__BUSY_TIMEOUT_MS", "10000")]).await;
    let blocker = rusqlite::Connection::open(&app.db_path).expect("second connection");
    blocker
        .execute_batch(
            "CREATE TRIGGER reject_poison BEFORE INSERT ON events WHEN NEW.event_type = 'Poison'
             BEGIN SELECT RAISE(ABORT, 'poison event refused'); END;",
        )
        .expect("install the fault");
    let poison = NewEvent::new("corruption", "b", "Poison", json!({})).expect("a valid event");
    let (first, results, transactions) = group_commit(&app, &blocker, three_requests(poison)).await;
    assert!(first.is_ok());
    assert_eq!(
        transactions, 2,
        "the first append alone, then the three queued requests in one transaction"
    );
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert!(
        matches!(&results[1], Err(WriteError::Rejected(reason)) if reason.contains("poison")),
        "{:?}",
        results[1]
    );
    assert!(results[2].is_ok(), "{:?}", results[2]);
    app.stop().await;
    assert_eq!(aggregate_ids_in_order(&app), ["first", "a", "c"]);
    common::assert_summary_exact(&app.open());
}

/// Requests queued while the writer waits for the write lock are committed together:
/// one transaction for all of them, each answered with its own ids.
#[actix_rt::test]
async fn requests_queued_behind_a_busy_writer_commit_in_one_transaction() {
    let mut app = TestApp::spawn(&[("DBWARDEN__DATABASE__BUSY_TIMEOUT_MS", "10000")]).await;
    let blocker = rusqlite::Connection::open(&app.db_path).expect("second connection");
    let extra = NewEvent::new("corruption", "b", "DownloadFailed", json!({})).expect("valid");
    let (first, results, transactions) = group_commit(&app, &blocker, three_requests(extra)).await;
    assert_eq!(first.expect("first"), vec![1]);
    let ids: Vec<Vec<i64>> = results.into_iter().map(|r| r.expect("committed")).collect();
    assert_eq!(ids, vec![vec![2], vec![3, 4], vec![5]]);
    assert_eq!(
        transactions, 2,
        "the first alone, then the three queued together"
    );
    app.stop().await;
    assert_eq!(aggregate_ids_in_order(&app), ["first", "a", "b", "b", "c"]);
}

#[actix_rt::test]
async fn dbwarden_status_prints_the_running_services_health() {
    let mut app = TestApp::spawn(&[("DBWARDEN__API__TOKEN", "status-token")]).await;
    let listen = app.base.trim_start_matches("http://").to_string();
    let run = |token: &'static str| {
        tokio::process::Command::new(env!("CARGO_BIN_EXE_dbwarden"))
            .arg("status")
            .env("DBWARDEN__API__LISTEN", &listen)
            .env("DBWARDEN__API__TOKEN", token)
            .env_remove("RUST_LOG")
            .output()
    };
    let out = run("status-token").await.expect("run");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{shown}");
    assert!(
        shown.contains(": healthy") && shown.contains("pending corruptions"),
        "{shown}"
    );
    app.stop().await;
}

#[actix_rt::test]
async fn newer_healarr_states_fall_in_their_buckets() {
    let mut app = TestApp::spawn(&[]).await;
    let mut events = Vec::new();
    for (id, state) in [
        ("a", "ReleaseBlocklisted"),
        ("b", "MonitorOverridden"),
        ("c", "RemediationPaused"),
        ("d", "SomethingNewer"),
    ] {
        events.push(event(id, "CorruptionDetected", json!({"file_path": "/m"})));
        events.push(event(id, state, json!({})));
    }
    let res = app.post_json("/api/events", &json!(events)).await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let stats = app.get_json("/api/stats/dashboard").await;
    assert_eq!(stats["buckets"]["in_progress"], 2, "{stats}");
    assert_eq!(stats["buckets"]["manual_intervention"], 1, "{stats}");
    assert_eq!(stats["buckets"]["other"], 1, "{stats}");
    let page = app
        .get_json("/api/corruptions?status=manual_intervention")
        .await;
    assert_eq!(page["items"][0]["corruption_id"], "c", "{page}");
    assert_eq!(page["items"][0]["bucket"], "manual_intervention");
    app.stop().await;
}

#[actix_rt::test]
async fn corruptions_today_counts_detection_events_as_healarr_does() {
    let mut app = TestApp::spawn(&[]).await;
    let now = chrono::Utc::now();
    let today = now.to_rfc3339();
    let yesterday = (now - chrono::Duration::days(1)).to_rfc3339();
    let at = |id: &str, t: &str, when: &str| {
        let mut e = event(id, t, json!({"file_path": "/m"}));
        e["created_at"] = json!(when);
        e
    };
    let res = app
        .post_json(
            "/api/events",
            &json!([
                // Detected twice today: counts twice.
                at("twice", "CorruptionDetected", &today),
                at("twice", "CorruptionDetected", &today),
                // First seen yesterday, detected again today: counts once.
                at("again", "CorruptionDetected", &yesterday),
                at("again", "CorruptionDetected", &today),
                // Detected today, then ignored: left out.
                at("ignored", "CorruptionDetected", &today),
                at("ignored", "CorruptionIgnored", &today),
                // Only yesterday: left out.
                at("old", "CorruptionDetected", &yesterday),
                at("old", "RemediationQueued", &today),
            ]),
        )
        .await;
    assert_eq!(res.status(), StatusCode::CREATED);
    let stats = app.get_json("/api/stats/dashboard").await;
    assert_eq!(stats["corruptions_today"], 3, "{stats}");
    app.stop().await;
}

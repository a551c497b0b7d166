//! The event a client sends is stored as it was sent: `event_data` keeps its exact
//! bytes (key order, numbers beyond 64 bits, exponents, escapes, unicode, whitespace
//! inside the value, `null`), and the history answers with those same bytes.

mod common;

use common::TestApp;

const DATA: &[&str] = &[
    r#"{"zeta":1,"alpha":2,"big":123456789012345678901234567890,"e":1e2}"#,
    r#"{"negative_exponent":-1.50E-7,"zero":0.0,"max":18446744073709551616}"#,
    r#"{"escapes":"tab\there \"quoted\" \\ back\/slash \u00e9 \ud83d\ude00","nl":"a\nb"}"#,
    r#"{"unicode":"Ünïcødé ✓ 日本","file_path":"/media/tv/Show ü/ep 1.mkv"}"#,
    r#"{ "spaced" :  [ 1 , 2 ,
      3 ] ,	"tabbed":{"k" :"v"} }"#,
    "null",
    r#""just a string""#,
    "[3,2,1]",
    "12345678901234567890123456789",
];

#[actix_rt::test]
async fn event_data_is_stored_and_served_byte_for_byte() {
    let mut app = TestApp::spawn(&[]).await;
    for (i, data) in DATA.iter().enumerate() {
        // The body is written by hand: no serializer touches event_data on the way.
        let body = format!(
            r#"{{"aggregate_type":"corruption","aggregate_id":"raw-{i}","event_type":"CorruptionDetected","event_data":  {data}  }}"#
        );
        let res = app.post_text("/api/events", body).await;
        assert_eq!(res.status(), 201, "{data}");
    }
    // An array of events keeps each one's bytes too.
    let batch = format!(
        r#"[{{"aggregate_type":"corruption","aggregate_id":"raw-batch","event_type":"RemediationQueued","event_data":{}}},
            {{"aggregate_type":"corruption","aggregate_id":"raw-batch","event_type":"SearchStarted","event_data":{}}}]"#,
        DATA[0], DATA[4]
    );
    let res = app.post_text("/api/events", batch).await;
    assert_eq!(res.status(), 201);

    let conn = app.open();
    let stored = |aggregate: &str| -> Vec<Vec<u8>> {
        let mut stmt = conn
            .prepare(
                "SELECT CAST(event_data AS BLOB) FROM events WHERE aggregate_id = ?1 ORDER BY id",
            )
            .expect("prepare");
        let rows = stmt.query_map([aggregate], |r| r.get(0)).expect("query");
        rows.map(|r| r.expect("row")).collect()
    };
    for (i, data) in DATA.iter().enumerate() {
        assert_eq!(
            stored(&format!("raw-{i}")),
            vec![data.as_bytes().to_vec()],
            "stored bytes of {data}"
        );
        let text = app
            .client
            .get(app.url(&format!("/api/corruptions/raw-{i}/history")))
            .send()
            .await
            .expect("history")
            .text()
            .await
            .expect("body");
        assert!(
            text.contains(&format!(r#""event_data":{data}"#)),
            "history serves the bytes of {data}: {text}"
        );
    }
    assert_eq!(
        stored("raw-batch"),
        vec![DATA[0].as_bytes().to_vec(), DATA[4].as_bytes().to_vec()]
    );
    // The summary still reads fields out of the exact text.
    let row = app.get_json("/api/corruptions/raw-3").await;
    assert_eq!(row["file_path"], "/media/tv/Show ü/ep 1.mkv");
    drop(conn);
    app.stop().await;
}

#[actix_rt::test]
async fn a_field_given_twice_is_refused_by_name() {
    let mut app = TestApp::spawn(&[]).await;
    let res = app.post_text("/api/events", r#"{"aggregate_type":"corruption","aggregate_id":"a","event_type":"t","event_data":1,"event_data":2}"#).await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.expect("json");
    assert_eq!(body["error"]["field"], "event_data", "{body}");
    assert_eq!(app.event_count(), 0);
    app.stop().await;
}

//! The writer's multi-row INSERT path means exactly what inserting one event at a
//! time means: same row ids, same rows, same idempotency keys, same summary.

mod common;

use dbwarden::db::{migrations, queries};
use dbwarden::events::NewEvent;
use proptest::prelude::*;
use rusqlite::Connection;

const KEYS: &[&str] = &[
    "00000000-0000-4000-8000-000000000001",
    "00000000-0000-4000-8000-000000000002",
    "00000000-0000-4000-8000-000000000003",
];

fn event(i: usize, key: Option<usize>) -> NewEvent {
    let e = NewEvent::new(
        "corruption",
        &format!("agg-{}", i % 7),
        ["CorruptionDetected", "DownloadFailed", "FileDetected"][i % 3],
        serde_json::json!({"n": i, "error": if i.is_multiple_of(5) { Some("boom") } else { None }}),
    )
    .expect("a valid event");
    match key {
        Some(k) => e.with_key(KEYS[k].parse().expect("uuid")),
        None => e,
    }
}

fn fresh() -> Connection {
    let mut conn = Connection::open_in_memory().expect("db");
    migrations::migrate(&mut conn).expect("migrate");
    conn
}

fn dump(conn: &Connection) -> Vec<String> {
    let mut stmt = conn
        .prepare("SELECT id, aggregate_id, event_type, event_data FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}",
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?
            ))
        })
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

/// (key, event id) of every idempotency key.
fn keys(conn: &Connection) -> Vec<(String, i64)> {
    let mut stmt = conn
        .prepare("SELECT event_key, event_id FROM dbwarden_event_keys ORDER BY event_key")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("query");
    rows.map(|r| r.expect("row")).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn many_rows_at_once_equals_one_at_a_time(
        before in prop::collection::vec(prop::option::weighted(0.3, 0usize..3), 0..5),
        batch in prop::collection::vec(prop::option::weighted(0.1, 0usize..3), 1..700),
    ) {
        let (one, many) = (fresh(), fresh());
        for (i, key) in before.iter().enumerate() {
            let e = event(10_000 + i, *key);
            queries::insert_event(&one, &e).expect("seed one");
            queries::insert_event(&many, &e).expect("seed many");
        }
        let events: Vec<NewEvent> = batch.iter().enumerate().map(|(i, k)| event(i, *k)).collect();
        let ids_one: Vec<i64> = events.iter().map(|e| queries::insert_event(&one, e).expect("one")).collect();
        let ids_many = queries::insert_events(&many, &events).expect("many");
        prop_assert_eq!(&ids_many, &ids_one);
        prop_assert_eq!(dump(&many), dump(&one));
        common::assert_summary_exact(&many);
        // A repeated batch writes its keyed events no second time (it answers with their
        // first ids and leaves the key table as it was); unkeyed events are new rows.
        let keys_before = keys(&many);
        let rows_before = dump(&many).len();
        let again = queries::insert_events(&many, &events).expect("again");
        for (i, e) in events.iter().enumerate() {
            if e.key().is_some() {
                prop_assert_eq!(again[i], ids_many[i]);
            } else {
                prop_assert!(again[i] > *ids_many.iter().max().expect("ids"), "a new row");
            }
        }
        let unkeyed = events.iter().filter(|e| e.key().is_none()).count();
        prop_assert_eq!(dump(&many).len(), rows_before + unkeyed);
        prop_assert_eq!(keys(&many), keys_before);
        // And it means what repeating the events one at a time means.
        for e in &events {
            queries::insert_event(&one, e).expect("one again");
        }
        prop_assert_eq!(dump(&many), dump(&one));
        prop_assert_eq!(keys(&many), keys(&one));
        common::assert_summary_exact(&many);
    }
}

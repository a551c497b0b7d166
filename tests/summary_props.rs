//! Property test: whatever the interleaving of inserts (every event type, notification
//! events, unknown types, other aggregate types, TEXT/BLOB/null data, Go and SQLite
//! timestamps, ids filled in out of order), deletes, prunes and updates, the
//! trigger-maintained summary and counts equal an independent recomputation.

mod common;

use dbwarden::db::{migrations, queries};
use proptest::prelude::*;
use rusqlite::{params, Connection};

const EVENT_TYPES: &[&str] = &[
    "CorruptionDetected",
    "RemediationQueued",
    "DeletionStarted",
    "DeletionCompleted",
    "DeletionFailed",
    "SearchStarted",
    "SearchCompleted",
    "SearchFailed",
    "DownloadProgress",
    "DownloadFailed",
    "DownloadTimeout",
    "ImportBlocked",
    "DownloadIgnored",
    "ManuallyRemoved",
    "FileDetected",
    "VerificationStarted",
    "VerificationSuccess",
    "VerificationFailed",
    "RetryScheduled",
    "MaxRetriesReached",
    "SearchExhausted",
    "StuckRemediation",
    "CorruptionIgnored",
    "NotificationSent",
    "NotificationFailed",
    "SomethingNewFromHealarr",
];

#[derive(Debug, Clone)]
enum Storage {
    Text,
    Blob,
    LiteralNull,
}

#[derive(Debug, Clone)]
struct Event {
    aggregate: u8,
    other_aggregate_type: bool,
    event_type: &'static str,
    file_path: Option<Option<String>>,
    path_id: Option<i64>,
    corruption_type: Option<&'static str>,
    error: Option<Option<String>>,
    storage: Storage,
    go_timestamp: bool,
}

#[derive(Debug, Clone)]
enum Op {
    Insert(Event),
    /// Insert with an explicit id taken from a deleted row: arrives "in the past".
    InsertIntoGap(Event, usize),
    DeleteOne(usize),
    DeleteAggregate(u8),
    PruneOldest(usize),
    UpdateType(usize, &'static str),
}

fn event() -> impl Strategy<Value = Event> {
    (
        0u8..6,
        prop::bool::weighted(0.1),
        prop::sample::select(EVENT_TYPES),
        prop::option::of(prop::option::of("[a-z/]{1,12}")),
        prop::option::of(0i64..5),
        prop::option::of(prop::sample::select(
            &["ZeroByte", "CorruptHeader", "CorruptStream"][..],
        )),
        prop::option::of(prop::option::of("[a-z ]{1,10}")),
        prop_oneof![
            Just(Storage::Text),
            Just(Storage::Blob),
            Just(Storage::LiteralNull)
        ],
        any::<bool>(),
    )
        .prop_map(
            |(
                aggregate,
                other_aggregate_type,
                event_type,
                file_path,
                path_id,
                corruption_type,
                error,
                storage,
                go_timestamp,
            )| Event {
                aggregate,
                other_aggregate_type,
                event_type,
                file_path,
                path_id,
                corruption_type,
                error,
                storage,
                go_timestamp,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        12 => event().prop_map(Op::Insert),
        2 => (event(), any::<usize>()).prop_map(|(e, i)| Op::InsertIntoGap(e, i)),
        2 => any::<usize>().prop_map(Op::DeleteOne),
        1 => (0u8..6).prop_map(Op::DeleteAggregate),
        1 => (0usize..4).prop_map(Op::PruneOldest),
        1 => (any::<usize>(), prop::sample::select(EVENT_TYPES)).prop_map(|(i, t)| Op::UpdateType(i, t)),
    ]
}

fn data_of(e: &Event) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    if let Some(fp) = &e.file_path {
        map.insert("file_path".into(), fp.clone().into());
    }
    if let Some(p) = e.path_id {
        map.insert("path_id".into(), p.into());
    }
    if let Some(c) = e.corruption_type {
        map.insert("corruption_type".into(), c.into());
    }
    if let Some(err) = &e.error {
        map.insert("error".into(), err.clone().into());
    }
    serde_json::Value::Object(map)
}

fn insert(conn: &Connection, e: &Event, id: Option<i64>, tick: u64) {
    let aggregate_type = if e.other_aggregate_type {
        "scan"
    } else {
        "corruption"
    };
    let aggregate_id = format!("agg-{}", e.aggregate);
    let seconds = tick % 60;
    let created_at = if e.go_timestamp {
        format!("2026-01-06 01:18:{seconds:02}.123456789 +0000 UTC")
    } else {
        format!("2026-01-06 01:18:{seconds:02}")
    };
    let text = data_of(e).to_string();
    let data: rusqlite::types::Value = match e.storage {
        Storage::Text => text.into(),
        Storage::Blob => text.into_bytes().into(),
        Storage::LiteralNull => "null".to_string().into(),
    };
    conn.execute(
        "INSERT INTO events (id, aggregate_type, aggregate_id, event_type, event_data, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![
            id,
            aggregate_type,
            aggregate_id,
            e.event_type,
            data,
            created_at
        ],
    )
    .expect("insert");
}

fn ids(conn: &Connection) -> Vec<i64> {
    let mut stmt = conn
        .prepare("SELECT id FROM events ORDER BY id")
        .expect("prepare");
    let rows = stmt.query_map([], |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("id")).collect()
}

fn apply(conn: &Connection, op: &Op, deleted: &mut Vec<i64>, tick: u64) {
    let existing = ids(conn);
    match op {
        Op::Insert(e) => insert(conn, e, None, tick),
        Op::InsertIntoGap(e, i) => {
            if deleted.is_empty() {
                insert(conn, e, None, tick);
            } else {
                let id = deleted.remove(i % deleted.len());
                insert(conn, e, Some(id), tick);
            }
        }
        Op::DeleteOne(i) if !existing.is_empty() => {
            let id = existing[i % existing.len()];
            conn.execute("DELETE FROM events WHERE id = ?1", [id])
                .expect("delete");
            deleted.push(id);
        }
        Op::DeleteAggregate(a) => {
            for id in existing.iter() {
                let n = conn
                    .execute(
                        "DELETE FROM events WHERE id = ?1 AND aggregate_id = ?2",
                        params![id, format!("agg-{a}")],
                    )
                    .expect("delete aggregate");
                if n > 0 {
                    deleted.push(*id);
                }
            }
        }
        Op::PruneOldest(n) => {
            for id in existing.iter().take(*n) {
                conn.execute("DELETE FROM events WHERE id = ?1", [id])
                    .expect("prune");
                deleted.push(*id);
            }
        }
        Op::UpdateType(i, t) if !existing.is_empty() => {
            let id = existing[i % existing.len()];
            conn.execute(
                "UPDATE events SET event_type = ?1 WHERE id = ?2",
                params![t, id],
            )
            .expect("update");
        }
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn summary_always_equals_a_recomputation(ops in prop::collection::vec(op(), 1..80)) {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrations::migrate(&mut conn).expect("migrate");
        let mut deleted = Vec::new();
        for (tick, op) in ops.iter().enumerate() {
            apply(&conn, op, &mut deleted, tick as u64);
            common::assert_summary_exact(&conn);
        }
        // The SQL recomputation used by `dbwarden check --summary` agrees as well.
        prop_assert_eq!(queries::summary_differences(&conn).expect("diff"), Vec::<String>::new());
    }
}

#[test]
fn check_finds_a_tampered_summary() {
    let mut conn = Connection::open_in_memory().expect("memory db");
    migrations::migrate(&mut conn).expect("migrate");
    conn.execute(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data) VALUES ('corruption', 'a', 'CorruptionDetected', '{}')",
        [],
    )
    .expect("insert");
    assert!(queries::summary_differences(&conn)
        .expect("diff")
        .is_empty());
    conn.execute("UPDATE corruption_summary SET retry_count = 7", [])
        .expect("tamper");
    conn.execute("UPDATE corruption_state_counts SET count = 5", [])
        .expect("tamper counts");
    let diffs = queries::summary_differences(&conn).expect("diff");
    assert!(diffs.iter().any(|d| d.contains("summary row")), "{diffs:?}");
    assert!(
        diffs
            .iter()
            .any(|d| d.contains("count of state CorruptionDetected")),
        "{diffs:?}"
    );
}

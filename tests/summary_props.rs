//! Property test: whatever the interleaving of inserts (every event type, notification
//! events, unknown types, other aggregate types, TEXT/BLOB/null data, Go and SQLite
//! timestamps, ids filled in out of order), deletes, prunes (by id and, as Healarr
//! does, by time) and updates, the trigger-maintained summary and counts equal a
//! model that remembers every event each corruption ever had: the detection facts of
//! deleted events survive while the corruption has lifecycle events left.

mod common;

use std::collections::BTreeMap;

use common::{ExpectedRow, Kept, KeptFacts, LifecycleEvent};
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
    "ReleaseBlocklisted",
    "MonitorOverridden",
    "RemediationPaused",
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
    /// Healarr's daily prune, `DELETE FROM events WHERE created_at < ?`, with the
    /// cutoff in the stored form or, as Healarr binds it, in RFC 3339.
    PruneBefore(u64, bool),
    UpdateType(usize, &'static str),
    /// A row rewritten in place: moved to another aggregate (or aggregate type), with
    /// another type and other data; the update trigger's two-aggregate path.
    UpdateWhole(usize, Event),
}

fn event() -> impl Strategy<Value = Event> {
    (
        0u8..4,
        prop::bool::weighted(0.1),
        // Detection events often, so deleting their carriers is common.
        prop_oneof![
            3 => Just("CorruptionDetected"),
            7 => prop::sample::select(EVENT_TYPES),
        ],
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
        4 => (event(), any::<usize>()).prop_map(|(e, i)| Op::InsertIntoGap(e, i)),
        2 => any::<usize>().prop_map(Op::DeleteOne),
        1 => (0u8..4).prop_map(Op::DeleteAggregate),
        1 => (0usize..4).prop_map(Op::PruneOldest),
        1 => (0u64..60, prop::bool::weighted(0.2)).prop_map(|(s, rfc)| Op::PruneBefore(s, rfc)),
        1 => (any::<usize>(), prop::sample::select(EVENT_TYPES)).prop_map(|(i, t)| Op::UpdateType(i, t)),
        1 => (any::<usize>(), event()).prop_map(|(i, e)| Op::UpdateWhole(i, e)),
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

/// (aggregate type, aggregate id, event_data as stored) of an event.
fn columns_of(e: &Event) -> (&'static str, String, rusqlite::types::Value) {
    let aggregate_type = if e.other_aggregate_type {
        "scan"
    } else {
        "corruption"
    };
    let text = data_of(e).to_string();
    let data: rusqlite::types::Value = match e.storage {
        Storage::Text => text.into(),
        Storage::Blob => text.into_bytes().into(),
        Storage::LiteralNull => "null".to_string().into(),
    };
    (aggregate_type, format!("agg-{}", e.aggregate), data)
}

fn insert(conn: &Connection, e: &Event, id: Option<i64>, tick: u64) {
    let (aggregate_type, aggregate_id, data) = columns_of(e);
    let seconds = tick % 60;
    let created_at = if e.go_timestamp {
        format!("2026-01-06 01:18:{seconds:02}.123456789 +0000 UTC")
    } else {
        format!("2026-01-06 01:18:{seconds:02}")
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
    ids_where(conn, "1", rusqlite::params![])
}

fn ids_where(conn: &Connection, condition: &str, params: &[&dyn rusqlite::ToSql]) -> Vec<i64> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT id FROM events WHERE {condition} ORDER BY id"
        ))
        .expect("prepare");
    let rows = stmt.query_map(params, |r| r.get(0)).expect("query");
    rows.map(|r| r.expect("id")).collect()
}

/// Every event each corruption ever had in its current life: the live ones as stored,
/// and the deleted ones with the order they were written in. Deleting a corruption's
/// last lifecycle event ends its life and forgets what was deleted.
#[derive(Default)]
struct Model {
    /// id → (aggregate type, aggregate id, event, write order)
    live: BTreeMap<i64, (String, String, LifecycleEvent, u64)>,
    /// aggregate id → deleted lifecycle events with their write order
    gone: BTreeMap<String, Vec<(LifecycleEvent, u64)>>,
    writes: u64,
}

fn lifecycle(aggregate_type: &str, event_type: &str) -> bool {
    aggregate_type == "corruption" && !common::LIFECYCLE_EXCLUDED.contains(&event_type)
}

impl Model {
    fn inserted(&mut self, conn: &Connection, id: i64) {
        let (aggregate_type, aggregate_id, event) = conn
            .query_row(
                "SELECT aggregate_type, aggregate_id, event_type, event_data, created_at FROM events WHERE id = ?1",
                [id],
                |r| {
                    let data = match r.get_ref(3)? {
                        rusqlite::types::ValueRef::Text(t) | rusqlite::types::ValueRef::Blob(t) => {
                            serde_json::from_slice(t).ok()
                        }
                        _ => None,
                    };
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        LifecycleEvent {
                            id,
                            event_type: r.get(2)?,
                            data,
                            created_at: r.get(4)?,
                        },
                    ))
                },
            )
            .expect("inserted row");
        self.writes += 1;
        self.live
            .insert(id, (aggregate_type, aggregate_id, event, self.writes));
    }

    fn deleted(&mut self, id: i64) {
        if let Some((aggregate_type, aggregate_id, event, write)) = self.live.remove(&id) {
            if lifecycle(&aggregate_type, &event.event_type) {
                self.gone
                    .entry(aggregate_id)
                    .or_default()
                    .push((event, write));
            }
        }
    }

    /// An update removes the old version (like a delete) and writes the new one.
    fn updated(&mut self, conn: &Connection, id: i64) {
        self.deleted(id);
        self.inserted(conn, id);
    }

    fn live_lifecycle(&self, aggregate: &str) -> Vec<LifecycleEvent> {
        self.live
            .values()
            .filter(|(t, a, e, _)| a == aggregate && lifecycle(t, &e.event_type))
            .map(|(_, _, e, _)| e.clone())
            .collect()
    }

    /// Ends the lives of corruptions without lifecycle events.
    fn settle(&mut self) {
        let ended: Vec<String> = self
            .gone
            .keys()
            .filter(|a| self.live_lifecycle(a).is_empty())
            .cloned()
            .collect();
        for a in ended {
            self.gone.remove(&a);
        }
    }

    /// What deleted events established: the newest deleted carrier of each field
    /// and the oldest deleted event (on equal ids, the one written later).
    fn kept(&self, aggregate: &str) -> KeptFacts {
        let gone = self.gone.get(aggregate).map(Vec::as_slice).unwrap_or(&[]);
        let carrier = |key: &str| -> Kept {
            gone.iter()
                .filter(|(e, _)| e.event_type == "CorruptionDetected")
                .filter_map(|(e, w)| common::json_field(&e.data, key).map(|v| (e.id, *w, v)))
                .max_by_key(|(id, w, _)| (*id, *w))
                .map(|(id, _, v)| (Some(v), id))
        };
        KeptFacts {
            file_path: carrier("file_path"),
            path_id: carrier("path_id"),
            corruption_type: carrier("corruption_type"),
            detected_at: gone
                .iter()
                .min_by_key(|(e, w)| (e.id, std::cmp::Reverse(*w)))
                .map(|(e, _)| (e.created_at.clone(), e.id)),
        }
    }

    fn expected(&self) -> BTreeMap<String, ExpectedRow> {
        let aggregates: std::collections::BTreeSet<&String> = self
            .live
            .values()
            .filter(|(t, _, e, _)| lifecycle(t, &e.event_type))
            .map(|(_, a, _, _)| a)
            .collect();
        aggregates
            .into_iter()
            .filter_map(|a| {
                common::summary_row(&self.live_lifecycle(a), &self.kept(a)).map(|r| (a.clone(), r))
            })
            .collect()
    }
}

fn delete_ids(conn: &Connection, model: &mut Model, deleted: &mut Vec<i64>, ids: &[i64]) {
    for &id in ids {
        conn.execute("DELETE FROM events WHERE id = ?1", [id])
            .expect("delete");
        model.deleted(id);
        deleted.push(id);
    }
}

fn apply(conn: &Connection, op: &Op, model: &mut Model, deleted: &mut Vec<i64>, tick: u64) {
    let existing = ids(conn);
    match op {
        Op::Insert(e) => {
            insert(conn, e, None, tick);
            model.inserted(conn, conn.last_insert_rowid());
        }
        Op::InsertIntoGap(e, i) => {
            let id = (!deleted.is_empty()).then(|| deleted.remove(i % deleted.len()));
            insert(conn, e, id, tick);
            model.inserted(conn, conn.last_insert_rowid());
        }
        Op::DeleteOne(i) if !existing.is_empty() => {
            delete_ids(conn, model, deleted, &[existing[i % existing.len()]]);
        }
        Op::DeleteAggregate(a) => {
            let doomed = ids_where(
                conn,
                "aggregate_id = ?1",
                rusqlite::params![format!("agg-{a}")],
            );
            delete_ids(conn, model, deleted, &doomed);
        }
        Op::PruneOldest(n) => {
            let doomed: Vec<i64> = existing.iter().take(*n).copied().collect();
            delete_ids(conn, model, deleted, &doomed);
        }
        Op::PruneBefore(seconds, rfc3339) => {
            let cutoff = if *rfc3339 {
                format!("2026-01-06T01:18:{seconds:02}Z")
            } else {
                format!("2026-01-06 01:18:{seconds:02}")
            };
            // One statement, as Healarr runs it: its row order is SQLite's own.
            let doomed = ids_where(conn, "created_at < ?1", rusqlite::params![cutoff]);
            let n = conn
                .execute("DELETE FROM events WHERE created_at < ?1", [&cutoff])
                .expect("prune by time");
            assert_eq!(n, doomed.len());
            for id in doomed {
                model.deleted(id);
                deleted.push(id);
            }
        }
        Op::UpdateType(i, t) if !existing.is_empty() => {
            let id = existing[i % existing.len()];
            conn.execute(
                "UPDATE events SET event_type = ?1 WHERE id = ?2",
                params![t, id],
            )
            .expect("update");
            model.updated(conn, id);
        }
        Op::UpdateWhole(i, e) if !existing.is_empty() => {
            let id = existing[i % existing.len()];
            let (aggregate_type, aggregate_id, data) = columns_of(e);
            conn.execute(
                "UPDATE events SET aggregate_type = ?1, aggregate_id = ?2, event_type = ?3,
                        event_data = ?4 WHERE id = ?5",
                params![aggregate_type, aggregate_id, e.event_type, data, id],
            )
            .expect("update");
            model.updated(conn, id);
        }
        _ => {}
    }
    model.settle();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 160, ..ProptestConfig::default() })]

    #[test]
    fn summary_always_equals_the_model(ops in prop::collection::vec(op(), 1..80)) {
        let mut conn = Connection::open_in_memory().expect("memory db");
        migrations::migrate(&mut conn).expect("migrate");
        let mut model = Model::default();
        let mut deleted = Vec::new();
        for (tick, op) in ops.iter().enumerate() {
            apply(&conn, op, &mut model, &mut deleted, tick as u64);
            let expected = model.expected();
            prop_assert_eq!(&common::stored_summary(&conn), &expected, "after {:?}", op);
            prop_assert_eq!(common::stored_counts(&conn), common::expected_counts(&expected));
            // The recomputation from events and kept facts agrees with the model too.
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

// ------------------------------------------------------------ the rules, one by one

fn rules_db() -> Connection {
    let mut conn = Connection::open_in_memory().expect("memory db");
    migrations::migrate(&mut conn).expect("migrate");
    conn
}

fn put(conn: &Connection, id: i64, event_type: &str, data: &str, created_at: &str) {
    conn.execute(
        "INSERT INTO events (id, aggregate_type, aggregate_id, event_type, event_data, created_at)
         VALUES (?1, 'corruption', 'c1', ?2, ?3, ?4)",
        params![id, event_type, data, created_at],
    )
    .expect("insert");
}

fn row(conn: &Connection) -> Option<ExpectedRow> {
    common::stored_summary(conn).remove("c1")
}

fn kept_rows(conn: &Connection) -> i64 {
    conn.query_row("SELECT count(*) FROM dbwarden_kept_facts", [], |r| r.get(0))
        .expect("count kept")
}

/// Exact against both recomputations after every scenario step.
fn exact(conn: &Connection) {
    common::assert_summary_exact(conn);
    assert_eq!(
        queries::summary_differences(conn).expect("diff"),
        Vec::<String>::new()
    );
}

#[test]
fn healarrs_prune_by_time_keeps_the_detection_facts() {
    let conn = rules_db();
    let cd = r#"{"file_path":"/media/tv/Show 41/S01E01.mkv","path_id":1,"corruption_type":"CorruptHeader","file_size":10}"#;
    put(
        &conn,
        1,
        "CorruptionDetected",
        cd,
        "2026-09-01 10:00:00.123456789 +0000 UTC",
    );
    put(
        &conn,
        2,
        "RemediationQueued",
        "{}",
        "2026-09-01 10:00:01.5 +0000 UTC",
    );
    put(
        &conn,
        3,
        "DownloadProgress",
        r#"{"progress":40}"#,
        "2026-09-03 08:00:00.1 +0000 UTC",
    );
    // Healarr binds its cutoff as RFC 3339 text.
    let pruned = conn
        .execute(
            "DELETE FROM events WHERE created_at < ?1",
            ["2026-09-02T00:00:00Z"],
        )
        .expect("prune");
    assert_eq!(pruned, 2);
    let r = row(&conn).expect("the corruption still has events");
    assert_eq!(r.current_state, "DownloadProgress");
    assert_eq!(r.file_path.as_deref(), Some("/media/tv/Show 41/S01E01.mkv"));
    assert_eq!(r.path_id.as_deref(), Some("1"));
    assert_eq!(r.corruption_type.as_deref(), Some("CorruptHeader"));
    assert_eq!(
        r.detected_at.as_deref(),
        Some("2026-09-01 10:00:00.123456789 +0000 UTC")
    );
    exact(&conn);
    // Deleting the rest removes the row and what was kept of it.
    conn.execute("DELETE FROM events WHERE aggregate_id = 'c1'", [])
        .expect("delete corruption");
    assert_eq!(row(&conn), None);
    assert_eq!(kept_rows(&conn), 0);
    exact(&conn);
}

#[test]
fn a_detection_written_below_a_kept_carrier_does_not_replace_it() {
    let conn = rules_db();
    put(
        &conn,
        10,
        "CorruptionDetected",
        r#"{"file_path":"/a"}"#,
        "t10",
    );
    put(&conn, 11, "DownloadProgress", "{}", "t11");
    conn.execute("DELETE FROM events WHERE id = 10", [])
        .expect("delete");
    put(
        &conn,
        5,
        "CorruptionDetected",
        r#"{"file_path":"/b"}"#,
        "t5",
    );
    assert_eq!(row(&conn).expect("row").file_path.as_deref(), Some("/a"));
    assert_eq!(row(&conn).expect("row").detected_at.as_deref(), Some("t5"));
    exact(&conn);
    put(
        &conn,
        20,
        "CorruptionDetected",
        r#"{"file_path":"/c"}"#,
        "t20",
    );
    assert_eq!(row(&conn).expect("row").file_path.as_deref(), Some("/c"));
    exact(&conn);
}

#[test]
fn a_reused_id_beats_the_kept_value_and_is_kept_in_turn() {
    let conn = rules_db();
    put(&conn, 10, "CorruptionDetected", r#"{"path_id":1}"#, "t10");
    put(&conn, 11, "DownloadProgress", "{}", "t11");
    conn.execute("DELETE FROM events WHERE id = 10", [])
        .expect("delete");
    assert_eq!(row(&conn).expect("row").path_id.as_deref(), Some("1"));
    put(&conn, 10, "CorruptionDetected", r#"{"path_id":2}"#, "t10b");
    let r = row(&conn).expect("row");
    assert_eq!(r.path_id.as_deref(), Some("2"));
    assert_eq!(r.detected_at.as_deref(), Some("t10b"));
    exact(&conn);
    conn.execute("DELETE FROM events WHERE id = 10", [])
        .expect("delete again");
    let r = row(&conn).expect("row");
    assert_eq!(r.path_id.as_deref(), Some("2"));
    assert_eq!(r.detected_at.as_deref(), Some("t10b"));
    exact(&conn);
}

#[test]
fn an_update_keeps_what_the_old_version_established() {
    let conn = rules_db();
    put(
        &conn,
        1,
        "CorruptionDetected",
        r#"{"file_path":"/a","corruption_type":"ZeroByte"}"#,
        "t1",
    );
    put(&conn, 2, "DownloadProgress", "{}", "t2");
    conn.execute(
        "UPDATE events SET event_type = 'RemediationQueued' WHERE id = 1",
        [],
    )
    .expect("update");
    let r = row(&conn).expect("row");
    assert_eq!(r.file_path.as_deref(), Some("/a"));
    assert_eq!(r.corruption_type.as_deref(), Some("ZeroByte"));
    exact(&conn);
}

#[test]
fn a_corruption_whose_life_ended_starts_again_with_nothing_kept() {
    let conn = rules_db();
    put(
        &conn,
        1,
        "CorruptionDetected",
        r#"{"file_path":"/a"}"#,
        "t1",
    );
    put(&conn, 2, "DownloadProgress", "{}", "t2");
    conn.execute("DELETE FROM events WHERE id = 1", [])
        .expect("delete");
    assert_eq!(kept_rows(&conn), 1);
    // Its last lifecycle event becomes a notification: no lifecycle event is left.
    conn.execute(
        "UPDATE events SET event_type = 'NotificationSent' WHERE id = 2",
        [],
    )
    .expect("update");
    assert_eq!(row(&conn), None);
    assert_eq!(kept_rows(&conn), 0);
    put(&conn, 3, "DownloadProgress", "{}", "t3");
    let r = row(&conn).expect("a new life");
    assert_eq!(r.file_path, None);
    assert_eq!(r.detected_at.as_deref(), Some("t3"));
    exact(&conn);
}

//! Every SQL statement the running service issues, in one place. Statements are
//! constants or built from constant fragments; user input is only ever bound.

use std::borrow::Borrow;
use std::collections::BTreeMap;
use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;
use serde_json::Value;

use super::DbError;
use crate::events::NewEvent;

/// Buckets that are finished; every other state counts as active.
pub const FINISHED_BUCKETS: &[&str] = &["resolved", "orphaned", "ignored"];
/// Every bucket name of the reference classification.
pub const BUCKETS: &[&str] = &[
    "pending",
    "in_progress",
    "failed",
    "manual_intervention",
    "resolved",
    "orphaned",
    "ignored",
];

// ---------------------------------------------------------------- writes

/// Appends one event; with a client key already seen, returns the original row id and
/// writes nothing.
pub fn insert_event(conn: &Connection, event: &NewEvent) -> Result<i64, rusqlite::Error> {
    Ok(insert_events(conn, std::slice::from_ref(event))?[0])
}

/// Rows per multi-row INSERT. Chunks are powers of two so at most a handful of
/// statement shapes exist and all stay in the statement cache.
const MAX_ROWS_PER_INSERT: usize = 256;

/// `event_data` as bound for storage: its exact text. The column's declared type
/// (`JSON`, Healarr's) has NUMERIC affinity, so SQLite would turn a bare number such
/// as `1e2` or `123456789012345678901234567890` into 100.0 or a rounded REAL; such a
/// value is bound as a BLOB of its text, which affinity never touches (Healarr binds
/// all its event data as BLOBs). Everything else is TEXT.
struct EventData<'a>(&'a str);

impl rusqlite::ToSql for EventData<'_> {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        let bare_number = self
            .0
            .as_bytes()
            .first()
            .is_some_and(|b| *b == b'-' || b.is_ascii_digit());
        Ok(rusqlite::types::ToSqlOutput::Borrowed(if bare_number {
            ValueRef::Blob(self.0.as_bytes())
        } else {
            ValueRef::Text(self.0.as_bytes())
        }))
    }
}

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data, event_version, created_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?)");
    }
    sql.push_str(" RETURNING id");
    sql
}

/// Appends events in order and returns their row ids. Events whose client key was
/// seen before (in the database or earlier in `events`) are not written again: they
/// get the original row id.
///
/// Rows go in as multi-row INSERT statements. Within a transaction SQLite keeps a
/// statement journal for every statement whose triggers may fail, and pays for it per
/// statement: one statement for many rows makes the summary triggers several times
/// cheaper per event than one statement per row.
pub fn insert_events<E: Borrow<NewEvent>>(
    conn: &Connection,
    events: &[E],
) -> Result<Vec<i64>, rusqlite::Error> {
    let mut ids: Vec<Option<i64>> = vec![None; events.len()];
    // Index of the first event in this call carrying each key, for repeats within it.
    let mut first_with_key: std::collections::HashMap<&uuid::Uuid, usize> =
        std::collections::HashMap::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut to_insert: Vec<usize> = Vec::with_capacity(events.len());
    for (i, event) in events.iter().map(|e| e.borrow()).enumerate() {
        if let Some(key) = event.key() {
            if let Some(&first) = first_with_key.get(key) {
                repeats.push((i, first));
                continue;
            }
            first_with_key.insert(key, i);
            let existing: Option<i64> = conn
                .prepare_cached("SELECT event_id FROM dbwarden_event_keys WHERE event_key = ?1")?
                .query_row([key.to_string()], |r| r.get(0))
                .optional()?;
            if let Some(id) = existing {
                ids[i] = Some(id);
                continue;
            }
        }
        to_insert.push(i);
    }
    let mut rest = &to_insert[..];
    while !rest.is_empty() {
        let rows = if rest.len() >= MAX_ROWS_PER_INSERT {
            MAX_ROWS_PER_INSERT
        } else {
            1 << (usize::BITS - 1 - rest.len().leading_zeros())
        };
        let (chunk, tail) = rest.split_at(rows);
        rest = tail;
        let mut stmt = conn.prepare_cached(&insert_sql(rows))?;
        /// One row's values, borrowed from its event.
        struct Values<'e> {
            aggregate_type: &'e str,
            aggregate_id: &'e str,
            event_type: &'e str,
            data: EventData<'e>,
            version: i64,
            created_at: &'e str,
        }
        let values: Vec<Values<'_>> = chunk
            .iter()
            .map(|&i| {
                let e: &NewEvent = events[i].borrow();
                Values {
                    aggregate_type: e.aggregate_type(),
                    aggregate_id: e.aggregate_id(),
                    event_type: e.event_type(),
                    data: EventData(e.event_data()),
                    version: e.event_version(),
                    created_at: e.created_at(),
                }
            })
            .collect();
        let mut params: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity(rows * 6);
        for v in &values {
            params.extend_from_slice(&[
                &v.aggregate_type as &dyn rusqlite::ToSql,
                &v.aggregate_id,
                &v.event_type,
                &v.data,
                &v.version,
                &v.created_at,
            ]);
        }
        let mut new_ids: Vec<i64> = stmt
            .query_map(params.as_slice(), |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        // AUTOINCREMENT hands out increasing ids in VALUES order; RETURNING's own row
        // order is unspecified, so sort.
        new_ids.sort_unstable();
        for (&i, id) in chunk.iter().zip(new_ids) {
            ids[i] = Some(id);
        }
    }
    for &i in &to_insert {
        if let (Some(key), Some(id)) = (events[i].borrow().key(), ids[i]) {
            conn.prepare_cached(
                "INSERT INTO dbwarden_event_keys (event_key, event_id) VALUES (?1, ?2)",
            )?
            .execute(params![key.to_string(), id])?;
        }
    }
    for (i, first) in repeats {
        ids[i] = ids[first];
    }
    Ok(ids.into_iter().map(|id| id.unwrap_or_default()).collect())
}

/// Deletes every event of a corruption aggregate; the triggers drop its summary row.
pub fn delete_corruption(conn: &Connection, corruption_id: &str) -> Result<usize, rusqlite::Error> {
    conn.prepare_cached(
        "DELETE FROM events WHERE aggregate_type = 'corruption' AND aggregate_id = ?1",
    )?
    .execute([corruption_id])
}

// ---------------------------------------------------------------- counts

pub fn state_count(conn: &Connection, state: &str) -> Result<i64, DbError> {
    Ok(conn
        .prepare_cached("SELECT count FROM corruption_state_counts WHERE state = ?1")?
        .query_row([state], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Corruptions waiting for remediation (state CorruptionDetected): one key lookup.
pub fn pending_count(conn: &Connection) -> Result<i64, DbError> {
    state_count(conn, "CorruptionDetected")
}

/// Count per bucket; states in no bucket are counted under `other`. Reads only the
/// small count table, whatever the number of corruptions.
pub fn bucket_counts(conn: &Connection) -> Result<BTreeMap<String, i64>, DbError> {
    let mut counts: BTreeMap<String, i64> = BUCKETS.iter().map(|b| (b.to_string(), 0)).collect();
    counts.insert("other".into(), 0);
    let mut stmt = conn.prepare_cached(
        "SELECT coalesce(b.bucket, 'other'), sum(c.count)
           FROM corruption_state_counts c
           LEFT JOIN corruption_state_buckets b ON b.state = c.state
          GROUP BY 1",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (bucket, n) = row?;
        counts.insert(bucket, n);
    }
    Ok(counts)
}

/// CorruptionDetected events created on `day` (`YYYY-MM-DD`, the UTC date prefix of
/// `created_at`), leaving out corruptions that are ignored now: Healarr's "corruptions
/// today" (a corruption detected twice today counts twice). A range over the
/// `created_at` index, equal to a prefix match for text timestamps.
pub fn corruptions_detected_on(conn: &Connection, day: &str) -> Result<i64, DbError> {
    let next_day = chrono::NaiveDate::parse_from_str(day, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.succ_opt())
        .map(|d| d.format("%Y-%m-%d").to_string())
        .unwrap_or_else(|| format!("{day}~"));
    Ok(conn
        .prepare_cached(
            "SELECT count(*) FROM events e
              WHERE e.created_at >= ?1 AND e.created_at < ?2
                AND e.event_type = 'CorruptionDetected'
                AND NOT EXISTS (SELECT 1 FROM corruption_summary s
                                 WHERE s.corruption_id = e.aggregate_id
                                   AND s.current_state = 'CorruptionIgnored')",
        )?
        .query_row([day, next_day.as_str()], |r| r.get(0))?)
}

// ---------------------------------------------------------------- summary rows

#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct CorruptionSummary {
    pub corruption_id: String,
    pub current_state: String,
    pub bucket: Option<String>,
    pub retry_count: i64,
    pub file_path: Option<String>,
    /// As Healarr stored it: usually an integer, possibly null.
    pub path_id: Value,
    pub last_error: Option<String>,
    pub corruption_type: Option<String>,
    pub detected_at: Option<String>,
    pub last_updated_at: Option<String>,
}

/// Which corruptions a list asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StatusFilter {
    All,
    /// Every state outside the resolved, orphaned and ignored buckets.
    Active,
    Bucket(String),
    /// States in no bucket.
    Other,
    State(String),
}

const SUMMARY_COLUMNS: &str =
    "s.corruption_id, s.current_state, b.bucket, s.retry_count, s.file_path,
       s.path_id, s.last_error, s.corruption_type, s.detected_at, s.last_updated_at";

fn text_of(v: ValueRef<'_>) -> Option<String> {
    match v {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

fn json_of(v: ValueRef<'_>) -> Value {
    match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(i) => Value::from(i),
        ValueRef::Real(f) => Value::from(f),
        ValueRef::Text(t) | ValueRef::Blob(t) => {
            Value::from(String::from_utf8_lossy(t).into_owned())
        }
    }
}

fn summary_from_row(r: &Row<'_>) -> Result<CorruptionSummary, rusqlite::Error> {
    Ok(CorruptionSummary {
        corruption_id: r.get(0)?,
        current_state: r.get(1)?,
        bucket: r.get(2)?,
        retry_count: r.get(3)?,
        file_path: text_of(r.get_ref(4)?),
        path_id: json_of(r.get_ref(5)?),
        last_error: text_of(r.get_ref(6)?),
        corruption_type: text_of(r.get_ref(7)?),
        detected_at: text_of(r.get_ref(8)?),
        last_updated_at: text_of(r.get_ref(9)?),
    })
}

pub fn get_corruption(conn: &Connection, id: &str) -> Result<Option<CorruptionSummary>, DbError> {
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM corruption_summary s
           LEFT JOIN corruption_state_buckets b ON b.state = s.current_state
          WHERE s.corruption_id = ?1"
    );
    Ok(conn
        .prepare_cached(&sql)?
        .query_row([id], summary_from_row)
        .optional()?)
}

/// One page of summary rows in corruption_id order, after `after` (keyset pagination:
/// stable while rows come and go).
pub fn list_corruptions(
    conn: &Connection,
    status: &StatusFilter,
    path_id: Option<i64>,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<CorruptionSummary>, DbError> {
    // Only constant fragments are joined; every value is bound (?1 status, ?2 path, ?3 after).
    let status_clause = match status {
        StatusFilter::All => "1",
        StatusFilter::State(_) => "s.current_state = ?1",
        StatusFilter::Bucket(_) => {
            "s.current_state IN (SELECT state FROM corruption_state_buckets WHERE bucket = ?1)"
        }
        StatusFilter::Active => {
            "s.current_state NOT IN (SELECT state FROM corruption_state_buckets
                                      WHERE bucket IN ('resolved', 'orphaned', 'ignored'))"
        }
        StatusFilter::Other => {
            "s.current_state NOT IN (SELECT state FROM corruption_state_buckets)"
        }
    };
    let path_clause = if path_id.is_some() {
        "s.path_id = ?2"
    } else {
        "?2 IS NULL"
    };
    let sql = format!(
        "SELECT {SUMMARY_COLUMNS} FROM corruption_summary s
           LEFT JOIN corruption_state_buckets b ON b.state = s.current_state
          WHERE {status_clause} AND {path_clause} AND s.corruption_id > ?3
          ORDER BY s.corruption_id LIMIT ?4"
    );
    let status_value = match status {
        StatusFilter::State(s) | StatusFilter::Bucket(s) => Some(s.as_str()),
        _ => None,
    };
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(
        params![status_value, path_id, after.unwrap_or(""), limit],
        summary_from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

// ---------------------------------------------------------------- events

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    pub id: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub event_type: String,
    /// The stored JSON text as it was written, never re-encoded.
    #[schema(value_type = Object)]
    pub event_data: Box<serde_json::value::RawValue>,
    pub event_version: i64,
    pub created_at: Option<String>,
    pub user_id: Option<String>,
}

/// `event_data` however it was stored, as it was stored: JSON text or a BLOB of JSON
/// text is passed through untouched; anything no JSON parser accepts comes back as a
/// JSON string of its text.
pub fn event_data_raw(v: ValueRef<'_>) -> Box<serde_json::value::RawValue> {
    use serde_json::value::RawValue;
    let text = match v {
        ValueRef::Null => return RawValue::NULL.to_owned(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => Value::from(f).to_string(),
        ValueRef::Text(t) | ValueRef::Blob(t) => String::from_utf8_lossy(t).into_owned(),
    };
    let trimmed = text.trim();
    match RawValue::from_string(trimmed.to_string()) {
        Ok(raw) => raw,
        Err(_) => RawValue::from_string(Value::from(text).to_string())
            .unwrap_or_else(|_| RawValue::NULL.to_owned()),
    }
}

/// Events of a corruption aggregate in id order, notifications included.
pub fn corruption_history(
    conn: &Connection,
    id: &str,
    after_event_id: i64,
    limit: u32,
) -> Result<Vec<StoredEvent>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, aggregate_type, aggregate_id, event_type, event_data, event_version, created_at, user_id
           FROM events
          WHERE aggregate_type = 'corruption' AND aggregate_id = ?1 AND id > ?2
          ORDER BY id LIMIT ?3",
    )?;
    let rows = stmt.query_map(params![id, after_event_id, limit], |r| {
        Ok(StoredEvent {
            id: r.get(0)?,
            aggregate_type: r.get(1)?,
            aggregate_id: r.get(2)?,
            event_type: r.get(3)?,
            event_data: event_data_raw(r.get_ref(4)?),
            event_version: r.get(5)?,
            created_at: text_of(r.get_ref(6)?),
            user_id: text_of(r.get_ref(7)?),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub fn max_event_id(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT coalesce(max(id), 0) FROM events", [], |r| r.get(0))?)
}

/// The highest event id ever assigned: the events table's AUTOINCREMENT counter
/// (never lower than `max(id)`). Unlike `max(id)` it never goes back when the newest
/// events are deleted, so a commit's value bounds every commit before it: what a
/// restore to an event id relies on.
pub fn event_id_counter(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row(
        "SELECT max(coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'events'), 0), \
                    coalesce((SELECT max(id) FROM events), 0))",
        [],
        |r| r.get(0),
    )?)
}

/// Number of events (replica manifests and drills compare it).
pub fn event_count(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?)
}

/// Of the events the database at `later` holds up to id `through`: how many there
/// are, and how many of them the database at `earlier` lacks or holds with other
/// content. A state restored to a point must hold every event a later state of the
/// same history kept up to that point's newest id (ids only grow; deletes only take
/// away), so a drill expects 0 missing, and at least that many events.
pub fn events_missing_before(
    earlier: &Path,
    later: &Path,
    through: i64,
) -> Result<(i64, i64), DbError> {
    let conn = super::open_file_read_only(earlier)?;
    conn.execute(
        "ATTACH DATABASE ?1 AS later",
        [later.to_string_lossy().as_ref()],
    )?;
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(NOT EXISTS (
             SELECT 1 FROM main.events e
              WHERE e.id = l.id AND e.aggregate_type = l.aggregate_type
                AND e.aggregate_id = l.aggregate_id AND e.event_type = l.event_type
                AND e.event_data = l.event_data AND e.event_version = l.event_version
                AND e.created_at IS l.created_at AND e.user_id IS l.user_id)), 0)
           FROM later.events l WHERE l.id <= ?1",
        [through],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

// ---------------------------------------------------------------- consistency

/// Differences between the materialized summary (and counts) and a recomputation
/// from the events. Empty means exact. Reads every row: for `check --summary`.
pub fn summary_differences(conn: &Connection) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT 'stored', corruption_id, current_state, retry_count FROM (
             SELECT * FROM corruption_summary EXCEPT SELECT * FROM dbwarden_corruption_summary_recomputed)
         UNION ALL
         SELECT 'expected', corruption_id, current_state, retry_count FROM (
             SELECT * FROM dbwarden_corruption_summary_recomputed EXCEPT SELECT * FROM corruption_summary)
         ORDER BY 2, 1 LIMIT 1000",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "summary row {} {}: state {}, retries {}",
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            text_of(r.get_ref(2)?).unwrap_or_default(),
            r.get::<_, i64>(3)?
        ))
    })?;
    for row in rows {
        out.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT coalesce(c.state, s.state), coalesce(c.count, 0), coalesce(s.n, 0)
           FROM corruption_state_counts c
           FULL OUTER JOIN (SELECT current_state AS state, count(*) AS n
                              FROM corruption_summary GROUP BY current_state) s
             ON s.state = c.state
          WHERE coalesce(c.count, 0) <> coalesce(s.n, 0)",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "count of state {}: stored {}, expected {}",
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?
        ))
    })?;
    for row in rows {
        out.push(row?);
    }
    Ok(out)
}

/// Rebuilds the summary and the per-state counts from the events and kept facts, and
/// forgets kept facts of corruptions that have no row. Runs in the caller's
/// transaction; answers how many corruptions' rows changed (differed, appeared or
/// disappeared).
pub fn rebuild_summary(conn: &Connection) -> Result<i64, DbError> {
    conn.execute_batch(
        "DROP TABLE IF EXISTS temp.dbwarden_summary_before;
         CREATE TEMP TABLE dbwarden_summary_before AS SELECT * FROM main.corruption_summary;
         DELETE FROM main.corruption_summary;
         DELETE FROM main.corruption_state_counts;
         INSERT INTO main.corruption_summary SELECT * FROM main.dbwarden_corruption_summary_recomputed;
         DELETE FROM main.dbwarden_kept_facts
          WHERE corruption_id NOT IN (SELECT corruption_id FROM main.corruption_summary);",
    )?;
    let changed: i64 = conn.query_row(
        "SELECT count(DISTINCT corruption_id) FROM (
             SELECT corruption_id FROM (SELECT * FROM temp.dbwarden_summary_before
                                        EXCEPT SELECT * FROM main.corruption_summary)
             UNION ALL
             SELECT corruption_id FROM (SELECT * FROM main.corruption_summary
                                        EXCEPT SELECT * FROM temp.dbwarden_summary_before))",
        [],
        |r| r.get(0),
    )?;
    conn.execute_batch("DROP TABLE temp.dbwarden_summary_before;")?;
    Ok(changed)
}

// ---------------------------------------------------------------- clean stops

const CLEAN_STOP_KEY: &str = "clean_stop";

/// Records that the service stopped in order (the writer's last write), so the next
/// start can tell a WAL left by a reader from one left by a crash.
pub fn record_clean_stop(conn: &Connection) -> Result<(), DbError> {
    conn.execute(
        "INSERT INTO dbwarden_state (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![CLEAN_STOP_KEY, crate::time::now_text()],
    )?;
    Ok(())
}

/// The time of the last clean stop, if the previous run ended with one; clears it, so
/// a crash of this run is not mistaken for a clean stop.
pub fn take_clean_stop(conn: &Connection) -> Result<Option<String>, DbError> {
    let at: Option<String> = conn
        .query_row(
            "DELETE FROM dbwarden_state WHERE key = ?1 RETURNING value",
            [CLEAN_STOP_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events_db(path: &Path, rows: &[(i64, &str)]) {
        let conn = Connection::open(path).expect("open");
        conn.execute_batch(include_str!("../../migrations/0001_event_store.sql"))
            .expect("schema");
        for (id, data) in rows {
            conn.execute(
                "INSERT INTO events (id, aggregate_type, aggregate_id, event_type, event_data, created_at)
                 VALUES (?1, 'corruption', 'a', 'CorruptionDetected', ?2, '2026-12-04 00:00:00')",
                params![id, data],
            )
            .expect("insert");
        }
    }

    #[test]
    fn a_point_lacking_or_changing_a_kept_event_is_counted_as_missing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let later = dir.path().join("later.db");
        // The later state: event 2 was deleted since, 4 and 5 came after the point.
        events_db(&later, &[(1, "{}"), (3, "{}"), (4, "{}"), (5, "{}")]);
        let exact = dir.path().join("exact.db");
        events_db(&exact, &[(1, "{}"), (2, "{}"), (3, "{}")]);
        assert_eq!(
            events_missing_before(&exact, &later, 3).expect("compare"),
            (2, 0)
        );
        let lacking = dir.path().join("lacking.db");
        events_db(&lacking, &[(1, "{}"), (2, "{}")]);
        assert_eq!(
            events_missing_before(&lacking, &later, 3).expect("compare"),
            (2, 1)
        );
        let changed = dir.path().join("changed.db");
        events_db(&changed, &[(1, "{\"n\":1}"), (2, "{}"), (3, "{}")]);
        assert_eq!(
            events_missing_before(&changed, &later, 3).expect("compare"),
            (2, 1)
        );
    }
}

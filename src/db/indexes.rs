//! Indexes the migrations ask for, reused when the database already has an equal one.
//!
//! Healarr creates its own indexes on `events` (`idx_aggregate`, `idx_event_type`,
//! `idx_created_at`, `idx_events_aggregate_event`) with the same columns as ours under
//! other names. Creating ours beside them would make every insert maintain two copies
//! of each b-tree (on a 597,414-event Healarr database the four duplicates took 107 MB,
//! +40%). So a migration's `CREATE INDEX IF NOT EXISTS` is skipped when an index with
//! the same key columns (name, order, collation) and the same partial condition exists
//! under another name, and at every start an index of ours that duplicates another one
//! is dropped (databases adopted before this rule), while a missing one is created again.
//!
//! Only the simple form the migrations use is understood:
//! `CREATE INDEX IF NOT EXISTS name ON table(col, col, ...) [WHERE ...]`; any other
//! statement is executed as written.

use rusqlite::Connection;

/// An index a migration creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexSpec {
    pub name: String,
    pub table: String,
    pub columns: Vec<String>,
    /// The partial condition, normalized (lowercase, single spaces).
    pub condition: Option<String>,
    /// The statement as the migration wrote it.
    pub sql: String,
}

/// Drops `-- ...` lines and `/* ... */` blocks before the statement's first word.
fn without_leading_comments(mut text: &str) -> &str {
    loop {
        text = text.trim_start();
        if let Some(rest) = text.strip_prefix("--") {
            text = rest.split_once('\n').map_or("", |(_, after)| after);
        } else if let Some(rest) = text.strip_prefix("/*") {
            text = rest.split_once("*/").map_or("", |(_, after)| after);
        } else {
            return text;
        }
    }
}

fn normalize(text: &str) -> String {
    without_leading_comments(text)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_ascii_lowercase()
}

fn is_identifier(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Parses `CREATE INDEX IF NOT EXISTS name ON table(a, b) [WHERE cond]`; `None` for
/// any other statement (unique indexes, expressions, collations, sort orders).
pub fn parse_create_index(sql: &str) -> Option<IndexSpec> {
    let text = normalize(sql.trim().trim_end_matches(';'));
    let rest = text.strip_prefix("create index if not exists ")?;
    let (name, rest) = rest.split_once(" on ")?;
    let (table, rest) = rest.split_once('(')?;
    let (columns, tail) = rest.split_once(')')?;
    let columns: Vec<String> = columns.split(',').map(|c| c.trim().to_string()).collect();
    let (name, table) = (name.trim(), table.trim());
    if !is_identifier(name) || !is_identifier(table) || !columns.iter().all(|c| is_identifier(c)) {
        return None;
    }
    let tail = tail.trim();
    let condition = if tail.is_empty() {
        None
    } else {
        Some(tail.strip_prefix("where ")?.trim().to_string())
    };
    Some(IndexSpec {
        name: name.to_string(),
        table: table.to_string(),
        columns,
        condition,
        sql: sql.trim().to_string(),
    })
}

/// The key columns of index `name`, as (column, descending, collation); `None` when
/// one of them is an expression.
fn key_columns(conn: &Connection, name: &str) -> rusqlite::Result<Option<Vec<String>>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, \"desc\", coll FROM pragma_index_xinfo(?1) WHERE key = 1 ORDER BY seqno",
    )?;
    let rows = stmt.query_map([name], |r| {
        Ok((
            r.get::<_, Option<String>>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, Option<String>>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (column, desc, coll) = row?;
        let Some(column) = column else {
            return Ok(None);
        };
        let coll = coll.unwrap_or_else(|| "BINARY".into());
        if desc != 0 || !coll.eq_ignore_ascii_case("binary") {
            return Ok(None);
        }
        out.push(column.to_ascii_lowercase());
    }
    Ok(Some(out))
}

/// The normalized partial condition of an existing index, read from its SQL.
fn condition_of(conn: &Connection, name: &str) -> rusqlite::Result<Option<String>> {
    let sql: Option<String> = conn
        .prepare_cached("SELECT sql FROM sqlite_master WHERE type = 'index' AND name = ?1")?
        .query_row([name], |r| r.get(0))?;
    let Some(sql) = sql else {
        return Ok(None);
    };
    let text = normalize(&sql);
    // The condition follows the column list's closing parenthesis.
    Ok(text
        .rfind(") where ")
        .map(|at| text[at + ") where ".len()..].trim().to_string()))
}

/// Another index on the spec's table with the same key columns and condition.
pub fn equivalent_of(conn: &Connection, spec: &IndexSpec) -> rusqlite::Result<Option<String>> {
    let mut stmt = conn.prepare_cached("SELECT name, partial FROM pragma_index_list(?1)")?;
    let indexes: Vec<(String, bool)> = stmt
        .query_map([&spec.table], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? != 0)))?
        .collect::<Result<_, _>>()?;
    for (name, partial) in indexes {
        if name.eq_ignore_ascii_case(&spec.name) || partial != spec.condition.is_some() {
            continue;
        }
        if key_columns(conn, &name)?.as_ref() != Some(&spec.columns) {
            continue;
        }
        if partial && condition_of(conn, &name)? != spec.condition {
            continue;
        }
        return Ok(Some(name));
    }
    Ok(None)
}

fn exists(conn: &Connection, name: &str) -> rusqlite::Result<bool> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM sqlite_master WHERE type = 'index' AND name = ?1")?
        .query_row([name], |r| r.get::<_, i64>(0))?
        > 0)
}

/// What [`reconcile`] changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct IndexReport {
    /// (ours, the equal index kept instead)
    pub dropped: Vec<(String, String)>,
    pub created: Vec<String>,
}

/// Makes every index the migrations ask for exist exactly once: ours is dropped when
/// an equal one exists under another name, and created again when none does. Runs in
/// the caller's transaction.
pub fn reconcile(conn: &Connection, specs: &[IndexSpec]) -> rusqlite::Result<IndexReport> {
    let mut report = IndexReport::default();
    for spec in specs {
        let table_exists: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )?
            .query_row([&spec.table], |r| r.get(0))?;
        if table_exists == 0 {
            continue;
        }
        let ours = exists(conn, &spec.name)?;
        match (ours, equivalent_of(conn, spec)?) {
            (true, Some(other)) => {
                // The name is an identifier (checked by the parser): safe to format.
                conn.execute_batch(&format!("DROP INDEX \"{}\"", spec.name))?;
                report.dropped.push((spec.name.clone(), other));
            }
            (false, None) => {
                conn.execute_batch(&spec.sql)?;
                report.created.push(spec.name.clone());
            }
            _ => {}
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_simple_form_only() {
        let spec = parse_create_index(
            "CREATE INDEX IF NOT EXISTS idx_events_aggregate ON events(aggregate_type, aggregate_id);",
        )
        .expect("simple form");
        assert_eq!(spec.name, "idx_events_aggregate");
        assert_eq!(spec.table, "events");
        assert_eq!(spec.columns, ["aggregate_type", "aggregate_id"]);
        assert_eq!(spec.condition, None);
        let partial = parse_create_index(
            "CREATE INDEX IF NOT EXISTS p ON events (job)\n  WHERE  outcome = 'ok'",
        )
        .expect("partial");
        assert_eq!(partial.condition.as_deref(), Some("outcome = 'ok'"));
        assert!(parse_create_index("CREATE UNIQUE INDEX IF NOT EXISTS u ON t(a)").is_none());
        assert!(parse_create_index("CREATE INDEX IF NOT EXISTS e ON t(lower(a))").is_none());
        assert!(parse_create_index("CREATE INDEX IF NOT EXISTS d ON t(a DESC)").is_none());
        assert!(parse_create_index("CREATE TABLE t(a)").is_none());
        let commented = parse_create_index(
            "-- why this index\n/* more */ CREATE INDEX IF NOT EXISTS c ON t(a)",
        )
        .expect("leading comments are skipped");
        assert_eq!(commented.name, "c");
    }

    #[test]
    fn finds_an_equal_index_under_another_name() {
        let conn = Connection::open_in_memory().expect("memory");
        conn.execute_batch(
            "CREATE TABLE t(a, b, c);
             CREATE INDEX theirs ON t(a, b);
             CREATE INDEX other_order ON t(b, a);
             CREATE INDEX partial ON t(c) WHERE a = 1;
             CREATE INDEX descending ON t(c DESC);",
        )
        .expect("schema");
        let spec = |sql| parse_create_index(sql).expect("spec");
        let eq = |sql| equivalent_of(&conn, &spec(sql)).expect("lookup");
        assert_eq!(
            eq("CREATE INDEX IF NOT EXISTS ours ON t(a, b)").as_deref(),
            Some("theirs")
        );
        assert_eq!(eq("CREATE INDEX IF NOT EXISTS ours ON t(b)"), None);
        assert_eq!(eq("CREATE INDEX IF NOT EXISTS ours ON t(c)"), None);
        assert_eq!(
            eq("CREATE INDEX IF NOT EXISTS ours ON t(c) WHERE a = 1").as_deref(),
            Some("partial")
        );
        assert_eq!(
            eq("CREATE INDEX IF NOT EXISTS ours ON t(c) WHERE a = 2"),
            None
        );
    }
}

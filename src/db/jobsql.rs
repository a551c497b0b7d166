//! Running SQL that users wrote (custom `sql` and `query` jobs) on our connections.
//!
//! User SQL runs on connections dbwarden depends on, so two SQLite hooks fence it in
//! while it runs, and are removed afterwards:
//! - an **authorizer** refuses, when a statement is prepared, what would break the
//!   writer: transaction control and savepoints (a `COMMIT` would end the job's
//!   transaction early, a `ROLLBACK` could take other work with it), `ATTACH`/`DETACH`,
//!   every `PRAGMA` except `incremental_vacuum` and `optimize` (a `PRAGMA synchronous`
//!   would silently weaken every later acknowledgement), and direct writes to the
//!   tables the summary triggers derive (`corruption_summary`, `corruption_state_counts`)
//!   and to dbwarden's own `dbwarden_*` tables; triggers may still write them. Query
//!   jobs run on pooled reader connections the API shares, so they get only the
//!   pragmas that report without changing anything (`page_count`, `freelist_count`,
//!   `quick_check`, `table_info`, ...), e.g. to alert on a bloated file;
//! - a **progress handler** interrupts the statement once the job's deadline passed or
//!   the job was cancelled, so a runaway query never holds the writer hostage.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use super::sqlite_errors::{kind_of, ErrorKind};
use tokio_util::sync::CancellationToken;

/// When a job's SQL must stop.
#[derive(Debug, Clone)]
pub struct StopWhen {
    pub cancel: CancellationToken,
    pub deadline: Option<Instant>,
}

impl StopWhen {
    fn reached(&self) -> bool {
        self.cancel.is_cancelled() || self.deadline.is_some_and(|d| Instant::now() >= d)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum JobSqlError {
    /// The statement is wrong or not allowed; the transaction was rolled back.
    #[error("statement {index}: {reason}")]
    Statement { index: usize, reason: String },
    /// The deadline passed or the job was cancelled; the transaction was rolled back.
    #[error("statement {index} was stopped (timeout or cancellation); everything was rolled back")]
    Stopped { index: usize },
    /// The disk is full: nothing was committed.
    #[error("the disk is full: {0}")]
    DiskFull(#[source] rusqlite::Error),
    /// Any other storage failure: nothing was committed.
    #[error("storage error: {0}")]
    Storage(#[source] rusqlite::Error),
}

/// Pragmas a `sql` job may run on the writer's connection.
const WRITE_PRAGMAS: &[&str] = &["incremental_vacuum", "optimize"];
/// Pragmas a `query` job may run, with any argument: they report and change nothing.
const READ_PRAGMAS: &[&str] = &[
    "page_count",
    "page_size",
    "freelist_count",
    "schema_version",
    "data_version",
    "quick_check",
    "integrity_check",
    "foreign_key_check",
    "table_list",
    "table_info",
    "table_xinfo",
    "index_list",
    "index_info",
    "index_xinfo",
];
/// Pragmas a `query` job may read but not set.
const READ_ONLY_UNLESS_SET: &[&str] = &["user_version", "journal_mode", "auto_vacuum"];

/// Which SQL a job's connection accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    /// A `sql` job on the writer's connection.
    Write,
    /// A `query` job on a shared reader connection.
    Read,
}

fn pragma_allowed(policy: Policy, name: &str, value: Option<&str>) -> bool {
    let name = name.to_ascii_lowercase();
    match policy {
        Policy::Write => WRITE_PRAGMAS.contains(&name.as_str()),
        Policy::Read => {
            READ_PRAGMAS.contains(&name.as_str())
                || (value.is_none() && READ_ONLY_UNLESS_SET.contains(&name.as_str()))
        }
    }
}
const DERIVED_TABLES: &[&str] = &["corruption_summary", "corruption_state_counts"];

fn protected_table(name: &str) -> bool {
    DERIVED_TABLES.contains(&name) || name.starts_with("dbwarden_")
}

/// Why the policy refuses an action, or `None` to allow it.
fn refusal(policy: Policy, ctx: &AuthContext<'_>) -> Option<String> {
    let top_level = ctx.accessor.is_none();
    match ctx.action {
        AuthAction::Transaction { .. } | AuthAction::Savepoint { .. } => Some(
            "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT, RELEASE) is not allowed: \
             the job already runs in one transaction"
                .into(),
        ),
        AuthAction::Attach { .. } | AuthAction::Detach { .. } => {
            Some("ATTACH and DETACH are not allowed in a job".into())
        }
        AuthAction::Pragma {
            pragma_name,
            pragma_value,
        } if !pragma_allowed(policy, pragma_name, pragma_value) => Some(match policy {
            Policy::Write => format!(
                "PRAGMA {pragma_name} is not allowed in a sql job (allowed: {})",
                WRITE_PRAGMAS.join(", ")
            ),
            Policy::Read => format!(
                "PRAGMA {pragma_name} is not allowed in a query job (allowed: {}, and reading {})",
                READ_PRAGMAS.join(", "),
                READ_ONLY_UNLESS_SET.join(", ")
            ),
        }),
        AuthAction::Insert { table_name }
        | AuthAction::Delete { table_name }
        | AuthAction::Update { table_name, .. }
        | AuthAction::DropTable { table_name }
        | AuthAction::AlterTable { table_name, .. }
            if top_level && protected_table(table_name) =>
        {
            Some(format!(
                "{table_name} is maintained by dbwarden; change the events and the triggers keep it exact"
            ))
        }
        AuthAction::CreateTrigger { .. } | AuthAction::DropTrigger { .. } => {
            Some("creating or dropping triggers is not allowed in a job".into())
        }
        _ => None,
    }
}

/// Installs the policy and the stop check; the returned cell holds the reason of the
/// last refusal, so the error names it instead of SQLite's bare "not authorized".
fn fence(
    conn: &mut Connection,
    policy: Policy,
    stop: &StopWhen,
) -> rusqlite::Result<Arc<Mutex<Option<String>>>> {
    let refused = Arc::new(Mutex::new(None));
    let cell = refused.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| {
        match refusal(policy, &ctx) {
            Some(reason) => {
                if let Ok(mut slot) = cell.lock() {
                    *slot = Some(reason);
                }
                Authorization::Deny
            }
            None => Authorization::Allow,
        }
    }))?;
    let stop = stop.clone();
    conn.progress_handler(1000, Some(move || stop.reached()))?;
    Ok(refused)
}

fn unfence(conn: &mut Connection) {
    let _ = conn.authorizer(None::<fn(AuthContext<'_>) -> Authorization>);
    let _ = conn.progress_handler(0, None::<fn() -> bool>);
}

fn statement_error(
    e: rusqlite::Error,
    index: usize,
    refused: &Mutex<Option<String>>,
) -> JobSqlError {
    match kind_of(&e) {
        ErrorKind::Interrupted => JobSqlError::Stopped { index },
        ErrorKind::DiskFull => JobSqlError::DiskFull(e),
        ErrorKind::Storage => JobSqlError::Storage(e),
        ErrorKind::NotAuthorized => JobSqlError::Statement {
            index,
            reason: refused
                .lock()
                .ok()
                .and_then(|mut r| r.take())
                .unwrap_or_else(|| e.to_string()),
        },
        // Whatever else went wrong, the user's statement is what failed.
        ErrorKind::DataRefused | ErrorKind::Other => JobSqlError::Statement {
            index,
            reason: e.to_string(),
        },
    }
}

/// Runs `statements` in order in one IMMEDIATE transaction and commits it
/// (the connection's `synchronous=FULL` makes the commit durable). Any failure rolls
/// everything back. Returns the number of row changes, those made by triggers included
/// (SQLite's `total_changes`).
///
/// The transaction is opened and closed outside the fence, since the fence refuses
/// transaction control.
pub fn execute(
    conn: &mut Connection,
    statements: &[String],
    stop: &StopWhen,
) -> Result<u64, JobSqlError> {
    let storage = |e: rusqlite::Error| match kind_of(&e) {
        ErrorKind::DiskFull => JobSqlError::DiskFull(e),
        _ => JobSqlError::Storage(e),
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(storage)?;
    let before = conn.total_changes();
    let ran = match fence(conn, Policy::Write, stop) {
        Ok(refused) => {
            let ran = run_fenced(conn, statements, &refused);
            unfence(conn);
            ran
        }
        Err(e) => Err(storage(e)),
    };
    let changed = conn.total_changes() - before;
    match ran {
        Ok(()) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(changed),
            Err(e) => {
                rollback(conn);
                Err(storage(e))
            }
        },
        Err(e) => {
            rollback(conn);
            Err(e)
        }
    }
}

/// Rolls back unless SQLite already did (some errors end the transaction themselves).
fn rollback(conn: &Connection) {
    if !conn.is_autocommit() {
        if let Err(e) = conn.execute_batch("ROLLBACK") {
            tracing::error!(error = %e, "rolling back a job's transaction failed");
        }
    }
}

fn run_fenced(
    conn: &Connection,
    statements: &[String],
    refused: &Mutex<Option<String>>,
) -> Result<(), JobSqlError> {
    for (index, sql) in statements.iter().enumerate() {
        // execute_batch: one entry may hold several `;`-separated statements.
        conn.execute_batch(sql)
            .map_err(|e| statement_error(e, index, refused))?;
    }
    Ok(())
}

/// Runs a query that must answer one number (first column of the first row).
pub fn query_number(conn: &mut Connection, sql: &str, stop: &StopWhen) -> Result<f64, JobSqlError> {
    let refused = fence(conn, Policy::Read, stop).map_err(JobSqlError::Storage)?;
    let result = query_fenced(conn, sql, &refused);
    unfence(conn);
    result
}

fn query_fenced(
    conn: &Connection,
    sql: &str,
    refused: &Mutex<Option<String>>,
) -> Result<f64, JobSqlError> {
    let fail = |reason: String| JobSqlError::Statement { index: 0, reason };
    let mut stmt = conn
        .prepare(sql)
        .map_err(|e| statement_error(e, 0, refused))?;
    if !stmt.readonly() {
        return Err(fail("a query job must only read".into()));
    }
    let mut rows = stmt.query([]).map_err(|e| statement_error(e, 0, refused))?;
    let row = rows
        .next()
        .map_err(|e| statement_error(e, 0, refused))?
        .ok_or_else(|| fail("the query returned no row".into()))?;
    let value = row.get_ref(0).map_err(|e| fail(e.to_string()))?;
    match value {
        ValueRef::Integer(i) => Ok(i as f64),
        ValueRef::Real(f) => Ok(f),
        ValueRef::Null => Err(fail("the query returned NULL, not a number".into())),
        ValueRef::Text(t) => String::from_utf8_lossy(t)
            .trim()
            .parse::<f64>()
            .map_err(|_| fail("the query returned text, not a number".into())),
        ValueRef::Blob(_) => Err(fail("the query returned a blob, not a number".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut conn = Connection::open_in_memory().expect("db");
        crate::db::migrations::migrate(&mut conn).expect("migrate");
        conn.execute_batch(
            "INSERT INTO events (aggregate_type, aggregate_id, event_type, event_data)
             VALUES ('corruption', 'c1', 'CorruptionDetected', '{}')",
        )
        .expect("seed");
        conn
    }

    fn no_stop() -> StopWhen {
        StopWhen {
            cancel: CancellationToken::new(),
            deadline: None,
        }
    }

    fn events(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .expect("count")
    }

    #[test]
    fn query_jobs_may_read_reporting_pragmas_but_set_nothing() {
        let mut conn = db();
        for sql in [
            "PRAGMA freelist_count",
            "SELECT count(*) FROM pragma_table_info('events')",
            "PRAGMA user_version",
            "SELECT count(*) FROM corruption_summary",
        ] {
            query_number(&mut conn, sql, &no_stop()).unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        for (sql, reason) in [
            ("PRAGMA cache_size = 1", "PRAGMA cache_size is not allowed"),
            (
                "PRAGMA user_version = 3",
                "PRAGMA user_version is not allowed",
            ),
            ("DELETE FROM events", "must only read"),
        ] {
            let err = query_number(&mut conn, sql, &no_stop()).expect_err(sql);
            assert!(err.to_string().contains(reason), "{sql}: {err}");
        }
        assert_eq!(events(&conn), 1);
        // The fence is gone afterwards: the connection's own pragmas work again.
        conn.execute_batch("PRAGMA cache_size = 100")
            .expect("unfenced");
    }

    #[test]
    fn a_stopped_job_is_interrupted_and_rolled_back() {
        let mut conn = db();
        let cancelled = StopWhen {
            cancel: CancellationToken::new(),
            deadline: None,
        };
        cancelled.cancel.cancel();
        // Enough work for the progress handler to run.
        let statements = vec![
            "DELETE FROM events".to_string(),
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000)
             SELECT count(*) FROM n"
                .to_string(),
        ];
        let err = execute(&mut conn, &statements, &cancelled).expect_err("stopped");
        assert!(matches!(err, JobSqlError::Stopped { .. }), "{err}");
        assert!(conn.is_autocommit(), "no transaction left open");
        assert_eq!(events(&conn), 1, "the DELETE was rolled back");

        let past = StopWhen {
            cancel: CancellationToken::new(),
            deadline: Some(Instant::now()),
        };
        let err = query_number(
            &mut conn,
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1000000) SELECT count(*) FROM n",
            &past,
        )
        .expect_err("stopped");
        assert!(matches!(err, JobSqlError::Stopped { .. }), "{err}");

        // Unstopped, the same DELETE commits; trigger changes count too.
        let changed = execute(&mut conn, &statements[..1], &no_stop()).expect("runs");
        assert!(changed >= 1, "{changed}");
        assert_eq!(events(&conn), 0);
    }
}

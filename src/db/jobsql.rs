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
//!   and to dbwarden's own `dbwarden_*` tables; triggers may still write them;
//! - a **progress handler** interrupts the statement once the job's deadline passed or
//!   the job was cancelled, so a runaway query never holds the writer hostage.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use rusqlite::hooks::{AuthAction, AuthContext, Authorization};
use rusqlite::types::ValueRef;
use rusqlite::{Connection, ErrorCode};
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobSqlError {
    /// The statement is wrong or not allowed; the transaction was rolled back.
    #[error("statement {index}: {reason}")]
    Statement { index: usize, reason: String },
    /// The deadline passed or the job was cancelled; the transaction was rolled back.
    #[error("statement {index} was stopped (timeout or cancellation); everything was rolled back")]
    Stopped { index: usize },
    /// The disk is full: nothing was committed.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// Any other storage failure: nothing was committed.
    #[error("storage error: {0}")]
    Storage(String),
}

const ALLOWED_PRAGMAS: &[&str] = &["incremental_vacuum", "optimize"];
const DERIVED_TABLES: &[&str] = &["corruption_summary", "corruption_state_counts"];

fn protected_table(name: &str) -> bool {
    DERIVED_TABLES.contains(&name) || name.starts_with("dbwarden_")
}

/// Why the policy refuses an action, or `None` to allow it.
fn refusal(ctx: &AuthContext<'_>) -> Option<String> {
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
        AuthAction::Pragma { pragma_name, .. }
            if !ALLOWED_PRAGMAS.contains(&pragma_name.to_ascii_lowercase().as_str()) =>
        {
            Some(format!(
                "PRAGMA {pragma_name} is not allowed in a job (allowed: {})",
                ALLOWED_PRAGMAS.join(", ")
            ))
        }
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
fn fence(conn: &mut Connection, stop: &StopWhen) -> rusqlite::Result<Arc<Mutex<Option<String>>>> {
    let refused = Arc::new(Mutex::new(None));
    let cell = refused.clone();
    conn.authorizer(Some(move |ctx: AuthContext<'_>| match refusal(&ctx) {
        Some(reason) => {
            if let Ok(mut slot) = cell.lock() {
                *slot = Some(reason);
            }
            Authorization::Deny
        }
        None => Authorization::Allow,
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
    e: &rusqlite::Error,
    index: usize,
    refused: &Mutex<Option<String>>,
) -> JobSqlError {
    match e.sqlite_error_code() {
        Some(ErrorCode::OperationInterrupted) => JobSqlError::Stopped { index },
        Some(ErrorCode::DiskFull) => JobSqlError::DiskFull(e.to_string()),
        Some(ErrorCode::SystemIoFailure) | Some(ErrorCode::DatabaseCorrupt) => {
            JobSqlError::Storage(e.to_string())
        }
        Some(ErrorCode::AuthorizationForStatementDenied) => JobSqlError::Statement {
            index,
            reason: refused
                .lock()
                .ok()
                .and_then(|mut r| r.take())
                .unwrap_or_else(|| e.to_string()),
        },
        _ => JobSqlError::Statement {
            index,
            reason: e.to_string(),
        },
    }
}

/// Runs `statements` in order in one IMMEDIATE transaction and commits it
/// (the connection's `synchronous=FULL` makes the commit durable). Any failure rolls
/// everything back. Returns the number of rows changed.
///
/// The transaction is opened and closed outside the fence, since the fence refuses
/// transaction control.
pub fn execute(
    conn: &mut Connection,
    statements: &[String],
    stop: &StopWhen,
) -> Result<u64, JobSqlError> {
    let storage = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => JobSqlError::DiskFull(e.to_string()),
        _ => JobSqlError::Storage(e.to_string()),
    };
    conn.execute_batch("BEGIN IMMEDIATE").map_err(storage)?;
    let before = conn.total_changes();
    let ran = match fence(conn, stop) {
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
            .map_err(|e| statement_error(&e, index, refused))?;
    }
    Ok(())
}

/// Runs a query that must answer one number (first column of the first row).
pub fn query_number(conn: &mut Connection, sql: &str, stop: &StopWhen) -> Result<f64, JobSqlError> {
    let refused = fence(conn, stop).map_err(|e| JobSqlError::Storage(e.to_string()))?;
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
        .map_err(|e| statement_error(&e, 0, refused))?;
    if !stmt.readonly() {
        return Err(fail("a query job must only read".into()));
    }
    let mut rows = stmt
        .query([])
        .map_err(|e| statement_error(&e, 0, refused))?;
    let row = rows
        .next()
        .map_err(|e| statement_error(&e, 0, refused))?
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

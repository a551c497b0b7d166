//! What a SQLite error means, decided in one place: every caller (the writer, user SQL
//! of jobs, verified copies) asks [`kind_of`] and applies its own policy to the answer,
//! instead of matching error codes itself.

use rusqlite::ErrorCode;

/// The meaning of a SQLite error for whoever ran the statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The disk (or the file system's quota) is full: nothing of the statement stayed.
    DiskFull,
    /// The data was refused: a constraint (including a trigger's `RAISE`), a value too
    /// big, a type mismatch. The request is at fault, not the storage.
    DataRefused,
    /// The authorizer refused the statement (the fence around user SQL).
    NotAuthorized,
    /// Interrupted: a deadline passed or the work was cancelled.
    Interrupted,
    /// The storage failed: an I/O error or a damaged database.
    Storage,
    /// Anything else (a statement that does not parse, a missing table, busy): whose
    /// fault it is depends on who wrote the SQL.
    Other,
}

pub fn kind_of(e: &rusqlite::Error) -> ErrorKind {
    match e.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => ErrorKind::DiskFull,
        Some(ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch) => {
            ErrorKind::DataRefused
        }
        Some(ErrorCode::AuthorizationForStatementDenied) => ErrorKind::NotAuthorized,
        Some(ErrorCode::OperationInterrupted) => ErrorKind::Interrupted,
        Some(ErrorCode::SystemIoFailure | ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => {
            ErrorKind::Storage
        }
        _ => ErrorKind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_from_a_real_connection() {
        let conn = rusqlite::Connection::open_in_memory().expect("memory");
        conn.execute_batch("CREATE TABLE t(a TEXT UNIQUE)")
            .expect("table");
        conn.execute("INSERT INTO t VALUES ('x')", []).expect("row");
        let dup = conn
            .execute("INSERT INTO t VALUES ('x')", [])
            .expect_err("duplicate");
        assert_eq!(kind_of(&dup), ErrorKind::DataRefused);
        let parse = conn.execute_batch("SELEKT 1").expect_err("syntax");
        assert_eq!(kind_of(&parse), ErrorKind::Other);
        conn.execute_batch(
            "CREATE TRIGGER r BEFORE INSERT ON t BEGIN SELECT RAISE(ABORT, 'no'); END",
        )
        .expect("trigger");
        let raised = conn
            .execute("INSERT INTO t VALUES ('y')", [])
            .expect_err("raised");
        assert_eq!(kind_of(&raised), ErrorKind::DataRefused);
    }
}

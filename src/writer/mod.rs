//! The DbWriter: the one actor that owns the read-write connection.
//!
//! It runs on its own arbiter (its own thread), so it may block on SQLite. Callers
//! reach it only through a [`WriterHandle`], which sends a request through a bounded
//! mailbox (`try_send`: a full mailbox is backpressure, never an unbounded queue) and
//! waits for that request's own answer.
//!
//! **Group commit.** A handler only queues the request and schedules a flush. actix
//! drains every message waiting in the mailbox before it runs the flush, so all the
//! writes that arrived while the previous COMMIT was syncing are committed together
//! in one transaction (at most `max_batch_requests` of them). Each write runs inside
//! its own savepoint, so one bad write fails alone. Nobody is answered before COMMIT
//! returned with `synchronous=FULL`: an acknowledgement means the data is on disk.
//!
//! The parts: [`request`] (what can be asked, each kind with its own answer),
//! [`batch`] (the group commit on the connection), [`actor`] (the mailbox, flushes,
//! checkpoints and the final stop), [`handle`] (the typed API everything else uses).

mod actor;
mod batch;
mod handle;
pub mod replication;
mod request;

use std::sync::Arc;

pub use actor::{Checkpointed, DbWriter};
pub use handle::{WriterHandle, WriterStats};

use crate::db::DbError;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// The request itself is wrong (a constraint failed, a statement is refused).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The mailbox is full: try again shortly.
    #[error("the writer is busy; retry shortly")]
    Busy,
    /// The disk is full: nothing of the batch was committed.
    #[error("the disk is full: {0}")]
    DiskFull(#[source] Arc<DbError>),
    /// Any other storage failure: nothing of the batch was committed.
    #[error("storage error: {0}")]
    Storage(#[source] Arc<DbError>),
    /// The writer is stopping or has stopped.
    #[error("the writer is not running")]
    Unavailable,
    /// Committed locally, but not acknowledged: an `ack_writes` replica did not take
    /// the commit. It is shipped once the replica is back; retry with the same keys.
    #[error("not acknowledged: replica {replica} does not hold the commit ({reason}); it is stored locally and shipped when the replica is back: retry the same events with their `id`s")]
    NotReplicated { replica: String, reason: String },
}

impl WriteError {
    /// The writer's reading of a SQLite error from its own SQL: refused data is the
    /// request's fault; anything else (our SQL is not expected to fail) is storage.
    pub(crate) fn from_sqlite(e: rusqlite::Error) -> WriteError {
        use crate::db::sqlite_errors::{kind_of, ErrorKind};
        match kind_of(&e) {
            ErrorKind::DataRefused => WriteError::Rejected(e.to_string()),
            ErrorKind::DiskFull => WriteError::DiskFull(Arc::new(DbError::Sqlite(e))),
            _ => WriteError::Storage(Arc::new(DbError::Sqlite(e))),
        }
    }

    pub(crate) fn storage(e: DbError) -> WriteError {
        match e {
            DbError::Sqlite(e) => WriteError::from_sqlite(e),
            other => WriteError::Storage(Arc::new(other)),
        }
    }

    /// The label of `writes_refused_total`.
    fn reason(&self) -> &'static str {
        match self {
            WriteError::Rejected(_) => "invalid",
            WriteError::Busy => "busy",
            WriteError::DiskFull(_) => "disk_full",
            WriteError::Storage(_) => "storage",
            WriteError::Unavailable => "unavailable",
            WriteError::NotReplicated { .. } => "not_replicated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sqlite_error(code: std::os::raw::c_int) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None)
    }

    /// Each kind of failure reaches the client (and `writes_refused_total`) as itself: a
    /// full disk is not "storage", a refused row is the request's fault.
    #[test]
    fn sqlite_errors_become_the_write_errors_their_labels_name() {
        let cases = [
            (rusqlite::ffi::SQLITE_FULL, "disk_full"),
            (rusqlite::ffi::SQLITE_CONSTRAINT, "invalid"),
            (rusqlite::ffi::SQLITE_IOERR, "storage"),
            (rusqlite::ffi::SQLITE_CORRUPT, "storage"),
        ];
        for (code, label) in cases {
            assert_eq!(
                WriteError::from_sqlite(sqlite_error(code)).reason(),
                label,
                "code {code}"
            );
        }
        assert!(matches!(
            WriteError::from_sqlite(sqlite_error(rusqlite::ffi::SQLITE_FULL)),
            WriteError::DiskFull(_)
        ));
        assert_eq!(WriteError::Busy.reason(), "busy");
        assert_eq!(WriteError::Unavailable.reason(), "unavailable");
    }
}

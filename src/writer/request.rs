//! What the writer can be asked, each kind with its own answer type. A batched
//! request carries the sender of its answer and a slot for it: the batch fills the
//! slot, and only after COMMIT is the answer sent ([`Batched::finish`]); if the
//! transaction fails, every request of it gets the error instead ([`Batched::fail`]).

use tokio::sync::oneshot;

use super::WriteError;
use crate::db::guard::RepairReport;
use crate::db::job_runs::JobRunRow;
use crate::db::jobsql::StopWhen;
use crate::events::NewEvent;

/// Where one request's answer goes, and the answer until it may be sent.
pub(super) struct Reply<T> {
    to: oneshot::Sender<Result<T, WriteError>>,
    result: Option<Result<T, WriteError>>,
}

impl<T> Reply<T> {
    pub fn new(to: oneshot::Sender<Result<T, WriteError>>) -> Reply<T> {
        Reply { to, result: None }
    }

    pub fn set(&mut self, result: Result<T, WriteError>) {
        self.result = Some(result);
    }

    pub fn is_set(&self) -> bool {
        self.result.is_some()
    }

    fn finish(self) {
        // Every request of a committed batch has its answer: the batch set it, or
        // failed as a whole before COMMIT.
        let result = self.result.unwrap_or(Err(WriteError::Unavailable));
        // The caller may have given up waiting; its answer then has nowhere to go.
        let _ = self.to.send(result);
    }

    fn fail(self, error: WriteError) {
        let _ = self.to.send(Err(error));
    }
}

/// A request and its reply: one that may share a transaction with others, or one
/// that runs alone.
pub(super) enum Request {
    Batched(Batched),
    Exclusive(Exclusive),
}

/// Requests committed together in one transaction (group commit), each in a
/// savepoint of its own.
pub(super) enum Batched {
    /// Events to append; answered with their row ids in request order.
    Append {
        events: Vec<NewEvent>,
        reply: Reply<Vec<i64>>,
    },
    /// Every event of a corruption; answered with how many were deleted.
    DeleteCorruption { id: String, reply: Reply<usize> },
    /// One finished job run for the history table (keeping `keep` runs per job).
    RecordJobRun {
        run: JobRunRow,
        keep: u32,
        reply: Reply<()>,
    },
}

/// Requests that run alone in a transaction of their own, never batched with other
/// writes, so their failure or interruption cannot touch anyone else's.
pub(super) enum Exclusive {
    /// A `sql` job's statements; answered with the rows they changed.
    Statements {
        statements: Vec<String>,
        stop: StopWhen,
        reply: oneshot::Sender<Result<u64, WriteError>>,
    },
    /// Drop foreign summary triggers and rebuild the summary.
    RepairSummary {
        reply: oneshot::Sender<Result<RepairReport, WriteError>>,
    },
}

impl Request {
    /// Answers with `error` (the writer is gone).
    pub fn fail(self, error: WriteError) {
        match self {
            Request::Batched(b) => b.fail(error),
            Request::Exclusive(Exclusive::Statements { reply, .. }) => {
                let _ = reply.send(Err(error));
            }
            Request::Exclusive(Exclusive::RepairSummary { reply }) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl Batched {
    /// Sends the stored answer (after COMMIT).
    pub fn finish(self) {
        match self {
            Batched::Append { reply, .. } => reply.finish(),
            Batched::DeleteCorruption { reply, .. } => reply.finish(),
            Batched::RecordJobRun { reply, .. } => reply.finish(),
        }
    }

    /// Answers with `error`: the transaction failed and nothing of it was committed.
    pub fn fail(self, error: WriteError) {
        match self {
            Batched::Append { reply, .. } => reply.fail(error),
            Batched::DeleteCorruption { reply, .. } => reply.fail(error),
            Batched::RecordJobRun { reply, .. } => reply.fail(error),
        }
    }

    /// Whether its answer waits for `ack_writes` replicas: a client's write does; the
    /// service's own bookkeeping (a job run's record) does not.
    pub fn waits_for_replicas(&self) -> bool {
        !self.is_bookkeeping()
    }

    /// The service's own bookkeeping (a job run's record), not a change of the data.
    pub fn is_bookkeeping(&self) -> bool {
        matches!(self, Batched::RecordJobRun { .. })
    }

    /// Whether its answer is known (so the batch does not process it again).
    pub fn is_answered(&self) -> bool {
        match self {
            Batched::Append { reply, .. } => reply.is_set(),
            Batched::DeleteCorruption { reply, .. } => reply.is_set(),
            Batched::RecordJobRun { reply, .. } => reply.is_set(),
        }
    }

    /// Events this request appended (0 until its answer is known, or if it failed).
    pub fn appended(&self) -> usize {
        match self {
            Batched::Append {
                reply:
                    Reply {
                        result: Some(Ok(ids)),
                        ..
                    },
                ..
            } => ids.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn disk_full() -> WriteError {
        WriteError::DiskFull(Arc::new(crate::db::DbError::Sqlite(
            rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ),
        )))
    }

    fn is_disk_full<T>(
        answer: Result<Result<T, WriteError>, oneshot::error::TryRecvError>,
    ) -> bool {
        matches!(answer, Ok(Err(WriteError::DiskFull(_))))
    }

    /// A failed transaction's error reaches every kind of request as it is (a full
    /// disk stays a full disk, which the API answers with 507), not as "unavailable".
    #[test]
    fn a_failure_reaches_every_request_as_the_error_it_was() {
        let (to, mut append) = oneshot::channel();
        Request::Batched(Batched::Append {
            events: Vec::new(),
            reply: Reply::new(to),
        })
        .fail(disk_full());
        assert!(is_disk_full(append.try_recv()));

        let (to, mut delete) = oneshot::channel();
        Request::Batched(Batched::DeleteCorruption {
            id: "x".into(),
            reply: Reply::new(to),
        })
        .fail(disk_full());
        assert!(is_disk_full(delete.try_recv()));

        let (to, mut record) = oneshot::channel();
        Request::Batched(Batched::RecordJobRun {
            run: JobRunRow {
                job: "j".into(),
                trigger: "manual".into(),
                started_at: chrono::Utc::now(),
                duration_ms: 0,
                outcome: "ok".into(),
                message: String::new(),
                output: None,
            },
            keep: 1,
            reply: Reply::new(to),
        })
        .fail(disk_full());
        assert!(is_disk_full(record.try_recv()));

        let (to, mut statements) = oneshot::channel();
        Request::Exclusive(Exclusive::Statements {
            statements: Vec::new(),
            stop: StopWhen {
                cancel: tokio_util::sync::CancellationToken::new(),
                deadline: None,
            },
            reply: to,
        })
        .fail(disk_full());
        assert!(is_disk_full(statements.try_recv()));

        let (to, mut repair) = oneshot::channel();
        Request::Exclusive(Exclusive::RepairSummary { reply: to }).fail(disk_full());
        assert!(is_disk_full(repair.try_recv()));
    }

    /// The events counter counts what an append wrote once its answer is known, and
    /// nothing for a refused or failed one.
    #[test]
    fn appended_counts_the_written_events_only() {
        let (to, _answer) = oneshot::channel();
        let mut written = Batched::Append {
            events: Vec::new(),
            reply: Reply::new(to),
        };
        assert_eq!(written.appended(), 0, "no answer yet");
        if let Batched::Append { reply, .. } = &mut written {
            reply.set(Ok(vec![7, 8, 9]));
        }
        assert_eq!(written.appended(), 3);

        let (to, _answer) = oneshot::channel();
        let mut refused = Batched::Append {
            events: Vec::new(),
            reply: Reply::new(to),
        };
        if let Batched::Append { reply, .. } = &mut refused {
            reply.set(Err(WriteError::Rejected("no".into())));
        }
        assert_eq!(refused.appended(), 0);
    }
}

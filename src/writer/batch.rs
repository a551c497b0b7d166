//! The group commit: a batch of requests in one IMMEDIATE transaction.
//!
//! Consecutive appends are written together with multi-row INSERTs under one
//! savepoint; if that fails on a request's own account (the database refused its
//! data), the savepoint is rolled back and the run is retried one savepoint per
//! request, so a bad request fails alone. A storage failure aborts the whole
//! transaction: nothing of the batch is committed.

use rusqlite::{Connection, Transaction, TransactionBehavior};

use super::request::{Batched, Exclusive};
use super::WriteError;
use crate::db::{guard, job_runs, jobsql, queries};
use crate::events::NewEvent;

/// Runs `batch` in one transaction and commits it. `Ok`: every request holds its
/// answer (its result, or its own rejection). `Err`: nothing was committed; the caller
/// fails every request with it.
pub(super) fn commit(conn: &mut Connection, batch: &mut [Batched]) -> Result<(), WriteError> {
    let mut tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(WriteError::from_sqlite)?;
    let mut start = 0;
    while start < batch.len() {
        if batch[start].is_answered() {
            start += 1;
            continue;
        }
        // A run of appends, or a single other request.
        let mut end = start + 1;
        if is_append(&batch[start]) {
            while end < batch.len() && !batch[end].is_answered() && is_append(&batch[end]) {
                end += 1;
            }
        }
        if end - start > 1 && append_run(&mut tx, &mut batch[start..end])? {
            start = end;
            continue;
        }
        for request in &mut batch[start..end] {
            apply_alone(&mut tx, request)?;
        }
        start = end;
    }
    tx.commit().map_err(WriteError::from_sqlite)
}

fn is_append(request: &Batched) -> bool {
    matches!(request, Batched::Append { .. })
}

/// Writes a run of appends with shared multi-row INSERTs. `Ok(false)`: a request was
/// at fault; the run was rolled back and must be retried request by request.
fn append_run(tx: &mut Transaction<'_>, run: &mut [Batched]) -> Result<bool, WriteError> {
    let mut savepoint = tx
        .savepoint_with_name("run")
        .map_err(WriteError::from_sqlite)?;
    let written = {
        let all: Vec<&NewEvent> = run
            .iter()
            .flat_map(|r| match r {
                Batched::Append { events, .. } => events.as_slice(),
                _ => &[],
            })
            .collect();
        queries::insert_events(&savepoint, &all)
    };
    match written {
        Ok(ids) => {
            savepoint.commit().map_err(WriteError::from_sqlite)?;
            let mut ids = ids.into_iter();
            for request in run {
                if let Batched::Append { events, reply } = request {
                    reply.set(Ok(ids.by_ref().take(events.len()).collect()));
                }
            }
            Ok(true)
        }
        Err(e) => match WriteError::from_sqlite(e) {
            WriteError::Rejected(_) => {
                savepoint.rollback().map_err(WriteError::from_sqlite)?;
                savepoint.commit().map_err(WriteError::from_sqlite)?;
                Ok(false)
            }
            other => Err(other),
        },
    }
}

/// Applies one request inside its own savepoint; its rejection is its answer. `Err`
/// only for storage failures.
fn apply_alone(tx: &mut Transaction<'_>, request: &mut Batched) -> Result<(), WriteError> {
    let mut savepoint = tx
        .savepoint_with_name("request")
        .map_err(WriteError::from_sqlite)?;
    let outcome = match request {
        Batched::Append { events, reply } => {
            let result = queries::insert_events(&savepoint, events);
            settle(reply, result)
        }
        Batched::DeleteCorruption { id, reply } => {
            let result = queries::delete_corruption(&savepoint, id);
            settle(reply, result)
        }
        Batched::RecordJobRun { run, keep, reply } => {
            let result = job_runs::insert(&savepoint, run, *keep);
            settle(reply, result)
        }
    };
    match outcome {
        Settled::Done => savepoint.commit().map_err(WriteError::from_sqlite),
        Settled::Refused => {
            savepoint.rollback().map_err(WriteError::from_sqlite)?;
            savepoint.commit().map_err(WriteError::from_sqlite)
        }
        Settled::Storage(e) => Err(e),
    }
}

enum Settled {
    Done,
    /// The request's data was refused; its savepoint must be rolled back.
    Refused,
    Storage(WriteError),
}

fn settle<T>(reply: &mut super::request::Reply<T>, result: Result<T, rusqlite::Error>) -> Settled {
    match result {
        Ok(value) => {
            reply.set(Ok(value));
            Settled::Done
        }
        Err(e) => match WriteError::from_sqlite(e) {
            rejected @ WriteError::Rejected(_) => {
                reply.set(Err(rejected));
                Settled::Refused
            }
            other => Settled::Storage(other),
        },
    }
}

/// Runs a request that must be alone, in its own transaction, and answers it.
pub(super) fn run_alone(conn: &mut Connection, request: Exclusive) {
    match request {
        Exclusive::Statements {
            statements,
            stop,
            reply,
        } => {
            let result = jobsql::execute(conn, &statements, &stop).map_err(|e| match e {
                jobsql::JobSqlError::DiskFull(e) => WriteError::from_sqlite(e),
                jobsql::JobSqlError::Storage(e) => {
                    WriteError::Storage(std::sync::Arc::new(crate::db::DbError::Sqlite(e)))
                }
                refused => WriteError::Rejected(refused.to_string()),
            });
            let _ = reply.send(result);
        }
        Exclusive::RepairSummary { reply } => {
            let _ = reply.send(guard::repair(conn).map_err(WriteError::storage));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::request::Reply;
    use super::*;

    fn append(
        id: &str,
    ) -> (
        Batched,
        tokio::sync::oneshot::Receiver<Result<Vec<i64>, WriteError>>,
    ) {
        let (to, answer) = tokio::sync::oneshot::channel();
        let event = NewEvent::new(
            "corruption",
            id,
            "CorruptionDetected",
            serde_json::Value::Null,
        )
        .expect("a valid event");
        let request = Batched::Append {
            events: vec![event],
            reply: Reply::new(to),
        };
        (request, answer)
    }

    fn migrated(dir: &std::path::Path) -> Connection {
        let settings = crate::config::Settings::load_with_env(
            &crate::config::ConfigSource::Default,
            [(
                "DBWARDEN__DATABASE__PATH".to_string(),
                dir.join("events.db").display().to_string(),
            )],
        )
        .expect("settings");
        crate::db::open_and_migrate(&settings.database)
            .expect("migrate")
            .0
    }

    fn delete(id: &str) -> Batched {
        let (to, _) = tokio::sync::oneshot::channel();
        Batched::DeleteCorruption {
            id: id.into(),
            reply: Reply::new(to),
        }
    }

    /// The shape of the group commit: consecutive appends share one savepoint and one
    /// multi-row INSERT (`run`); anything else, and an append on its own, gets a
    /// savepoint of its own (`request`). Seen through SQLite's authorizer, which is
    /// told of every SAVEPOINT statement.
    #[test]
    fn consecutive_appends_are_written_together_and_the_rest_one_by_one() {
        use rusqlite::hooks::{AuthAction, Authorization, TransactionOperation};
        use std::sync::{Arc, Mutex};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = migrated(dir.path());
        let savepoints = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&savepoints);
        conn.authorizer(Some(move |context: rusqlite::hooks::AuthContext<'_>| {
            if let AuthAction::Savepoint {
                operation: TransactionOperation::Begin,
                savepoint_name,
            } = context.action
            {
                seen.lock().expect("lock").push(savepoint_name.to_string());
            }
            Authorization::Allow
        }))
        .expect("authorizer");
        let mut answers = Vec::new();
        let mut batch = Vec::new();
        for id in ["a", "b", "c"] {
            let (request, answer) = append(id);
            batch.push(request);
            answers.push(answer);
        }
        batch.push(delete("x"));
        let (lone, answer) = append("d");
        batch.push(lone);
        answers.push(answer);
        batch.push(delete("y"));
        for id in ["e", "f"] {
            let (request, answer) = append(id);
            batch.push(request);
            answers.push(answer);
        }
        commit(&mut conn, &mut batch).expect("commit");
        conn.authorizer(None::<fn(rusqlite::hooks::AuthContext<'_>) -> Authorization>)
            .expect("authorizer removed");
        for request in batch {
            request.finish();
        }
        assert_eq!(
            *savepoints.lock().expect("lock"),
            ["run", "request", "request", "request", "run"],
            "three appends together, the delete, the lone append, the delete, two appends together"
        );
        let ids: Vec<i64> = answers
            .into_iter()
            .flat_map(|mut answer| answer.try_recv().expect("answered").expect("written"))
            .collect();
        assert_eq!(
            ids,
            [1, 2, 3, 4, 5, 6],
            "every append written once, in order"
        );
        assert_eq!(queries::event_count(&conn).expect("count"), 6);
    }

    /// A request whose answer is already known is skipped, never written again; the
    /// ones after it are written.
    #[test]
    fn an_answered_request_is_not_written_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut conn = migrated(dir.path());
        let (mut answered, _) = append("already");
        if let Batched::Append { reply, .. } = &mut answered {
            reply.set(Ok(vec![99]));
        }
        let (first, _) = append("a");
        let (second, _) = append("b");
        let mut batch = vec![answered, first, second];
        commit(&mut conn, &mut batch).expect("commit");
        assert_eq!(
            queries::event_count(&conn).expect("count"),
            2,
            "the two unanswered requests, and not the answered one"
        );
    }
}

//! The DbWriter: the one actor that owns the read-write connection.
//!
//! It runs on its own arbiter (its own thread), so it may block on SQLite. Callers
//! hand it a [`Write`] with a oneshot for the answer through a bounded mailbox
//! (`try_send`: a full mailbox is backpressure, never an unbounded queue).
//!
//! **Group commit.** A handler only queues the write and schedules a flush. actix
//! drains every message waiting in the mailbox before it runs the flush, so all the
//! writes that arrived while the previous COMMIT was syncing are committed together
//! in one transaction (at most `max_batch_requests` of them). Each write runs inside
//! its own SAVEPOINT, so one bad write fails alone. Nobody is answered before COMMIT
//! returned with `synchronous=FULL`: an acknowledgement means the data is on disk.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use rusqlite::{Connection, ErrorCode, TransactionBehavior};
use tokio::sync::oneshot;

use crate::db::job_runs::{self, JobRunRow};
use crate::db::jobsql::{self, JobSqlError, StopWhen};
use crate::db::{self, queries, CheckpointMode, CheckpointResult, DbError};
use crate::events::NewEvent;
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};

/// A write the service asks for.
#[derive(Debug)]
pub enum WriteRequest {
    Append(Vec<NewEvent>),
    DeleteCorruption(String),
    /// A `sql` job's statements: run alone in their own transaction, never batched
    /// with other writes, so their failure or interruption cannot touch anyone else's.
    Statements {
        statements: Vec<String>,
        stop: StopWhen,
    },
    /// One finished job run for the history table (keeping `keep` runs per job).
    RecordJobRun {
        run: JobRunRow,
        keep: u32,
    },
    /// Drop foreign summary triggers and rebuild the summary (see [`db::guard`]), in a
    /// transaction of its own.
    RepairSummary,
}

impl WriteRequest {
    /// Requests that run alone in their own transaction, never batched with others.
    fn is_exclusive(&self) -> bool {
        matches!(
            self,
            WriteRequest::Statements { .. } | WriteRequest::RepairSummary
        )
    }
}

/// What a successful write returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteReply {
    /// Row ids of the appended events, in request order.
    Appended(Vec<i64>),
    /// Number of events deleted.
    Deleted(usize),
    /// Rows changed by a job's statements.
    Executed(u64),
    Recorded,
    Repaired(Box<db::guard::RepairReport>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The request itself is wrong (a constraint failed, a field is invalid).
    #[error("rejected: {0}")]
    Rejected(String),
    /// The mailbox is full: try again shortly.
    #[error("the writer is busy; retry shortly")]
    Busy,
    /// The disk is full: nothing of the batch was committed.
    #[error("the disk is full: {0}")]
    DiskFull(String),
    /// Any other storage failure: nothing of the batch was committed.
    #[error("storage error: {0}")]
    Storage(String),
    /// The writer is stopping or has stopped.
    #[error("the writer is not running")]
    Unavailable,
}

/// A write plus where to send its answer.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Write {
    pub request: WriteRequest,
    pub reply: oneshot::Sender<Result<WriteReply, WriteError>>,
}

/// Runs a checkpoint on the writer's connection (the Checkpointer's path).
#[derive(Message)]
#[rtype(result = "Result<CheckpointResult, WriteError>")]
pub struct Checkpoint(pub CheckpointMode);

/// Commits everything queued, runs a final TRUNCATE checkpoint, closes the
/// connection and stops the actor. Messages sent after it are refused.
#[derive(Message)]
#[rtype(result = "Result<CheckpointResult, WriteError>")]
pub struct Shutdown;

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// How long the final TRUNCATE checkpoint waits for other connections.
const FINAL_CHECKPOINT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Counters the health endpoint reads without asking the actor.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub batches: AtomicU64,
    pub requests: AtomicU64,
    pub events: AtomicU64,
    pub failed_batches: AtomicU64,
    /// Set while the last batch failed on storage (disk full, I/O error).
    pub storage_failing: AtomicBool,
    pub last_error: std::sync::Mutex<Option<String>>,
}

struct Pending {
    request: WriteRequest,
    reply: oneshot::Sender<Result<WriteReply, WriteError>>,
}

pub struct DbWriter {
    conn: Option<Connection>,
    pending: Vec<Pending>,
    flush_scheduled: bool,
    max_batch: usize,
    mailbox_capacity: usize,
    stats: Arc<WriterStats>,
    /// Told when writes start failing on storage (disk full, I/O error) and when they
    /// succeed again.
    notifier: Notifier,
    metrics: Arc<Metrics>,
}

impl Actor for DbWriter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.mailbox_capacity);
    }
}

impl DbWriter {
    /// Starts the writer on its own arbiter; `conn` must be migrated already.
    pub fn start(
        conn: Connection,
        mailbox_capacity: usize,
        max_batch: usize,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> (WriterHandle, Arbiter) {
        let stats = Arc::new(WriterStats::default());
        let arbiter = Arbiter::new();
        let actor_stats = stats.clone();
        let actor_metrics = metrics.clone();
        let addr = DbWriter::start_in_arbiter(&arbiter.handle(), move |_| DbWriter {
            conn: Some(conn),
            pending: Vec::new(),
            flush_scheduled: false,
            max_batch,
            mailbox_capacity,
            stats: actor_stats,
            notifier,
            metrics: actor_metrics,
        });
        (
            WriterHandle {
                addr,
                stats,
                metrics,
                in_flight: Arc::default(),
            },
            arbiter,
        )
    }

    fn flush(&mut self) {
        self.flush_scheduled = false;
        let mut batch = std::mem::take(&mut self.pending);
        // Job statements and repairs run alone; the writes around them are committed
        // in order.
        while !batch.is_empty() {
            match batch.iter().position(|p| p.request.is_exclusive()) {
                Some(0) => {
                    let rest = batch.split_off(1);
                    if let Some(job) = batch.pop() {
                        self.run_alone(job);
                    }
                    batch = rest;
                }
                Some(n) => {
                    let rest = batch.split_off(n);
                    self.commit(batch);
                    batch = rest;
                }
                None => self.commit(std::mem::take(&mut batch)),
            }
        }
    }

    fn run_alone(&mut self, job: Pending) {
        let Some(conn) = self.conn.as_mut() else {
            let _ = job.reply.send(Err(WriteError::Unavailable));
            return;
        };
        let result = match &job.request {
            WriteRequest::Statements { statements, stop } => {
                jobsql::execute(conn, statements, stop)
                    .map(WriteReply::Executed)
                    .map_err(|e| match e {
                        JobSqlError::DiskFull(m) => WriteError::DiskFull(m),
                        JobSqlError::Storage(m) => WriteError::Storage(m),
                        other => WriteError::Rejected(other.to_string()),
                    })
            }
            WriteRequest::RepairSummary => db::guard::repair(conn)
                .map(|r| WriteReply::Repaired(Box::new(r)))
                .map_err(|e| match e {
                    DbError::Sqlite(e) => classify(&e),
                    other => WriteError::Storage(other.to_string()),
                }),
            _ => Err(WriteError::Storage(
                "only job statements and repairs run alone".into(),
            )),
        };
        let _ = job.reply.send(result);
    }

    fn commit(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            for p in batch {
                let _ = p.reply.send(Err(WriteError::Unavailable));
            }
            return;
        };
        let started = Instant::now();
        let n = batch.len();
        match commit_batch(conn, &batch) {
            Ok(results) => {
                let events: usize = results
                    .iter()
                    .map(|r| match r {
                        Ok(WriteReply::Appended(ids)) => ids.len(),
                        _ => 0,
                    })
                    .sum();
                self.stats.batches.fetch_add(1, Ordering::Relaxed);
                self.stats.requests.fetch_add(n as u64, Ordering::Relaxed);
                self.stats
                    .events
                    .fetch_add(events as u64, Ordering::Relaxed);
                self.metrics.write_batch_requests.observe(n as f64);
                self.metrics
                    .write_commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                if self.stats.storage_failing.swap(false, Ordering::Relaxed) {
                    self.notifier
                        .resolve("storage_failing", "writes are committed again");
                }
                for (p, result) in batch.into_iter().zip(results) {
                    let _ = p.reply.send(result);
                }
                tracing::trace!(
                    requests = n,
                    events,
                    elapsed_us = started.elapsed().as_micros() as u64,
                    "batch committed"
                );
            }
            Err(err) => {
                tracing::error!(requests = n, error = %err, "write batch failed; nothing of it was committed");
                self.stats.failed_batches.fetch_add(1, Ordering::Relaxed);
                if !self.stats.storage_failing.swap(true, Ordering::Relaxed) {
                    let severity = Severity::Critical;
                    self.notifier.alert(
                        "storage_failing",
                        severity,
                        format!("writes are failing and are refused: {err}"),
                        serde_json::json!({ "requests": n }),
                    );
                }
                if let Ok(mut last) = self.stats.last_error.lock() {
                    *last = Some(err.to_string());
                }
                for p in batch {
                    let _ = p.reply.send(Err(err.clone()));
                }
            }
        }
    }
}

fn classify(err: &rusqlite::Error) -> WriteError {
    match err.sqlite_error_code() {
        Some(ErrorCode::DiskFull) => WriteError::DiskFull(err.to_string()),
        Some(ErrorCode::ConstraintViolation)
        | Some(ErrorCode::TooBig)
        | Some(ErrorCode::TypeMismatch) => WriteError::Rejected(err.to_string()),
        _ => WriteError::Storage(err.to_string()),
    }
}

/// One transaction for the whole batch. Consecutive appends are written together with
/// multi-row INSERTs under one savepoint; if that fails on a request's own account,
/// it is rolled back and the run is retried one savepoint per request, so a bad
/// request fails alone. A storage failure aborts the transaction.
fn commit_batch(
    conn: &mut Connection,
    batch: &[Pending],
) -> Result<Vec<Result<WriteReply, WriteError>>, WriteError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| classify(&e))?;
    let mut results: Vec<Option<Result<WriteReply, WriteError>>> = vec![None; batch.len()];
    let mut start = 0;
    while start < batch.len() {
        if results[start].is_some() {
            start += 1;
            continue;
        }
        // A run of valid appends, or a single other request.
        let mut end = start + 1;
        if matches!(batch[start].request, WriteRequest::Append(_)) {
            while end < batch.len()
                && results[end].is_none()
                && matches!(batch[end].request, WriteRequest::Append(_))
            {
                end += 1;
            }
        }
        if end - start > 1 {
            if let Some(replies) = append_run(&tx, &batch[start..end])? {
                for (slot, reply) in results[start..end].iter_mut().zip(replies) {
                    *slot = Some(Ok(reply));
                }
                start = end;
                continue;
            }
        }
        for i in start..end {
            results[i] = Some(apply_alone(&tx, &batch[i].request)?);
        }
        start = end;
    }
    tx.commit().map_err(|e| classify(&e))?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or(Err(WriteError::Storage("request was not processed".into()))))
        .collect())
}

/// Writes a run of appends with shared multi-row INSERTs. `Ok(None)`: a request was
/// at fault; the run was rolled back and must be retried request by request.
fn append_run(tx: &Connection, run: &[Pending]) -> Result<Option<Vec<WriteReply>>, WriteError> {
    let all: Vec<&NewEvent> = run
        .iter()
        .flat_map(|p| match &p.request {
            WriteRequest::Append(events) => events.as_slice(),
            _ => &[],
        })
        .collect();
    tx.execute_batch("SAVEPOINT run")
        .map_err(|e| classify(&e))?;
    match queries::insert_events(tx, &all) {
        Ok(ids) => {
            tx.execute_batch("RELEASE run").map_err(|e| classify(&e))?;
            let mut ids = ids.into_iter();
            Ok(Some(
                run.iter()
                    .map(|p| match &p.request {
                        WriteRequest::Append(events) => {
                            WriteReply::Appended(ids.by_ref().take(events.len()).collect())
                        }
                        _ => WriteReply::Deleted(0),
                    })
                    .collect(),
            ))
        }
        Err(e) => match classify(&e) {
            WriteError::Rejected(_) => {
                tx.execute_batch("ROLLBACK TO run; RELEASE run")
                    .map_err(|e| classify(&e))?;
                Ok(None)
            }
            other => Err(other),
        },
    }
}

/// Applies one request inside its own savepoint. `Err` only for storage failures.
fn apply_alone(
    tx: &Connection,
    request: &WriteRequest,
) -> Result<Result<WriteReply, WriteError>, WriteError> {
    tx.execute_batch("SAVEPOINT request")
        .map_err(|e| classify(&e))?;
    match apply(tx, request) {
        Ok(reply) => {
            tx.execute_batch("RELEASE request")
                .map_err(|e| classify(&e))?;
            Ok(Ok(reply))
        }
        Err(WriteError::Rejected(reason)) => {
            tx.execute_batch("ROLLBACK TO request; RELEASE request")
                .map_err(|e| classify(&e))?;
            Ok(Err(WriteError::Rejected(reason)))
        }
        Err(other) => Err(other),
    }
}

fn apply(conn: &Connection, request: &WriteRequest) -> Result<WriteReply, WriteError> {
    match request {
        WriteRequest::Append(events) => queries::insert_events(conn, events)
            .map(WriteReply::Appended)
            .map_err(|e| classify(&e)),
        WriteRequest::DeleteCorruption(id) => queries::delete_corruption(conn, id)
            .map(WriteReply::Deleted)
            .map_err(|e| classify(&e)),
        WriteRequest::RecordJobRun { run, keep } => job_runs::insert(conn, run, *keep)
            .map(|()| WriteReply::Recorded)
            .map_err(|e| classify(&e)),
        WriteRequest::Statements { .. } | WriteRequest::RepairSummary => Err(WriteError::Storage(
            "exclusive requests are never part of a batch".into(),
        )),
    }
}

impl Handler<Write> for DbWriter {
    type Result = ();

    fn handle(&mut self, msg: Write, ctx: &mut Self::Context) {
        if self.conn.is_none() {
            let _ = msg.reply.send(Err(WriteError::Unavailable));
            return;
        }
        self.pending.push(Pending {
            request: msg.request,
            reply: msg.reply,
        });
        if self.pending.len() >= self.max_batch {
            self.flush();
        } else if !self.flush_scheduled {
            self.flush_scheduled = true;
            ctx.notify(Flush);
        }
    }
}

impl Handler<Flush> for DbWriter {
    type Result = ();

    fn handle(&mut self, _: Flush, _: &mut Self::Context) {
        self.flush();
    }
}

impl Handler<Checkpoint> for DbWriter {
    type Result = Result<CheckpointResult, WriteError>;

    fn handle(&mut self, msg: Checkpoint, _: &mut Self::Context) -> Self::Result {
        self.flush();
        let conn = self.conn.as_ref().ok_or(WriteError::Unavailable)?;
        db::wal_checkpoint(conn, msg.0).map_err(|e| WriteError::Storage(e.to_string()))
    }
}

impl Handler<Shutdown> for DbWriter {
    type Result = Result<CheckpointResult, WriteError>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.flush();
        ctx.stop();
        let conn = self.conn.take().ok_or(WriteError::Unavailable)?;
        if let Err(e) = queries::record_clean_stop(&conn) {
            tracing::error!(error = %e, "could not record the clean stop; the next start will report an unclean one");
        }
        // Another connection's read transaction (Healarr's, a backup tool's,
        // Litestream's) blocks the WAL reset however long we wait; waiting the full
        // busy timeout would only delay the stop.
        if let Err(e) = conn.busy_timeout(FINAL_CHECKPOINT_WAIT) {
            tracing::warn!(error = %e, "could not shorten the busy timeout for the final checkpoint");
        }
        let result = db::wal_checkpoint(&conn, CheckpointMode::Truncate)
            .map_err(|e| WriteError::Storage(e.to_string()));
        match &result {
            Ok(r) if !r.busy => tracing::info!(
                frames = r.log_frames,
                "final checkpoint done; WAL truncated"
            ),
            Ok(r) => tracing::warn!(
                frames = r.log_frames,
                checkpointed = r.checkpointed_frames,
                "final checkpoint was blocked by another connection's read transaction; the WAL stays (every commit in it is durable) and is checkpointed later"
            ),
            Err(e) => tracing::error!(error = %e, "final checkpoint failed"),
        }
        if let Err((_, e)) = conn.close() {
            tracing::error!(error = %e, "closing the database failed");
        }
        result
    }
}

/// The cheap, cloneable way to talk to the writer.
#[derive(Clone)]
pub struct WriterHandle {
    addr: Addr<DbWriter>,
    stats: Arc<WriterStats>,
    metrics: Arc<Metrics>,
    /// Writes sent and not answered yet: the writer's queue, for `/metrics`.
    in_flight: Arc<std::sync::atomic::AtomicI64>,
}

/// Counts a write as in flight until it is answered (or its future dropped).
struct InFlight(Arc<std::sync::atomic::AtomicI64>);

impl InFlight {
    fn new(counter: &Arc<std::sync::atomic::AtomicI64>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn refusal_reason(e: &WriteError) -> &'static str {
    match e {
        WriteError::Rejected(_) => "invalid",
        WriteError::Busy => "busy",
        WriteError::DiskFull(_) => "disk_full",
        WriteError::Storage(_) => "storage",
        WriteError::Unavailable => "unavailable",
    }
}

impl WriterHandle {
    pub async fn write(&self, request: WriteRequest) -> Result<WriteReply, WriteError> {
        let result = self.send(request).await;
        if let Err(e) = &result {
            self.metrics.refused(refusal_reason(e));
        }
        result
    }

    async fn send(&self, request: WriteRequest) -> Result<WriteReply, WriteError> {
        let _in_flight = InFlight::new(&self.in_flight);
        let (reply, answer) = oneshot::channel();
        self.addr
            .try_send(Write { request, reply })
            .map_err(|e| match e {
                SendError::Full(_) => WriteError::Busy,
                SendError::Closed(_) => WriteError::Unavailable,
            })?;
        // A dropped sender means the actor died with the write queued: not committed.
        answer.await.map_err(|_| WriteError::Unavailable)?
    }

    /// Appends events durably; answers with their row ids after COMMIT.
    ///
    /// Events are checked here, on the caller's thread, so the writer's single thread
    /// never spends time on validation; this handle is the only way to reach the writer.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, WriteError> {
        for (i, event) in events.iter().enumerate() {
            if let Err(e) = event.check() {
                self.metrics.refused("invalid");
                return Err(WriteError::Rejected(format!("events[{i}].{e}")));
            }
        }
        let mut by_type: Vec<(String, u64)> = Vec::new();
        for event in &events {
            match by_type.iter_mut().find(|(t, _)| *t == event.aggregate_type) {
                Some((_, n)) => *n += 1,
                None => by_type.push((event.aggregate_type.clone(), 1)),
            }
        }
        match self.write(WriteRequest::Append(events)).await? {
            WriteReply::Appended(ids) => {
                for (aggregate_type, n) in by_type {
                    self.metrics
                        .events_appended
                        .with_label_values(&[&aggregate_type])
                        .inc_by(n);
                }
                Ok(ids)
            }
            _ => Err(WriteError::Storage("unexpected reply".into())),
        }
    }

    pub async fn delete_corruption(&self, id: String) -> Result<usize, WriteError> {
        match self.write(WriteRequest::DeleteCorruption(id)).await? {
            WriteReply::Deleted(n) => Ok(n),
            _ => Err(WriteError::Storage("unexpected reply".into())),
        }
    }

    /// Runs a job's statements in one transaction of their own (see [`jobsql`]),
    /// stopped and rolled back on cancellation or at `deadline`.
    pub async fn execute_statements(
        &self,
        statements: Vec<String>,
        cancel: tokio_util::sync::CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<u64, WriteError> {
        let stop = StopWhen { cancel, deadline };
        match self
            .write(WriteRequest::Statements { statements, stop })
            .await?
        {
            WriteReply::Executed(n) => Ok(n),
            _ => Err(WriteError::Storage("unexpected reply".into())),
        }
    }

    /// Removes foreign summary triggers and rebuilds the summary and counts.
    pub async fn repair_summary(&self) -> Result<db::guard::RepairReport, WriteError> {
        match self.write(WriteRequest::RepairSummary).await? {
            WriteReply::Repaired(report) => Ok(*report),
            _ => Err(WriteError::Storage("unexpected reply".into())),
        }
    }

    pub async fn checkpoint(&self, mode: CheckpointMode) -> Result<CheckpointResult, WriteError> {
        self.addr
            .send(Checkpoint(mode))
            .await
            .map_err(|_| WriteError::Unavailable)?
    }

    /// Commits what is queued, checkpoints (TRUNCATE) and closes the connection.
    pub async fn shutdown(&self) -> Result<CheckpointResult, WriteError> {
        self.addr
            .send(Shutdown)
            .await
            .map_err(|_| WriteError::Unavailable)?
    }

    pub fn is_alive(&self) -> bool {
        self.addr.connected()
    }

    pub fn stats(&self) -> &Arc<WriterStats> {
        &self.stats
    }

    /// Writes sent to the writer and not answered yet.
    pub fn in_flight(&self) -> i64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

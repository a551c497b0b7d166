//! The DbWriter actor: its mailbox, the flush that hands queued requests to the batch,
//! checkpoints on its connection, and the final stop.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use rusqlite::Connection;

use super::batch;
use super::handle::{WriterHandle, WriterStats};
use super::replication::Replication;
use super::request::{Batched, Request};
use super::WriteError;
use crate::db::{self, queries, CheckpointMode, CheckpointResult};
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};

/// A request for the writer, from the [`WriterHandle`].
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct Write(pub Request);

/// Runs a checkpoint on the writer's connection (the Checkpointer's path).
#[derive(Message)]
#[rtype(result = "Result<Checkpointed, WriteError>")]
pub(super) struct Checkpoint(pub CheckpointMode);

/// A checkpoint's result, and whether the database changed since the previous one.
#[derive(Debug, Clone, Copy)]
pub struct Checkpointed {
    pub result: CheckpointResult,
    /// Something other than a job run's record was committed since the writer's
    /// previous checkpoint, through the writer or by another connection (always true
    /// for the first). The Checkpointer's job does not record a run that found nothing,
    /// so that an idle database stays unchanged.
    pub changed: bool,
}

/// Commits everything queued, records the clean stop, runs a final TRUNCATE
/// checkpoint, closes the connection and stops the actor. Messages sent after it are
/// refused.
#[derive(Message)]
#[rtype(result = "Result<CheckpointResult, WriteError>")]
pub(super) struct Shutdown;

#[derive(Message)]
#[rtype(result = "()")]
struct Flush;

/// How long other writers are held off while the replication tailer passes around a
/// checkpoint: a pass takes milliseconds, and a direct writer waits at most this on
/// top of what the checkpoint costs it (well within Healarr's 30 s busy timeout).
const PASS_WHILE_HELD: Duration = Duration::from_secs(1);
/// How long a checkpoint waits, with no writer held off, for a tailer that did not
/// pass within [`PASS_WHILE_HELD`] (one starting a generation from a large snapshot).
const PASS_BEFORE_CHECKPOINT: Duration = Duration::from_secs(30);
/// How long the final TRUNCATE checkpoint waits for other connections.
const FINAL_CHECKPOINT_WAIT: Duration = Duration::from_secs(1);

pub struct DbWriter {
    conn: Option<Connection>,
    pending: Vec<Request>,
    flush_scheduled: bool,
    max_batch: usize,
    mailbox_capacity: usize,
    stats: Arc<WriterStats>,
    /// Told when writes start failing on storage (disk full, I/O error) and when they
    /// succeed again.
    notifier: Notifier,
    metrics: Arc<Metrics>,
    /// Continuous replication, told of commits and checkpoints; `None` when no
    /// replica streams.
    replication: Option<Box<dyn Replication>>,
    /// A commit other than a job run's record since the last checkpoint.
    changed_since_checkpoint: bool,
    /// `PRAGMA data_version` at the last checkpoint: another connection's commits
    /// change it.
    data_version_at_checkpoint: Option<i64>,
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
        replication: Option<Box<dyn Replication>>,
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
            replication,
            changed_since_checkpoint: false,
            data_version_at_checkpoint: None,
        });
        (WriterHandle::new(addr, stats, metrics), arbiter)
    }

    /// Commits what is queued, in order: runs of batched requests share a transaction;
    /// a request that must be alone runs between them in its own.
    fn flush(&mut self) {
        self.flush_scheduled = false;
        if self.pending.is_empty() {
            return;
        }
        let mut run: Vec<Batched> = Vec::new();
        for request in std::mem::take(&mut self.pending) {
            match request {
                Request::Batched(b) => run.push(b),
                Request::Exclusive(e) => {
                    self.commit(std::mem::take(&mut run));
                    self.changed_since_checkpoint = true;
                    match self.conn.as_mut() {
                        Some(conn) => batch::run_alone(conn, e),
                        None => Request::Exclusive(e).fail(WriteError::Unavailable),
                    }
                }
            }
        }
        self.commit(run);
        if let Some(link) = &self.replication {
            link.committed();
        }
    }

    /// Answers a committed group: at once, or, when a replica acknowledges writes,
    /// once it holds the commit (off the actor, which goes on committing).
    fn answer(&self, run: Vec<Batched>) {
        let (run, now): (Vec<Batched>, Vec<Batched>) =
            run.into_iter().partition(Batched::waits_for_replicas);
        for request in now {
            request.finish();
        }
        if run.is_empty() {
            return;
        }
        let wait = self
            .replication
            .as_ref()
            .and_then(|r| r.acknowledgement(run.len()));
        let Some(wait) = wait else {
            for request in run {
                request.finish();
            }
            return;
        };
        actix::spawn(async move {
            match wait.await {
                Ok(()) => {
                    for request in run {
                        request.finish();
                    }
                }
                Err(not) => {
                    for request in run {
                        request.fail(WriteError::NotReplicated {
                            replica: not.replica.clone(),
                            reason: not.reason.clone(),
                        });
                    }
                }
            }
        });
    }

    /// A checkpoint, with replication told before (so every frame is spooled, and a
    /// WAL reset is not blocked by its pin) and after.
    ///
    /// Both are done with every other writer held off ([`db::with_writers_held`]), so
    /// that a direct writer committing without pause (Healarr on its own connection)
    /// still lets the WAL restart. Before: the tailer reads to the very end of the WAL
    /// and pins there, so a PASSIVE checkpoint can copy all of it back. After: the pin
    /// moves on a WAL that is entirely back in the database, which SQLite lets a reader
    /// do without holding any of it, so the next commit restarts the WAL from its
    /// start. Without this the pin always sits a pass behind such a writer, the WAL is
    /// never entirely copied back, and it grows for as long as the writer never pauses
    /// (measured: 2.3 GB in 200 s at 200 commits/s). A commit that slips in between
    /// only means no restart this time: the pin keeps every frame not yet read.
    fn checkpoint(
        &self,
        conn: &Connection,
        mode: CheckpointMode,
    ) -> Result<CheckpointResult, WriteError> {
        let Some(link) = &self.replication else {
            return db::wal_checkpoint(conn, mode).map_err(WriteError::storage);
        };
        let passed = db::with_writers_held(conn, |_| link.before_checkpoint(mode, PASS_WHILE_HELD))
            .map_err(WriteError::storage)?;
        if !passed && !link.before_checkpoint(mode, PASS_BEFORE_CHECKPOINT) {
            tracing::warn!("the replication tailer did not answer before a checkpoint; a gap it would find starts a new generation");
        }
        let result = db::wal_checkpoint(conn, mode).map_err(WriteError::storage);
        db::with_writers_held(conn, |_| link.after_checkpoint(PASS_WHILE_HELD))
            .map_err(WriteError::storage)?;
        result
    }

    fn commit(&mut self, mut run: Vec<Batched>) {
        if run.is_empty() {
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            for request in run {
                request.fail(WriteError::Unavailable);
            }
            return;
        };
        let started = Instant::now();
        let n = run.len();
        if !run.iter().all(Batched::is_bookkeeping) {
            self.changed_since_checkpoint = true;
        }
        match batch::commit(conn, &mut run) {
            Ok(()) => {
                let events: usize = run.iter().map(Batched::appended).sum();
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
                self.answer(run);
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
                    self.notifier.alert(
                        "storage_failing",
                        Severity::Critical,
                        format!("writes are failing and are refused: {err}"),
                        serde_json::json!({ "requests": n }),
                    );
                }
                if let Ok(mut last) = self.stats.last_error.lock() {
                    *last = Some(err.to_string());
                }
                for request in run {
                    request.fail(err.clone());
                }
            }
        }
    }
}

impl Handler<Write> for DbWriter {
    type Result = ();

    fn handle(&mut self, Write(request): Write, ctx: &mut Self::Context) {
        if self.conn.is_none() {
            request.fail(WriteError::Unavailable);
            return;
        }
        self.pending.push(request);
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
    type Result = Result<Checkpointed, WriteError>;

    fn handle(&mut self, msg: Checkpoint, _: &mut Self::Context) -> Self::Result {
        self.flush();
        let conn = self.conn.as_ref().ok_or(WriteError::Unavailable)?;
        // Read before the checkpoint: another connection's commit after it counts
        // for the next one.
        let version = db::data_version(conn).map_err(WriteError::storage)?;
        let result = self.checkpoint(conn, msg.0)?;
        let changed =
            self.changed_since_checkpoint || self.data_version_at_checkpoint != Some(version);
        self.changed_since_checkpoint = false;
        self.data_version_at_checkpoint = Some(version);
        Ok(Checkpointed { result, changed })
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
        let result = self.checkpoint(&conn, CheckpointMode::Truncate);
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

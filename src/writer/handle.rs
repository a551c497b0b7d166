//! The cheap, cloneable way to talk to the writer: one method per kind of request,
//! each answering with that request's own type.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::actor::{Checkpoint, Checkpointed, DbWriter, Shutdown, Write};
use super::request::{Batched, Exclusive, Reply, Request};
use super::WriteError;
use crate::db::guard::RepairReport;
use crate::db::job_runs::JobRunRow;
use crate::db::jobsql::StopWhen;
use crate::db::{CheckpointMode, CheckpointResult};
use crate::events::NewEvent;
use crate::metrics::Metrics;

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

#[derive(Clone)]
pub struct WriterHandle {
    addr: Addr<DbWriter>,
    stats: Arc<WriterStats>,
    metrics: Arc<Metrics>,
    /// Writes sent and not answered yet: the writer's queue, for `/metrics`.
    in_flight: Arc<AtomicI64>,
}

/// Counts a write as in flight until it is answered (or its future dropped).
struct InFlight(Arc<AtomicI64>);

impl InFlight {
    fn new(counter: &Arc<AtomicI64>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl WriterHandle {
    pub(super) fn new(
        addr: Addr<DbWriter>,
        stats: Arc<WriterStats>,
        metrics: Arc<Metrics>,
    ) -> WriterHandle {
        WriterHandle {
            addr,
            stats,
            metrics,
            in_flight: Arc::default(),
        }
    }

    /// Sends the request `make` builds around its reply channel and waits for the
    /// answer; a refusal is counted by reason.
    async fn send<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, WriteError>>) -> Request,
    ) -> Result<T, WriteError> {
        let _in_flight = InFlight::new(&self.in_flight);
        let (reply, answer) = oneshot::channel();
        let sent = self.addr.try_send(Write(make(reply))).map_err(|e| match e {
            SendError::Full(_) => WriteError::Busy,
            SendError::Closed(_) => WriteError::Unavailable,
        });
        // A dropped sender means the actor died with the write queued: not committed.
        let result = match sent {
            Ok(()) => answer.await.unwrap_or(Err(WriteError::Unavailable)),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.metrics.refused(e.reason());
        }
        result
    }

    /// Appends events durably; answers with their row ids after COMMIT. The events
    /// were validated when they were built ([`NewEvent`] can be built no other way),
    /// so the writer's single thread never spends time on validation.
    pub async fn append(&self, events: Vec<NewEvent>) -> Result<Vec<i64>, WriteError> {
        let mut by_type: Vec<(String, u64)> = Vec::new();
        for event in &events {
            match by_type
                .iter_mut()
                .find(|(t, _)| t == event.aggregate_type())
            {
                Some((_, n)) => *n += 1,
                None => by_type.push((event.aggregate_type().to_string(), 1)),
            }
        }
        let ids = self
            .send(|reply| {
                Request::Batched(Batched::Append {
                    events,
                    reply: Reply::new(reply),
                })
            })
            .await?;
        for (aggregate_type, n) in by_type {
            self.metrics
                .events_appended
                .with_label_values(&[&aggregate_type])
                .inc_by(n);
        }
        Ok(ids)
    }

    /// Deletes every event of a corruption; answers how many.
    pub async fn delete_corruption(&self, id: String) -> Result<usize, WriteError> {
        self.send(|reply| {
            Request::Batched(Batched::DeleteCorruption {
                id,
                reply: Reply::new(reply),
            })
        })
        .await
    }

    /// Records a finished job run, keeping the newest `keep` of that job.
    pub async fn record_job_run(&self, run: JobRunRow, keep: u32) -> Result<(), WriteError> {
        self.send(|reply| {
            Request::Batched(Batched::RecordJobRun {
                run,
                keep,
                reply: Reply::new(reply),
            })
        })
        .await
    }

    /// Runs a job's statements in one transaction of their own (see
    /// [`crate::db::jobsql`]), stopped and rolled back on cancellation or at
    /// `deadline`; answers the rows they changed.
    pub async fn execute_statements(
        &self,
        statements: Vec<String>,
        cancel: tokio_util::sync::CancellationToken,
        deadline: Option<Instant>,
    ) -> Result<u64, WriteError> {
        let stop = StopWhen { cancel, deadline };
        self.send(|reply| {
            Request::Exclusive(Exclusive::Statements {
                statements,
                stop,
                reply,
            })
        })
        .await
    }

    /// Removes foreign summary triggers and rebuilds the summary and counts.
    pub async fn repair_summary(&self) -> Result<RepairReport, WriteError> {
        self.send(|reply| Request::Exclusive(Exclusive::RepairSummary { reply }))
            .await
    }

    pub async fn checkpoint(&self, mode: CheckpointMode) -> Result<Checkpointed, WriteError> {
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

//! The Checkpointer: scheduled PASSIVE checkpoints, run on the writer's connection (a
//! message through the DbWriter, so checkpoints never race the writer from a second
//! connection). The result row (busy, log, checkpointed) is always read. (While a
//! replica streams, the [WAL restarter](crate::replica::wal_restart) checkpoints too,
//! on a connection of its own: small PASSIVE ones that let the WAL restart.)
//!
//! The measure that matters is WAL content not yet copied back, not the `-wal` file's
//! size (which keeps its high-water mark). When that exceeds `checkpoint.wal_alert_bytes`
//! it alerts, then tries a RESTART checkpoint, which waits for readers at most the
//! busy timeout. If a reader still holds an old snapshot, that is starvation: reported
//! as such, since only the reader letting go can fix it.

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::db::{wal, CheckpointMode};
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};
use crate::writer::{Checkpointed, WriteError, WriterHandle};

#[derive(Debug, Clone, Serialize)]
pub struct CheckpointRecord {
    pub at: DateTime<Utc>,
    pub mode: &'static str,
    pub busy: bool,
    pub log_frames: i64,
    pub checkpointed_frames: i64,
    /// WAL content not yet copied into the database, in bytes.
    pub pending_bytes: i64,
    pub over_threshold: bool,
    /// A reader kept the WAL from being reset even after a RESTART attempt.
    pub starved: bool,
    /// Anything but job history was committed since the previous checkpoint.
    pub changed: bool,
}

/// A board: the last-known state one actor publishes for health, `/metrics` and the
/// status page to read without asking the actor. This one holds the latest checkpoint.
#[derive(Debug, Default)]
pub struct CheckpointBoard {
    last: RwLock<Option<CheckpointRecord>>,
    /// The last 24 hours of results (at most [`HISTORY_CAP`]), oldest first, for the
    /// status page's WAL chart. In memory: a restart starts it again.
    history: RwLock<std::collections::VecDeque<CheckpointRecord>>,
}

/// Most results kept (a checkpoint every 30 s for 24 h).
const HISTORY_CAP: usize = 2880;

impl CheckpointBoard {
    pub fn last(&self) -> Option<CheckpointRecord> {
        self.last.read().ok().and_then(|g| g.clone())
    }

    pub fn history(&self) -> Vec<CheckpointRecord> {
        self.history
            .read()
            .map(|h| h.iter().cloned().collect())
            .unwrap_or_default()
    }

    fn record(&self, record: &CheckpointRecord) {
        if let Ok(mut last) = self.last.write() {
            *last = Some(record.clone());
        }
        if let Ok(mut history) = self.history.write() {
            let day_ago = record.at - chrono::Duration::hours(24);
            while history
                .front()
                .is_some_and(|r| r.at < day_ago || history.len() >= HISTORY_CAP)
            {
                history.pop_front();
            }
            history.push_back(record.clone());
        }
    }
}

pub struct Checkpointer {
    writer: WriterHandle,
    page_size: i64,
    alert_bytes: i64,
    notifier: Notifier,
    pub board: Arc<CheckpointBoard>,
    metrics: Arc<Metrics>,
}

impl Checkpointer {
    pub fn new(
        writer: WriterHandle,
        page_size: i64,
        alert_bytes: i64,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> Checkpointer {
        Checkpointer {
            writer,
            page_size,
            alert_bytes,
            notifier,
            metrics,
            board: Arc::default(),
        }
    }

    /// One checkpoint through the writer, counted by mode and result.
    async fn run(&self, mode: CheckpointMode, label: &str) -> Result<Checkpointed, WriteError> {
        let result = self.writer.checkpoint(mode).await;
        let outcome = match &result {
            Ok(r) if r.result.busy => "busy",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.metrics
            .checkpoints
            .with_label_values(&[label, outcome])
            .inc();
        result
    }

    /// One scheduled pass.
    pub async fn tick(&self) -> Result<CheckpointRecord, WriteError> {
        let Checkpointed {
            result: passive,
            changed,
        } = self.run(CheckpointMode::Passive, "passive").await?;
        let pending = wal::pending_bytes(&passive, self.page_size);
        let mut record = CheckpointRecord {
            at: Utc::now(),
            mode: "passive",
            busy: passive.busy,
            log_frames: passive.log_frames,
            checkpointed_frames: passive.checkpointed_frames,
            pending_bytes: pending,
            over_threshold: pending > self.alert_bytes,
            starved: false,
            changed,
        };
        if record.over_threshold {
            self.notifier.alert(
                "wal_over_threshold",
                Severity::Warning,
                format!("{pending} bytes of WAL are not checkpointed (threshold {}); trying a RESTART checkpoint", self.alert_bytes),
                serde_json::json!({ "pending_bytes": pending, "threshold": self.alert_bytes }),
            );
            let restart = self.run(CheckpointMode::Restart, "restart").await?.result;
            let still = wal::pending_bytes(&restart, self.page_size);
            record = CheckpointRecord {
                at: Utc::now(),
                mode: "restart",
                busy: restart.busy,
                log_frames: restart.log_frames,
                checkpointed_frames: restart.checkpointed_frames,
                pending_bytes: still,
                over_threshold: still > self.alert_bytes,
                starved: restart.busy,
                changed,
            };
            if record.starved {
                self.notifier.alert(
                    "checkpoint_starvation",
                    Severity::Critical,
                    format!("checkpoint starvation: a reader holds an old snapshot and keeps {still} bytes of WAL from being checkpointed (a long-running read transaction in this or another process)"),
                    serde_json::json!({ "pending_bytes": still }),
                );
            }
        }
        if !record.over_threshold {
            self.notifier
                .resolve("wal_over_threshold", "WAL back under the threshold");
        }
        if !record.starved {
            self.notifier
                .resolve("checkpoint_starvation", "checkpoints complete again");
        }
        self.board.record(&record);
        Ok(record)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(at: DateTime<Utc>) -> CheckpointRecord {
        CheckpointRecord {
            at,
            mode: "passive",
            busy: false,
            log_frames: 0,
            checkpointed_frames: 0,
            pending_bytes: 0,
            over_threshold: false,
            starved: false,
            changed: true,
        }
    }

    #[test]
    fn the_history_keeps_the_last_24_hours_oldest_first() {
        let board = CheckpointBoard::default();
        let now = Utc::now();
        let hours = |h: i64| now - chrono::Duration::hours(h);
        for t in [hours(25), hours(24), hours(1), now] {
            board.record(&at(t));
        }
        let kept: Vec<_> = board.history().iter().map(|r| r.at).collect();
        // Older than a day before the newest goes; exactly a day old stays.
        assert_eq!(kept, vec![hours(24), hours(1), now]);
        assert_eq!(board.last().map(|r| r.at), Some(now));
    }

    #[test]
    fn the_history_holds_at_most_its_cap() {
        let board = CheckpointBoard::default();
        let now = Utc::now();
        for i in 0..HISTORY_CAP + 5 {
            board.record(&at(now + chrono::Duration::milliseconds(i as i64)));
        }
        let history = board.history();
        assert_eq!(history.len(), HISTORY_CAP);
        assert_eq!(
            history.first().map(|r| r.at),
            Some(now + chrono::Duration::milliseconds(5)),
            "the oldest went first"
        );
    }
}

//! The BackupActor: runs backups and re-verifications one at a time on its own
//! thread (its own arbiter), so long SQLite work never blocks the HTTP server.
//!
//! A backup already running is not started twice: callers get
//! [`BackupError::AlreadyRunning`] at once. At shutdown a running backup is
//! interrupted through SQLite's interrupt handle; its temporary file is removed.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use actix::prelude::*;

use super::catalog::Manifest;
use super::health::{BackupBoard, BackupHealth};
use super::{reverify_all, take_backup, BackupError};
use crate::auditor::IntegrityBoard;
use crate::config::{BackupSettings, DatabaseSettings};
use crate::db::InterruptSlot;
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};

/// Take one verified backup now.
#[derive(Message)]
#[rtype(result = "Result<Manifest, BackupError>")]
pub struct TakeBackup;

/// Re-verify every good backup; answers with the ones that turned bad.
#[derive(Message)]
#[rtype(result = "Result<Vec<Manifest>, BackupError>")]
pub struct Reverify;

pub struct BackupActor {
    db: DatabaseSettings,
    cfg: BackupSettings,
    notifier: Notifier,
    busy: Arc<AtomicBool>,
    interrupt: InterruptSlot,
}

impl Actor for BackupActor {
    type Context = Context<Self>;
}

impl Handler<TakeBackup> for BackupActor {
    type Result = Result<Manifest, BackupError>;

    fn handle(&mut self, _: TakeBackup, _: &mut Self::Context) -> Self::Result {
        let slot = self.interrupt.clone();
        let result = take_backup(&self.db, &self.cfg, &|h| slot.set(h));
        self.interrupt.clear();
        self.busy.store(false, Ordering::Release);
        match &result {
            Ok(m) => {
                self.notifier
                    .resolve("backup_failed", format!("backup {} verified", m.name));
                self.notifier.heartbeat();
            }
            // Another process is writing a backup into the same directory right now.
            Err(e @ BackupError::DirectoryBusy { .. }) => {
                tracing::warn!(error = %e, "backup skipped")
            }
            Err(e) => self.notifier.alert(
                "backup_failed",
                Severity::Critical,
                format!("backup failed; earlier backups are untouched: {e}"),
                serde_json::json!({ "error": e.to_string() }),
            ),
        }
        result
    }
}

impl Handler<Reverify> for BackupActor {
    type Result = Result<Vec<Manifest>, BackupError>;

    fn handle(&mut self, _: Reverify, _: &mut Self::Context) -> Self::Result {
        let result = reverify_all(&self.cfg);
        self.busy.store(false, Ordering::Release);
        match &result {
            Ok(bad) if bad.is_empty() => self
                .notifier
                .resolve("backup_bad", "every stored backup verifies"),
            Ok(bad) => self.notifier.alert(
                "backup_bad",
                Severity::Critical,
                format!(
                    "{} stored backup(s) failed re-verification and were marked bad",
                    bad.len()
                ),
                serde_json::json!(bad
                    .iter()
                    .map(|m| (m.name.clone(), m.problem.clone()))
                    .collect::<Vec<_>>()),
            ),
            Err(e) => self.notifier.alert(
                "backup_bad",
                Severity::Critical,
                format!("re-verification could not run: {e}"),
                serde_json::Value::Null,
            ),
        }
        result
    }
}

/// The cheap, cloneable way to reach the BackupActor.
#[derive(Clone)]
pub struct BackupHandle {
    addr: Addr<BackupActor>,
    /// The latest attempt, for health.
    pub board: Arc<BackupBoard>,
    busy: Arc<AtomicBool>,
    interrupt: InterruptSlot,
    integrity: Arc<IntegrityBoard>,
    metrics: Arc<Metrics>,
    pub cfg: BackupSettings,
    /// Counts verified backups; replicas wake on each change.
    verified: Arc<tokio::sync::watch::Sender<u64>>,
}

impl BackupHandle {
    /// Starts the actor on its own arbiter. While `integrity` reports a failed check,
    /// backups are refused so a damaged database never replaces good backups.
    pub fn start(
        db: DatabaseSettings,
        cfg: BackupSettings,
        integrity: Arc<IntegrityBoard>,
        notifier: Notifier,
        metrics: Arc<Metrics>,
    ) -> (BackupHandle, Arbiter) {
        let arbiter = Arbiter::new();
        let busy = Arc::new(AtomicBool::new(false));
        let interrupt = InterruptSlot::default();
        let actor = BackupActor {
            db,
            cfg: cfg.clone(),
            notifier,
            busy: busy.clone(),
            interrupt: interrupt.clone(),
        };
        let addr = BackupActor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        (
            BackupHandle {
                addr,
                board: Arc::default(),
                busy,
                interrupt,
                integrity,
                metrics,
                cfg,
                verified: Arc::new(tokio::sync::watch::Sender::new(0)),
            },
            arbiter,
        )
    }

    fn claim(&self) -> Result<(), BackupError> {
        if self.busy.swap(true, Ordering::AcqRel) {
            return Err(BackupError::AlreadyRunning);
        }
        Ok(())
    }

    /// Sends `msg` unless a backup or re-verification is already running; the actor
    /// clears the flag when it is done.
    async fn run_exclusive<M, T>(&self, msg: M) -> Result<T, BackupError>
    where
        M: Message<Result = Result<T, BackupError>> + Send + 'static,
        T: Send + 'static,
        BackupActor: Handler<M>,
    {
        self.claim()?;
        match self.addr.send(msg).await {
            Ok(result) => result,
            Err(_) => {
                self.busy.store(false, Ordering::Release);
                Err(BackupError::Unavailable)
            }
        }
    }

    /// Takes a backup; answers once it is verified and recorded.
    pub async fn take(&self) -> Result<Manifest, BackupError> {
        // Held back while the last integrity check failed: not an attempt (health is
        // already failing for that reason, and recovers when a check passes).
        if let Some(reason) = self.integrity.failing() {
            return Err(BackupError::SourceCorrupt(vec![format!(
                "the last integrity check failed: {reason}"
            )]));
        }
        let started = std::time::Instant::now();
        let result = self.run_exclusive(TakeBackup).await;
        let outcome = match &result {
            Ok(_) => "ok",
            // Refused before any work: not an attempt.
            Err(BackupError::AlreadyRunning | BackupError::DirectoryBusy { .. }) => return result,
            Err(_) => "failed",
        };
        self.board
            .record(result.as_ref().err().map(|e| e.to_string()));
        self.metrics.backups.with_label_values(&[outcome]).inc();
        self.metrics
            .backup_seconds
            .observe(started.elapsed().as_secs_f64());
        if result.is_ok() {
            self.verified.send_modify(|n| *n += 1);
        }
        result
    }

    /// Changes each time a verified backup is recorded (what replicas ship).
    pub fn verified(&self) -> tokio::sync::watch::Receiver<u64> {
        self.verified.subscribe()
    }

    /// Whether backups are being taken (see [`super::health`]); reads the catalog, so
    /// call it off the async threads.
    pub fn health(&self, uptime: std::time::Duration) -> Result<BackupHealth, BackupError> {
        let catalog = super::catalog::list(&self.cfg.dir)?;
        Ok(super::health::assess(
            &catalog,
            self.board.last(),
            self.cfg.max_age(),
            uptime,
            chrono::Utc::now(),
        ))
    }

    /// Re-verifies every good backup; answers with the ones that turned bad.
    pub async fn reverify(&self) -> Result<Vec<Manifest>, BackupError> {
        self.run_exclusive(Reverify).await
    }

    /// Aborts a running backup (its temporary file is removed); used at shutdown.
    pub fn interrupt(&self) {
        if self.interrupt.interrupt() {
            tracing::warn!("interrupted the running backup for shutdown");
        }
    }
}

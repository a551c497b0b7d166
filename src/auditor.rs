//! The IntegrityAuditor: `quick_check` (hourly by default) and `integrity_check` plus
//! `foreign_key_check` (daily), each on a read-only connection of its own, on its own
//! thread. The last result of each kind is kept on an [`IntegrityBoard`] that health
//! reads and that backups consult: while the last check failed, no backup is taken, so
//! a damaged database never pushes good backups out through retention.
//!
//! Each check also looks at how the summary is maintained (see [`db::guard`]): the
//! schema part in every check, the comparison with a recomputation in the full one.
//! When another program changed it, the DbWriter repairs it and every channel is told.
//!
//! A check can be interrupted at shutdown through SQLite's interrupt handle.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use rusqlite::InterruptHandle;
use serde::Serialize;

use crate::config::DatabaseSettings;
use crate::db::InterruptSlot;
use crate::db::{
    self,
    guard::SummaryFindings,
    integrity::{self, CheckKind},
    DbError,
};
use crate::metrics::Metrics;
use crate::notifier::{Notifier, Severity};
use crate::writer::WriterHandle;

/// The outcome of one check.
#[derive(Debug, Clone, Serialize)]
pub struct CheckRecord {
    pub at: DateTime<Utc>,
    pub ok: bool,
    pub duration_ms: u64,
    /// The first problems reported (at most 20).
    pub problems: Vec<String>,
}

/// A board (the last-known state an actor publishes for others to read without asking it):
/// the latest integrity results, read by health, `/metrics` and the BackupActor.
#[derive(Debug, Default)]
pub struct IntegrityBoard {
    quick: RwLock<Option<CheckRecord>>,
    full: RwLock<Option<CheckRecord>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IntegrityView {
    pub quick: Option<CheckRecord>,
    pub full: Option<CheckRecord>,
    /// Time of the most recent check of either kind.
    pub at: Option<DateTime<Utc>>,
    /// `ok`, `failing` (the most recent check of some kind failed) or `unknown`.
    pub result: &'static str,
}

impl IntegrityBoard {
    pub fn record(&self, kind: CheckKind, record: CheckRecord) -> Option<bool> {
        let slot = match kind {
            CheckKind::Quick => &self.quick,
            CheckKind::Full => &self.full,
        };
        let mut guard = slot.write().ok()?;
        let was_ok = guard.as_ref().map(|r| r.ok);
        *guard = Some(record);
        was_ok
    }

    pub fn view(&self) -> IntegrityView {
        let quick = self.quick.read().ok().and_then(|g| g.clone());
        let full = self.full.read().ok().and_then(|g| g.clone());
        let at = [quick.as_ref(), full.as_ref()]
            .into_iter()
            .flatten()
            .map(|r| r.at)
            .max();
        let result = match (&quick, &full) {
            (None, None) => "unknown",
            _ if [quick.as_ref(), full.as_ref()]
                .into_iter()
                .flatten()
                .any(|r| !r.ok) =>
            {
                "failing"
            }
            _ => "ok",
        };
        IntegrityView {
            quick,
            full,
            at,
            result,
        }
    }

    /// The reasons backups must wait, if the most recent check of some kind failed.
    pub fn failing(&self) -> Option<String> {
        let view = self.view();
        (view.result == "failing").then(|| {
            [view.quick, view.full]
                .into_iter()
                .flatten()
                .filter(|r| !r.ok)
                .flat_map(|r| r.problems)
                .collect::<Vec<_>>()
                .join("; ")
        })
    }
}

/// Runs one check now and answers with its record and what it found of the summary.
#[derive(Message)]
#[rtype(result = "Result<(CheckRecord, SummaryFindings), DbError>")]
pub struct RunCheck(pub CheckKind);

pub struct IntegrityAuditor {
    db: DatabaseSettings,
    notifier: Notifier,
    board: Arc<IntegrityBoard>,
    interrupt: InterruptSlot,
}

impl Actor for IntegrityAuditor {
    type Context = Context<Self>;
}

/// Runs the check of `kind` on its own read-only connection: quick_check, or
/// integrity_check followed by foreign_key_check; then inspects how the summary is
/// maintained (and, for the full check, compares it with a recomputation).
pub fn check_database(
    db_settings: &DatabaseSettings,
    kind: CheckKind,
    on_open: &dyn Fn(InterruptHandle),
) -> Result<(CheckRecord, SummaryFindings), DbError> {
    let started = Instant::now();
    let conn = db::open_reader(db_settings)?;
    on_open(conn.get_interrupt_handle());
    let mut problems = integrity::problems(&conn, kind)?;
    if kind == CheckKind::Full {
        problems.extend(integrity::foreign_key_problems(&conn)?);
    }
    problems.truncate(20);
    let record = CheckRecord {
        at: Utc::now(),
        ok: problems.is_empty(),
        duration_ms: started.elapsed().as_millis() as u64,
        problems,
    };
    // A damaged database gives no trustworthy comparison; its repair waits.
    let findings = if record.ok {
        db::guard::inspect(&conn, kind == CheckKind::Full)?
    } else {
        SummaryFindings::default()
    };
    Ok((record, findings))
}

impl Handler<RunCheck> for IntegrityAuditor {
    type Result = Result<(CheckRecord, SummaryFindings), DbError>;

    fn handle(&mut self, msg: RunCheck, _: &mut Self::Context) -> Self::Result {
        let slot = self.interrupt.clone();
        let result = check_database(&self.db, msg.0, &|h| slot.set(h));
        self.interrupt.clear();
        let (record, findings) = result?;
        let was_ok = self.board.record(msg.0, record.clone());
        let name = match msg.0 {
            CheckKind::Quick => "quick_check",
            CheckKind::Full => "integrity_check",
        };
        let key = format!("integrity_{name}");
        match (record.ok, was_ok) {
            (false, _) => self.notifier.alert(
                &key,
                Severity::Critical,
                format!("the database failed {name}; backups are held back"),
                serde_json::json!({ "problems": record.problems }),
            ),
            (true, Some(false)) => self.notifier.resolve(&key, format!("{name} passes again")),
            (true, _) => tracing::info!(
                check = name,
                duration_ms = record.duration_ms,
                "integrity check ok"
            ),
        }
        Ok((record, findings))
    }
}

/// The cheap, cloneable way to reach the auditor.
#[derive(Clone)]
pub struct AuditorHandle {
    addr: Addr<IntegrityAuditor>,
    interrupt: InterruptSlot,
    metrics: Arc<Metrics>,
    /// Repairs of the summary go through the writer.
    writer: WriterHandle,
    notifier: Notifier,
    pub board: Arc<IntegrityBoard>,
}

impl AuditorHandle {
    pub fn start(
        db: DatabaseSettings,
        board: Arc<IntegrityBoard>,
        notifier: Notifier,
        metrics: Arc<Metrics>,
        writer: WriterHandle,
    ) -> (AuditorHandle, Arbiter) {
        let arbiter = Arbiter::new();
        let interrupt = InterruptSlot::default();
        let actor = IntegrityAuditor {
            db,
            notifier: notifier.clone(),
            board: board.clone(),
            interrupt: interrupt.clone(),
        };
        let addr = IntegrityAuditor::start_in_arbiter(&arbiter.handle(), move |_| actor);
        (
            AuditorHandle {
                addr,
                interrupt,
                metrics,
                writer,
                notifier,
                board,
            },
            arbiter,
        )
    }

    /// Runs a check; when it found the summary changed by another program, the
    /// DbWriter repairs it before this answers.
    pub async fn check(&self, kind: CheckKind) -> Result<CheckRecord, DbError> {
        let result = self
            .addr
            .send(RunCheck(kind))
            .await
            .map_err(|source| DbError::Mailbox {
                actor: "IntegrityAuditor",
                source,
            })?;
        let label = match kind {
            CheckKind::Quick => "quick",
            CheckKind::Full => "full",
        };
        let outcome = match &result {
            Ok((r, _)) => {
                self.metrics
                    .integrity_check_seconds
                    .with_label_values(&[label])
                    .observe(r.duration_ms as f64 / 1000.0);
                if r.ok {
                    "ok"
                } else {
                    "failed"
                }
            }
            Err(_) => "error",
        };
        self.metrics
            .integrity_checks
            .with_label_values(&[label, outcome])
            .inc();
        let (record, findings) = result?;
        if findings.needs_repair() {
            tracing::warn!(found = %findings.describe(), "the summary was changed by another program; repairing");
            match self.writer.repair_summary().await {
                Ok(report) => alert_summary_repaired(&self.notifier, &report),
                Err(e) => self.notifier.alert(
                    "summary_repaired",
                    Severity::Critical,
                    format!(
                        "another program changed the corruption summary ({}) and the repair failed: {e}",
                        findings.describe()
                    ),
                    serde_json::Value::Null,
                ),
            }
        }
        Ok(record)
    }

    /// Aborts a running check; used at shutdown.
    pub fn interrupt(&self) {
        if self.interrupt.interrupt() {
            tracing::warn!("interrupted the running integrity check for shutdown");
        }
    }
}

/// Tells every channel that another program had changed the summary and what was done.
pub fn alert_summary_repaired(notifier: &Notifier, repair: &db::guard::RepairReport) {
    notifier.alert(
        "summary_repaired",
        Severity::Warning,
        format!(
            "another program changed how the corruption summary is maintained ({}); removed {} foreign trigger(s), rebuilt the summary: {} corruption row(s) changed",
            repair.found.describe(),
            repair.triggers_removed.len(),
            repair.rows_changed
        ),
        serde_json::to_value(repair).unwrap_or_default(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ok: bool, problems: &[&str]) -> CheckRecord {
        CheckRecord {
            at: Utc::now(),
            ok,
            duration_ms: 1,
            problems: problems.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_board_says_unknown_until_a_check_ran_then_what_the_checks_found() {
        let board = IntegrityBoard::default();
        assert_eq!(board.view().result, "unknown");
        assert_eq!(board.failing(), None);
        board.record(CheckKind::Quick, record(true, &[]));
        assert_eq!(board.view().result, "ok");
        assert_eq!(board.failing(), None);
        board.record(CheckKind::Full, record(false, &["page 7: btree broken"]));
        assert_eq!(board.view().result, "failing");
        // The reasons are the failed check's problems, not the passing one's (none).
        assert_eq!(board.failing().as_deref(), Some("page 7: btree broken"));
        assert_eq!(
            board.record(CheckKind::Full, record(true, &[])),
            Some(false)
        );
        assert_eq!(board.failing(), None);
    }
}

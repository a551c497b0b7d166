//! dbwarden owns the corruption summary; this module notices when another program
//! changed how it is maintained, and repairs it.
//!
//! A newer Healarr opening an adopted database runs its own migrations: one
//! re-creates its summary trigger (`trg_update_corruption_summary`, an INSERT OR
//! REPLACE on every lifecycle insert) beside ours, another deletes summary rows whose
//! `file_path` is NULL, another rewrites rows. From then on the two triggers fight and
//! the per-state counts drift. So, at startup, in every scheduled quick check (the
//! schema part is a few reads of `sqlite_master`) and in `dbwarden check`, dbwarden
//! looks for:
//! - triggers it does not own (not named `dbwarden_*`) whose body writes
//!   `corruption_summary` or `corruption_state_counts`;
//! - a Healarr `schema_migrations` version other than the one it last saw (Healarr ran
//!   migrations, which may have changed summary rows directly).
//!
//! The full check also compares the summary with its recomputation. A repair, in one
//! transaction on the writer's connection: drop the foreign triggers, rebuild the
//! summary and counts from the events and kept facts, record the Healarr version.
//! Views are never a problem: they cannot write, and Healarr's re-created views
//! (`corruption_status`, `dashboard_stats`) read the summary table.

use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::{queries, DbError};

/// Tables only dbwarden's triggers may write.
pub const OWNED_TABLES: &[&str] = &["corruption_summary", "corruption_state_counts"];
/// Prefix of every trigger dbwarden creates.
pub const OWN_TRIGGER_PREFIX: &str = "dbwarden_";
const HEALARR_VERSION_KEY: &str = "healarr_schema_version";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ForeignTrigger {
    pub name: String,
    /// The table it fires on.
    pub on_table: String,
    /// The tables of ours its body writes.
    pub writes: Vec<String>,
}

/// What [`inspect`] found; empty when nobody else touched the summary.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SummaryFindings {
    pub foreign_triggers: Vec<ForeignTrigger>,
    /// (last seen, now) when Healarr's schema version changed.
    pub healarr_version_change: Option<(Option<i64>, i64)>,
    /// Differences between the summary and its recomputation (full checks only).
    pub drift: Vec<String>,
}

impl SummaryFindings {
    /// True when something must be repaired.
    pub fn needs_repair(&self) -> bool {
        !self.foreign_triggers.is_empty()
            || matches!(self.healarr_version_change, Some((Some(_), _)))
            || !self.drift.is_empty()
    }

    /// One line for logs and alerts.
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        for t in &self.foreign_triggers {
            parts.push(format!(
                "trigger {} on {} writes {}",
                t.name,
                t.on_table,
                t.writes.join(" and ")
            ));
        }
        if let Some((Some(was), now)) = self.healarr_version_change {
            parts.push(format!(
                "Healarr's schema version changed from {was} to {now}"
            ));
        }
        if !self.drift.is_empty() {
            parts.push(format!(
                "{} difference(s) from a recomputation",
                self.drift.len()
            ));
        }
        parts.join("; ")
    }
}

/// What a repair found and did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RepairReport {
    pub found: SummaryFindings,
    pub triggers_removed: Vec<String>,
    /// Summary rows that differed from the rebuilt ones (changed, missing or extra).
    pub rows_changed: i64,
    /// Summary rows after the rebuild.
    pub rows: i64,
    pub duration_ms: u64,
}

/// Words of an SQL text, lowercased, with quotes and punctuation as separators
/// (`"corruption_summary"`, `[corruption_summary]` and `main.corruption_summary`
/// all yield the bare name).
fn words(sql: &str) -> Vec<String> {
    sql.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect()
}

/// The owned tables a trigger body writes with INSERT, REPLACE, UPDATE or DELETE.
pub fn tables_written(sql: &str) -> Vec<String> {
    let w = words(sql);
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < w.len() {
        // After the verb: optional `or <conflict>`, then `into`/`from` where needed,
        // then optional `main`, then the table.
        let mut j = i + 1;
        let target = match w[i].as_str() {
            "insert" | "replace" | "update" | "delete" => {
                if w.get(j).map(String::as_str) == Some("or") {
                    j += 2;
                }
                if matches!(w.get(j).map(String::as_str), Some("into" | "from")) {
                    j += 1;
                }
                if w.get(j).map(String::as_str) == Some("main") {
                    j += 1;
                }
                w.get(j)
            }
            _ => None,
        };
        if let Some(t) = target.filter(|t| OWNED_TABLES.contains(&t.as_str())) {
            if !out.contains(t) {
                out.push(t.clone());
            }
        }
        i += 1;
    }
    out
}

fn foreign_triggers(conn: &Connection) -> Result<Vec<ForeignTrigger>, DbError> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, tbl_name, coalesce(sql, '') FROM sqlite_master WHERE type = 'trigger'",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (name, on_table, sql) = row?;
        if name.starts_with(OWN_TRIGGER_PREFIX) {
            continue;
        }
        let writes = tables_written(&sql);
        if !writes.is_empty() {
            out.push(ForeignTrigger {
                name,
                on_table,
                writes,
            });
        }
    }
    Ok(out)
}

/// Healarr's schema version, when the database has Healarr's migrations table.
pub fn healarr_version(conn: &Connection) -> Result<Option<i64>, DbError> {
    let has_table: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'",
        [],
        |r| r.get(0),
    )?;
    if has_table == 0 {
        return Ok(None);
    }
    Ok(
        conn.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get::<_, Option<i64>>(0)
        })?,
    )
}

fn recorded_healarr_version(conn: &Connection) -> Result<Option<i64>, DbError> {
    let value: Option<String> = conn
        .query_row(
            "SELECT value FROM dbwarden_state WHERE key = ?1",
            [HEALARR_VERSION_KEY],
            |r| r.get(0),
        )
        .optional()?;
    Ok(value.and_then(|v| v.parse().ok()))
}

/// Records the Healarr version seen now (nothing when there is no Healarr table).
pub fn record_healarr_version(conn: &Connection) -> Result<(), DbError> {
    if let Some(v) = healarr_version(conn)? {
        conn.execute(
            "INSERT INTO dbwarden_state (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            rusqlite::params![HEALARR_VERSION_KEY, v.to_string()],
        )?;
    }
    Ok(())
}

/// The cheap part: foreign triggers and Healarr's version (a few catalog reads).
/// With `compare`, also the summary against its recomputation (reads everything).
pub fn inspect(conn: &Connection, compare: bool) -> Result<SummaryFindings, DbError> {
    let version_change = match (recorded_healarr_version(conn)?, healarr_version(conn)?) {
        (was, Some(now)) if was != Some(now) => Some((was, now)),
        _ => None,
    };
    Ok(SummaryFindings {
        foreign_triggers: foreign_triggers(conn)?,
        healarr_version_change: version_change,
        drift: if compare {
            queries::summary_differences(conn)?
        } else {
            Vec::new()
        },
    })
}

/// Repairs in one transaction: re-inspects (what is found on the writer's own
/// connection is what counts), drops foreign triggers, rebuilds the summary and
/// counts, records Healarr's version. Run through the DbWriter, or on the writer's
/// connection before the DbWriter starts.
pub fn repair(conn: &mut Connection) -> Result<RepairReport, DbError> {
    let started = Instant::now();
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found = inspect(&tx, true)?;
    let mut triggers_removed = Vec::new();
    for trigger in &found.foreign_triggers {
        // The name comes from sqlite_master; quoted as an identifier, never bound.
        tx.execute_batch(&format!(
            "DROP TRIGGER IF EXISTS \"{}\"",
            trigger.name.replace('"', "\"\"")
        ))?;
        triggers_removed.push(trigger.name.clone());
    }
    let rows_changed = queries::rebuild_summary(&tx)?;
    record_healarr_version(&tx)?;
    let rows: i64 = tx.query_row("SELECT count(*) FROM corruption_summary", [], |r| r.get(0))?;
    tx.commit()?;
    let report = RepairReport {
        found,
        triggers_removed,
        rows_changed,
        rows,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    tracing::warn!(
        found = %report.found.describe(),
        triggers_removed = ?report.triggers_removed,
        rows_changed = report.rows_changed,
        rows = report.rows,
        duration_ms = report.duration_ms,
        "corruption summary repaired"
    );
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_writes_to_our_tables_only() {
        let healarr = "CREATE TRIGGER trg_update_corruption_summary AFTER INSERT ON events
            WHEN NEW.aggregate_type = 'corruption' BEGIN
            INSERT OR REPLACE INTO corruption_summary (corruption_id) SELECT NEW.aggregate_id; END";
        assert_eq!(tables_written(healarr), ["corruption_summary"]);
        assert_eq!(
            tables_written("BEGIN UPDATE \"main\".\"corruption_state_counts\" SET count = 0; DELETE FROM [corruption_summary]; END"),
            ["corruption_state_counts", "corruption_summary"]
        );
        assert_eq!(
            tables_written("BEGIN REPLACE INTO corruption_summary VALUES (1); END"),
            ["corruption_summary"]
        );
        // Reading our tables, or writing others, is no concern of ours.
        assert!(tables_written(
            "BEGIN INSERT INTO audit SELECT * FROM corruption_summary; UPDATE other SET x = 1; END"
        )
        .is_empty());
    }
}

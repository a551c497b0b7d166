//! The run history of jobs (`dbwarden_job_runs`, migration 0003): a row type of its
//! own, so the database layer does not depend on the jobs layer above it. `trigger`
//! and `outcome` hold the words `jobs::Trigger` and `jobs::Outcome` write; the jobs
//! layer turns rows back into its types and refuses words it does not know.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use rusqlite::{params, Connection, Row};

use super::DbError;

/// One finished run as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRunRow {
    pub job: String,
    pub trigger: String,
    pub started_at: DateTime<Utc>,
    pub duration_ms: u64,
    pub outcome: String,
    pub message: String,
    pub output: Option<String>,
}

/// Records one run and deletes that job's runs beyond the newest `keep`.
pub fn insert(conn: &Connection, run: &JobRunRow, keep: u32) -> Result<(), rusqlite::Error> {
    conn.prepare_cached(
        "INSERT INTO dbwarden_job_runs
             (job, trigger, started_at, duration_ms, outcome, message, output)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        run.job,
        run.trigger,
        run.started_at
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        i64::try_from(run.duration_ms).unwrap_or(i64::MAX),
        run.outcome,
        run.message,
        run.output,
    ])?;
    conn.prepare_cached(
        "DELETE FROM dbwarden_job_runs
          WHERE job = ?1
            AND id <= (SELECT id FROM dbwarden_job_runs WHERE job = ?1
                        ORDER BY id DESC LIMIT 1 OFFSET ?2)",
    )?
    .execute(params![run.job, keep])?;
    Ok(())
}

fn from_row(r: &Row<'_>) -> Result<JobRunRow, rusqlite::Error> {
    let started: String = r.get(2)?;
    let started_at = DateTime::parse_from_rfc3339(&started)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
        })?;
    Ok(JobRunRow {
        job: r.get(0)?,
        trigger: r.get(1)?,
        started_at,
        duration_ms: u64::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        outcome: r.get(4)?,
        message: r.get(5)?,
        output: r.get(6)?,
    })
}

const COLUMNS: &str = "job, trigger, started_at, duration_ms, outcome, message, output";

/// The newest run of every job that has one.
pub fn last_runs(conn: &Connection) -> Result<BTreeMap<String, JobRunRow>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM dbwarden_job_runs
          WHERE id IN (SELECT max(id) FROM dbwarden_job_runs GROUP BY job)"
    ))?;
    let runs = stmt
        .query_map([], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(runs.into_iter().map(|r| (r.job.clone(), r)).collect())
}

/// A job's newest runs, newest first.
pub fn runs(conn: &Connection, job: &str, limit: u32) -> Result<Vec<JobRunRow>, DbError> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM dbwarden_job_runs WHERE job = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let runs = stmt
        .query_map(params![job, limit], from_row)?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(runs)
}

//! Integrity checks: `quick_check`, `integrity_check` and `foreign_key_check`, of the
//! live database (the IntegrityAuditor, `dbwarden check`) or of any file (backups,
//! verified copies).

use std::path::Path;

use rusqlite::Connection;

use super::DbError;

/// Which integrity pragma to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckKind {
    /// `PRAGMA quick_check`: O(N), skips index/table cross-checks.
    Quick,
    /// `PRAGMA integrity_check`: O(N log N), the full check.
    Full,
}

/// Runs the check and returns the problems it reported (empty means "ok").
pub fn problems(conn: &Connection, kind: CheckKind) -> Result<Vec<String>, DbError> {
    let sql = match kind {
        CheckKind::Quick => "PRAGMA quick_check",
        CheckKind::Full => "PRAGMA integrity_check",
    };
    let mut stmt = conn.prepare(sql)?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut problems = Vec::new();
    for row in rows {
        let line = row?;
        if line != "ok" {
            problems.push(line);
        }
    }
    Ok(problems)
}

/// `foreign_key_check`: each row that refers to a missing row, described.
pub fn foreign_key_problems(conn: &Connection) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare("PRAGMA foreign_key_check")?;
    let rows = stmt.query_map([], |r| {
        Ok(format!(
            "foreign key: row {} of {} refers to a missing row of {}",
            r.get::<_, Option<i64>>(1)?.unwrap_or_default(),
            r.get::<_, String>(0)?,
            r.get::<_, String>(2)?
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Opens `path` read-only and runs the full integrity check on it.
pub fn verify_file(path: &Path) -> Result<(), DbError> {
    let conn = super::open_file_read_only(path)?;
    let problems = problems(&conn, CheckKind::Full).map_err(|e| DbError::Copy {
        path: path.to_path_buf(),
        reason: format!("integrity_check could not run: {e}"),
    })?;
    drop(conn);
    if !problems.is_empty() {
        return Err(DbError::Copy {
            path: path.to_path_buf(),
            reason: format!("integrity_check failed: {}", problems.join("; ")),
        });
    }
    Ok(())
}

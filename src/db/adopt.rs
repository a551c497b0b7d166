//! Adopting an existing Healarr database.
//!
//! A Healarr database has Healarr's `schema_migrations` and no `dbwarden_migrations`.
//! Before the first migration changes anything, a verified copy is written beside it
//! (`<name>.healarr-<UTC time>.bak`), so adoption can always be undone by hand.
//! The migrations then replace Healarr's trigger and legacy view, rebuild the summary
//! from the events and leave every other table untouched.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::{snapshot, DbError};

fn table_exists(conn: &Connection, name: &str) -> Result<bool, DbError> {
    Ok(conn
        .query_row(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
            [name],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// True for a database written by Healarr and not yet adopted by dbwarden.
pub fn is_unadopted_healarr(conn: &Connection) -> Result<bool, DbError> {
    Ok(table_exists(conn, "schema_migrations")? && !table_exists(conn, "dbwarden_migrations")?)
}

/// Writes the verified pre-adoption copy when `conn` is an unadopted Healarr
/// database; returns its path, or `None` when there is nothing to adopt.
pub fn protect_before_adoption(
    conn: &Connection,
    db_path: &Path,
) -> Result<Option<PathBuf>, DbError> {
    if !is_unadopted_healarr(conn)? {
        return Ok(None);
    }
    let dir = match db_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let file_name = db_path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "database".into());
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let name = format!("{file_name}.healarr-{stamp}.bak");
    snapshot::write_verified_copy(conn, &dir, &name).map(Some)
}

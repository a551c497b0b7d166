//! Adopting an existing Healarr database.
//!
//! A Healarr database has Healarr's `schema_migrations` and no `dbwarden_migrations`.
//! Before the first migration changes anything, a verified copy is written beside it
//! (`<name>.healarr-<UTC time>.bak`), so adoption can always be undone by hand.
//! The migrations then replace Healarr's trigger and legacy view, rebuild the summary
//! from the events and leave every other table untouched.
//!
//! Healarr may already have pruned old events, so for some corruptions the detection
//! facts (file path, path id, type, detection time) survive only in Healarr's own
//! summary table. Its rows are stashed in `dbwarden_adoption_summary` before the
//! migrations replace that table; migration 0004 keeps them as kept facts for the
//! corruptions whose CorruptionDetected events are gone, then drops the stash.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension};

use super::{verified_copy, DbError};

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
    verified_copy::write(conn, &dir, &name).map(Some)
}

/// Stashes Healarr's summary rows for migration 0004 (see the module doc). Does
/// nothing unless `conn` is an unadopted Healarr database with a summary table.
pub fn stash_healarr_summary(conn: &Connection) -> Result<(), DbError> {
    if !is_unadopted_healarr(conn)? || !table_exists(conn, "corruption_summary")? {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(
        "DROP TABLE IF EXISTS dbwarden_adoption_summary;
         CREATE TABLE dbwarden_adoption_summary (
             corruption_id TEXT PRIMARY KEY, file_path, path_id, corruption_type, detected_at);
         INSERT INTO dbwarden_adoption_summary
             SELECT corruption_id, file_path, path_id, corruption_type, detected_at
               FROM corruption_summary;",
    )?;
    tx.commit()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn has_stash(conn: &Connection) -> bool {
        table_exists(conn, "dbwarden_adoption_summary").expect("sqlite_master")
    }

    /// The stash is made only for an unadopted Healarr database that has a summary:
    /// never again once dbwarden owns the database (migration 0004, which drops it, ran
    /// long ago), and not for a Healarr database older than its summary table.
    /// (Found by mutation testing: `||` → `&&` in the guard went unnoticed.)
    #[test]
    fn the_summary_is_stashed_only_from_an_unadopted_healarr_database_that_has_one() {
        let adopted = Connection::open_in_memory().expect("open");
        adopted
            .execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER);
                 CREATE TABLE dbwarden_migrations (name TEXT);
                 CREATE TABLE corruption_summary (corruption_id TEXT, file_path, path_id,
                     corruption_type, detected_at);",
            )
            .expect("schema");
        stash_healarr_summary(&adopted).expect("nothing to do");
        assert!(!has_stash(&adopted), "an adopted database got a stash");

        let old_healarr = Connection::open_in_memory().expect("open");
        old_healarr
            .execute_batch("CREATE TABLE schema_migrations (version INTEGER);")
            .expect("schema");
        stash_healarr_summary(&old_healarr).expect("no summary: nothing to do");
        assert!(!has_stash(&old_healarr));

        let healarr = Connection::open_in_memory().expect("open");
        healarr
            .execute_batch(
                "CREATE TABLE schema_migrations (version INTEGER);
                 CREATE TABLE corruption_summary (corruption_id TEXT, file_path, path_id,
                     corruption_type, detected_at);
                 INSERT INTO corruption_summary VALUES ('c1', '/m/a.mkv', 1, 'x', 'now');",
            )
            .expect("schema");
        stash_healarr_summary(&healarr).expect("stash");
        let stashed: i64 = healarr
            .query_row("SELECT count(*) FROM dbwarden_adoption_summary", [], |r| {
                r.get(0)
            })
            .expect("count");
        assert_eq!(stashed, 1);
    }
}

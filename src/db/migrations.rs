//! Schema migrations: SQL files in `migrations/`, embedded at build time, applied in
//! order, each in its own transaction, recorded in `dbwarden_migrations` (name,
//! checksum, applied_at). That table is dbwarden's own, so it never clashes with
//! Healarr's `schema_migrations`.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::DbError;

pub struct Migration {
    pub name: &'static str,
    pub sql: &'static str,
}

/// Every migration, in order. A test checks that each file in `migrations/` is here.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        name: "0001_event_store",
        sql: include_str!("../../migrations/0001_event_store.sql"),
    },
    Migration {
        name: "0002_corruption_summary",
        sql: include_str!("../../migrations/0002_corruption_summary.sql"),
    },
    Migration {
        name: "0003_job_runs",
        sql: include_str!("../../migrations/0003_job_runs.sql"),
    },
];

const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS dbwarden_migrations (
    name       TEXT PRIMARY KEY,
    checksum   TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

#[derive(Debug, Default, Clone)]
pub struct MigrationReport {
    pub applied: Vec<String>,
    pub already_applied: usize,
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Applies pending migrations. Stops with an error, before changing anything, when an
/// applied migration's file changed or the database knows a migration this build
/// does not (it was migrated by a newer dbwarden).
pub fn migrate(conn: &mut Connection) -> Result<MigrationReport, DbError> {
    conn.execute(CREATE_TABLE, [])?;
    let applied: Vec<(String, String)> = {
        let mut stmt =
            conn.prepare("SELECT name, checksum FROM dbwarden_migrations ORDER BY name")?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<Result<_, _>>()?
    };
    for (name, sum) in &applied {
        match MIGRATIONS.iter().find(|m| m.name == name) {
            None => return Err(DbError::NewerDatabase { name: name.clone() }),
            Some(m) => {
                let embedded = checksum(m.sql);
                if &embedded != sum {
                    return Err(DbError::MigrationChanged {
                        name: name.clone(),
                        applied: sum.clone(),
                        embedded,
                    });
                }
            }
        }
    }
    let mut report = MigrationReport {
        already_applied: applied.len(),
        ..Default::default()
    };
    for m in MIGRATIONS {
        if applied.iter().any(|(n, _)| n == m.name) {
            continue;
        }
        let fail = |source| DbError::Migration {
            name: m.name.to_string(),
            source,
        };
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(fail)?;
        tx.execute_batch(m.sql).map_err(fail)?;
        tx.execute(
            "INSERT INTO dbwarden_migrations (name, checksum, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.name, checksum(m.sql), crate::time::now_text()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(migration = m.name, "migration applied");
        report.applied.push(m.name.to_string());
    }
    Ok(report)
}

/// True when every embedded migration is recorded as applied.
pub fn is_current(conn: &Connection) -> Result<bool, DbError> {
    let exists: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'dbwarden_migrations'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Ok(false);
    }
    let count: i64 =
        conn.query_row("SELECT count(*) FROM dbwarden_migrations", [], |r| r.get(0))?;
    Ok(count as usize == MIGRATIONS.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded_in_order() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations");
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .expect("migrations dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .map(|n| n.trim_end_matches(".sql").to_string())
            .collect();
        files.sort();
        let embedded: Vec<&str> = MIGRATIONS.iter().map(|m| m.name).collect();
        assert_eq!(files, embedded);
    }
}

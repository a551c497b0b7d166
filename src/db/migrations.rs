//! Schema migrations: SQL files in `migrations/`, embedded at build time, applied in
//! order, each in its own transaction, recorded in `dbwarden_migrations` (name,
//! checksum, applied_at). That table is dbwarden's own, so it never clashes with
//! Healarr's `schema_migrations`.
//!
//! Statements run one by one so that a `CREATE INDEX IF NOT EXISTS` whose equal
//! already exists under another name (Healarr's own indexes) is skipped; see
//! [`super::indexes`].

use fallible_iterator::FallibleIterator;
use rusqlite::{Batch, Connection, OptionalExtension, TransactionBehavior};
use sha2::{Digest, Sha256};

use super::indexes::{self, IndexSpec};
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
    Migration {
        name: "0004_summary_lifecycle_and_kept_facts",
        sql: include_str!("../../migrations/0004_summary_lifecycle_and_kept_facts.sql"),
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
    /// Indexes of ours not created or dropped because an equal one exists:
    /// (ours, the one used instead).
    pub indexes_reused: Vec<(String, String)>,
    /// Indexes of ours created again because no equal one existed any more.
    pub indexes_created: Vec<String>,
    /// Set when opening found the summary changed by another program and repaired it.
    pub summary_repair: Option<super::guard::RepairReport>,
}

pub fn checksum(sql: &str) -> String {
    hex::encode(Sha256::digest(sql.as_bytes()))
}

/// Runs `sql` statement by statement on `conn`, giving each statement's text to
/// `skip` first; a statement it answers `true` for is not executed.
fn run_statements(
    conn: &Connection,
    sql: &str,
    mut skip: impl FnMut(&str) -> Result<bool, rusqlite::Error>,
) -> Result<(), rusqlite::Error> {
    let mut batch = Batch::new(conn, sql);
    while let Some(mut stmt) = batch.next()? {
        let text = stmt.expanded_sql().unwrap_or_default();
        if !skip(&text)? {
            stmt.execute([])?;
        }
    }
    Ok(())
}

/// Every index the migrations create in the simple, comparable form, read by running
/// them on an empty in-memory database.
fn index_specs() -> Result<Vec<IndexSpec>, DbError> {
    let scratch = Connection::open_in_memory()?;
    let mut specs = Vec::new();
    for m in MIGRATIONS {
        run_statements(&scratch, m.sql, |text| {
            specs.extend(indexes::parse_create_index(text));
            Ok(false)
        })?;
    }
    Ok(specs)
}

/// Runs a migration, skipping an index whose equal already exists under another name.
fn execute_migration(
    conn: &Connection,
    sql: &str,
    reused: &mut Vec<(String, String)>,
) -> Result<(), rusqlite::Error> {
    run_statements(conn, sql, |text| {
        let Some(spec) = indexes::parse_create_index(text) else {
            return Ok(false);
        };
        Ok(match indexes::equivalent_of(conn, &spec)? {
            Some(other) => {
                reused.push((spec.name, other));
                true
            }
            None => false,
        })
    })
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
        execute_migration(&tx, m.sql, &mut report.indexes_reused).map_err(fail)?;
        tx.execute(
            "INSERT INTO dbwarden_migrations (name, checksum, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.name, checksum(m.sql), crate::time::now_text()],
        )
        .map_err(fail)?;
        tx.commit().map_err(fail)?;
        tracing::info!(migration = m.name, "migration applied");
        report.applied.push(m.name.to_string());
    }
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let reconciled = indexes::reconcile(&tx, &index_specs()?)?;
    tx.commit()?;
    report.indexes_reused.extend(reconciled.dropped);
    report.indexes_created = reconciled.created;
    for (ours, other) in &report.indexes_reused {
        tracing::info!(index = %ours, instead = %other, "an equal index exists; using it instead of creating a duplicate");
    }
    Ok(report)
}

/// The name of the newest migration applied, if any.
pub fn newest_applied(conn: &Connection) -> Result<Option<String>, DbError> {
    Ok(conn
        .query_row(
            "SELECT name FROM dbwarden_migrations ORDER BY name DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .optional()?)
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

    /// What `dbwarden check` and health report about the schema: nothing applied on a
    /// new file, every migration after `migrate` (and the second run applies nothing
    /// and says so), and not current once one is missing. (Found by mutation testing:
    /// constant answers from `newest_applied` and `is_current`, and the report's
    /// `already_applied`, went unnoticed.)
    #[test]
    fn the_schemas_state_is_read_back_as_it_is() {
        let mut conn = Connection::open_in_memory().expect("open");
        assert_eq!(newest_applied_or_none(&conn), None);
        assert!(!is_current(&conn).expect("is_current"));
        let first = migrate(&mut conn).expect("migrate");
        assert_eq!(first.applied.len(), MIGRATIONS.len());
        assert_eq!(first.already_applied, 0);
        let again = migrate(&mut conn).expect("migrate again");
        assert!(again.applied.is_empty());
        assert_eq!(again.already_applied, MIGRATIONS.len());
        assert_eq!(
            newest_applied(&conn).expect("newest").as_deref(),
            MIGRATIONS.last().map(|m| m.name)
        );
        assert!(is_current(&conn).expect("is_current"));
        conn.execute(
            "DELETE FROM dbwarden_migrations WHERE name = ?1",
            [MIGRATIONS[MIGRATIONS.len() - 1].name],
        )
        .expect("forget the newest");
        assert!(!is_current(&conn).expect("is_current"));
        assert_eq!(
            newest_applied(&conn).expect("newest").as_deref(),
            Some(MIGRATIONS[MIGRATIONS.len() - 2].name)
        );
    }

    /// A database an older dbwarden migrated (only the first migration applied) gets
    /// the others, and only those. (Found by mutation testing: `==` → `!=` in the
    /// choice of what is already applied went unnoticed.)
    #[test]
    fn a_database_an_older_dbwarden_migrated_gets_the_migrations_it_lacks() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute(CREATE_TABLE, []).expect("table");
        let first = &MIGRATIONS[0];
        execute_migration(&conn, first.sql, &mut Vec::new()).expect("first migration");
        conn.execute(
            "INSERT INTO dbwarden_migrations (name, checksum, applied_at) VALUES (?1, ?2, 'then')",
            rusqlite::params![first.name, checksum(first.sql)],
        )
        .expect("record it");
        let report = migrate(&mut conn).expect("migrate the rest");
        let rest: Vec<String> = MIGRATIONS[1..].iter().map(|m| m.name.to_string()).collect();
        assert_eq!(report.applied, rest);
        assert_eq!(report.already_applied, 1);
        assert!(is_current(&conn).expect("is_current"));
    }

    /// Before `dbwarden_migrations` exists there is no table to read: an error or
    /// nothing, never a name.
    fn newest_applied_or_none(conn: &Connection) -> Option<String> {
        newest_applied(conn).ok().flatten()
    }

    /// The checksum is what tells a changed migration file from the one applied: it
    /// must be the SHA-256 of the text (checkable with `sha256sum`), different for
    /// every migration. (Found by mutation testing: a constant checksum went unnoticed,
    /// which would make every changed file look unchanged.)
    #[test]
    fn a_migrations_checksum_is_the_sha256_of_its_text() {
        assert_eq!(
            checksum("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let sums: std::collections::BTreeSet<String> =
            MIGRATIONS.iter().map(|m| checksum(m.sql)).collect();
        assert_eq!(sums.len(), MIGRATIONS.len());
    }
}

//! Everything that touches SQLite: opening connections with one set of settings,
//! migrations, adopting a Healarr database, verified copies, the reader pool and the
//! queries the service runs.
//!
//! Every connection, read-write or read-only, gets the same pragmas (WAL,
//! `synchronous=FULL`, foreign keys, busy timeout, in-memory temp store, bounded
//! journal size) so that no code path quietly runs with weaker durability.

pub(crate) mod adopt;
#[cfg(feature = "crash-vfs")]
pub mod crashvfs;
pub mod durable;
pub mod guard;
pub(crate) mod indexes;
pub mod integrity;
pub(crate) mod job_runs;
pub(crate) mod jobsql;
pub mod lock;
pub mod migrations;
pub mod pin;
pub mod queries;
pub(crate) mod readers;
pub(crate) mod snapshot;
pub(crate) mod sqlite_errors;
pub mod verified_copy;
pub(crate) mod wal;
pub mod walfile;

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::config::DatabaseSettings;

/// SQLite releases before 3.51.3 can corrupt a WAL database when two connections
/// write or checkpoint at the same moment (the WAL-reset bug).
pub const MIN_SQLITE_VERSION: i32 = 3_051_003;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error(
        "SQLite {found} is too old: dbwarden needs 3.51.3 or newer (WAL-reset corruption bug)"
    )]
    SqliteTooOld { found: String },
    #[error("database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("cannot create {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database setting {pragma} did not take effect: wanted {wanted}, got {got}")]
    Pragma {
        pragma: &'static str,
        wanted: String,
        got: String,
    },
    #[error("migration {name} was changed after it was applied (checksum {applied} in the database, {embedded} in this build)")]
    MigrationChanged {
        name: String,
        applied: String,
        embedded: String,
    },
    #[error("the database was migrated by a newer dbwarden (it has migration {name}, unknown to this build); refusing to start")]
    NewerDatabase { name: String },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error("verified copy {path} failed: {reason}")]
    Copy { path: PathBuf, reason: String },
    #[error("verified copy {path} failed: the disk is full ({detail})")]
    DiskFull { path: PathBuf, detail: String },
    #[error(transparent)]
    Sqlite(#[from] rusqlite::Error),
    /// Blocking SQLite work handed to tokio's pool panicked or was cancelled.
    #[error("a database task did not finish: {source}")]
    Task {
        #[source]
        source: tokio::task::JoinError,
    },
    #[error("the reader pool is closed")]
    PoolClosed,
    #[error("the reader pool's idle list was poisoned by a panic")]
    PoolPoisoned,
    /// An actor that does database work did not answer (it stopped or its mailbox is gone).
    #[error("the {actor} did not answer: {source}")]
    Mailbox {
        actor: &'static str,
        #[source]
        source: actix::MailboxError,
    },
    #[error(transparent)]
    WalFile(#[from] walfile::WalFileError),
    #[error("the crash VFS could not be registered: {reason}")]
    CrashVfs { reason: String },
    #[error("database.vfs `{vfs}`: this build has no such VFS (the crash VFS exists only in test builds)")]
    NoSuchVfs { vfs: String },
}

/// Refuses to run on a bundled SQLite older than [`MIN_SQLITE_VERSION`].
pub fn check_sqlite_version() -> Result<(), DbError> {
    check_version_number(rusqlite::version_number(), rusqlite::version())
}

fn check_version_number(number: i32, text: &str) -> Result<(), DbError> {
    if number < MIN_SQLITE_VERSION {
        return Err(DbError::SqliteTooOld {
            found: text.to_string(),
        });
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0700; an existing directory is
/// left as its owner set it.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    if dir.exists() {
        return Ok(());
    }
    DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

/// Creates the database's directory (0700) and an empty file (0600) when missing, so
/// SQLite's files are never readable by other users whatever the umask.
pub fn prepare_path(path: &Path) -> Result<(), DbError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_dir(dir).map_err(|source| DbError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if !path.exists() {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|source| DbError::Io {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// Size of a `-wal` file left with content beside the database: the last process to
/// use it did not shut down cleanly (a clean dbwarden shutdown truncates the WAL).
/// Must be called before any connection is opened.
pub fn hot_wal_bytes(path: &Path) -> Option<u64> {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    std::fs::metadata(PathBuf::from(wal))
        .ok()
        .map(|m| m.len())
        .filter(|&len| len > wal::HEADER_BYTES as u64)
}

/// Opens the one read-write connection (the DbWriter's, or a CLI command's when the
/// service is not running).
pub fn open_writer(settings: &DatabaseSettings) -> Result<Connection, DbError> {
    check_sqlite_version()?;
    prepare_path(&settings.path)?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = open_with(settings, flags)?;
    apply_settings(&conn, settings, false)?;
    Ok(conn)
}

/// Opens any SQLite file (a copy, a backup) read-only, without the service's settings.
pub fn open_file_read_only(path: &Path) -> Result<Connection, DbError> {
    Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| DbError::Open {
        path: path.to_path_buf(),
        source,
    })
}

/// True when `path` opens as an SQLite database whose schema can be read.
pub fn is_readable_database(path: &Path) -> bool {
    open_file_read_only(path)
        .and_then(|c| {
            Ok(c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
                r.get::<_, i64>(0)
            })?)
        })
        .is_ok()
}

/// Opens a read-only connection with the same settings as the writer.
pub fn open_reader(settings: &DatabaseSettings) -> Result<Connection, DbError> {
    check_sqlite_version()?;
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = open_with(settings, flags)?;
    apply_settings(&conn, settings, true)?;
    Ok(conn)
}

/// Opens a connection for the [WAL restarter](crate::replica::wal_restart): one to
/// hold other writers off ([`with_writers_held`], which then tries for the write lock
/// every 100 µs, at most [`HOLD_WRITERS_WAIT`]), or one to checkpoint. Read-write
/// so that it can take SQLite's write lock or checkpoint, but it never writes (the
/// DbWriter's connection stays the only one that does). Same VFS and settings as the
/// others, so it shares their locks.
pub fn open_for_wal_restarts(settings: &DatabaseSettings) -> Result<Connection, DbError> {
    check_sqlite_version()?;
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = open_with(settings, flags)?;
    apply_settings(&conn, settings, true)?;
    conn.busy_handler(Some(retry_soon))?;
    Ok(conn)
}

/// How long a connection from [`open_for_wal_restarts`] tries for the write lock.
pub const HOLD_WRITERS_WAIT: Duration = Duration::from_secs(1);
const HOLD_WRITERS_POLL: Duration = Duration::from_micros(100);

/// The lock connection's busy handler: tries again every 100 µs, for at most
/// [`HOLD_WRITERS_WAIT`]. SQLite's own busy timeout sleeps 1, 2, 5, 10 … 100 ms between
/// tries, and a writer committing in a tight loop (a direct writer such as Healarr)
/// holds the lock nearly all the time and lets it go for microseconds between
/// commits: at those sleeps the lock is won after hundreds of milliseconds, or seconds
/// (measured: median 50–200 ms, up to 2 s), at 100 µs in about a millisecond.
fn retry_soon(tries: i32) -> bool {
    let waited = HOLD_WRITERS_POLL * tries.max(0) as u32;
    if waited >= HOLD_WRITERS_WAIT {
        return false;
    }
    std::thread::sleep(HOLD_WRITERS_POLL);
    true
}

/// A PASSIVE checkpoint, tried again for a moment while another connection's
/// checkpoint (a direct writer's automatic one, run after its commits) holds SQLite's
/// checkpoint lock: a PASSIVE checkpoint never waits for it, and answers busy with
/// nothing done.
pub fn passive_checkpoint_soon(conn: &Connection) -> Result<CheckpointResult, DbError> {
    const TRIES: usize = 50;
    let mut result = wal_checkpoint(conn, CheckpointMode::Passive)?;
    for _ in 1..TRIES {
        if !(result.busy && result.log_frames < 0) {
            break;
        }
        std::thread::sleep(Duration::from_micros(200));
        result = wal_checkpoint(conn, CheckpointMode::Passive)?;
    }
    Ok(result)
}

/// Opens through the configured VFS (the crash VFS in power-loss tests; a build
/// without it refuses the setting).
fn open_with(settings: &DatabaseSettings, flags: OpenFlags) -> Result<Connection, DbError> {
    let opened = match settings.vfs.as_deref() {
        #[cfg(feature = "crash-vfs")]
        Some(vfs) => {
            crashvfs::register()?;
            Connection::open_with_flags_and_vfs(&settings.path, flags, vfs)
        }
        #[cfg(not(feature = "crash-vfs"))]
        Some(vfs) => {
            return Err(DbError::NoSuchVfs {
                vfs: vfs.to_string(),
            })
        }
        None => Connection::open_with_flags(&settings.path, flags),
    };
    opened.map_err(|source| DbError::Open {
        path: settings.path.clone(),
        source,
    })
}

/// FULL, except under the crash VFS when a power-loss self-test asks for less.
fn wanted_synchronous(settings: &DatabaseSettings) -> &'static str {
    #[cfg(feature = "crash-vfs")]
    if settings.vfs.is_some() {
        return crashvfs::plan().synchronous;
    }
    let _ = settings;
    "FULL"
}

fn apply_settings(
    conn: &Connection,
    settings: &DatabaseSettings,
    read_only: bool,
) -> Result<(), DbError> {
    // Room for every multi-row INSERT shape plus the service's queries.
    conn.set_prepared_statement_cache_capacity(64);
    conn.busy_timeout(Duration::from_millis(settings.busy_timeout_ms))?;
    let mode: String = if read_only {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?
    } else {
        conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?
    };
    // A read-only connection cannot switch modes; a database never opened by the
    // writer may still be in rollback mode, which readers accept as it is.
    if !read_only && !mode.eq_ignore_ascii_case("wal") {
        return Err(DbError::Pragma {
            pragma: "journal_mode",
            wanted: "wal".into(),
            got: mode,
        });
    }
    let wanted = wanted_synchronous(settings);
    conn.pragma_update(None, "synchronous", wanted)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let _: i64 = conn.query_row(
        &format!(
            "PRAGMA journal_size_limit={}",
            settings.journal_size_limit_bytes
        ),
        [],
        |r| r.get(0),
    )?;
    if !read_only {
        let _: i64 = conn.query_row(
            &format!(
                "PRAGMA wal_autocheckpoint={}",
                settings.wal_autocheckpoint_pages
            ),
            [],
            |r| r.get(0),
        )?;
    }
    let synchronous: i64 = conn.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
    let wanted_level = match wanted {
        "OFF" => 0,
        "NORMAL" => 1,
        _ => 2,
    };
    if synchronous != wanted_level {
        return Err(DbError::Pragma {
            pragma: "synchronous",
            wanted: format!("{wanted_level} ({wanted})"),
            got: synchronous.to_string(),
        });
    }
    Ok(())
}

/// Where a long-running SQLite job (a backup, an integrity check) publishes its
/// connection's interrupt handle, so shutdown can abort it from another thread.
#[derive(Clone, Default)]
pub struct InterruptSlot(std::sync::Arc<std::sync::Mutex<Option<rusqlite::InterruptHandle>>>);

impl InterruptSlot {
    pub fn set(&self, handle: rusqlite::InterruptHandle) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(handle);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = None;
        }
    }

    /// Interrupts the job running now; false when none was.
    pub fn interrupt(&self) -> bool {
        match self.0.lock() {
            Ok(slot) => slot.as_ref().map(|h| h.interrupt()).is_some(),
            Err(_) => false,
        }
    }
}

/// Runs `PRAGMA wal_checkpoint(MODE)` and reads its row: a checkpoint that could not
/// finish is reported as `busy = 1`, not as an error.
pub fn wal_checkpoint(
    conn: &Connection,
    mode: CheckpointMode,
) -> Result<CheckpointResult, DbError> {
    let sql = match mode {
        CheckpointMode::Noop => "PRAGMA wal_checkpoint(NOOP)",
        CheckpointMode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
        CheckpointMode::Restart => "PRAGMA wal_checkpoint(RESTART)",
        CheckpointMode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
    };
    Ok(conn.query_row(sql, [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_frames: r.get(1)?,
            checkpointed_frames: r.get(2)?,
        })
    })?)
}

/// Runs `during` with every other connection's writes held off: inside a
/// `BEGIN IMMEDIATE` that writes nothing (SQLite's write lock, waited for as the
/// connection's busy timeout or handler says), ended by a ROLLBACK. When another writer
/// keeps the lock past that, `during` runs anyway, without it: it is told whether
/// writers are held. Answers what `during` did.
pub fn with_writers_held<T>(
    conn: &Connection,
    during: impl FnOnce(bool) -> T,
) -> Result<T, DbError> {
    let held = conn.execute_batch("BEGIN IMMEDIATE").is_ok();
    let done = during(held);
    if held {
        conn.execute_batch("ROLLBACK")?;
    }
    Ok(done)
}

/// `PRAGMA data_version`: it differs between two reads on one connection exactly when
/// another connection committed in between (a direct writer such as Healarr).
pub fn data_version(conn: &Connection) -> Result<i64, DbError> {
    Ok(conn.query_row("PRAGMA data_version", [], |r| r.get(0))?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointMode {
    Noop,
    Passive,
    Restart,
    Truncate,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct CheckpointResult {
    pub busy: bool,
    /// Frames in the WAL (-1 when the database is not in WAL mode).
    pub log_frames: i64,
    /// Frames already copied back into the database.
    pub checkpointed_frames: i64,
}

/// Opens the writer connection and brings the schema up to date, adopting a Healarr
/// database first when one is found, then repairs the summary if another program
/// changed how it is maintained (see [`guard`]). Used by `run` and `migrate`.
pub fn open_and_migrate(
    settings: &DatabaseSettings,
) -> Result<(Connection, migrations::MigrationReport), DbError> {
    let mut conn = open_writer(settings)?;
    if let Some(copy) = adopt::protect_before_adoption(&conn, &settings.path)? {
        tracing::warn!(copy = %copy.display(), "adopting a Healarr database; a verified copy of it was written first");
        adopt::stash_healarr_summary(&conn)?;
    }
    let mut report = migrations::migrate(&mut conn)?;
    let findings = guard::inspect(&conn, false)?;
    if findings.needs_repair() {
        report.summary_repair = Some(guard::repair(&mut conn)?);
    } else if findings.healarr_version_change.is_some() {
        // First sight of Healarr's version (a fresh adoption): remember it.
        guard::record_healarr_version(&conn)?;
    }
    Ok((conn, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_sqlite_older_than_3_51_3() {
        assert!(check_version_number(3_051_002, "3.51.2").is_err());
        assert!(check_version_number(3_045_000, "3.45.0").is_err());
        assert!(check_version_number(3_051_003, "3.51.3").is_ok());
        assert!(
            check_sqlite_version().is_ok(),
            "bundled SQLite {}",
            rusqlite::version()
        );
    }
}

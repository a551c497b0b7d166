//! Page-for-page copies: continuous replication's snapshot must have every page at
//! the same number as in the database, so that WAL frames (which name pages by number)
//! apply to it. `VACUUM INTO` (the backups' copy) rewrites the file and renumbers
//! pages; SQLite's backup API copies them as they are.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::Connection;

use super::{durable, DbError};

/// Copies `source`'s main database to a new file at `dest` (0600) in one backup step,
/// so the copy is `source`'s snapshot: the read transaction `source` has open, if it
/// has one, or a new one for the step. Returns the page size and page count, after
/// the copy reached the disk.
pub fn copy_pages(source: &Connection, dest: &Path) -> Result<(u32, u32), DbError> {
    let io = |source| DbError::Io {
        path: dest.to_path_buf(),
        source,
    };
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .map_err(io)?;
    let mut copy = Connection::open(dest).map_err(|source| DbError::Open {
        path: dest.to_path_buf(),
        source,
    })?;
    {
        let backup = Backup::new(source, &mut copy)?;
        match backup.step(-1)? {
            StepResult::Done => {}
            other => {
                return Err(DbError::Copy {
                    path: dest.to_path_buf(),
                    reason: format!("the backup step did not finish: {other:?}"),
                })
            }
        }
    }
    let page_size: u32 = copy.query_row("PRAGMA page_size", [], |r| r.get(0))?;
    let pages: u32 = copy.query_row("PRAGMA page_count", [], |r| r.get(0))?;
    drop(copy);
    durable::sync_file(dest).map_err(io)?;
    Ok((page_size, pages))
}

//! Verified copies of a live database: `VACUUM INTO` a temporary name in the target
//! directory, `integrity_check` of the copy, fsync, rename, fsync the directory.
//!
//! `VACUUM INTO` is not atomic (a crash can leave a partial file), so nothing ever
//! appears under a final name before it passed the integrity check and reached disk.

use std::fs::{self, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{durable, integrity, DbError};

/// Suffix of copies being written; a file with it was never verified.
pub const TEMP_SUFFIX: &str = ".dbwarden-tmp";

/// Writes a verified copy of `conn`'s main database as `dir/final_name` and returns
/// its path. On any failure the temporary file is removed and nothing else changes.
pub fn write(conn: &Connection, dir: &Path, final_name: &str) -> Result<PathBuf, DbError> {
    let final_path = dir.join(final_name);
    let temp_path = dir.join(format!("{final_name}{TEMP_SUFFIX}"));
    if final_path.exists() {
        return Err(DbError::Copy {
            path: final_path,
            reason: "a file with that name already exists".into(),
        });
    }
    let result = copy_verify_rename(conn, dir, &temp_path, &final_path);
    if result.is_err() {
        remove_with_sidecars(&temp_path);
    }
    result.map(|()| final_path)
}

/// Removes a file and the journal files SQLite may have made beside it (a failed
/// `VACUUM INTO` leaves its target's `-journal`).
pub fn remove_with_sidecars(path: &Path) {
    let _ = fs::remove_file(path);
    for suffix in ["-journal", "-wal", "-shm"] {
        let mut side = path.as_os_str().to_owned();
        side.push(suffix);
        let _ = fs::remove_file(PathBuf::from(side));
    }
}

fn copy_verify_rename(
    conn: &Connection,
    dir: &Path,
    temp_path: &Path,
    final_path: &Path,
) -> Result<(), DbError> {
    let copy_err = |reason: String| DbError::Copy {
        path: final_path.to_path_buf(),
        reason,
    };
    let io_err = |what: &str, e: std::io::Error| file_step_error(final_path, what, e);
    if temp_path.exists() {
        fs::remove_file(temp_path).map_err(|e| io_err("stale temporary file", e))?;
    }
    let temp_text = temp_path
        .to_str()
        .ok_or_else(|| copy_err("path is not valid UTF-8".into()))?;
    // The path is a bound parameter: never formatted into SQL text.
    conn.execute("VACUUM INTO ?1", [temp_text]).map_err(|e| {
        if super::sqlite_errors::kind_of(&e) == super::sqlite_errors::ErrorKind::DiskFull {
            DbError::DiskFull {
                path: final_path.to_path_buf(),
                detail: format!("VACUUM INTO: {e}"),
            }
        } else {
            copy_err(format!("VACUUM INTO failed: {e}"))
        }
    })?;
    fs::set_permissions(temp_path, Permissions::from_mode(0o600))
        .map_err(|e| io_err("chmod", e))?;
    integrity::verify_file(temp_path)?;
    durable::sync_file(temp_path).map_err(|e| io_err("fsync", e))?;
    durable::rename(temp_path, final_path).map_err(|e| io_err("rename", e))?;
    durable::sync_dir(dir).map_err(|e| io_err("fsync of directory", e))?;
    Ok(())
}

/// The error of a file step (chmod, fsync, rename) of the copy meant for `final_path`.
/// A full disk is told apart, so callers can answer "insufficient storage".
fn file_step_error(final_path: &Path, what: &str, e: std::io::Error) -> DbError {
    let detail = format!("{what}: {e}");
    if e.kind() == std::io::ErrorKind::StorageFull {
        DbError::DiskFull {
            path: final_path.to_path_buf(),
            detail,
        }
    } else {
        DbError::Copy {
            path: final_path.to_path_buf(),
            reason: detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Making only our fsync or rename fail with ENOSPC, after SQLite's own writes and
    // syncs of the copy succeeded, needs a fault injector that tells them apart; the
    // classification is checked here instead, with the errors the kernel gives.
    #[test]
    fn a_full_disk_in_a_file_step_is_told_apart_from_other_failures() {
        let path = Path::new("/backups/x.db");
        let full = std::io::Error::from_raw_os_error(28); // ENOSPC
        match file_step_error(path, "fsync", full) {
            DbError::DiskFull { path: p, detail } => {
                assert_eq!(p, path);
                assert!(detail.starts_with("fsync: "), "{detail}");
            }
            other => panic!("ENOSPC must be a full disk, got {other:?}"),
        }
        let denied = std::io::Error::from_raw_os_error(13); // EACCES
        match file_step_error(path, "rename", denied) {
            DbError::Copy { path: p, reason } => {
                assert_eq!(p, path);
                assert!(reason.starts_with("rename: "), "{reason}");
            }
            other => panic!("EACCES is not a full disk, got {other:?}"),
        }
    }
}

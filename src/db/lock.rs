//! The service's claim on its database: an exclusive `flock` on `<database>.lock`,
//! held for the life of the process. `dbwarden restore` refuses to run while anyone
//! holds it. A separate file is used because closing any descriptor of the database
//! file itself would drop SQLite's own POSIX locks.

use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("{path} is held by another dbwarden process (is the service running?)")]
    Held { path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held until dropped.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: File,
    pub path: PathBuf,
}

pub fn lock_path(db_path: &Path) -> PathBuf {
    let mut name = db_path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the lock without waiting.
pub fn acquire(db_path: &Path) -> Result<DatabaseLock, LockError> {
    let path = lock_path(db_path);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        super::create_private_dir(dir).map_err(|source| LockError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    acquire_file(&path)
}

/// An exclusive `flock` on `path` (created 0600 if missing), without waiting; held
/// until dropped. Replica leases on `file://` replicas use it too.
pub fn acquire_file(path: &Path) -> Result<DatabaseLock, LockError> {
    let path = path.to_path_buf();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(DatabaseLock { _file: file, path }),
        Err(TryLockError::WouldBlock) => Err(LockError::Held { path }),
        Err(TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("events.db");
        let first = acquire(&db).expect("first");
        assert!(matches!(acquire(&db), Err(LockError::Held { .. })));
        drop(first);
        acquire(&db).expect("free again");
    }
}

//! The backup catalog: one JSON manifest beside each backup file
//! (`dbwarden-<UTC time>.db` + `dbwarden-<UTC time>.db.json`).
//!
//! Manifests live in the backup directory, not in the database, so the catalog
//! survives the loss of the database it protects. A file without a manifest of ours
//! was not made by dbwarden and is never touched.

use std::fs::{self, File};
use std::io::Read;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BackupError;
use crate::db::durable;
use crate::db::verified_copy::TEMP_SUFFIX;

pub const PREFIX: &str = "dbwarden-";
pub const EXTENSION: &str = ".db";
pub const MANIFEST_EXTENSION: &str = ".json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BackupStatus {
    /// Passed its last verification.
    Good,
    /// Failed a re-verification: never counted as good again, never deleted by retention.
    Bad,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Manifest {
    pub name: String,
    pub size_bytes: u64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Newest migration applied in the copy.
    pub schema_version: String,
    /// Highest event id in the copy.
    pub last_event_id: i64,
    pub verified_at: DateTime<Utc>,
    pub status: BackupStatus,
    #[serde(default)]
    pub problem: Option<String>,
    /// From the source check to the verified, hashed copy (absent in older manifests).
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

pub fn manifest_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{MANIFEST_EXTENSION}"))
}

/// True for names dbwarden gives its backups.
pub fn is_backup_name(name: &str) -> bool {
    name.starts_with(PREFIX) && name.ends_with(EXTENSION) && !name.contains('/')
}

/// The time in a name dbwarden gave (`dbwarden-YYYYMMDDTHHMMSSZ[-N].db`); `None` for
/// any other name.
pub fn time_of_name(name: &str) -> Option<DateTime<Utc>> {
    let stamp = name.strip_prefix(PREFIX)?.strip_suffix(EXTENSION)?;
    let (stamp, n) = stamp.split_once('-').unwrap_or((stamp, "2"));
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ")
        .ok()
        .map(|t| t.and_utc())
}

/// Backups under a final name of ours without a manifest, with the time in the name.
pub fn orphans(dir: &Path) -> Result<Vec<(String, DateTime<Utc>)>, BackupError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(at) = time_of_name(&name) {
            if entry.path().is_file() && !manifest_path(dir, &name).exists() {
                out.push((name, at));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Held while a process writes backups or manifests into a directory.
#[derive(Debug)]
pub struct DirectoryLock {
    _dir: File,
}

/// Takes the backup directory's lock without waiting; refused while another process
/// (or another backup in this one) holds it. The lock is an `flock` on the directory
/// itself, so no file is added beside the backups.
pub fn lock(dir: &Path) -> Result<DirectoryLock, BackupError> {
    let handle = File::open(dir).map_err(io_err(dir))?;
    match handle.try_lock() {
        Ok(()) => Ok(DirectoryLock { _dir: handle }),
        Err(std::fs::TryLockError::WouldBlock) => Err(BackupError::DirectoryBusy {
            dir: dir.to_path_buf(),
        }),
        Err(std::fs::TryLockError::Error(source)) => Err(BackupError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

/// A fresh backup name for `now`, unique in `dir`.
pub fn new_name(dir: &Path, now: DateTime<Utc>) -> String {
    let stamp = now.format("%Y%m%dT%H%M%SZ");
    let mut name = format!("{PREFIX}{stamp}{EXTENSION}");
    let mut n = 2;
    while dir.join(&name).exists() || manifest_path(dir, &name).exists() {
        name = format!("{PREFIX}{stamp}-{n}{EXTENSION}");
        n += 1;
    }
    name
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the manifest atomically: temporary file, fsync, rename, fsync of the dir.
pub fn write_manifest(dir: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let path = manifest_path(dir, &manifest.name);
    let temp = dir.join(format!(
        "{}{MANIFEST_EXTENSION}{TEMP_SUFFIX}",
        manifest.name
    ));
    let body = serde_json::to_vec_pretty(manifest).map_err(|e| BackupError::Manifest {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let result = (|| {
        durable::write_file(&temp, &body, 0o600).map_err(io_err(&temp))?;
        durable::sync_file(&temp).map_err(io_err(&temp))?;
        durable::rename(&temp, &path).map_err(io_err(&path))?;
        durable::sync_dir(dir).map_err(io_err(dir))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temp);
    }
    result
}

pub fn read_manifest(path: &Path) -> Result<Manifest, BackupError> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| BackupError::Manifest {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Every backup of ours in `dir`, oldest first. Unreadable manifests are reported in
/// the log and skipped, never deleted.
pub fn list(dir: &Path) -> Result<Vec<Manifest>, BackupError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let file_name = entry.file_name().to_string_lossy().into_owned();
        let Some(backup_name) = file_name.strip_suffix(MANIFEST_EXTENSION) else {
            continue;
        };
        if !is_backup_name(backup_name) {
            continue;
        }
        match read_manifest(&entry.path()) {
            Ok(m) if m.name == backup_name => out.push(m),
            Ok(m) => {
                tracing::warn!(manifest = %file_name, named = %m.name, "manifest names another file; ignored")
            }
            Err(e) => tracing::warn!(error = %e, "unreadable backup manifest; ignored"),
        }
    }
    out.sort_by(|a, b| a.created_at.cmp(&b.created_at).then(a.name.cmp(&b.name)));
    Ok(out)
}

/// SHA-256 of a file, read in 1 MiB chunks.
pub fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Removes temporary files an interrupted backup left behind; returns what it removed.
pub fn remove_leftovers(dir: &Path) -> Result<Vec<PathBuf>, BackupError> {
    let mut removed = Vec::new();
    if !dir.exists() {
        return Ok(removed);
    }
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        // `<name>.dbwarden-tmp` and what SQLite left beside it (`-journal`, ...).
        if name.starts_with(PREFIX) && name.contains(TEMP_SUFFIX) {
            fs::remove_file(entry.path()).map_err(io_err(&entry.path()))?;
            removed.push(entry.path());
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_exact_names_have_a_time() {
        let t = time_of_name("dbwarden-20261201T223000Z.db").expect("ours");
        assert_eq!(t.to_rfc3339(), "2026-12-01T22:30:00+00:00");
        assert!(time_of_name("dbwarden-20261201T223000Z-3.db").is_some());
        for other in [
            "dbwarden-20261201T223000Z.db.dbwarden-tmp",
            "dbwarden-20261201T223000Z-.db",
            "dbwarden-20261201T223000Z-x.db",
            "dbwarden-yesterday.db",
            "mine.db",
            "dbwarden-20261201T223000Z.db.json",
        ] {
            assert!(time_of_name(other).is_none(), "{other}");
        }
    }

    #[test]
    fn a_backup_name_is_ours_prefix_extension_and_no_directory() {
        assert!(is_backup_name("dbwarden-20261201T223000Z.db"));
        for other in [
            "mine.db",
            "dbwarden-20261201T223000Z.json",
            "notes.txt",
            "dbwarden-x/../y.db",
        ] {
            assert!(!is_backup_name(other), "{other}");
        }
    }

    #[test]
    fn a_new_name_is_free_of_backups_and_of_manifests_left_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let now: DateTime<Utc> = "2026-12-01T22:30:00Z".parse().expect("time");
        let first = new_name(dir.path(), now);
        assert_eq!(first, "dbwarden-20261201T223000Z.db");
        // Only the manifest is left (its backup was removed by hand): still taken.
        fs::write(manifest_path(dir.path(), &first), "{}").expect("manifest");
        assert_eq!(new_name(dir.path(), now), "dbwarden-20261201T223000Z-2.db");
        for taken in [
            "dbwarden-20261201T223000Z-2.db",
            "dbwarden-20261201T223000Z-3.db",
        ] {
            fs::write(dir.path().join(taken), "").expect("backup");
        }
        assert_eq!(new_name(dir.path(), now), "dbwarden-20261201T223000Z-4.db");
    }

    #[test]
    fn a_manifest_that_names_another_file_is_not_listed() {
        let dir = tempfile::tempdir().expect("dir");
        let now = Utc::now();
        let manifest = |name: &str| Manifest {
            name: name.into(),
            size_bytes: 1,
            sha256: String::new(),
            created_at: now,
            schema_version: String::new(),
            last_event_id: 0,
            verified_at: now,
            status: BackupStatus::Good,
            problem: None,
            duration_ms: None,
        };
        write_manifest(dir.path(), &manifest("dbwarden-20261201T223000Z.db")).expect("write");
        write_manifest(dir.path(), &manifest("dbwarden-20261201T223100Z.db")).expect("write");
        // The second's manifest copied over a third's name: it names another file.
        fs::copy(
            manifest_path(dir.path(), "dbwarden-20261201T223100Z.db"),
            manifest_path(dir.path(), "dbwarden-20261201T223200Z.db"),
        )
        .expect("copy");
        let names: Vec<String> = list(dir.path())
            .expect("list")
            .into_iter()
            .map(|m| m.name)
            .collect();
        assert_eq!(
            names,
            [
                "dbwarden-20261201T223000Z.db",
                "dbwarden-20261201T223100Z.db"
            ]
        );
    }
}

//! `dbwarden restore`: put a verified backup in place of the database.
//!
//! Order: refuse while the service holds the database lock → verify the backup
//! (SHA-256 against its manifest, full `integrity_check`) → keep a verified copy of the
//! current database when it is readable (`<name>.pre-restore-<UTC time>.bak` beside it)
//! → copy the backup to a temporary name beside the database and fsync it → remove the
//! stale `-wal`/`-shm` → rename into place → fsync the directory → run migrations.
//!
//! From a replica ([`fetch_from_replica`]) the copy is first brought back beside the
//! database and proven there (see [`crate::replica::fetch`] and
//! [`crate::replica::stream::restore`]: checksums, SHA-256, full `integrity_check`, the
//! file fsynced); then the same steps apply, except that it is not checked a second time
//! and is moved into place rather than copied ([`Proof::Fetched`]). Checking the same
//! bytes again on the same disk a moment later proves nothing more, and on a 50 MB
//! database the second check and copy took about a fifth of a restore's time.

use std::fs;
use std::path::{Path, PathBuf};

use chrono::Utc;

use crate::backup::{self, catalog, BackupError};
use crate::config::Settings;
use crate::db::{self, durable, lock, verified_copy};

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Lock(#[from] lock::LockError),
    #[error("no good backup in {0}")]
    NoBackup(PathBuf),
    #[error("refusing to restore {path}: {reason}")]
    BadBackup { path: PathBuf, reason: String },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Replica(#[from] crate::replica::ReplicaError),
    #[error("replica {replica}: {reason}")]
    Identity { replica: String, reason: String },
}

/// What of a replica to restore.
#[derive(Debug, Clone)]
pub enum Pick {
    /// The newest state there: the last commit streamed when the replica holds a
    /// complete generation, else its newest complete backup copy.
    Latest,
    /// The copy of this backup (its name, `dbwarden-<UTC time>.db`).
    Named(String),
    /// A point of the streamed commits (a time or an event id).
    Point(crate::replica::stream::Target),
}

/// A database brought back from a replica, proven, waiting in the staging directory.
#[derive(Debug)]
pub struct FromReplica {
    pub path: PathBuf,
    /// What it is, for the user: the backup copy, or the generation and commit.
    pub what: String,
}

/// The identities a restore or drill of `replica` decrypts with: `identity_file`, or
/// the replica's `age_identity_file`. None are needed for an unencrypted replica.
pub fn identities_for(
    replica: &crate::config::ReplicaSettings,
    identity_file: Option<&Path>,
) -> Result<Vec<age::x25519::Identity>, RestoreError> {
    let path = match (identity_file, &replica.age_identity_file) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(p)) => p.clone(),
        (None, None) if replica.encryption == crate::config::Encryption::None => {
            return Ok(Vec::new())
        }
        (None, None) => {
            return Err(RestoreError::Identity {
                replica: replica.name.clone(),
                reason: "its copies are encrypted: give --identity FILE (an age identity file) or set age_identity_file".into(),
            })
        }
    };
    crate::config::read_identities(&path).map_err(|reason| RestoreError::Identity {
        replica: replica.name.clone(),
        reason,
    })
}

/// Downloads and proves the copy `pick` of the replica named `name` into `stage_dir`;
/// answers the proven file, ready for [`restore`].
pub async fn fetch_from_replica(
    settings: &Settings,
    name: &str,
    pick: &Pick,
    identities: &[age::x25519::Identity],
    stage_dir: &Path,
) -> Result<FromReplica, RestoreError> {
    use crate::replica::{self, catalog::CopyStatus, stream, ReplicaError};
    let replica_settings = settings
        .replicas
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| ReplicaError::UnknownReplica(name.to_string()))?;
    let replica = replica::Replica::open(replica_settings)?;
    let point = match pick {
        Pick::Point(target) => Some(*target),
        Pick::Latest => {
            let streamed = stream::list(&replica).await?;
            streamed
                .iter()
                .any(|g| g.snapshot.is_some())
                .then_some(stream::Target::Latest)
        }
        Pick::Named(_) => None,
    };
    if let Some(target) = point {
        db::create_private_dir(stage_dir).map_err(|source| RestoreError::Io {
            path: stage_dir.to_path_buf(),
            source,
        })?;
        let output = stage_dir.join("streamed.db");
        let restored = stream::restore_point(
            &replica,
            &target,
            identities,
            &stage_dir.join("work"),
            &output,
        )
        .await?;
        let commit = match &restored.commit {
            Some(c) => format!("commit at {} (read {})", c.at, c.seen_at.to_rfc3339()),
            None => "its snapshot".to_string(),
        };
        return Ok(FromReplica {
            path: output,
            what: format!(
                "generation {}, {commit}: last event id {}, {} events",
                restored.generation, restored.last_event_id, restored.event_count
            ),
        });
    }
    let copies = replica::catalog::list(&replica).await?;
    let copy = match pick {
        Pick::Named(backup) => {
            let copy = copies.iter().find(|c| &c.name == backup).ok_or_else(|| {
                ReplicaError::NoSuchCopy {
                    replica: name.to_string(),
                    name: backup.clone(),
                }
            })?;
            if copy.status == CopyStatus::Incomplete {
                return Err(ReplicaError::BadCopy {
                    replica: name.to_string(),
                    name: backup.clone(),
                    reason: copy.problem.clone().unwrap_or_default(),
                }
                .into());
            }
            copy
        }
        _ => copies
            .iter()
            .rev()
            .find(|c| c.status == CopyStatus::Complete)
            .ok_or_else(|| ReplicaError::Empty {
                replica: name.to_string(),
            })?,
    };
    let fetched = replica::fetch::fetch(&replica, copy, identities, stage_dir).await?;
    Ok(FromReplica {
        path: fetched.path,
        what: format!("backup copy {}", copy.name),
    })
}

/// How the file to restore is known to be good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    /// A backup file: checked here (SHA-256 against its manifest, full
    /// `integrity_check`) and copied into place; the file itself stays.
    CheckHere,
    /// Brought back from a replica and proven by [`fetch_from_replica`], waiting in its
    /// staging directory: moved into place (copied only across file systems).
    Fetched,
}

/// What a restore will do (or did).
#[derive(Debug, Clone, serde::Serialize)]
pub struct RestorePlan {
    pub backup: PathBuf,
    pub database: PathBuf,
    /// Where the current database's verified copy goes; `None` when there is no
    /// readable current database.
    pub keep_current_as: Option<PathBuf>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RestoreError + '_ {
    move |source| RestoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The newest good backup in the backup directory.
pub fn latest(settings: &Settings) -> Result<PathBuf, RestoreError> {
    catalog::list(&settings.backup.dir)?
        .into_iter()
        .rev()
        .find(|m| m.status == catalog::BackupStatus::Good)
        .map(|m| settings.backup.dir.join(m.name))
        .ok_or_else(|| RestoreError::NoBackup(settings.backup.dir.clone()))
}

fn current_is_readable(path: &Path) -> bool {
    path.is_file() && db::is_readable_database(path)
}

/// Checks everything and says what would happen, changing nothing.
pub fn plan(
    settings: &Settings,
    backup_file: &Path,
    proof: Proof,
) -> Result<RestorePlan, RestoreError> {
    if proof == Proof::CheckHere {
        check(backup_file)?;
    }
    let database = settings.database.path.clone();
    let keep_current_as = current_is_readable(&database).then(|| {
        let name = database
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        database.with_file_name(format!(
            "{name}.pre-restore-{}.bak",
            Utc::now().format("%Y%m%dT%H%M%SZ")
        ))
    });
    Ok(RestorePlan {
        backup: backup_file.to_path_buf(),
        database,
        keep_current_as,
    })
}

/// A backup file's SHA-256 against its manifest (when it has one) and a full
/// `integrity_check`.
fn check(backup_file: &Path) -> Result<(), RestoreError> {
    let report = backup::verify_file(backup_file)?;
    if !report.is_ok() {
        let reason = if report.matches_manifest == Some(false) {
            "its SHA-256 differs from its manifest".to_string()
        } else {
            format!("integrity_check: {}", report.integrity_problems.join("; "))
        };
        return Err(RestoreError::BadBackup {
            path: backup_file.to_path_buf(),
            reason,
        });
    }
    Ok(())
}

/// Restores `backup_file`, known good as `proof` says. Holds the database lock
/// throughout.
pub fn restore(
    settings: &Settings,
    backup_file: &Path,
    proof: Proof,
) -> Result<RestorePlan, RestoreError> {
    let _lock = lock::acquire(&settings.database.path)?;
    let plan = plan(settings, backup_file, proof)?;
    let db_path = &plan.database;
    let dir = match db_path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    db::create_private_dir(&dir).map_err(io(&dir))?;
    if let Some(keep) = &plan.keep_current_as {
        let current = db::open_reader(&settings.database)?;
        let name = keep
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        verified_copy::write(&current, &dir, &name)?;
    }
    let temp = dir.join(format!(".restore{}", verified_copy::TEMP_SUFFIX));
    let staged = (|| {
        let moved = match proof {
            Proof::CheckHere => false,
            // Fsynced where it was proven: a rename on the same file system keeps that.
            Proof::Fetched => match fs::rename(backup_file, &temp) {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::CrossesDevices => false,
                Err(source) => {
                    return Err(RestoreError::Io {
                        path: temp.clone(),
                        source,
                    })
                }
            },
        };
        if !moved {
            fs::copy(backup_file, &temp).map_err(io(&temp))?;
            durable::sync_file(&temp).map_err(io(&temp))?;
        }
        for suffix in ["-wal", "-shm"] {
            let mut stale = db_path.as_os_str().to_owned();
            stale.push(suffix);
            match fs::remove_file(&stale) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(RestoreError::Io {
                        path: PathBuf::from(stale),
                        source,
                    })
                }
            }
        }
        durable::rename(&temp, db_path).map_err(io(db_path))?;
        durable::sync_dir(&dir).map_err(io(&dir))
    })();
    if staged.is_err() {
        let _ = fs::remove_file(&temp);
    }
    staged?;
    db::open_and_migrate(&settings.database)?;
    tracing::info!(backup = %plan.backup.display(), database = %db_path.display(), "restored");
    Ok(plan)
}

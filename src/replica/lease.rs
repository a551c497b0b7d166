//! One writer per replica: a lease object (`lease.json` under the prefix) names the
//! service that writes there.
//!
//! A service is named by its host and its database path, so a restarted service (even
//! after a SIGKILL) takes its own lease back at once, while a second service pointed at
//! the same prefix finds the lease held and refuses to write there, saying by whom.
//!
//! On object stores the lease is taken with a conditional put (`PutMode::Create`) and
//! renewed with `PutMode::Update` against the ETag (or version) just read, so two
//! services racing for it cannot both win. It is renewed whenever the holder is about to
//! write (before each round of shipping and each drill), which costs no request while
//! nothing happens; a lease not renewed for `lease_expire_secs` (a day by default, well
//! above the backup interval) may be taken over, with a warning, because its holder is
//! gone. A clean stop deletes the service's own lease.
//!
//! `file://` replicas have no conditional update (object_store's local store has none),
//! so there the lease is an exclusive `flock` on `lease.lock`, held while the shipper
//! runs, with `lease.json` beside it saying who holds it. A lock on a network file
//! system is only as good as that file system's locking (NFSv4 and SMB have it).

use std::path::PathBuf;

use chrono::{DateTime, Utc};
use object_store::{ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use serde::{Deserialize, Serialize};

use super::{Replica, ReplicaError};
use crate::config::ReplicaTarget;
use crate::db::lock::DatabaseLock;

/// What `lease.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    /// `<host>:<database path>`: who writes here.
    pub holder: String,
    pub host: String,
    pub database: PathBuf,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
}

/// One replica's lease, shared by its Shipper and its Streamer (whichever writes).
pub type SharedLease = std::sync::Arc<tokio::sync::Mutex<Lease>>;

/// A lease, not taken yet, for each replica of the service of `database`.
pub fn for_replicas(
    replicas: &[crate::config::ReplicaSettings],
    database: &std::path::Path,
) -> Vec<(String, SharedLease)> {
    replicas
        .iter()
        .map(|r| {
            let lease = Lease::new(database);
            (
                r.name.clone(),
                std::sync::Arc::new(tokio::sync::Mutex::new(lease)),
            )
        })
        .collect()
}

/// This service's claim on a replica.
#[derive(Debug)]
pub struct Lease {
    holder: String,
    host: String,
    database: PathBuf,
    acquired_at: Option<DateTime<Utc>>,
    /// `file://` replicas: the lock, held until dropped.
    lock: Option<DatabaseLock>,
}

impl Lease {
    /// A lease not taken yet, for the service of `database` on this host.
    pub fn new(database: &std::path::Path) -> Lease {
        let host = super::host_name();
        Lease {
            holder: format!("{host}:{}", database.display()),
            host,
            database: database.to_path_buf(),
            acquired_at: None,
            lock: None,
        }
    }

    fn record(&self, now: DateTime<Utc>) -> LeaseRecord {
        LeaseRecord {
            holder: self.holder.clone(),
            host: self.host.clone(),
            database: self.database.clone(),
            acquired_at: self.acquired_at.unwrap_or(now),
            renewed_at: now,
        }
    }

    fn body(&self, now: DateTime<Utc>) -> Result<Vec<u8>, ReplicaError> {
        serde_json::to_vec_pretty(&self.record(now)).map_err(|e| ReplicaError::Io {
            path: "lease.json".into(),
            source: std::io::Error::other(e),
        })
    }

    /// Takes or renews the lease before writing to `replica`; `Err(LeaseHeld)` when
    /// another service holds it.
    pub async fn hold(&mut self, replica: &Replica) -> Result<(), ReplicaError> {
        if let ReplicaTarget::File { path } = replica.settings.target() {
            return self.hold_file(replica, path).await;
        }
        // Two rounds: a lost race re-reads once and decides again.
        for _ in 0..2 {
            let now = Utc::now();
            let current = read(replica).await?;
            let mode = match &current {
                None => PutMode::Create,
                Some((record, version)) => {
                    let expired = now - record.renewed_at
                        > chrono::Duration::seconds(replica.settings.lease_expire_secs as i64);
                    if record.holder != self.holder && !expired {
                        return Err(held(replica, record));
                    }
                    if record.holder != self.holder {
                        tracing::warn!(replica = %replica.name(), holder = %record.holder, renewed_at = %record.renewed_at, "taking over a lease its holder has not renewed");
                    } else if self.acquired_at.is_none() {
                        self.acquired_at = Some(record.acquired_at);
                    }
                    PutMode::Update(version.clone())
                }
            };
            if self.acquired_at.is_none() {
                self.acquired_at = Some(now);
            }
            let body = self.body(now)?;
            let put = replica
                .store
                .put_opts(
                    &replica.layout.lease(),
                    PutPayload::from(body),
                    PutOptions::from(mode),
                )
                .await;
            match put {
                Ok(_) => return Ok(()),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => continue,
                Err(e) => return Err(replica.error(e)),
            }
        }
        match read(replica).await? {
            Some((record, _)) if record.holder != self.holder => Err(held(replica, &record)),
            _ => Err(ReplicaError::Open {
                replica: replica.name().to_string(),
                reason: "the lease changed under us twice in a row".into(),
            }),
        }
    }

    async fn hold_file(
        &mut self,
        replica: &Replica,
        dir: &std::path::Path,
    ) -> Result<(), ReplicaError> {
        if self.lock.is_none() {
            let path = dir.join("lease.lock");
            let lock = match crate::db::lock::acquire_file(&path) {
                Ok(lock) => lock,
                Err(crate::db::lock::LockError::Held { .. }) => {
                    return Err(match read(replica).await? {
                        Some((record, _)) => held(replica, &record),
                        None => ReplicaError::LeaseHeld {
                            replica: replica.name().to_string(),
                            holder: "another dbwarden service (no lease.json)".into(),
                            renewed_at: None,
                        },
                    })
                }
                Err(crate::db::lock::LockError::Io { path, source }) => {
                    return Err(ReplicaError::Io { path, source })
                }
            };
            self.lock = Some(lock);
            self.acquired_at = Some(Utc::now());
            let body = self.body(Utc::now())?;
            replica
                .store
                .put(&replica.layout.lease(), PutPayload::from(body))
                .await
                .map_err(|e| replica.error(e))?;
        }
        Ok(())
    }

    /// At a clean stop: deletes the lease if it is still this service's.
    pub async fn release(&mut self, replica: &Replica) {
        if self.acquired_at.is_none() {
            return;
        }
        if let Ok(Some((record, _))) = read(replica).await {
            if record.holder == self.holder {
                if let Err(e) = replica.store.delete(&replica.layout.lease()).await {
                    tracing::debug!(replica = %replica.name(), error = %e, "the lease could not be deleted");
                }
            }
        }
        self.lock = None;
        self.acquired_at = None;
    }
}

fn held(replica: &Replica, record: &LeaseRecord) -> ReplicaError {
    ReplicaError::LeaseHeld {
        replica: replica.name().to_string(),
        holder: record.holder.clone(),
        renewed_at: Some(record.renewed_at),
    }
}

/// The lease as stored, with the version to update it against.
pub async fn read(replica: &Replica) -> Result<Option<(LeaseRecord, UpdateVersion)>, ReplicaError> {
    let got = match replica.store.get(&replica.layout.lease()).await {
        Ok(got) => got,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(replica.error(e)),
    };
    let version = UpdateVersion {
        e_tag: got.meta.e_tag.clone(),
        version: got.meta.version.clone(),
    };
    let bytes = got.bytes().await.map_err(|e| replica.error(e))?;
    let record = serde_json::from_slice(&bytes).map_err(|e| ReplicaError::BadCopy {
        replica: replica.name().to_string(),
        name: "lease.json".into(),
        reason: format!("unreadable: {e}"),
    })?;
    Ok(Some((record, version)))
}

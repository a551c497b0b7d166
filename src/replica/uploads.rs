//! Multipart uploads written down before their first part, so that one cut short by
//! a kill is aborted at the next start instead of leaving its parts on the server.
//!
//! S3, GCS and Azure keep the parts of an unfinished multipart upload (and bill them)
//! until it is completed or aborted, and object_store can neither list such uploads
//! nor abort one without its id. So on those stores a copy goes up through
//! [`TrackedUpload`]: the upload is created with [`MultipartStore::create_multipart`],
//! its id is written to this replica's ledger (`<backup dir>/.replica-uploads-<name>.json`,
//! fsync'd) before any part is sent, and the entry is removed once the upload is
//! completed or aborted. [`abort_abandoned`] aborts whatever a previous process left
//! there. `file://` replicas have no multipart API; their leftovers are staging files,
//! swept by [`super::Replica::remove_abandoned_uploads`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as ObjectPath;
use object_store::{
    MultipartId, MultipartUpload, ObjectStoreExt, PutPayload, PutResult, UploadPart,
};
use serde::{Deserialize, Serialize};

use super::{Replica, ReplicaError};
use crate::db::durable;

/// One upload in flight: the object it writes and its id on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub object: String,
    pub upload_id: String,
}

/// The uploads of one replica that were started and not yet completed or aborted.
#[derive(Debug, Clone)]
pub struct Ledger {
    path: PathBuf,
}

impl Ledger {
    pub fn of(backup_dir: &Path, replica: &str) -> Ledger {
        Ledger {
            path: backup_dir.join(format!(".replica-uploads-{replica}.json")),
        }
    }

    /// What it holds; nothing when the file does not exist.
    pub fn read(&self) -> Result<Vec<Pending>, ReplicaError> {
        match std::fs::read(&self.path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| ReplicaError::Io {
                path: self.path.clone(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(ReplicaError::io(&self.path)(e)),
        }
    }

    /// Replaces what it holds with `pending`, durably (temp file, fsync, rename).
    fn write(&self, pending: &[Pending]) -> Result<(), ReplicaError> {
        let io = ReplicaError::io(&self.path);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if pending.is_empty() {
            return match durable::remove_file(&self.path) {
                Ok(()) => durable::sync_dir(dir).map_err(io),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io(e)),
            };
        }
        let json = serde_json::to_vec_pretty(pending).map_err(|e| ReplicaError::Io {
            path: self.path.clone(),
            source: std::io::Error::other(e),
        })?;
        let temp = self.path.with_extension("json.tmp");
        let written = durable::write_file(&temp, &json, 0o600)
            .and_then(|()| durable::sync_file(&temp))
            .and_then(|()| durable::rename(&temp, &self.path))
            .and_then(|()| durable::sync_dir(dir));
        written.map_err(io)
    }

    /// Adds `entry`. A ledger that cannot be parsed is started afresh (its uploads are
    /// then left to the bucket's lifecycle rule), so a damaged file never stops shipping.
    pub fn add(&self, entry: Pending) -> Result<(), ReplicaError> {
        let mut pending = match self.read() {
            Ok(pending) => pending,
            Err(ReplicaError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::InvalidData =>
            {
                tracing::warn!(ledger = %self.path.display(), error = %source, "the upload ledger is damaged; starting it afresh");
                Vec::new()
            }
            Err(e) => return Err(e),
        };
        pending.push(entry);
        self.write(&pending)
    }

    pub fn remove(&self, upload_id: &str) -> Result<(), ReplicaError> {
        let mut pending = self.read()?;
        pending.retain(|p| p.upload_id != upload_id);
        self.write(&pending)
    }
}

/// Aborts every upload in `replica`'s ledger (left by a process that was killed or
/// lost power mid-upload) and removes it from there. An upload the server no longer
/// knows is done with. Answers how many were aborted. Cleaning up never stops
/// shipping: an abort that fails (the replica is down, or the credentials may not
/// abort) is logged and kept for the next round. Call it only with no upload of this
/// service in flight to that replica (the shipper's thread, before it ships).
pub async fn abort_abandoned(replica: &Replica, ledger: &Ledger) -> usize {
    let Some(multipart) = &replica.multipart else {
        return 0;
    };
    let pending = match ledger.read() {
        Ok(pending) => pending,
        Err(e) => {
            tracing::warn!(replica = %replica.name(), error = %e, "the upload ledger cannot be read; uploads cut short are left to the bucket's lifecycle rule");
            return 0;
        }
    };
    let mut aborted = 0;
    for pending in pending {
        let object = ObjectPath::from(pending.object.as_str());
        let done = match multipart.abort_multipart(&object, &pending.upload_id).await {
            Ok(()) => {
                aborted += 1;
                true
            }
            Err(object_store::Error::NotFound { .. }) => true,
            Err(e) => {
                tracing::warn!(replica = %replica.name(), object = %pending.object, error = %e, "could not abort an upload cut short; trying again next round");
                false
            }
        };
        if done {
            if let Err(e) = ledger.remove(&pending.upload_id) {
                tracing::warn!(replica = %replica.name(), error = %e, "could not update the upload ledger");
            }
        }
    }
    aborted
}

/// A multipart upload through [`MultipartStore`], so that its id is known (and in the
/// ledger) while it runs; used by [`object_store::WriteMultipart`] like the store's own.
pub struct TrackedUpload {
    store: Arc<dyn MultipartStore>,
    object: ObjectPath,
    id: MultipartId,
    ledger: Ledger,
    /// The id of each part sent, by index, filled in as the parts are acknowledged.
    parts: Arc<Mutex<Vec<Option<PartId>>>>,
}

impl std::fmt::Debug for TrackedUpload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TrackedUpload({} id {})", self.object, self.id)
    }
}

/// Starts a multipart upload of `object`: tracked in `ledger` where the replica has a
/// multipart API (S3, GCS, Azure), object_store's own otherwise (`file://`, whose
/// staging files are swept by [`Replica::remove_abandoned_uploads`]).
pub async fn start_upload(
    replica: &Replica,
    object: &ObjectPath,
    ledger: Ledger,
) -> Result<Box<dyn MultipartUpload>, ReplicaError> {
    Ok(match &replica.multipart {
        Some(multipart) => {
            Box::new(TrackedUpload::start(replica, Arc::clone(multipart), object, ledger).await?)
        }
        None => replica
            .store
            .put_multipart(object)
            .await
            .map_err(|e| replica.error(e))?,
    })
}

impl TrackedUpload {
    /// Creates the upload on the server and writes it in `ledger` before anything is sent.
    pub async fn start(
        replica: &Replica,
        store: Arc<dyn MultipartStore>,
        object: &ObjectPath,
        ledger: Ledger,
    ) -> Result<TrackedUpload, ReplicaError> {
        let id = store
            .create_multipart(object)
            .await
            .map_err(|e| replica.error(e))?;
        let entry = Pending {
            object: object.to_string(),
            upload_id: id.clone(),
        };
        // A small file on the shipper's own thread, as `complete` and `abort` update it.
        let recorded = ledger.add(entry);
        if let Err(e) = recorded {
            // Not written down: abort it now rather than risk leaving it behind.
            let _ = store.abort_multipart(object, &id).await;
            return Err(e);
        }
        Ok(TrackedUpload {
            store,
            object: object.clone(),
            id,
            ledger,
            parts: Arc::new(Mutex::new(Vec::new())),
        })
    }

    fn forget(&self) -> object_store::Result<()> {
        self.ledger
            .remove(&self.id)
            .map_err(|e| object_store::Error::Generic {
                store: "upload ledger",
                source: Box::new(e),
            })
    }
}

#[async_trait]
impl MultipartUpload for TrackedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = {
            let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            parts.push(None);
            parts.len() - 1
        };
        let (store, object, id, parts) = (
            Arc::clone(&self.store),
            self.object.clone(),
            self.id.clone(),
            Arc::clone(&self.parts),
        );
        Box::pin(async move {
            let part = store.put_part(&object, &id, index, data).await?;
            parts.lock().unwrap_or_else(|p| p.into_inner())[index] = Some(part);
            Ok(())
        })
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let parts: Option<Vec<PartId>> = self
            .parts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .cloned()
            .collect();
        let parts = parts.ok_or_else(|| object_store::Error::Generic {
            store: "multipart upload",
            source: "completing an upload with a part not acknowledged".into(),
        })?;
        let done = self
            .store
            .complete_multipart(&self.object, &self.id, parts)
            .await?;
        self.forget()?;
        Ok(done)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.store.abort_multipart(&self.object, &self.id).await?;
        self.forget()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_keeps_what_was_added_until_it_is_removed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::of(dir.path(), "s3");
        assert!(ledger.read().expect("read").is_empty(), "no file: nothing");
        let a = Pending {
            object: "p/backups/a.db.zst.age".into(),
            upload_id: "one".into(),
        };
        let b = Pending {
            object: "p/backups/b.db.zst.age".into(),
            upload_id: "two".into(),
        };
        ledger.add(a.clone()).expect("add");
        ledger.add(b.clone()).expect("add");
        assert_eq!(ledger.read().expect("read"), [a.clone(), b.clone()]);
        assert_eq!(
            Ledger::of(dir.path(), "s3").read().expect("read"),
            [a, b.clone()],
            "it is on disk, not in memory"
        );
        assert!(
            Ledger::of(dir.path(), "gcs")
                .read()
                .expect("read")
                .is_empty(),
            "each replica has its own"
        );
        ledger.remove("one").expect("remove");
        assert_eq!(ledger.read().expect("read"), [b]);
        ledger.remove("two").expect("remove");
        assert!(ledger.read().expect("read").is_empty());
        assert!(
            !dir.path().join(".replica-uploads-s3.json").exists(),
            "an empty ledger is no file"
        );
    }

    #[test]
    fn a_damaged_ledger_is_started_afresh_rather_than_stopping_uploads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ledger = Ledger::of(dir.path(), "s3");
        std::fs::write(dir.path().join(".replica-uploads-s3.json"), "{ half").expect("damage");
        assert!(ledger.read().is_err(), "reading says it is damaged");
        let entry = Pending {
            object: "backups/a.db.zst.age".into(),
            upload_id: "one".into(),
        };
        ledger.add(entry.clone()).expect("add");
        assert_eq!(ledger.read().expect("read"), [entry]);
    }
}

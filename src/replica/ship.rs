//! Shipping one verified local backup to one replica.
//!
//! Order: the copy is streamed as a multipart upload (the object appears only once
//! every part is in) → its size is checked with a HEAD → the manifest is written. A
//! copy without a manifest never counts, so a failure or a kill at any point leaves
//! nothing that could be mistaken for a good copy; the next attempt starts over and
//! overwrites the leftover (a copy a drill failed is shipped again the same way: its
//! manifest goes first, its failed verdict last). The source is hashed while it is read and must still match
//! its verified local manifest, or the upload is aborted.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::Utc;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec::{self, Encoded};
use super::manifest::{self, Facts, RemoteManifest};
use super::uploads::{self, Ledger};
use super::{Replica, ReplicaError};
use crate::backup::catalog::Manifest;
use crate::db;

/// Encoded parts waiting for the upload, beyond those in flight.
const QUEUED_PARTS: usize = 2;

/// Paces uploads to `max_bytes_per_second` (0: no limit).
struct Pace {
    limit: u64,
    started: Instant,
    sent: u64,
}

impl Pace {
    async fn before_sending(&mut self, bytes: usize) {
        if self.limit == 0 {
            return;
        }
        let due = Duration::from_secs_f64(self.sent as f64 / self.limit as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        self.sent += bytes as u64;
    }
}

/// What is known of a local backup before it leaves: its manifest and event count.
fn facts_of(dir: &Path, local: &Manifest) -> Result<Facts, ReplicaError> {
    let conn = db::open_file_read_only(&dir.join(&local.name))?;
    let event_count = db::queries::event_count(&conn)?;
    Ok(Facts {
        size_bytes: local.size_bytes,
        sha256: local.sha256.clone(),
        last_event_id: local.last_event_id,
        event_count,
        schema_version: local.schema_version.clone(),
        verified_at: local.verified_at,
    })
}

/// Uploads the backup `local` (a good backup in `dir`) to `replica` and writes its
/// manifest there. Answers the manifest written.
pub async fn ship(
    replica: &Replica,
    dir: &Path,
    local: &Manifest,
    cancel: &CancellationToken,
) -> Result<RemoteManifest, ReplicaError> {
    let settings = &replica.settings;
    let facts = facts_of(dir, local)?;
    let object = replica.layout.copy(&local.name, settings.encryption);
    // Shipping again over a copy a drill failed: it stops counting before its bytes
    // change, and its old verdict goes once the new manifest is there.
    let manifest_location = replica.layout.manifest(&local.name);
    delete_if_there(replica, &manifest_location).await?;
    let upload = uploads::start_upload(replica, &object, Ledger::of(dir, replica.name())).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, settings.part_size_bytes());

    let (parts_tx, mut parts) = mpsc::channel(QUEUED_PARTS);
    let source = dir.join(&local.name);
    let encryption = settings.encryption;
    let recipients = settings.recipients();
    let part_size = settings.part_size_bytes();
    let encoder = tokio::task::spawn_blocking(move || {
        codec::encode(&source, encryption, &recipients, part_size, parts_tx)
    });

    let mut pace = Pace {
        limit: settings.max_bytes_per_second,
        started: Instant::now(),
        sent: 0,
    };
    let streamed: Result<(), ReplicaError> = async {
        loop {
            let part = tokio::select! {
                part = parts.recv() => part,
                () = cancel.cancelled() => return Err(ReplicaError::Cancelled),
            };
            let Some(part) = part else { return Ok(()) };
            pace.before_sending(part.len()).await;
            tokio::select! {
                ready = writer.wait_for_capacity(settings.max_concurrent_uploads) => {
                    ready.map_err(|e| replica.error(e))?
                }
                () = cancel.cancelled() => return Err(ReplicaError::Cancelled),
            }
            writer.put(part);
        }
    }
    .await;
    // Dropping the receiver stops the encoder at its next part.
    drop(parts);
    let encoded = encoder.await.map_err(|e| ReplicaError::Io {
        path: dir.join(&local.name),
        source: std::io::Error::other(e),
    });
    let encoded: Result<Encoded, ReplicaError> = match (streamed, encoded) {
        (Err(e), _) => Err(e),
        (Ok(()), Err(e)) | (Ok(()), Ok(Err(e))) => Err(e),
        (Ok(()), Ok(Ok(encoded))) => {
            if encoded.source.sha256 == local.sha256 {
                Ok(encoded)
            } else {
                Err(ReplicaError::BadCopy {
                    replica: settings.name.clone(),
                    name: local.name.clone(),
                    reason: format!(
                        "the local backup changed since it was verified (SHA-256 {} read, {} in its manifest): not shipped",
                        encoded.source.sha256, local.sha256
                    ),
                })
            }
        }
    };
    let encoded = match encoded {
        Ok(encoded) => encoded,
        Err(e) => {
            if let Err(abort) = writer.abort().await {
                tracing::debug!(replica = %settings.name, error = %abort, "aborting the multipart upload failed");
            }
            return Err(e);
        }
    };
    tokio::select! {
        done = writer.finish() => { done.map_err(|e| replica.error(e))?; }
        () = cancel.cancelled() => return Err(ReplicaError::Cancelled),
    }
    let stored = replica
        .store
        .head(&object)
        .await
        .map_err(|e| replica.error(e))?;
    if stored.size != encoded.stored.bytes {
        return Err(ReplicaError::BadCopy {
            replica: settings.name.clone(),
            name: local.name.clone(),
            reason: format!(
                "the replica holds {} bytes of the {} sent",
                stored.size, encoded.stored.bytes
            ),
        });
    }
    let remote = RemoteManifest {
        format: manifest::FORMAT,
        name: local.name.clone(),
        encryption,
        compression: "zstd".into(),
        object_bytes: encoded.stored.bytes,
        object_sha256: encoded.stored.sha256,
        created_at: local.created_at,
        uploaded_at: Utc::now(),
        host: super::host_name(),
        facts: manifest::seal(&facts, encryption, &settings.recipients())?,
    };
    let json =
        serde_json::to_vec_pretty(&remote).map_err(|e| ReplicaError::Encrypt(e.to_string()))?;
    replica
        .store
        .put(&manifest_location, PutPayload::from(json))
        .await
        .map_err(|e| replica.error(e))?;
    delete_if_there(replica, &replica.layout.drill(&local.name)).await?;
    tracing::info!(
        replica = %settings.name,
        backup = %local.name,
        bytes = remote.object_bytes,
        "copy shipped and its manifest written"
    );
    Ok(remote)
}

async fn delete_if_there(
    replica: &Replica,
    location: &object_store::path::Path,
) -> Result<(), ReplicaError> {
    match replica.store.delete(location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(replica.error(e)),
    }
}

//! Bringing a copy back: download, decrypt, decompress, and prove it.
//!
//! Restores and drills share this. The stored bytes are hashed as they arrive and must
//! match the manifest; the database that comes out must match the sealed facts
//! (size, SHA-256, last event id, event count) and pass a full `integrity_check`.
//! Until all of that holds, the file has a temporary name.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::ObjectStoreExt;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::catalog::RemoteCopy;
use super::codec::{self, PartReader, Written};
use super::manifest::{Facts, RemoteManifest};
use super::{Replica, ReplicaError};
use crate::db::{self, durable, integrity, verified_copy::TEMP_SUFFIX};

/// Parts downloaded ahead of the decoder.
const QUEUED_PARTS: usize = 4;

/// A copy brought back and proven.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub path: PathBuf,
    pub manifest: RemoteManifest,
    pub facts: Facts,
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    bytes: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Sends a download's bytes to the decoder on `parts`, hashing every stored byte,
/// even after the decoder stopped reading (a decoder that fails early must not make a
/// short object look whole). Answers the stored size and SHA-256, or the download's
/// error (the decoder is told it failed).
pub(super) async fn send_stored(
    replica: &Replica,
    got: object_store::GetResult,
    parts: mpsc::Sender<io::Result<bytes::Bytes>>,
) -> Result<Written, ReplicaError> {
    let mut stream = got.into_stream();
    let mut hasher = Sha256::new();
    let mut bytes = 0u64;
    let mut decoder_gone = false;
    while let Some(part) = stream.next().await {
        match part {
            Ok(part) => {
                hasher.update(&part);
                bytes += part.len() as u64;
                if !decoder_gone && parts.send(Ok(part)).await.is_err() {
                    decoder_gone = true;
                }
            }
            Err(e) => {
                let _ = parts
                    .send(Err(io::Error::other("the download failed")))
                    .await;
                return Err(replica.error(e));
            }
        }
    }
    Ok(Written {
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Downloads `copy` into `dir/<name>` and proves it (see the module docs). The file is
/// there only if everything matched; on any failure nothing is left in `dir`.
pub async fn fetch(
    replica: &Replica,
    copy: &RemoteCopy,
    identities: &[age::x25519::Identity],
    dir: &Path,
) -> Result<Fetched, ReplicaError> {
    let bad = |reason: String| ReplicaError::BadCopy {
        replica: replica.name().to_string(),
        name: copy.name.clone(),
        reason,
    };
    let manifest = copy
        .manifest
        .clone()
        .ok_or_else(|| bad(copy.problem.clone().unwrap_or_else(|| "no manifest".into())))?;
    let facts = manifest.open_facts(identities)?;
    db::create_private_dir(dir).map_err(ReplicaError::io(dir))?;
    let final_path = dir.join(&copy.name);
    let temp = dir.join(format!("{}{TEMP_SUFFIX}", copy.name));
    let result = fetch_into(replica, &manifest, &facts, identities, &temp, &bad).await;
    let result = result.and_then(|()| {
        durable::rename(&temp, &final_path).map_err(ReplicaError::io(&final_path))?;
        durable::sync_dir(dir).map_err(ReplicaError::io(dir))
    });
    if let Err(e) = result {
        let _ = std::fs::remove_file(&temp);
        return Err(e);
    }
    Ok(Fetched {
        path: final_path,
        manifest,
        facts,
    })
}

async fn fetch_into(
    replica: &Replica,
    manifest: &RemoteManifest,
    facts: &Facts,
    identities: &[age::x25519::Identity],
    temp: &Path,
    bad: &dyn Fn(String) -> ReplicaError,
) -> Result<(), ReplicaError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(temp)
        .map_err(ReplicaError::io(temp))?;
    let object = replica.layout.copy(&manifest.name, manifest.encryption);
    let got = replica
        .store
        .get(&object)
        .await
        .map_err(|e| replica.error(e))?;
    let (parts_tx, parts_rx) = mpsc::channel(QUEUED_PARTS);
    let encryption = manifest.encryption;
    let identities = identities.to_vec();
    let decoder = tokio::task::spawn_blocking(move || {
        let mut out = HashingWriter {
            inner: BufWriter::with_capacity(1 << 20, file),
            hasher: Sha256::new(),
            bytes: 0,
        };
        codec::decode(PartReader::new(parts_rx), encryption, &identities, &mut out)?;
        out.flush()
            .map_err(|e| ReplicaError::Decrypt(e.to_string()))?;
        let file = out
            .inner
            .into_inner()
            .map_err(|e| ReplicaError::Decrypt(e.to_string()))?;
        Ok::<_, ReplicaError>((out.bytes, hex::encode(out.hasher.finalize()), file))
    });
    let stored = send_stored(replica, got, parts_tx).await;
    let decoded = decoder.await.map_err(|e| ReplicaError::Io {
        path: temp.to_path_buf(),
        source: io::Error::other(e),
    })?;
    let Written {
        bytes: stored_bytes,
        sha256: stored_sha256,
    } = stored?;
    if stored_bytes != manifest.object_bytes || stored_sha256 != manifest.object_sha256 {
        return Err(bad(format!(
            "the stored object differs from its manifest ({stored_bytes} bytes, SHA-256 {stored_sha256}; the manifest says {} bytes, {})",
            manifest.object_bytes, manifest.object_sha256
        )));
    }
    let (size, sha256, file) = decoded.map_err(|e| bad(format!("{e}")))?;
    if size != facts.size_bytes || sha256 != facts.sha256 {
        return Err(bad(format!(
            "the database differs from the one shipped ({size} bytes, SHA-256 {sha256}; shipped {} bytes, {})",
            facts.size_bytes, facts.sha256
        )));
    }
    // The fsync (disk-bound) and the integrity check (CPU-bound, reading the same
    // bytes from the page cache) run side by side; the file is renamed only after both.
    let syncing = tokio::task::spawn_blocking(move || file.sync_all());
    let temp_owned = temp.to_path_buf();
    let checked = tokio::task::spawn_blocking(move || -> Result<(i64, i64), db::DbError> {
        integrity::verify_file(&temp_owned)?;
        let conn = db::open_file_read_only(&temp_owned)?;
        Ok((
            db::queries::max_event_id(&conn)?,
            db::queries::event_count(&conn)?,
        ))
    })
    .await
    .map_err(|e| ReplicaError::Io {
        path: temp.to_path_buf(),
        source: io::Error::other(e),
    })?;
    syncing
        .await
        .map_err(io::Error::other)
        .and_then(|synced| synced)
        .map_err(ReplicaError::io(temp))?;
    let (last_event_id, event_count) = checked.map_err(|e| bad(e.to_string()))?;
    if last_event_id != facts.last_event_id || event_count != facts.event_count {
        return Err(bad(format!(
            "it holds {event_count} events up to id {last_event_id}; its manifest says {} up to {}",
            facts.event_count, facts.last_event_id
        )));
    }
    Ok(())
}

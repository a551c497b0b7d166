//! What a replica holds, read from its listing and manifests alone (no identity
//! needed), so a new machine with only the settings can see it.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use object_store::ObjectStoreExt;
use serde::{Deserialize, Serialize};

use super::layout::ObjectKind;
use super::manifest::RemoteManifest;
use super::{Replica, ReplicaError};
use crate::backup::catalog as local_catalog;

/// The verdict of the last restore drill of a copy (`<name>.drill.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrillRecord {
    pub at: DateTime<Utc>,
    pub ok: bool,
    /// Why it failed; what was compared when it passed.
    pub detail: String,
    pub host: String,
}

/// How a copy stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CopyStatus {
    /// The object and its manifest are there, the sizes agree, no drill failed it.
    Complete,
    /// A restore drill failed it: never counted, never deleted by retention.
    Bad,
    /// The object without a manifest (an upload that did not finish), or a manifest
    /// whose object is missing or of the wrong size.
    Incomplete,
}

/// One copy on a replica, as its objects show it.
#[derive(Debug, Clone, Serialize)]
pub struct RemoteCopy {
    pub name: String,
    pub created_at: DateTime<Utc>,
    pub status: CopyStatus,
    /// Size of the stored object, when there is one.
    pub object_bytes: Option<u64>,
    pub manifest: Option<RemoteManifest>,
    pub drill: Option<DrillRecord>,
    /// What is wrong with an incomplete copy.
    pub problem: Option<String>,
}

#[derive(Default)]
struct Objects {
    copy: Option<u64>,
    manifest: bool,
    drill: bool,
}

/// Every copy on the replica, oldest first. Objects that are not dbwarden's are ignored.
pub async fn list(replica: &Replica) -> Result<Vec<RemoteCopy>, ReplicaError> {
    let prefix = replica.layout.backups();
    let listed: Vec<object_store::ObjectMeta> = replica
        .store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| replica.error(e))?;
    let mut by_name: std::collections::BTreeMap<String, Objects> = Default::default();
    for meta in listed {
        let Some((name, kind)) = replica.layout.parse(&meta.location) else {
            continue;
        };
        let entry = by_name.entry(name).or_default();
        match kind {
            ObjectKind::Copy(encryption) if encryption == replica.settings.encryption => {
                entry.copy = Some(meta.size)
            }
            // A copy in the other format: left over from before the setting changed.
            ObjectKind::Copy(_) => {}
            ObjectKind::Manifest => entry.manifest = true,
            ObjectKind::Drill => entry.drill = true,
        }
    }
    let mut copies = Vec::with_capacity(by_name.len());
    for (name, objects) in by_name {
        copies.push(describe(replica, name, objects).await?);
    }
    copies.sort_by(|a, b| (a.created_at, &a.name).cmp(&(b.created_at, &b.name)));
    Ok(copies)
}

async fn read_json<T: serde::de::DeserializeOwned>(
    replica: &Replica,
    location: &object_store::path::Path,
) -> Result<Option<T>, ReplicaError> {
    let bytes = match replica.store.get(location).await {
        Ok(got) => got.bytes().await.map_err(|e| replica.error(e))?,
        // Deleted between the listing and now (retention of another run, a person).
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(replica.error(e)),
    };
    Ok(serde_json::from_slice(&bytes).ok())
}

async fn describe(
    replica: &Replica,
    name: String,
    objects: Objects,
) -> Result<RemoteCopy, ReplicaError> {
    let manifest: Option<RemoteManifest> = if objects.manifest {
        read_json(replica, &replica.layout.manifest(&name)).await?
    } else {
        None
    };
    // The manifest has the backup's exact time; the name only its second.
    let created_at = manifest
        .as_ref()
        .map(|m| m.created_at)
        .or_else(|| local_catalog::time_of_name(&name))
        .unwrap_or_default();
    let drill: Option<DrillRecord> = if objects.drill {
        read_json(replica, &replica.layout.drill(&name)).await?
    } else {
        None
    };
    let problem = match (&manifest, objects.copy) {
        (None, _) if objects.manifest => Some("its manifest is unreadable".to_string()),
        (None, Some(_)) => Some("no manifest: the upload did not finish".to_string()),
        (None, None) => Some("neither the copy nor its manifest".to_string()),
        (Some(_), None) => Some("the manifest's copy is missing".to_string()),
        (Some(m), Some(size)) if m.object_bytes != size => Some(format!(
            "the copy holds {size} bytes, its manifest says {}",
            m.object_bytes
        )),
        (Some(m), Some(_)) if m.name != name => Some(format!("the manifest names {}", m.name)),
        (Some(_), Some(_)) => None,
    };
    let status = match (&problem, &drill) {
        (Some(_), _) => CopyStatus::Incomplete,
        (None, Some(d)) if !d.ok => CopyStatus::Bad,
        (None, _) => CopyStatus::Complete,
    };
    Ok(RemoteCopy {
        name,
        created_at,
        status,
        object_bytes: objects.copy,
        manifest,
        drill,
        problem,
    })
}

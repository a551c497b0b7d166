//! Retention on a replica: the local rules (keep-last, daily, weekly), with the
//! replica's own numbers, counting only complete copies.
//!
//! The newest complete copy is never deleted; copies a drill failed are kept (they are
//! evidence, and may still be partly recoverable); objects that are not dbwarden's are
//! never touched. An upload that never got its manifest is deleted only once a newer
//! complete copy exists (until then it may be the upload in progress).

use object_store::ObjectStoreExt;

use super::catalog::{CopyStatus, RemoteCopy};
use super::{Replica, ReplicaError};
use crate::backup::retention::{self, Candidate, Policy};
use crate::config::Encryption;

/// What a pass deleted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Pruned {
    pub copies: Vec<String>,
    pub leftovers: Vec<String>,
}

/// Applies the replica's retention to `copies` (as [`super::catalog::list`] read them).
pub async fn prune(replica: &Replica, copies: &[RemoteCopy]) -> Result<Pruned, ReplicaError> {
    let settings = &replica.settings;
    let policy = Policy {
        keep_last: settings.keep_last,
        keep_daily: settings.keep_daily,
        keep_weekly: settings.keep_weekly,
    };
    let candidates: Vec<Candidate> = copies
        .iter()
        .filter(|c| c.status != CopyStatus::Incomplete)
        .map(|c| Candidate {
            name: c.name.clone(),
            created_at: c.created_at,
            good: c.status == CopyStatus::Complete,
        })
        .collect();
    let mut pruned = Pruned {
        copies: retention::to_delete(&candidates, policy)
            .into_iter()
            .collect(),
        leftovers: Vec::new(),
    };
    if let Some(newest) = copies
        .iter()
        .filter(|c| c.status == CopyStatus::Complete)
        .map(|c| c.created_at)
        .max()
    {
        pruned.leftovers = copies
            .iter()
            .filter(|c| c.status == CopyStatus::Incomplete && c.created_at < newest)
            .map(|c| c.name.clone())
            .collect();
    }
    for name in pruned.copies.iter().chain(&pruned.leftovers) {
        delete_copy(replica, name).await?;
    }
    if !pruned.copies.is_empty() || !pruned.leftovers.is_empty() {
        tracing::info!(replica = %settings.name, deleted = ?pruned.copies, leftovers = ?pruned.leftovers, "replica retention");
    }
    Ok(pruned)
}

/// Deletes a copy's objects, manifest first: a copy is never seen complete with part
/// of it gone.
async fn delete_copy(replica: &Replica, name: &str) -> Result<(), ReplicaError> {
    let layout = &replica.layout;
    for location in [
        layout.manifest(name),
        layout.copy(name, Encryption::Age),
        layout.copy(name, Encryption::None),
        layout.drill(name),
    ] {
        match replica.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(replica.error(e)),
        }
    }
    Ok(())
}

//! What the DbWriter tells continuous replication, as a trait the writer owns so that
//! the writer does not depend on the replicas' layer above it
//! (`crate::replica::replicator::ReplicationLink` implements it).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::db::CheckpointMode;

/// Why a group commit was not acknowledged: the replica and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotAcknowledged {
    pub replica: String,
    pub reason: String,
}

/// A wait for a commit's acknowledgement by the replicas that give one.
pub type Acknowledgement = Pin<Box<dyn Future<Output = Result<(), NotAcknowledged>>>>;

pub trait Replication: Send {
    /// Something was committed: never blocks.
    fn committed(&self);
    /// Blocks, at most `wait`, until every frame committed so far is read, and, when
    /// `mode` resets the WAL, replication no longer holds it. Answers whether it did.
    fn before_checkpoint(&self, mode: CheckpointMode, wait: Duration) -> bool;
    /// Blocks, at most `wait`, until replication holds nothing of what the checkpoint
    /// copied back. Answers whether it did.
    fn after_checkpoint(&self, wait: Duration) -> bool;
    /// For a group commit just made, in which `requests` writes wait for it: `None`
    /// when it is acknowledged on its local commit, else the wait for the replicas
    /// that acknowledge writes.
    fn acknowledgement(&self, requests: usize) -> Option<Acknowledgement>;
}

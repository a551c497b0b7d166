//! Acknowledgements that survive the machine: with `ack_writes = true` on a replica,
//! the DbWriter answers a group commit only once that commit is in the replica.
//!
//! Commits are counted: the DbWriter numbers each group commit it makes
//! ([`AckGate::committed`]). A tailer pass first reads that number and then pins the
//! database, so every commit counted by then is in the pass's segment; the segment
//! *covers* it. A replica holds commit `n` once it holds a segment (or a snapshot)
//! covering `n`, or holds everything spooled by a pass that covered `n`
//! ([`super::spool::Spool::acknowledged`]). A waiting commit is answered when every
//! `ack_writes` replica holds it; while one of them is failing its uploads, or after
//! its `ack_timeout_ms`, the commit is answered with
//! [`WriteError::NotReplicated`](crate::writer::WriteError::NotReplicated) (HTTP 503
//! with `Retry-After`): it is committed locally and will be shipped, but it is not
//! acknowledged, so a client retries it (with its events' `id`s, the retry writes
//! nothing twice). `ack_fallback_local` answers on the local commit instead after the
//! timeout.
//!
//! An `ack_writes` replica's streamer uploads as soon as something is spooled (no sync
//! interval), one upload at a time: commits made during an upload share the next one,
//! so a group of writers pays one upload per group, not one per write.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use super::spool::Spool;

/// One `ack_writes` replica.
#[derive(Debug)]
struct Acking {
    name: String,
    timeout: Duration,
    fallback_local: bool,
    /// Set while its uploads fail (cleared by the next one that succeeds).
    failing: AtomicBool,
}

pub use crate::writer::replication::NotAcknowledged;

#[derive(Debug)]
pub struct AckGate {
    committed: AtomicU64,
    acking: Vec<Acking>,
    spool: Arc<Mutex<Spool>>,
    /// Changes whenever a replica's holdings may have grown (a pass, an upload).
    progress: watch::Sender<u64>,
    /// Commits answered on the local commit alone after a timeout.
    pub fell_back: AtomicU64,
    /// Commits refused because a replica did not take them.
    pub refused: AtomicU64,
}

impl AckGate {
    /// `replicas`: (name, ack_timeout, ack_fallback_local) of each `ack_writes` replica.
    pub fn new(replicas: Vec<(String, Duration, bool)>, spool: Arc<Mutex<Spool>>) -> AckGate {
        AckGate {
            committed: AtomicU64::new(0),
            acking: replicas
                .into_iter()
                .map(|(name, timeout, fallback_local)| Acking {
                    name,
                    timeout,
                    fallback_local,
                    failing: AtomicBool::new(false),
                })
                .collect(),
            spool,
            progress: watch::channel(0).0,
            fell_back: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Whether any replica acknowledges writes (else the DbWriter answers at once).
    pub fn is_active(&self) -> bool {
        !self.acking.is_empty()
    }

    pub fn acknowledges(&self, replica: &str) -> bool {
        self.acking.iter().any(|a| a.name == replica)
    }

    /// The DbWriter committed a group: its number, to wait for.
    pub fn committed(&self) -> u64 {
        self.committed.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Read by a tailer pass before it pins: every commit up to this is in the pass.
    pub fn committed_so_far(&self) -> u64 {
        self.committed.load(Ordering::Acquire)
    }

    /// Something may now be held that was not: wake the waiters.
    pub fn progressed(&self) {
        self.progress.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn set_failing(&self, replica: &str, failing: bool) {
        if let Some(a) = self.acking.iter().find(|a| a.name == replica) {
            a.failing.store(failing, Ordering::Release);
        }
        self.progressed();
    }

    /// The `ack_writes` replicas whose uploads are failing now, for health.
    pub fn failing(&self) -> Vec<String> {
        self.acking
            .iter()
            .filter(|a| a.failing.load(Ordering::Acquire))
            .map(|a| a.name.clone())
            .collect()
    }

    /// Waits until every `ack_writes` replica holds commit `n`. `Ok(false)`: held by
    /// all; `Ok(true)`: answered on the local commit after a timeout (fallback).
    pub async fn wait(&self, n: u64) -> Result<bool, NotAcknowledged> {
        let mut progress = self.progress.subscribe();
        let started = tokio::time::Instant::now();
        loop {
            let missing = self.missing(n);
            let Some(acking) = missing else {
                return Ok(false);
            };
            if acking.failing.load(Ordering::Acquire) && !acking.fallback_local {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return Err(NotAcknowledged {
                    replica: acking.name.clone(),
                    reason: "its uploads are failing".into(),
                });
            }
            let deadline = started + acking.timeout;
            tokio::select! {
                changed = progress.changed() => {
                    if changed.is_err() {
                        return Err(NotAcknowledged {
                            replica: acking.name.clone(),
                            reason: "replication stopped".into(),
                        });
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    if self.missing(n).is_none() {
                        return Ok(false);
                    }
                    if acking.fallback_local {
                        self.fell_back.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(replica = %acking.name, "a write was acknowledged on its local commit alone: the replica did not take it in time (ack_fallback_local)");
                        return Ok(true);
                    }
                    self.refused.fetch_add(1, Ordering::Relaxed);
                    return Err(NotAcknowledged {
                        replica: acking.name.clone(),
                        reason: format!("it did not take the commit within {} ms", acking.timeout.as_millis()),
                    });
                }
            }
        }
    }

    /// The first `ack_writes` replica that does not hold commit `n` yet.
    fn missing(&self, n: u64) -> Option<&Acking> {
        match self.spool.lock() {
            Ok(spool) => self.acking.iter().find(|a| spool.acknowledged(&a.name) < n),
            // Nothing can be known to be held: never a false acknowledgement.
            Err(_) => self.acking.first(),
        }
    }
}

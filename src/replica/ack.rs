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
//! so a group of writers pays one upload per group, not one per write. They share one
//! tailer pass too: while every such replica is uploading, a commit does not make the
//! tailer pass at once ([`AckGate::all_uploading`]); each streamer asks for a pass as
//! its upload ends, which spools every commit made meanwhile as one piece, uploaded
//! alone (no join of several pieces to read first). Under load that is one piece
//! file, and one pass's fsyncs, per upload instead of per group commit. Before that
//! pass the streamer waits a moment for the writers the upload just answered to come
//! back with their next writes ([`AckGate::until_waiting`], at most half the upload's
//! time and [`GATHER_LIMIT`]), so that writers in a loop share one upload instead of
//! alternating between two.
//!
//! [`GATHER_LIMIT`]: super::streamer::GATHER_LIMIT

use std::collections::BTreeMap;
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
    /// Set while its streamer uploads: it asks for a pass when the upload ends.
    uploading: AtomicBool,
}

pub use crate::writer::replication::NotAcknowledged;

/// Counts a group's writes as waiting for as long as it lives.
#[derive(Debug)]
pub struct Waiting {
    gate: Arc<AckGate>,
    group: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.gate.waiting.send_modify(|groups| {
            groups.remove(&self.group);
        });
    }
}

#[derive(Debug)]
pub struct AckGate {
    committed: AtomicU64,
    acking: Vec<Acking>,
    spool: Arc<Mutex<Spool>>,
    /// Changes whenever a replica's holdings may have grown (a pass, an upload).
    progress: watch::Sender<u64>,
    /// The groups waiting for their acknowledgement now: number → writes in it. A
    /// watch, so a streamer can wait for them to be many.
    waiting: watch::Sender<BTreeMap<u64, usize>>,
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
                    uploading: AtomicBool::new(false),
                })
                .collect(),
            spool,
            progress: watch::channel(0).0,
            waiting: watch::channel(BTreeMap::new()).0,
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

    /// The DbWriter committed a group in which `requests` writes wait: its number, to
    /// wait for, and what counts them as waiting until it is dropped.
    pub fn committed(self: &Arc<Self>, requests: usize) -> (u64, Waiting) {
        let mut n = 0;
        self.waiting.send_modify(|groups| {
            // Numbered under the watch's lock, so groups enter it in order.
            n = self.committed.fetch_add(1, Ordering::AcqRel) + 1;
            groups.insert(n, requests);
        });
        (
            n,
            Waiting {
                gate: self.clone(),
                group: n,
            },
        )
    }

    /// How many writes wait for their acknowledgement now.
    pub fn waiting(&self) -> usize {
        self.waiting.borrow().values().sum()
    }

    /// Returns once at least `writes` writes wait in groups some `ack_writes` replica
    /// does not hold yet (writes already held but not yet answered do not count):
    /// `true`; or after `within`: `false`.
    pub async fn until_waiting(&self, writes: usize, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        let mut waiting = self.waiting.subscribe();
        loop {
            // The spool's lock is not taken under the watch's, which the DbWriter
            // takes at every group commit.
            let held = self.held_by_all();
            let unheld: usize = waiting
                .borrow_and_update()
                .range(held + 1..)
                .map(|(_, w)| w)
                .sum();
            if unheld >= writes {
                return true;
            }
            tokio::select! {
                changed = waiting.changed() => if changed.is_err() { return false },
                () = tokio::time::sleep_until(deadline) => return false,
            }
        }
    }

    /// The last group every `ack_writes` replica holds.
    fn held_by_all(&self) -> u64 {
        match self.spool.lock() {
            Ok(spool) => self
                .acking
                .iter()
                .map(|a| spool.acknowledged(&a.name))
                .min()
                .unwrap_or(0),
            Err(_) => 0,
        }
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

    /// Marks `replica`'s streamer as uploading or not. A streamer that clears it asks
    /// the tailer for a pass next, so a commit the tailer left for that pass is read.
    pub(super) fn set_uploading(&self, replica: &str, uploading: bool) {
        if let Some(a) = self.acking.iter().find(|a| a.name == replica) {
            a.uploading.store(uploading, Ordering::SeqCst);
        }
    }

    /// Whether every `ack_writes` replica is uploading now: a commit then waits for the
    /// pass the first of them asks for when its upload ends, which no earlier pass
    /// would let it skip (it could go up only in the upload after that one).
    pub fn all_uploading(&self) -> bool {
        self.is_active()
            && self
                .acking
                .iter()
                .all(|a| a.uploading.load(Ordering::SeqCst))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::tailer::tests::{database, insert, tailer};
    use crate::replica::tailer::Pass;
    use chrono::Utc;

    /// The wait after an upload counts only writes whose groups the replica does not
    /// hold yet, and ends as soon as a new group makes them enough.
    #[tokio::test]
    async fn the_wait_for_writers_counts_only_groups_not_yet_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, conn) = database(dir.path());
        let mut spool =
            Spool::load(&dir.path().join("spool"), &["nas".to_string()]).expect("spool");
        let (mut tailer, info) = tailer(dir.path(), &db);
        spool.begin(tailer.dir(), info.clone(), 0);
        spool
            .record("nas", &info.generation, |s| s.snapshot = true)
            .expect("snapshot recorded");
        let spool = Arc::new(Mutex::new(spool));
        let gate = Arc::new(AckGate::new(
            vec![("nas".to_string(), Duration::from_secs(10), false)],
            spool.clone(),
        ));
        let mut pass = |covers: u64| {
            insert(&conn, 2);
            match tailer.pass(Utc::now()).expect("pass") {
                Pass::Spooled { header, path } => {
                    let last = header.last();
                    spool.lock().expect("spool").add(header, path, covers);
                    last
                }
                other => panic!("expected a piece, got {other:?}"),
            }
        };
        // Group 1 (3 writes) is uploaded; group 2 (2 writes) is spooled, not uploaded.
        let (one, _first) = gate.committed(3);
        let through = pass(one);
        let (two, _second) = gate.committed(2);
        pass(two);
        spool
            .lock()
            .expect("spool")
            .record("nas", &info.generation, |s| s.through = through)
            .expect("upload recorded");
        assert_eq!(gate.held_by_all(), one);
        assert_eq!(gate.waiting(), 5, "held or not, all five still wait");
        assert!(
            !gate.until_waiting(3, Duration::from_millis(50)).await,
            "2 writes wait in a group not held: not 3"
        );
        assert!(gate.until_waiting(2, Duration::from_millis(50)).await);
        let later = {
            let gate = gate.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(10)).await;
                gate.committed(1)
            })
        };
        assert!(
            gate.until_waiting(3, Duration::from_secs(5)).await,
            "a third write, in a new group, ends the wait"
        );
        let (_, third) = later.await.expect("task");
        drop(third);
        assert_eq!(gate.waiting(), 5, "an answered group no longer waits");
    }
}

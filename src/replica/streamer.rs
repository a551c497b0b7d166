//! The Streamer: one per streaming replica, on its own thread with its own runtime
//! (like the [Shipper](super::shipper)), uploading what the tailer spooled, in order:
//! each generation's snapshot, then its segments.
//!
//! **One upload per sync interval.** After an upload the streamer waits out the
//! replica's `sync_interval_ms`; the pieces spooled meanwhile (one per tailer pass)
//! are then merged into one segment and sent with one PUT. While nothing is spooled it
//! sends nothing: an idle database costs no request (the lease is renewed only before
//! an upload, and at most every quarter of `lease_expire_secs`).
//!
//! **Failures only delay.** A failed upload is retried (1 s doubling to 1 min); the
//! spool keeps everything until the replica has it, and it catches up in order, a
//! merged segment per interval. Nothing here can block the writer or the tailer.
//!
//! **Stop.** At a stop the streamer first drains: it uploads what is spooled, without
//! waiting out the interval, until everything is there or the drain's time is up; then
//! an upload still in flight is cancelled (a multipart upload is aborted) and what is
//! left waits in the spool for the next start.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::ack::AckGate;
use super::lease::SharedLease;
use super::replicator::TailerNudge;
use super::segment;
use super::shipper::ReplicaBoard;
use super::spool::{Piece, Shipped, Spool, Work};
use super::uploads::{self, Ledger};
use super::{stream, Replica, ReplicaError};

const FIRST_RETRY: Duration = Duration::from_secs(1);
const LONGEST_RETRY: Duration = Duration::from_secs(60);
/// Compaction merges segments into ones of at most this many bytes of frames (merging
/// streams them, one frame at a time, so this bounds an object's size, not memory).
pub(super) const MERGE_LIMIT_BYTES: u64 = 64 << 20;
/// The pieces of one upload add up to at most this many bytes of frames: at one upload
/// per interval, the most a replica ships per interval, so well above what a busy
/// writer appends in a second (~105 MB at ~1,900 commits/s in BENCHMARKS.md). A replica
/// further behind catches up in several uploads.
const UPLOAD_LIMIT_BYTES: u64 = 512 << 20;
/// The longest an `ack_writes` replica waits after an upload for the writers it
/// answered to write again ([`Streamer::gather`]), however long the upload took.
pub const GATHER_LIMIT: Duration = Duration::from_millis(100);

pub struct Streamer {
    pub replica: Replica,
    pub lease: SharedLease,
    pub spool: Arc<Mutex<Spool>>,
    pub board: Arc<ReplicaBoard>,
    pub interval: Duration,
    /// How often what was shipped is [compacted](super::compaction).
    pub compact_every: Duration,
    /// Writes waiting for this replica, when it has `ack_writes`.
    pub gate: Arc<AckGate>,
    /// Asks the tailer for a pass right before a paced upload, and right after each
    /// upload of a replica acknowledging writes.
    pub tailer: TailerNudge,
    /// Cancelled when the stop begins: drain, then end.
    pub drain: CancellationToken,
    /// Cancelled when the drain's time is up: end now.
    pub cancel: CancellationToken,
}

impl Streamer {
    pub async fn run(self, mut spooled: watch::Receiver<u64>) {
        let name = self.replica.name().to_string();
        let ledger = Ledger::of(self.spool_root().as_path(), &name);
        let aborted = uploads::abort_abandoned(&self.replica, &ledger).await;
        if aborted > 0 {
            tracing::info!(replica = %name, aborted, "aborted stream uploads a previous run left unfinished");
        }
        let mut last_upload: Option<Instant> = None;
        let mut lease_held: Option<Instant> = None;
        let mut retry = FIRST_RETRY;
        let mut next_compaction = Instant::now() + self.compact_every;
        loop {
            let draining = self.drain.is_cancelled();
            if !draining && Instant::now() >= next_compaction {
                let compacted = tokio::select! {
                    () = self.cancel.cancelled() => break,
                    compacted = self.compact(&ledger, &mut lease_held) => compacted,
                };
                if let Err(e) = compacted {
                    tracing::warn!(replica = %name, error = %e, "compaction failed; trying again at the next interval");
                }
                next_compaction = Instant::now() + self.compact_every;
            }
            if self.next_work().is_none() {
                if draining {
                    break;
                }
                let compaction_waits = self.has_uncompacted();
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    () = self.drain.cancelled() => {}
                    changed = spooled.changed() => if changed.is_err() { break },
                    () = tokio::time::sleep_until(next_compaction), if compaction_waits => {}
                }
                continue;
            }
            // A replica that acknowledges writes takes them at once: writers wait.
            let paced = !draining && !self.gate.acknowledges(&name);
            if let (Some(at), true) = (last_upload, paced) {
                tokio::select! {
                    () = self.cancel.cancelled() => break,
                    () = self.drain.cancelled() => {}
                    () = tokio::time::sleep_until(at + self.interval) => {}
                }
            }
            // The pace counts from the start of an upload (its pass included), not its
            // end: uploads start at most once an interval, and a commit waits for the
            // next one at most an interval, not an interval plus the time the last
            // pass and upload took.
            let started = Instant::now();
            // Taken after the wait and a pass: every commit made by now goes up with
            // it (a direct writer's are otherwise found only at the tailer's next poll,
            // and would wait for the next upload). A replica acknowledging writes needs
            // no pass here: the tailer reads those commits at once, or in the pass
            // asked for as the upload before ended.
            if paced {
                self.tailer.pass_before_upload().await;
            }
            let Some(work) = self.next_work() else {
                continue;
            };
            let acking = !draining && !paced;
            let segments = matches!(work, Work::Segments { .. });
            self.gate.set_uploading(&name, acking);
            let outcome = tokio::select! {
                () = self.cancel.cancelled() => Err(ReplicaError::Cancelled),
                outcome = self.upload(work, &ledger, &mut lease_held) => outcome,
            };
            // Sampled before this upload's writes are answered: the writers that may
            // come back for the next one.
            let writers = self.gate.waiting();
            if outcome.is_ok() {
                // Answers the writes this upload holds (and clears a failure).
                self.gate.set_failing(&name, false);
            }
            if acking {
                if outcome.is_ok() && segments {
                    self.gather(&name, writers, started.elapsed()).await;
                }
                // The tailer left the commits made during the upload and the gathering
                // to this pass (`AckGate::all_uploading`): they go up next, as one piece.
                self.gate.set_uploading(&name, false);
                self.tailer.pass_before_upload().await;
            }
            match outcome {
                Ok(()) => {
                    retry = FIRST_RETRY;
                    last_upload = Some(started);
                }
                Err(ReplicaError::Cancelled) => break,
                Err(e) => {
                    tracing::warn!(replica = %name, error = %e, retry_in = ?retry, "streaming to the replica failed; the spool keeps every commit until it is there");
                    self.board.update_stream(&name, |s| {
                        s.failures += 1;
                        s.last_error = Some(e.to_string());
                    });
                    if matches!(e, ReplicaError::LeaseHeld { .. }) {
                        lease_held = None;
                    }
                    self.gate.set_failing(&name, true);
                    if draining {
                        break;
                    }
                    tokio::select! {
                        () = self.cancel.cancelled() => break,
                        () = self.drain.cancelled() => {}
                        () = tokio::time::sleep(retry) => {}
                    }
                    retry = (retry * 2).min(LONGEST_RETRY);
                }
            }
        }
        super::shipper::release_lease(&self.lease, &self.replica).await;
        tracing::debug!(replica = %name, "streamer stopped");
    }

    /// After an upload that acknowledged writes (`writers` waited as it ended): waits
    /// a moment for the next writes of the writers it freed. A writer that writes again as soon as
    /// it is answered (a client in a loop, a worker with a queue) would otherwise just
    /// miss the next upload, which begins at once with what was committed meanwhile,
    /// and wait for the one after: two uploads per write. Waiting until as many writes
    /// wait as did when this upload ended lets the next one carry theirs too, so each
    /// upload carries about every writer and each write waits about one upload. The
    /// wait ends at half the time the upload took (and at [`GATHER_LIMIT`]), so a
    /// write that nothing follows is held back by at most that.
    async fn gather(&self, name: &str, writers: usize, upload_took: Duration) {
        let began = Instant::now();
        let within = (upload_took / 2).min(GATHER_LIMIT);
        let all_back = self.gate.until_waiting(writers, within).await;
        tracing::debug!(replica = %name, writers, all_back, waited_ms = began.elapsed().as_secs_f64() * 1e3, "writes gathered for the next upload");
    }

    fn spool_root(&self) -> PathBuf {
        self.spool
            .lock()
            .map(|s| s.root().to_path_buf())
            .unwrap_or_default()
    }

    fn next_work(&self) -> Option<Work> {
        self.spool
            .lock()
            .ok()
            .and_then(|s| s.next_work(self.replica.name()))
    }

    fn has_uncompacted(&self) -> bool {
        self.spool
            .lock()
            .is_ok_and(|s| s.has_uncompacted(self.replica.name()))
    }

    /// Compacts what was shipped since the last time; nothing (no request) when
    /// nothing was.
    async fn compact(
        &self,
        ledger: &Ledger,
        lease_held: &mut Option<Instant>,
    ) -> Result<(), ReplicaError> {
        if !self.has_uncompacted() {
            return Ok(());
        }
        self.hold_lease(lease_held).await?;
        let done = super::compaction::compact(&self.replica, &self.spool, ledger).await;
        let done = match done {
            Ok(done) => done,
            Err(e) => {
                self.board
                    .update_stream(self.replica.name(), |s| s.compaction_failures += 1);
                if matches!(e, ReplicaError::Segment(_)) {
                    let pieces = match self.spool.lock() {
                        Ok(spool) => spool.uncompacted(self.replica.name()),
                        Err(_) => Vec::new(),
                    };
                    self.end_at_unreadable(pieces.into_iter().flat_map(|(_, p)| p).collect())
                        .await;
                }
                return Err(e);
            }
        };
        self.board.update_stream(self.replica.name(), |s| {
            s.compactions += done.merged;
            s.segments_compacted += done.replaced;
            s.compaction_requests += done.requests;
            s.uploads += done.merged;
            s.bytes_shipped += done.bytes;
        });
        if done.merged > 0 || done.replaced > 0 {
            tracing::info!(replica = %self.replica.name(), merged = done.merged, replaced = done.replaced, "stream compacted");
        }
        Ok(())
    }

    /// Takes or renews the lease when it was not renewed lately.
    async fn hold_lease(&self, held: &mut Option<Instant>) -> Result<(), ReplicaError> {
        let renew_every =
            Duration::from_secs(self.replica.settings.lease_expire_secs / 4).max(self.interval);
        if held.is_some_and(|at| at.elapsed() < renew_every) {
            return Ok(());
        }
        let outcome = self.lease.lock().await.hold(&self.replica).await;
        // A read and a conditional write; a `file://` replica's lock is a local flock.
        if !matches!(
            self.replica.settings.target(),
            crate::config::ReplicaTarget::File { .. }
        ) {
            self.board
                .update_stream(self.replica.name(), |s| s.lease_requests += 2);
        }
        outcome?;
        *held = Some(Instant::now());
        Ok(())
    }

    async fn upload(
        &self,
        work: Work,
        ledger: &Ledger,
        lease_held: &mut Option<Instant>,
    ) -> Result<(), ReplicaError> {
        self.hold_lease(lease_held).await?;
        let name = self.replica.name().to_string();
        match work {
            Work::Snapshot { dir, info } => {
                let manifest = stream::upload_snapshot(&self.replica, &dir, &info, ledger).await?;
                self.record(&info.generation, |s| {
                    s.snapshot = true;
                    s.through = None;
                })?;
                self.board.update_stream(&name, |s| {
                    s.generation = Some(info.generation.clone());
                    s.through = Some(info.position.to_string());
                    s.snapshots_shipped += 1;
                    s.bytes_shipped += manifest.object_bytes;
                    s.uploads += 2;
                    s.last_shipped_at = Some(Utc::now());
                    s.last_error = None;
                });
                tracing::info!(replica = %name, generation = %info.generation, "snapshot streamed");
                // A new generation is complete: older ones may now fall out of the window.
                let window =
                    chrono::Duration::seconds(self.replica.settings.stream_retention_secs as i64);
                match stream::prune(&self.replica, window, Utc::now(), Some(&info.generation)).await
                {
                    Ok(deleted) if !deleted.is_empty() => {
                        tracing::info!(replica = %name, ?deleted, "generations older than the retention window deleted");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(replica = %name, error = %e, "stream retention failed; trying again after the next snapshot");
                    }
                }
            }
            Work::Segments { pieces } => {
                let pieces = within_upload_limit(pieces);
                let generation = pieces[0].header.generation.clone();
                let began = Instant::now();
                let uploaded = upload_pieces(&self.replica, &pieces, ledger).await;
                if let Err(e @ ReplicaError::Segment(_)) = uploaded {
                    self.end_at_unreadable(pieces).await;
                    return Err(e);
                }
                let (header, written) = uploaded?;
                let upload_ms = began.elapsed().as_secs_f64() * 1e3;
                let through = header.last();
                self.record(&generation, |s| {
                    s.snapshot = true;
                    s.through = through;
                })?;
                self.board.update_stream(&name, |s| {
                    s.generation = Some(generation.clone());
                    s.through = through.map(|t| t.to_string());
                    s.segments_shipped += 1;
                    s.bytes_shipped += written.bytes;
                    s.uploads += 1;
                    s.last_shipped_at = Some(Utc::now());
                    s.last_error = None;
                });
                tracing::debug!(replica = %name, segment = %header.name(), pieces = pieces.len(), upload_ms, "segment streamed");
            }
        }
        Ok(())
    }

    /// A local piece that does not read can never be uploaded, and retrying would wait
    /// for it forever: its generation ends there ([`Spool::end_before`]) and the tailer
    /// is asked for a pass now, which begins a new one from a fresh snapshot.
    async fn end_at_unreadable(&self, pieces: Vec<Piece>) {
        let found =
            tokio::task::spawn_blocking(move || super::spool::first_unreadable(&pieces)).await;
        let Ok(Some((piece, error))) = found else {
            return;
        };
        let Some(first) = piece.header.first() else {
            return;
        };
        tracing::error!(replica = %self.replica.name(), piece = %piece.path.display(), %error, "a spooled piece does not read: its generation ends before it, and a new one begins from a fresh snapshot");
        let reason = format!(
            "spooled piece {} does not read: {error}",
            piece.path.display()
        );
        if let Ok(mut spool) = self.spool.lock() {
            spool.end_before(&piece.header.generation, first, reason);
        }
        self.tailer.pass_before_upload().await;
    }

    fn record(
        &self,
        generation: &str,
        update: impl FnOnce(&mut Shipped),
    ) -> Result<(), ReplicaError> {
        match self.spool.lock() {
            Ok(mut spool) => spool.record(self.replica.name(), generation, update),
            Err(_) => Err(super::spool::poisoned(self.replica.name())),
        }
    }
}

/// The first pieces that add up to at most [`UPLOAD_LIMIT_BYTES`] (always one).
fn within_upload_limit(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut total = 0;
    let mut kept = Vec::new();
    for piece in pieces {
        total += piece.bytes;
        if !kept.is_empty() && total > UPLOAD_LIMIT_BYTES {
            break;
        }
        kept.push(piece);
    }
    kept
}

/// Uploads consecutive pieces as one segment, under the header of their join. Answers
/// the header and what was stored.
pub(super) async fn upload_pieces(
    replica: &super::Replica,
    pieces: &[Piece],
    ledger: &Ledger,
) -> Result<(segment::SegmentHeader, super::codec::Written), ReplicaError> {
    let paths: Vec<PathBuf> = pieces.iter().map(|p| p.path.clone()).collect();
    let header = segment::join_headers(pieces.iter().map(|p| &p.header))?;
    let written = stream::upload_segment(replica, paths, &header, ledger).await?;
    Ok((header, written))
}

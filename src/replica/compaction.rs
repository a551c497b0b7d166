//! Compaction: a replica's small segments merged into larger ones, so that a restore
//! replays a few objects an hour rather than one per sync interval (a day at one
//! segment a second would be 86,400).
//!
//! **From the local pieces.** The service holds only the replicas' recipients, not
//! their identity, so it cannot read its own uploads back. It merges the pieces it
//! still has in the [spool](super::spool) instead: a piece stays there after its upload
//! until compaction has dealt with it. Each segment on the replica is the union of
//! consecutive pieces (the streamer uploads one piece or several merged), so a run of
//! consecutive segments is rebuilt exactly from the pieces between its ends.
//!
//! **Nothing a restore needs is ever missing.** A merged segment holds every frame and
//! every commit record of the segments it replaces, so every point stays restorable
//! (to one commit, by time or by event id). It is uploaded first, under its own name
//! `<first>_<last>`; only once it is complete are the segments it covers deleted.
//! Between the two a restore sees both and takes the one reaching furthest
//! ([`super::stream`]); a restore that listed a segment just deleted lists again and
//! starts over. A compaction cut short (a kill, a failed delete) leaves segments
//! inside a larger one, which the next compaction deletes first.
//!
//! **When.** Every `compact_interval_secs` (an hour by default), in the replica's
//! streamer between two uploads, and only when something was shipped since: an idle
//! replica costs no request. Runs of segments merge up to 64 MiB of frames each.

use std::sync::{Arc, Mutex};

use object_store::ObjectStoreExt;

use super::segment::Position;
use super::spool::{poisoned, Piece, Spool};
use super::stream::{self, SegmentObject};
use super::streamer::{upload_pieces, MERGE_LIMIT_BYTES};
use super::uploads::Ledger;
use super::{Replica, ReplicaError};

/// What one compaction did on a replica.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Compacted {
    /// Merged segments written.
    pub merged: u64,
    /// Segments deleted because a merged one holds them.
    pub replaced: u64,
    /// Listings and deletions (the merged segments' PUTs are uploads).
    pub requests: u64,
    /// Stored bytes of the merged segments.
    pub bytes: u64,
}

/// True when `next` starts right after `end` ([`Position::successors`]).
fn follows(end: Position, next: Position) -> bool {
    end.successors().contains(&next)
}

fn within(segment: &SegmentObject, outer: &SegmentObject) -> bool {
    outer.first <= segment.first
        && segment.last <= outer.last
        && (outer.first, outer.last) != (segment.first, segment.last)
}

/// The pieces that make up `first..=last` exactly, consecutive; `None` when the spool
/// no longer has all of them.
fn pieces_of(pieces: &[Piece], first: Position, last: Position) -> Option<Vec<Piece>> {
    let chosen: Vec<Piece> = pieces
        .iter()
        .filter(|p| p.lies_within(first, last))
        .cloned()
        .collect();
    let starts = chosen.first()?.header.first() == Some(first);
    let ends = chosen.last()?.last() == last;
    let consecutive = chosen
        .windows(2)
        .all(|w| w[1].header.first().is_some_and(|f| follows(w[0].last(), f)));
    (starts && ends && consecutive).then_some(chosen)
}

/// Runs of consecutive segments, each adding up to at most [`MERGE_LIMIT_BYTES`] of
/// local pieces.
fn runs(segments: &[SegmentObject], pieces: &[Piece]) -> Vec<Vec<SegmentObject>> {
    let bytes_of = |s: &SegmentObject| -> u64 {
        pieces
            .iter()
            .filter(|p| p.lies_within(s.first, s.last))
            .map(|p| p.bytes)
            .sum()
    };
    let mut runs: Vec<Vec<SegmentObject>> = Vec::new();
    let mut total = 0;
    for segment in segments {
        let bytes = bytes_of(segment);
        let continues = runs
            .last()
            .and_then(|run| run.last())
            .is_some_and(|previous| follows(previous.last, segment.first))
            && total + bytes <= MERGE_LIMIT_BYTES;
        if continues {
            total += bytes;
            if let Some(run) = runs.last_mut() {
                run.push(segment.clone());
            }
        } else {
            total = bytes;
            runs.push(vec![segment.clone()]);
        }
    }
    runs
}

/// Compacts what `replica` received since its last compaction, generation by
/// generation; each step is recorded in the spool as it completes.
pub async fn compact(
    replica: &Replica,
    spool: &Arc<Mutex<Spool>>,
    ledger: &Ledger,
) -> Result<Compacted, ReplicaError> {
    let name = replica.name().to_string();
    let work = {
        let spool = spool.lock().map_err(|_| poisoned(&name))?;
        spool.uncompacted(&name)
    };
    let mut done = Compacted::default();
    for (generation, pieces) in work {
        let (Some(start), Some(end)) = (
            pieces.first().and_then(|p| p.header.first()),
            pieces.last().map(Piece::last),
        ) else {
            continue;
        };
        let mut listed = stream::list_segments(replica, &generation).await?;
        done.requests += 1;
        // What a compaction cut short left: segments inside a larger one.
        let superseded: Vec<SegmentObject> = listed
            .iter()
            .filter(|s| listed.iter().any(|outer| within(s, outer)))
            .cloned()
            .collect();
        for segment in &superseded {
            delete(replica, segment).await?;
            done.requests += 1;
            done.replaced += 1;
        }
        listed.retain(|s| !superseded.contains(s));
        let candidates: Vec<SegmentObject> = listed
            .into_iter()
            .filter(|s| s.first >= start && s.last <= end)
            .collect();
        for run in runs(&candidates, &pieces) {
            let (Some(first), Some(last)) = (run.first(), run.last()) else {
                continue;
            };
            let (first, last) = (first.first, last.last);
            if run.len() > 1 {
                if let Some(parts) = pieces_of(&pieces, first, last) {
                    let (header, sent) = upload_pieces(replica, &parts, ledger).await?;
                    done.bytes += sent.bytes;
                    done.merged += 1;
                    for segment in &run {
                        delete(replica, segment).await?;
                        done.requests += 1;
                        done.replaced += 1;
                    }
                    tracing::debug!(replica = %name, %generation, merged = %header.name(), segments = run.len(), "segments compacted");
                }
            }
            record(spool, &name, &generation, last)?;
        }
        // Pieces no listed segment covers (the replica lost them) are left as they are.
        record(spool, &name, &generation, end)?;
    }
    Ok(done)
}

async fn delete(replica: &Replica, segment: &SegmentObject) -> Result<(), ReplicaError> {
    match replica.store.delete(&segment.location).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(replica.error(e)),
    }
}

fn record(
    spool: &Arc<Mutex<Spool>>,
    replica: &str,
    generation: &str,
    through: Position,
) -> Result<(), ReplicaError> {
    spool
        .lock()
        .map_err(|_| poisoned(replica))?
        .record(replica, generation, |s| {
            s.compacted = Some(s.compacted.map_or(through, |c| c.max(through)));
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(wal: u32, frame: u32) -> Position {
        Position { wal, frame }
    }

    fn object(first: Position, last: Position) -> SegmentObject {
        SegmentObject {
            first,
            last,
            location: object_store::path::Path::from(format!("s/{first}_{last}")),
            encryption: crate::config::Encryption::None,
        }
    }

    #[test]
    fn a_segment_follows_the_next_frame_or_the_first_of_the_next_wal_only() {
        assert!(follows(at(0, 4), at(0, 5)));
        assert!(follows(at(0, 4), at(1, 1)));
        assert!(!follows(at(0, 4), at(0, 4)));
        assert!(!follows(at(0, 4), at(0, 6)));
        assert!(!follows(at(0, 4), at(1, 2)));
        assert!(!follows(at(0, 4), at(2, 1)));
    }

    #[test]
    fn only_a_strictly_larger_segment_supersedes_another() {
        let small = object(at(0, 3), at(0, 5));
        let large = object(at(0, 1), at(0, 9));
        let same = object(at(0, 3), at(0, 5));
        let overlapping = object(at(0, 4), at(0, 12));
        assert!(within(&small, &large));
        assert!(!within(&large, &small));
        assert!(!within(&small, &same));
        assert!(!within(&small, &overlapping));
        assert!(within(&object(at(0, 1), at(0, 5)), &large));
        assert!(within(&object(at(0, 5), at(0, 9)), &large));
    }

    #[test]
    fn runs_break_where_a_segment_does_not_follow() {
        let segments = [
            object(at(0, 1), at(0, 2)),
            object(at(0, 3), at(0, 7)),
            object(at(1, 1), at(1, 4)),
            // frames 5..=6 of WAL 1 are not on the replica
            object(at(1, 7), at(1, 8)),
        ];
        let runs = runs(&segments, &[]);
        let lengths: Vec<usize> = runs.iter().map(Vec::len).collect();
        assert_eq!(lengths, [3, 1]);
        assert_eq!(runs[1][0].first, at(1, 7));
    }
}

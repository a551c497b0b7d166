//! The spool: what the tailer has read from the WAL and not every streaming replica
//! has yet, on the local disk, and who has what.
//!
//! ```text
//! <spool>/<generation>/snapshot.db              the generation's snapshot
//! <spool>/<generation>/snapshot.json            where it is in the stream (written last)
//! <spool>/<generation>/<first>_<last>.seg       one segment per tailer pass
//! <spool>/<generation>/shipped-<replica>.json   what that replica has of it
//! ```
//!
//! A replica's `shipped` record says whether it holds the snapshot and the last
//! position it holds; it is written (durably) after each upload completed, so a
//! service killed between an upload and its record uploads that piece again after
//! the restart, under the same name: an object is replaced, never doubled, and a
//! restore reads each position once. A piece stays after it was uploaded until every
//! streaming replica also [compacted](super::compaction) it (merged it with its
//! neighbours into one larger segment there, from these local pieces: the service holds
//! no key to read its own uploads back); then it is deleted, and so is a generation's
//! directory once every replica holds and compacted all of it and the tailer has moved
//! on to a newer generation.
//!
//! The spool lives under the backup directory (`<backup.dir>/stream-spool`), on the
//! machine's own disk: it holds at most what the slowest replica lags behind.

use std::collections::BTreeMap;
use std::fs;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::segment::{Position, SegmentError, SegmentHeader, SegmentReader};
use super::tailer::{SnapshotInfo, SEGMENT_SUFFIX, SNAPSHOT, SNAPSHOT_INFO};
use super::ReplicaError;
use crate::db::durable;

/// The spool's directory for a service whose backups are in `backup_dir`.
pub fn dir(backup_dir: &Path) -> PathBuf {
    backup_dir.join("stream-spool")
}

/// What one replica holds of one generation.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shipped {
    pub snapshot: bool,
    /// The last position it holds; `None` before its first segment.
    pub through: Option<Position>,
    /// The last position compaction has dealt with there (merged, or left as it was);
    /// `None` before its first compaction.
    #[serde(default)]
    pub compacted: Option<Position>,
}

/// One segment file in the spool.
#[derive(Debug, Clone)]
pub struct Piece {
    pub header: SegmentHeader,
    pub path: PathBuf,
    /// Its frames' bytes, as in the WAL (the file holds them compressed).
    pub bytes: u64,
    /// The DbWriter's commits it holds: every one numbered up to this
    /// ([`super::ack`]); 0 for pieces of an earlier run.
    pub covers: u64,
}

impl Piece {
    pub fn last(&self) -> Position {
        // A spooled piece always has a run: the tailer writes none without frames.
        self.header.last().unwrap_or(self.header.after)
    }

    /// Whether all its frames lie in `first..=last`.
    pub fn lies_within(&self, first: Position, last: Position) -> bool {
        self.header.first().is_some_and(|f| f >= first) && self.last() <= last
    }

    /// When the tailer read its first commit: how long it has waited for a replica.
    fn first_seen(&self) -> Option<DateTime<Utc>> {
        self.header.commits.first().map(|c| c.seen_at)
    }
}

#[derive(Debug)]
struct SpooledGeneration {
    info: SnapshotInfo,
    dir: PathBuf,
    pieces: Vec<Piece>,
    /// The tailer still adds pieces to it.
    current: bool,
    /// Why it ended before the tailer moved on ([`Spool::end_before`]): the tailer's
    /// next pass begins a new generation.
    ended: Option<String>,
    shipped: BTreeMap<String, Shipped>,
    /// The DbWriter's commits its snapshot holds (numbered up to this).
    covers: u64,
    /// Per replica, the DbWriter's commits it holds of this generation.
    held: BTreeMap<String, u64>,
}

impl SpooledGeneration {
    fn shipped(&self, replica: &str) -> Shipped {
        self.shipped.get(replica).cloned().unwrap_or_default()
    }

    fn pending<'a>(&'a self, replica: &str) -> impl Iterator<Item = &'a Piece> {
        let through = self.shipped(replica).through;
        self.pieces
            .iter()
            .filter(move |p| through.is_none_or(|t| p.last() > t))
    }

    /// Pieces `replica` holds that compaction has not dealt with yet.
    fn uncompacted<'a>(&'a self, replica: &str) -> impl Iterator<Item = &'a Piece> {
        let Shipped {
            through, compacted, ..
        } = self.shipped(replica);
        self.pieces.iter().filter(move |p| {
            through.is_some_and(|t| p.last() <= t) && compacted.is_none_or(|c| p.last() > c)
        })
    }
}

/// What a replica's streamer should upload next.
#[derive(Debug, Clone)]
pub enum Work {
    Snapshot {
        dir: PathBuf,
        info: SnapshotInfo,
    },
    /// Consecutive pieces of one generation, oldest first.
    Segments {
        pieces: Vec<Piece>,
    },
}

/// How far one replica is behind the tailer.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Lag {
    /// Since the oldest commit it does not hold was read; 0 when it holds everything.
    pub seconds: f64,
    /// The spooled bytes it does not hold (segments, and a snapshot not yet uploaded).
    pub bytes: u64,
}

/// The spool and every replica's progress through it.
#[derive(Debug)]
pub struct Spool {
    root: PathBuf,
    replicas: Vec<String>,
    generations: Vec<SpooledGeneration>,
    /// The DbWriter's commits the tailer's last pass covered: all are spooled.
    spooled: u64,
}

impl Spool {
    /// Reads what a previous run left in `root` (every generation there is finished:
    /// this run starts its own), removing what every replica already holds and
    /// generations that never finished starting.
    pub fn load(root: &Path, replicas: &[String]) -> Result<Spool, ReplicaError> {
        fs::create_dir_all(root).map_err(ReplicaError::io(root))?;
        let (mut names, files): (Vec<PathBuf>, Vec<PathBuf>) = fs::read_dir(root)
            .map_err(ReplicaError::io(root))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .partition(|p| p.is_dir());
        // Scratch files of merges, which earlier versions wrote here.
        for file in files
            .iter()
            .filter(|f| f.extension().is_some_and(|e| e == "tmp"))
        {
            let _ = fs::remove_file(file);
        }
        names.sort();
        let mut spool = Spool {
            root: root.to_path_buf(),
            replicas: replicas.to_vec(),
            generations: Vec::new(),
            spooled: 0,
        };
        for dir in names {
            match load_generation(&dir, replicas) {
                Ok(Some(generation)) => spool.generations.push(generation),
                Ok(None) => {
                    tracing::info!(dir = %dir.display(), "removing a generation that never finished starting (or whose snapshot.json does not read) from the spool");
                    fs::remove_dir_all(&dir).map_err(ReplicaError::io(&dir))?;
                }
                Err(e) => return Err(e),
            }
        }
        spool.collect();
        Ok(spool)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The streaming replicas.
    pub fn replicas(&self) -> &[String] {
        &self.replicas
    }

    /// The tailer began generation `info` in `dir`, its snapshot holding the
    /// DbWriter's commits up to `covers`: the one before is finished.
    pub fn begin(&mut self, dir: &Path, info: SnapshotInfo, covers: u64) {
        for generation in &mut self.generations {
            generation.current = false;
            generation.ended = None;
        }
        self.generations.push(SpooledGeneration {
            info,
            dir: dir.to_path_buf(),
            pieces: Vec::new(),
            current: true,
            ended: None,
            shipped: BTreeMap::new(),
            covers,
            held: BTreeMap::new(),
        });
        self.spooled = covers;
        self.collect();
    }

    /// The tailer spooled a piece of the current generation, holding the DbWriter's
    /// commits up to `covers`. A piece of a generation that is no longer the current one
    /// (it ended meanwhile) is removed: it would follow a hole.
    pub fn add(&mut self, header: SegmentHeader, path: PathBuf, covers: u64) {
        let bytes = header.frame_bytes();
        let Some(generation) = self
            .generations
            .iter_mut()
            .find(|g| g.current && g.info.generation == header.generation)
        else {
            let _ = durable::remove_file(&path);
            return;
        };
        generation.pieces.push(Piece {
            header,
            path,
            bytes,
            covers,
        });
        self.spooled = self.spooled.max(covers);
    }

    /// The spooled piece of generation `name` that begins at `first` does not read
    /// (damaged on disk after the tailer wrote and synced it): no replica that lacks it
    /// can ever follow the chain past it. The generation ends before it, as at a gap:
    /// that piece and every later one are removed, the generation is no longer the
    /// current one, and [`Spool::ended`] tells the tailer to begin a new generation
    /// from a fresh snapshot, which holds every commit the removed pieces held.
    pub fn end_before(&mut self, name: &str, first: Position, reason: String) {
        let Some(generation) = self
            .generations
            .iter_mut()
            .find(|g| g.info.generation == name)
        else {
            return;
        };
        let (kept, removed): (Vec<Piece>, Vec<Piece>) = std::mem::take(&mut generation.pieces)
            .into_iter()
            .partition(|p| p.header.first().is_some_and(|f| f < first));
        generation.pieces = kept;
        for piece in removed {
            let _ = durable::remove_file(&piece.path);
        }
        if generation.current {
            generation.current = false;
            generation.ended = Some(reason);
        }
        self.collect();
    }

    /// Why generation `name` ended while the tailer still reads it, if it did.
    pub fn ended(&self, name: &str) -> Option<&str> {
        self.generations
            .iter()
            .find(|g| g.info.generation == name)
            .and_then(|g| g.ended.as_deref())
    }

    /// A tailer pass found nothing new: the DbWriter's commits up to `covers` are all
    /// spooled already.
    pub fn passed(&mut self, covers: u64) {
        self.spooled = self.spooled.max(covers);
    }

    /// The DbWriter's commits `replica` holds (every one numbered up to this), in the
    /// current generation; 0 while it does not hold that generation's snapshot.
    pub fn acknowledged(&self, replica: &str) -> u64 {
        let Some(current) = self.generations.iter().rev().find(|g| g.current) else {
            return 0;
        };
        if !current.shipped(replica).snapshot {
            return 0;
        }
        if current.pending(replica).next().is_none() {
            return self.spooled;
        }
        current
            .held
            .get(replica)
            .copied()
            .unwrap_or(0)
            .max(current.covers)
    }

    /// What `replica` should upload next: generations oldest first, each its snapshot
    /// and then its pieces; `None` when it holds everything spooled.
    pub fn next_work(&self, replica: &str) -> Option<Work> {
        for generation in &self.generations {
            if !generation.shipped(replica).snapshot {
                return Some(Work::Snapshot {
                    dir: generation.dir.clone(),
                    info: generation.info.clone(),
                });
            }
            let pieces: Vec<Piece> = generation.pending(replica).cloned().collect();
            if !pieces.is_empty() {
                return Some(Work::Segments { pieces });
            }
            if generation.current {
                return None;
            }
        }
        None
    }

    /// Records (durably) what `replica` now holds of generation `name` (`update` changes
    /// its record), and removes what every replica now holds and compacted.
    pub fn record(
        &mut self,
        replica: &str,
        name: &str,
        update: impl FnOnce(&mut Shipped),
    ) -> Result<(), ReplicaError> {
        let Some(generation) = self
            .generations
            .iter_mut()
            .find(|g| g.info.generation == name)
        else {
            return Ok(());
        };
        let mut shipped = generation.shipped(replica);
        update(&mut shipped);
        let path = shipped_path(&generation.dir, replica);
        let json = serde_json::to_vec(&shipped).map_err(|e| ReplicaError::Open {
            replica: replica.to_string(),
            reason: e.to_string(),
        })?;
        let temp = generation.dir.join(format!(".shipped-{replica}.tmp"));
        durable::write_file(&temp, &json, 0o600)
            .and_then(|()| durable::sync_file(&temp))
            .and_then(|()| durable::rename(&temp, &path))
            .and_then(|()| durable::sync_dir(&generation.dir))
            .map_err(ReplicaError::io(&path))?;
        let held = generation
            .pieces
            .iter()
            .filter(|p| shipped.through.is_some_and(|t| p.last() <= t))
            .map(|p| p.covers)
            .max()
            .unwrap_or(0);
        let entry = generation.held.entry(replica.to_string()).or_insert(0);
        *entry = (*entry).max(held);
        generation.shipped.insert(replica.to_string(), shipped);
        self.collect();
        Ok(())
    }

    /// Whether `replica` holds pieces it has not compacted (without copying them).
    pub fn has_uncompacted(&self, replica: &str) -> bool {
        self.generations
            .iter()
            .any(|g| g.uncompacted(replica).next().is_some())
    }

    /// Per generation (oldest first), the pieces `replica` holds and has not compacted.
    pub fn uncompacted(&self, replica: &str) -> Vec<(String, Vec<Piece>)> {
        self.generations
            .iter()
            .map(|g| {
                (
                    g.info.generation.clone(),
                    g.uncompacted(replica).cloned().collect::<Vec<_>>(),
                )
            })
            .filter(|(_, pieces)| !pieces.is_empty())
            .collect()
    }

    /// What `replica` holds of generation `name`.
    pub fn shipped(&self, replica: &str, name: &str) -> Shipped {
        self.generations
            .iter()
            .find(|g| g.info.generation == name)
            .map(|g| g.shipped(replica))
            .unwrap_or_default()
    }

    /// How far `replica` is behind what is spooled.
    pub fn lag(&self, replica: &str, now: DateTime<Utc>) -> Lag {
        let mut lag = Lag::default();
        let mut oldest: Option<DateTime<Utc>> = None;
        for generation in &self.generations {
            let shipped = generation.shipped(replica);
            if !shipped.snapshot {
                lag.bytes += fs::metadata(generation.dir.join(SNAPSHOT))
                    .map(|m| m.len())
                    .unwrap_or(0);
                oldest = oldest.or(Some(generation.info.taken_at));
            }
            for piece in generation.pending(replica) {
                lag.bytes += piece.bytes;
                oldest = oldest.or(piece.first_seen());
            }
        }
        if let Some(oldest) = oldest {
            lag.seconds = ((now - oldest).num_milliseconds().max(0) as f64) / 1000.0;
        }
        lag
    }

    /// The current generation's name, if the tailer has begun one.
    pub fn current(&self) -> Option<&str> {
        self.generations
            .iter()
            .find(|g| g.current)
            .map(|g| g.info.generation.as_str())
    }

    /// Deletes pieces every replica holds and compacted, snapshots every replica holds,
    /// and finished generations every replica holds entirely. A deletion that fails is
    /// retried next time.
    fn collect(&mut self) {
        let replicas = self.replicas.clone();
        let holds_all = |g: &SpooledGeneration, p: &Piece| {
            replicas.iter().all(|r| {
                let shipped = g.shipped(r);
                shipped.through.is_some_and(|t| t >= p.last())
                    && shipped.compacted.is_some_and(|c| c >= p.last())
            })
        };
        for generation in &mut self.generations {
            let (done, kept): (Vec<Piece>, Vec<Piece>) = std::mem::take(&mut generation.pieces)
                .into_iter()
                .partition(|p| holds_all(generation, p));
            generation.pieces = kept;
            for piece in done {
                if let Err(e) = durable::remove_file(&piece.path) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(path = %piece.path.display(), error = %e, "cannot remove a shipped piece from the spool");
                    }
                }
            }
            let snapshot = generation.dir.join(SNAPSHOT);
            if replicas.iter().all(|r| generation.shipped(r).snapshot) && snapshot.exists() {
                if let Err(e) = durable::remove_file(&snapshot) {
                    tracing::warn!(path = %snapshot.display(), error = %e, "cannot remove a shipped snapshot from the spool");
                }
            }
        }
        self.generations.retain(|g| {
            // An ended generation's directory stays until the tailer moved on from it.
            let finished = !g.current
                && g.ended.is_none()
                && g.pieces.is_empty()
                && replicas.iter().all(|r| g.shipped(r).snapshot);
            if finished {
                if let Err(e) = fs::remove_dir_all(&g.dir) {
                    tracing::warn!(dir = %g.dir.display(), error = %e, "cannot remove a shipped generation from the spool");
                    return true;
                }
            }
            !finished
        });
    }
}

/// The first of `pieces` that does not read through (every frame against the WAL's
/// checksum chain, the SHA-256 of its frames), with why. A piece already removed is
/// not damaged: it is passed over.
pub fn first_unreadable(pieces: &[Piece]) -> Option<(Piece, String)> {
    pieces.iter().find_map(|piece| {
        let what = piece.path.display().to_string();
        let read = fs::File::open(&piece.path)
            .map_err(|source| SegmentError::Io {
                what: what.clone(),
                source,
            })
            .and_then(|file| SegmentReader::new(BufReader::new(file), &what)?.read_through());
        match read {
            Ok(()) => None,
            Err(SegmentError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                None
            }
            Err(e) => Some((piece.clone(), e.to_string())),
        }
    })
}

/// The error of a spool whose lock a panic poisoned, as `replica`'s streamer sees it.
pub fn poisoned(replica: &str) -> ReplicaError {
    ReplicaError::Open {
        replica: replica.to_string(),
        reason: "the spool's state was poisoned by a panic".into(),
    }
}

fn shipped_path(dir: &Path, replica: &str) -> PathBuf {
    dir.join(format!("shipped-{replica}.json"))
}

/// A generation a previous run left; `None` when it never finished starting (no
/// `snapshot.json`).
fn load_generation(
    dir: &Path,
    replicas: &[String],
) -> Result<Option<SpooledGeneration>, ReplicaError> {
    let info_path = dir.join(SNAPSHOT_INFO);
    let info: SnapshotInfo = match fs::read(&info_path) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(info) => info,
            // Written durably before the generation counts, so only a damaged disk
            // gets here; what it spooled cannot be placed without it.
            Err(e) => {
                tracing::error!(path = %info_path.display(), error = %e, "a spooled generation's snapshot.json does not read: its commits not yet on the replicas are lost to them (this run's new generation starts from the database as it is)");
                return Ok(None);
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(ReplicaError::Io {
                path: info_path,
                source: e,
            })
        }
    };
    let has_snapshot = dir.join(SNAPSHOT).exists();
    let mut pieces = Vec::new();
    let mut unreadable = Vec::new();
    for entry in fs::read_dir(dir).map_err(ReplicaError::io(dir))? {
        let path = entry.map_err(ReplicaError::io(dir))?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(SEGMENT_SUFFIX) {
            continue;
        }
        let file = fs::File::open(&path).map_err(ReplicaError::io(&path))?;
        match SegmentReader::new(BufReader::new(file), name) {
            Ok(reader) => pieces.push(Piece {
                bytes: reader.header.frame_bytes(),
                header: reader.header,
                path,
                covers: 0,
            }),
            Err(e) => {
                // Where it starts, from its name; a name that does not say so
                // drops every piece.
                let first = name
                    .split_once('_')
                    .and_then(|(first, _)| first.parse::<Position>().ok())
                    .unwrap_or(Position { wal: 0, frame: 0 });
                unreadable.push((path, first, e.to_string()));
            }
        }
    }
    pieces.sort_by_key(Piece::last);
    // A piece is synced before it takes its name, so one that does not read was
    // damaged on disk. The chain cannot pass it: the generation ends before it on the
    // replicas (pieces after it would be segments no restore reaches).
    if let Some(cut) = unreadable.iter().map(|(_, first, _)| *first).min() {
        for (path, _, error) in &unreadable {
            tracing::error!(path = %path.display(), error = %error, "a spooled piece does not read: its generation ends before it on the replicas (this run's new generation starts from the database as it is)");
            let _ = durable::remove_file(path);
        }
        let (kept, dropped): (Vec<Piece>, Vec<Piece>) =
            pieces.into_iter().partition(|p| p.last() < cut);
        for piece in dropped {
            let _ = durable::remove_file(&piece.path);
        }
        pieces = kept;
    }
    let mut shipped = BTreeMap::new();
    for replica in replicas {
        let record = match fs::read(shipped_path(dir, replica)) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            // A replica added since, or one that never got this generation: without
            // the snapshot it cannot use the pieces either, so it skips the generation.
            Err(_) if !has_snapshot => Shipped {
                snapshot: true,
                through: pieces.last().map(Piece::last),
                compacted: pieces.last().map(Piece::last),
            },
            Err(_) => Shipped::default(),
        };
        shipped.insert(replica.clone(), record);
    }
    Ok(Some(SpooledGeneration {
        info,
        dir: dir.to_path_buf(),
        pieces,
        current: false,
        ended: None,
        shipped,
        covers: 0,
        held: BTreeMap::new(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::tailer::tests::{database, insert, tailer};
    use crate::replica::tailer::Pass;

    /// A piece emptied on disk (as a power cut before its sync would leave it) does not
    /// stop the spool from loading: the pieces before it stay, it and those after go.
    #[test]
    fn a_piece_that_does_not_read_ends_its_generation_there_and_the_spool_still_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (db, conn) = database(dir.path());
        let (mut tailer, _) = tailer(dir.path(), &db);
        let mut paths = Vec::new();
        for _ in 0..3 {
            insert(&conn, 3);
            match tailer.pass(Utc::now()).expect("pass") {
                Pass::Spooled { path, .. } => paths.push(path),
                other => panic!("expected a segment, got {other:?}"),
            }
        }
        drop(tailer);
        fs::write(&paths[1], b"").expect("empty the middle piece");
        let spool =
            Spool::load(&dir.path().join("spool"), &["nas".to_string()]).expect("the spool loads");
        let kept: Vec<&PathBuf> = spool.generations[0]
            .pieces
            .iter()
            .map(|p| &p.path)
            .collect();
        assert_eq!(kept, vec![&paths[0]]);
        assert!(paths[0].exists() && !paths[1].exists() && !paths[2].exists());
    }
}

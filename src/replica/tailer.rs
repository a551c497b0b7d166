//! The tailer: reads what every commit appended to the WAL, whoever made it, into
//! segment files in a local spool, from which each replica uploads them.
//!
//! # One generation
//!
//! A generation is a snapshot of the database (a page-for-page copy through SQLite's
//! backup API, taken inside the [read pin](crate::db::pin)'s transaction, so it is
//! exactly the commit the pin's snapshot is) and every commit after it, in segments
//! that chain to each other ([`super::segment`]). Spool layout:
//!
//! ```text
//! <spool>/<generation>/snapshot.db       the snapshot (verified with integrity_check)
//! <spool>/<generation>/snapshot.json     where it is in the stream (SnapshotInfo)
//! <spool>/<generation>/<first>_<last>.seg one segment per pass, <first>/<last> positions
//! ```
//!
//! # One pass
//!
//! A pass moves the pin to the newest commit, reads the wal-index header (the newest
//! committed frame, the salts of the WAL it is in, and SQLite's count of commits), and
//! copies the frames from where the last pass stopped up to that frame into a segment.
//!
//! The commit count is what proves nothing was missed: every commit, by any
//! connection, adds one. Since the last pass the WAL either grew (same salts: the
//! frames after the last one read must hold exactly that many commits) or was
//! restarted (new salts: everything in the old WAL had been read, so the new WAL's
//! frames must hold all the new commits). Anything else, a WAL restarted over commits
//! never read, a WAL that vanished, frames that do not check, is a **gap**: the pass
//! says so and the caller starts a new generation from a fresh snapshot. A gap is never
//! papered over; the restore of an old generation stops at its last segment.

use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::segment::{self, CommitRecord, Position, SegmentHeader};
use super::ReplicaError;
use crate::db::pin::{Pinned, ReadPin};
use crate::db::walfile::{self, WalCursor, WalFile};
use crate::db::{durable, integrity};

pub const SNAPSHOT: &str = "snapshot.db";
pub const SNAPSHOT_INFO: &str = "snapshot.json";
pub const SEGMENT_SUFFIX: &str = ".seg";
const TEMP_SUFFIX: &str = ".tmp";

/// How many times a generation's start tries to pin an exactly known commit before
/// giving up for now (each try is [`ReadPin::advance`]'s own few attempts).
const SNAPSHOT_PIN_TRIES: usize = 50;

/// Where a generation's snapshot is in its stream of frames.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    pub generation: String,
    /// The last frame the snapshot holds: `frame` 0 when the WAL held none then.
    pub position: Position,
    /// The WAL header and the checksum at `position`, for the first segment's chain;
    /// empty and zero at frame 0.
    pub wal_header: String,
    pub chain: [u32; 2],
    pub page_size: u32,
    pub pages: u32,
    pub last_event_id: i64,
    pub taken_at: DateTime<Utc>,
}

impl SnapshotInfo {
    pub fn chain_end(&self) -> segment::ChainEnd {
        segment::ChainEnd {
            position: self.position,
            wal_header: self.wal_header.clone(),
            chain: self.chain,
        }
    }
}

/// What one pass did.
#[derive(Debug)]
pub enum Pass {
    /// Nothing was committed since the last pass.
    Idle,
    /// The commits since the last pass are in a new segment in the spool.
    Spooled {
        header: SegmentHeader,
        path: PathBuf,
    },
    /// Commits were made that the stream cannot hold: start a new generation.
    Gap { reason: String },
}

/// Where the stream of the current generation is.
#[derive(Debug, Clone)]
struct Stream {
    /// The generation's number of the WAL `cursor` is in.
    wal_number: u32,
    /// After the last frame read; `None` before the first frame of WAL `wal_number`
    /// (a snapshot taken with the WAL empty), when its header is not known yet.
    cursor: Option<WalCursor>,
    end: Position,
    /// The wal-index commit counter when `end` was the newest commit.
    commits: u32,
}

pub struct Tailer {
    database: PathBuf,
    pin: ReadPin,
    dir: PathBuf,
    generation: String,
    stream: Stream,
}

/// A new generation's name: its start time, to the microsecond, so names sort by
/// age and a service never makes the same one twice.
pub fn generation_name(now: DateTime<Utc>) -> String {
    now.format("%Y%m%dT%H%M%S%.6fZ").to_string()
}

impl Tailer {
    /// Starts a generation: pins a commit known exactly, copies the database as of
    /// it into the spool, checks the copy, and is ready to read the commits after it.
    pub fn start(
        database: &Path,
        mut pin: ReadPin,
        spool: &Path,
        now: DateTime<Utc>,
    ) -> Result<(Tailer, SnapshotInfo), ReplicaError> {
        let generation = generation_name(now);
        let dir = spool.join(&generation);
        fs::create_dir_all(&dir).map_err(ReplicaError::io(&dir))?;
        let pinned = pin_exactly(&mut pin)?;
        let (stream, wal_header) = stream_at(database, &pinned)?;
        let conn = pin.connection().ok_or_else(|| ReplicaError::Open {
            replica: "replication".into(),
            reason: "the read pin is not held".into(),
        })?;
        let snapshot = dir.join(SNAPSHOT);
        let (page_size, pages) = crate::db::snapshot::copy_pages(conn, &with_temp(&snapshot))?;
        integrity::verify_file(&with_temp(&snapshot))?;
        durable::sync_file(&with_temp(&snapshot)).map_err(ReplicaError::io(&snapshot))?;
        durable::rename(&with_temp(&snapshot), &snapshot).map_err(ReplicaError::io(&snapshot))?;
        let info = SnapshotInfo {
            generation: generation.clone(),
            position: stream.end,
            wal_header,
            chain: stream.cursor.map_or([0, 0], |c| c.chain),
            page_size,
            pages,
            last_event_id: pinned.last_event_id,
            taken_at: now,
        };
        let json = serde_json::to_vec_pretty(&info).map_err(|e| ReplicaError::Open {
            replica: "replication".into(),
            reason: e.to_string(),
        })?;
        // Written last and made durable: a generation directory without it never
        // finished starting, and the spool's load removes it.
        let info_path = dir.join(SNAPSHOT_INFO);
        durable::write_file(&with_temp(&info_path), &json, 0o600)
            .and_then(|()| durable::sync_file(&with_temp(&info_path)))
            .and_then(|()| durable::rename(&with_temp(&info_path), &info_path))
            .and_then(|()| durable::sync_dir(&dir))
            .map_err(ReplicaError::io(&info_path))?;
        Ok((
            Tailer {
                database: database.to_path_buf(),
                pin,
                dir,
                generation,
                stream,
            },
            info,
        ))
    }

    pub fn generation(&self) -> &str {
        &self.generation
    }

    /// The last frame read into the spool.
    pub fn end(&self) -> Position {
        self.stream.end
    }

    /// Reads every commit made since the last pass into one new segment.
    pub fn pass(&mut self, now: DateTime<Utc>) -> Result<Pass, ReplicaError> {
        let pinned = self.pin.advance()?;
        let Some(index) = pinned.index else {
            return Ok(self.vanished());
        };
        let expected = index.commits.wrapping_sub(self.stream.commits);
        let same_wal = self
            .stream
            .cursor
            .is_some_and(|c| c.header.salt == index.salt);
        if expected == 0 {
            // No commit: the WAL is where the stream is, or restarted and still empty.
            let unchanged = if same_wal {
                index.max_frame == self.stream.end.frame
            } else {
                index.max_frame == 0
            };
            return Ok(if unchanged {
                Pass::Idle
            } else {
                Pass::Gap {
                    reason: format!(
                        "the WAL's last commit is frame {} of a WAL {}, the stream is at {}, and no commit was counted",
                        index.max_frame,
                        if same_wal { "the stream is in" } else { "the stream has not seen" },
                        self.stream.end
                    ),
                }
            });
        }
        let Some(wal) = WalFile::open(&self.database)? else {
            return Ok(self.vanished());
        };
        let (wal_number, cursor) = if same_wal {
            let cursor = self.stream.cursor.expect("same_wal implies a cursor");
            (self.stream.wal_number, cursor)
        } else {
            let header = match wal.header()? {
                Some(h) if h.salt == index.salt => h,
                _ => {
                    return Ok(Pass::Gap {
                        reason: "the WAL file's header is not the one the wal-index names".into(),
                    })
                }
            };
            let number = match self.stream.cursor {
                Some(_) => self.stream.wal_number + 1,
                None => self.stream.wal_number,
            };
            (number, WalCursor::at_start(header))
        };
        let commits = match wal.commits_after(&cursor, Some(index.max_frame)) {
            Ok(c) => c,
            Err(walfile::WalFileError::Moved { reason, .. }) => return Ok(Pass::Gap { reason }),
            Err(e) => return Err(e.into()),
        };
        let found = commits.len() as u32;
        let last = commits.last().copied();
        if found != expected || last.map(|c| c.frame) != Some(index.max_frame) {
            return Ok(Pass::Gap {
                reason: format!(
                    "{expected} commits were made since {}, {found} of them are in the WAL{}",
                    self.stream.end,
                    if same_wal {
                        ""
                    } else {
                        " (the WAL was restarted over the others)"
                    }
                ),
            });
        }
        let records = commits
            .iter()
            .map(|c| CommitRecord {
                at: Position {
                    wal: wal_number,
                    frame: c.frame,
                },
                pages: c.pages,
                seen_at: now,
                last_event_id: (pinned.exact && Some(c.frame) == last.map(|l| l.frame))
                    .then_some(pinned.last_event_id),
            })
            .collect();
        let last_frame = index.max_frame;
        let (header, path, after) =
            match self.write_segment(&wal, wal_number, cursor, last_frame, records) {
                Ok(written) => written,
                Err(ReplicaError::Segment(segment::SegmentError::Bad { reason, .. })) => {
                    return Ok(Pass::Gap { reason })
                }
                Err(e) => return Err(e),
            };
        self.stream = Stream {
            wal_number,
            cursor: Some(after),
            end: Position {
                wal: wal_number,
                frame: last_frame,
            },
            commits: index.commits,
        };
        Ok(Pass::Spooled { header, path })
    }

    /// Lets go of the read pin, so that a RESTART or TRUNCATE checkpoint can reset the
    /// WAL: call it right after a pass, and [`Tailer::pass`] again after the
    /// checkpoint (which moves the pin again).
    pub fn release_pin(&mut self) {
        self.pin.release();
    }

    /// Gives the pin's connections back (a new generation reuses them).
    pub fn into_pin(mut self) -> ReadPin {
        self.pin.release();
        self.pin
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn vanished(&self) -> Pass {
        if self.stream.end.frame == 0 && self.stream.cursor.is_none() {
            Pass::Idle
        } else {
            Pass::Gap {
                reason: "the WAL and its index are gone (the database left WAL mode?)".into(),
            }
        }
    }

    fn write_segment(
        &self,
        wal: &WalFile,
        wal_number: u32,
        cursor: WalCursor,
        last_frame: u32,
        records: Vec<CommitRecord>,
    ) -> Result<(SegmentHeader, PathBuf, WalCursor), ReplicaError> {
        let first = Position {
            wal: wal_number,
            frame: cursor.frames + 1,
        };
        let last = Position {
            wal: wal_number,
            frame: last_frame,
        };
        let path = self.dir.join(format!("{first}_{last}{SEGMENT_SUFFIX}"));
        let temp = with_temp(&path);
        let file = durable::create_file(&temp, 0o600).map_err(ReplicaError::io(&temp))?;
        let mut out = BufWriter::new(file);
        let written = segment::write_from_wal(
            &mut out,
            &self.generation,
            self.stream.end,
            wal,
            (wal_number, cursor),
            last_frame,
            records,
        )
        .and_then(|w| {
            let io = |source| segment::SegmentError::Io {
                what: temp.display().to_string(),
                source,
            };
            out.flush().map_err(io)?;
            durable::sync_file(&temp).map_err(io)?;
            Ok(w)
        });
        let (header, after) = match written {
            Ok(w) => w,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e.into());
            }
        };
        // Durable before the pass counts: once a checkpoint resets the WAL, the
        // spool is the only copy of these frames until every replica has them.
        durable::rename(&temp, &path)
            .and_then(|()| durable::sync_dir(&self.dir))
            .map_err(ReplicaError::io(&path))?;
        Ok((header, path, after))
    }
}

/// Moves the pin until its snapshot is a commit known exactly (no commit landed while
/// it began), which a generation's start needs: the snapshot must be exactly where
/// its first segment begins.
fn pin_exactly(pin: &mut ReadPin) -> Result<Pinned, ReplicaError> {
    for _ in 0..SNAPSHOT_PIN_TRIES {
        let pinned = pin.advance()?;
        if pinned.exact {
            return Ok(pinned);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    Err(ReplicaError::Open {
        replica: "replication".into(),
        reason: "commits never paused long enough to take a snapshot at a known commit".into(),
    })
}

/// The stream's start at the pinned commit: after its last frame, with the chain
/// there read from the WAL.
fn stream_at(database: &Path, pinned: &Pinned) -> Result<(Stream, String), ReplicaError> {
    let empty = |commits: u32| Stream {
        wal_number: 0,
        cursor: None,
        end: Position { wal: 0, frame: 0 },
        commits,
    };
    let Some(index) = pinned.index else {
        return Ok((empty(0), String::new()));
    };
    if index.max_frame == 0 {
        return Ok((empty(index.commits), String::new()));
    }
    let wal = WalFile::open(database)?.ok_or_else(|| missing_wal(database))?;
    let header = wal
        .header()?
        .filter(|h| h.salt == index.salt)
        .ok_or_else(|| missing_wal(database))?;
    let cursor = wal.copy_frames(
        &WalCursor::at_start(header),
        index.max_frame,
        &mut io::sink(),
    )?;
    Ok((
        Stream {
            wal_number: 0,
            cursor: Some(cursor),
            end: Position {
                wal: 0,
                frame: index.max_frame,
            },
            commits: index.commits,
        },
        hex::encode(header.to_bytes()),
    ))
}

fn missing_wal(database: &Path) -> ReplicaError {
    ReplicaError::Open {
        replica: "replication".into(),
        reason: format!(
            "{}: the wal-index names frames the WAL file does not hold",
            walfile::wal_path(database).display()
        ),
    }
}

fn with_temp(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::replica::applier::Applier;
    use crate::replica::segment::SegmentReader;
    use rusqlite::Connection;

    pub(in crate::replica) fn database(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("live.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE events(id INTEGER PRIMARY KEY AUTOINCREMENT, data BLOB);",
        )
        .expect("schema");
        (path, conn)
    }

    pub(in crate::replica) fn tailer(dir: &Path, db: &Path) -> (Tailer, SnapshotInfo) {
        let open = || Connection::open(db).expect("pin connection");
        let pin = ReadPin::new(db, [open(), open()]);
        Tailer::start(db, pin, &dir.join("spool"), Utc::now()).expect("start")
    }

    pub(in crate::replica) fn insert(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO events(data) VALUES (randomblob(700))", [])
                .expect("insert");
        }
    }

    fn spooled(pass: Pass) -> SegmentHeader {
        match pass {
            Pass::Spooled { header, .. } => header,
            other => panic!("expected a segment, got {other:?}"),
        }
    }

    /// Every row of the test table, in id order.
    pub(in crate::replica) fn events(conn: &Connection) -> Vec<(i64, Vec<u8>)> {
        let mut s = conn
            .prepare("SELECT id, data FROM events ORDER BY id")
            .expect("prepare");
        s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
    }

    /// The snapshot and every segment of the generation, applied in name order.
    fn restore_all(generation: &Path, out: &Path) -> Vec<CommitRecord> {
        let info: SnapshotInfo =
            serde_json::from_slice(&fs::read(generation.join(SNAPSHOT_INFO)).expect("info"))
                .expect("parse info");
        fs::copy(generation.join(SNAPSHOT), out).expect("copy snapshot");
        let mut applier = Applier::open(out, info.page_size).expect("applier");
        applier.chain_end = Some(info.chain_end());
        let mut names: Vec<_> = fs::read_dir(generation)
            .expect("list")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        names.sort();
        let mut ends = Vec::new();
        for name in names {
            let bytes = fs::read(&name).expect("read segment");
            let mut reader = SegmentReader::new(&bytes[..], "test").expect("reader");
            applier.apply(&mut reader, |_, _| Ok(false)).expect("apply");
            ends.extend(applier.applied.clone());
        }
        applier.finish().expect("finish");
        ends
    }

    /// A direct writer on its own connection, a checkpoint that restarts the WAL, and
    /// one that truncates it: the snapshot and the segments rebuild the database, and
    /// each segment's last commit carries the event id it really had.
    #[test]
    fn the_snapshot_and_segments_rebuild_the_database_across_restarts() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, conn) = database(dir.path());
        insert(&conn, 5);
        let (mut tailer, info) = tailer(dir.path(), &db);
        assert_eq!(info.last_event_id, 5);
        assert!(
            info.position.frame > 0,
            "the snapshot is inside the first WAL"
        );
        assert!(matches!(tailer.pass(Utc::now()).expect("pass"), Pass::Idle));

        let direct = Connection::open(&db).expect("direct writer");
        insert(&direct, 3);
        insert(&conn, 2);
        let first = spooled(tailer.pass(Utc::now()).expect("pass"));
        assert_eq!(first.commits.len(), 5);
        assert_eq!(first.commits.last().and_then(|c| c.last_event_id), Some(10));
        assert!(first.commits[..4].iter().all(|c| c.last_event_id.is_none()));

        for mode in ["RESTART", "TRUNCATE"] {
            tailer.release_pin();
            conn.execute_batch(&format!("PRAGMA wal_checkpoint({mode})"))
                .expect("checkpoint");
            assert!(matches!(tailer.pass(Utc::now()).expect("pass"), Pass::Idle));
            insert(&direct, 2);
            let next = spooled(tailer.pass(Utc::now()).expect("pass"));
            assert_eq!(next.first().map(|p| p.frame), Some(1), "{mode}: a new WAL");
        }
        assert_eq!(tailer.end().wal, 2, "two restarts after the first WAL");

        let out = dir.path().join("restored.db");
        let ends = restore_all(tailer.dir(), &out);
        assert_eq!(ends.last().and_then(|c| c.last_event_id), Some(14));
        let restored = Connection::open(&out).expect("open restored");
        assert_eq!(events(&restored), events(&conn));
    }

    /// The fault a pin cannot stop: with the pin let go, a direct writer commits and
    /// truncates the WAL before the next pass reads it. The pass must call it a gap.
    #[test]
    fn commits_lost_to_a_restart_before_they_were_read_are_a_gap() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, conn) = database(dir.path());
        insert(&conn, 2);
        let (mut tailer, _) = tailer(dir.path(), &db);
        tailer.release_pin();
        let direct = Connection::open(&db).expect("direct writer");
        insert(&direct, 1);
        direct
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        insert(&direct, 1);
        match tailer.pass(Utc::now()).expect("pass") {
            Pass::Gap { reason } => assert!(reason.contains("2 commits"), "{reason}"),
            other => panic!("expected a gap, got {other:?}"),
        }
    }

    /// The pin is what keeps a direct writer's own checkpoint from restarting the WAL
    /// over frames not read: while it is held, a TRUNCATE by another connection cannot
    /// reset the WAL, and the next pass finds every commit.
    #[test]
    fn while_the_pin_is_held_another_connections_checkpoint_cannot_reset_the_wal() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, conn) = database(dir.path());
        let (mut tailer, _) = tailer(dir.path(), &db);
        let direct = Connection::open(&db).expect("direct writer");
        direct
            .busy_timeout(std::time::Duration::from_millis(50))
            .expect("timeout");
        insert(&direct, 3);
        let (busy, _, _): (i64, i64, i64) = direct
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!(busy, 1, "the pin's reader kept the WAL from being reset");
        insert(&direct, 1);
        let segment = spooled(tailer.pass(Utc::now()).expect("pass"));
        assert_eq!(segment.commits.len(), 4);
        let out = dir.path().join("restored.db");
        restore_all(tailer.dir(), &out);
        assert_eq!(
            events(&Connection::open(&out).expect("open")),
            events(&conn)
        );
        // Released (as before dbwarden's own RESTART or TRUNCATE), it holds nothing.
        tailer.release_pin();
        let (busy, _, _): (i64, i64, i64) = direct
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .expect("checkpoint");
        assert_eq!(busy, 0, "a released pin holds the WAL no more");
    }

    /// The direct writer of the test below, in a process of its own: it commits one
    /// row per transaction without pause for 3 s, with SQLite's automatic checkpoint
    /// every 100 pages.
    #[test]
    #[ignore = "the child process of the direct-writer test, which runs it"]
    fn direct_writer_child() {
        let Some(db) = std::env::var_os("DBWARDEN_TEST_DIRECT_WRITER") else {
            panic!(
                "run by a_direct_writer_in_another_process_checkpointing_on_its_own_makes_no_gap"
            );
        };
        let direct = Connection::open(db).expect("direct writer");
        direct
            .execute_batch("PRAGMA wal_autocheckpoint=100; PRAGMA busy_timeout=5000")
            .expect("settings");
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_secs(3) {
            insert(&direct, 1);
        }
    }

    /// A direct writer in another process (as Healarr is) committing without pause,
    /// with SQLite's automatic checkpoint on, while the tailer passes: every pass finds
    /// every commit (no gap), and the generation restores to the writer's database.
    /// (Seen to fail, a gap within a few passes, while reading the wal-index closed a
    /// descriptor of the `-shm` file and so dropped the pin's lock for other processes;
    /// a writer in this process never showed it.)
    #[test]
    fn a_direct_writer_in_another_process_checkpointing_on_its_own_makes_no_gap() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, conn) = database(dir.path());
        let (mut tailer, _) = tailer(dir.path(), &db);
        let mut writer = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--ignored",
                "--exact",
                "replica::tailer::tests::direct_writer_child",
                "--quiet",
            ])
            .env("DBWARDEN_TEST_DIRECT_WRITER", &db)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("the writer's process");
        let mut passes = 0;
        while writer.try_wait().expect("writer").is_none() {
            std::thread::sleep(std::time::Duration::from_millis(50));
            match tailer.pass(Utc::now()).expect("pass") {
                Pass::Gap { reason } => panic!("a gap after {passes} passes: {reason}"),
                _ => passes += 1,
            }
        }
        assert!(writer.wait().expect("writer").success(), "the writer ran");
        assert!(passes > 10, "{passes} passes");
        let _ = tailer.pass(Utc::now()).expect("last pass");
        let out = dir.path().join("restored.db");
        restore_all(tailer.dir(), &out);
        let written = events(&conn);
        assert!(
            written.len() > 1_000,
            "the writer wrote {} rows",
            written.len()
        );
        assert_eq!(events(&Connection::open(&out).expect("open")), written);
    }

    /// A generation started while another thread commits as fast as it can: the
    /// snapshot is exactly the commit the stream starts after (nothing doubled or
    /// missed at the seam).
    #[test]
    fn a_snapshot_taken_under_writes_joins_the_stream_without_a_seam() {
        let dir = tempfile::tempdir().expect("dir");
        let (db, conn) = database(dir.path());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (db, stop) = (db.clone(), stop.clone());
            std::thread::spawn(move || {
                let w = Connection::open(&db).expect("writer");
                w.busy_timeout(std::time::Duration::from_secs(5))
                    .expect("timeout");
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    insert(&w, 1);
                }
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(50));
        let (mut tailer, info) = tailer(dir.path(), &db);
        for _ in 0..20 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            assert!(!matches!(
                tailer.pass(Utc::now()).expect("pass"),
                Pass::Gap { .. }
            ));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer thread");
        let _ = tailer.pass(Utc::now()).expect("last pass");
        let snapshot = Connection::open(tailer.dir().join(SNAPSHOT)).expect("snapshot");
        let in_snapshot: i64 = snapshot
            .query_row("SELECT max(id) FROM events", [], |r| r.get(0))
            .expect("max");
        assert_eq!(in_snapshot, info.last_event_id);
        drop(snapshot);
        let out = dir.path().join("restored.db");
        restore_all(tailer.dir(), &out);
        assert_eq!(
            events(&Connection::open(&out).expect("open")),
            events(&conn)
        );
    }
}

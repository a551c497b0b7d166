//! Reading SQLite's WAL file and its wal-index header directly, for continuous
//! replication: the frames a commit appended are the database's physical change, and
//! shipping them misses nothing that changed the file, whoever wrote it.
//!
//! Both formats are SQLite's documented ones (sqlite.org/fileformat2.html, "The
//! Write-Ahead Log", and sqlite.org/walformat.html, "The WAL-Index Header"):
//!
//! - the `-wal` file: a 32-byte header (magic, format version, page size, checkpoint
//!   sequence, two salts, a checksum of the first 24 bytes), then frames of a 24-byte
//!   header (page number, the database's size in pages for a commit's last frame and 0
//!   otherwise, the two salts, a checksum) and one page. Each frame's checksum runs on
//!   from the one before it, seeded by the header's, over the frame header's first 8
//!   bytes and the page: a chain that ends at the first frame that is torn, stale
//!   (older salts, left from before the WAL was restarted) or never written.
//! - the `-shm` file's first 136 bytes: two copies of the wal-index header, which the
//!   last commit wrote (its `mxFrame`, the newest committed frame, and `iChange`, a
//!   counter every commit increments), and the checkpoint information (`nBackfill`,
//!   the frames already copied back into the database).
//!
//! Nothing here writes either file, and nothing here trusts what it reads: a frame
//! counts only when its salts and its checksum chain say the current WAL holds it, and
//! a header only when both copies agree and its checksum holds.
//!
//! **The `-shm` file is opened once and never closed** ([`shm_file`]). SQLite's WAL
//! locks (a reader's read mark, the writer's and the checkpointer's locks) are POSIX
//! `fcntl` locks on that file, and closing *any* descriptor of a file drops every such
//! lock the process holds on it. Opening and closing it for each read silently
//! released the [read pin](super::pin)'s lock for every other process: a direct
//! writer's own checkpoint could then copy frames into the database under the pin's
//! snapshot and restart the WAL over frames not yet read (seen as replication gaps
//! every few hundred commits, and snapshots failing `integrity_check`, under a
//! direct writer in another process; connections of this process were never
//! affected, as SQLite tracks their locks itself).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

/// The WAL header's magic number when checksums are computed on little-endian words;
/// with the low bit set (`0x377f0683`) they are big-endian.
pub const MAGIC_LITTLE_ENDIAN: u32 = 0x377f_0682;
pub const MAGIC_BIG_ENDIAN: u32 = 0x377f_0683;
/// The only WAL format version SQLite writes.
pub const FORMAT_VERSION: u32 = 3_007_000;
pub const HEADER_BYTES: usize = 32;
pub const FRAME_HEADER_BYTES: usize = 24;

/// How many bytes of the `-shm` file [`read_wal_index`] reads: two 48-byte headers
/// and the 40-byte checkpoint information.
const WAL_INDEX_BYTES: usize = 136;

#[derive(Debug, thiserror::Error)]
pub enum WalFileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: not a WAL file: {reason}")]
    NotAWal { path: PathBuf, reason: String },
    /// The WAL no longer holds the frames a cursor points at: it was restarted (new
    /// salts) or its frames were overwritten since the cursor was taken.
    #[error("{path}: the WAL changed under the reader (frame {frame}: {reason})")]
    Moved {
        path: PathBuf,
        frame: u32,
        reason: String,
    },
}

/// The 32-byte header at the start of a WAL file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalHeader {
    pub big_endian_checksums: bool,
    pub page_size: u32,
    pub checkpoint_sequence: u32,
    /// The two salts as SQLite stores them: big-endian words. A restart of the WAL adds
    /// one to the first and draws the second at random.
    pub salt: [u32; 2],
    pub checksum: [u32; 2],
}

impl WalHeader {
    /// Parses and checks a WAL header: magic, version, page size and its checksum.
    pub fn parse(bytes: &[u8; HEADER_BYTES]) -> Result<WalHeader, String> {
        let word = |i: usize| be32(&bytes[i..i + 4]);
        let big_endian_checksums = match word(0) {
            MAGIC_LITTLE_ENDIAN => false,
            MAGIC_BIG_ENDIAN => true,
            other => return Err(format!("magic {other:#010x}")),
        };
        if word(4) != FORMAT_VERSION {
            return Err(format!("format version {}", word(4)));
        }
        let page_size = word(8);
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(format!("page size {page_size}"));
        }
        let header = WalHeader {
            big_endian_checksums,
            page_size,
            checkpoint_sequence: word(12),
            salt: [word(16), word(20)],
            checksum: [word(24), word(28)],
        };
        if checksum(big_endian_checksums, &bytes[..24], [0, 0]) != header.checksum {
            return Err("header checksum does not match".into());
        }
        Ok(header)
    }

    pub fn to_bytes(&self) -> [u8; HEADER_BYTES] {
        let mut out = [0u8; HEADER_BYTES];
        let magic = if self.big_endian_checksums {
            MAGIC_BIG_ENDIAN
        } else {
            MAGIC_LITTLE_ENDIAN
        };
        let words = [
            magic,
            FORMAT_VERSION,
            self.page_size,
            self.checkpoint_sequence,
            self.salt[0],
            self.salt[1],
            self.checksum[0],
            self.checksum[1],
        ];
        for (i, w) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }

    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.page_size as usize
    }
}

/// The 24-byte header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub page_number: u32,
    /// The database's size in pages after the commit this frame ends; 0 when the
    /// frame is not a commit's last.
    pub commit_pages: u32,
    pub salt: [u32; 2],
    pub checksum: [u32; 2],
}

impl FrameHeader {
    pub fn parse(bytes: &[u8]) -> FrameHeader {
        FrameHeader {
            page_number: be32(&bytes[0..4]),
            commit_pages: be32(&bytes[4..8]),
            salt: [be32(&bytes[8..12]), be32(&bytes[12..16])],
            checksum: [be32(&bytes[16..20]), be32(&bytes[20..24])],
        }
    }

    pub fn is_commit(&self) -> bool {
        self.commit_pages != 0
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// SQLite's WAL checksum: over 32-bit words taken two at a time, `s0 += x0 + s1;
/// s1 += x1 + s0`, starting from `seed`. `data` is a multiple of 8 bytes.
pub fn checksum(big_endian: bool, data: &[u8], seed: [u32; 2]) -> [u32; 2] {
    let [mut s0, mut s1] = seed;
    for pair in data.chunks_exact(8) {
        let (x0, x1) = if big_endian {
            (be32(&pair[0..4]), be32(&pair[4..8]))
        } else {
            (
                u32::from_le_bytes([pair[0], pair[1], pair[2], pair[3]]),
                u32::from_le_bytes([pair[4], pair[5], pair[6], pair[7]]),
            )
        };
        s0 = s0.wrapping_add(x0).wrapping_add(s1);
        s1 = s1.wrapping_add(x1).wrapping_add(s0);
    }
    [s0, s1]
}

/// Checks one frame (header and page) against the WAL it should belong to and the
/// checksum of the frame before it; returns the frame's header and its checksum, the
/// seed of the next frame.
pub fn check_frame(
    wal: &WalHeader,
    previous: [u32; 2],
    frame: &[u8],
) -> Result<FrameHeader, String> {
    let header = frame_of(wal, frame)?;
    let sum = checksum(wal.big_endian_checksums, &frame[..8], previous);
    let sum = checksum(wal.big_endian_checksums, &frame[FRAME_HEADER_BYTES..], sum);
    if sum != header.checksum {
        return Err("its checksum does not follow from the frame before".into());
    }
    Ok(header)
}

/// The header of a frame of `wal` whose checksum was checked before (the same bytes
/// read a second time): its salts and page number are checked, not the checksum.
pub fn frame_of(wal: &WalHeader, frame: &[u8]) -> Result<FrameHeader, String> {
    let header = FrameHeader::parse(&frame[..FRAME_HEADER_BYTES]);
    if header.salt != wal.salt {
        return Err("its salts are not the WAL header's".into());
    }
    if header.page_number == 0 {
        return Err("page number 0".into());
    }
    Ok(header)
}

/// A position in a WAL: just after a commit (or at the start), with what is needed to
/// check the frames that follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalCursor {
    pub header: WalHeader,
    /// How many frames precede the position: the next frame read is `frames + 1`
    /// (frames are numbered from 1, as SQLite numbers them).
    pub frames: u32,
    /// The checksum of frame `frames`, or the header's when `frames` is 0.
    pub chain: [u32; 2],
}

impl WalCursor {
    pub fn at_start(header: WalHeader) -> WalCursor {
        WalCursor {
            header,
            frames: 0,
            chain: header.checksum,
        }
    }
}

/// One commit found in the WAL: the number of its last frame and the database's size
/// in pages after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Commit {
    pub frame: u32,
    pub pages: u32,
}

/// An open `-wal` file.
pub struct WalFile {
    path: PathBuf,
    file: File,
}

impl WalFile {
    /// Opens the WAL beside `database` (`<database>-wal`) for reading; `None` when it
    /// does not exist.
    pub fn open(database: &Path) -> Result<Option<WalFile>, WalFileError> {
        let path = wal_path(database);
        match File::open(&path) {
            Ok(file) => Ok(Some(WalFile { path, file })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(WalFileError::Io { path, source }),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The WAL's header, or `None` while the file holds none (empty, or truncated by a
    /// checkpoint and not written since).
    pub fn header(&self) -> Result<Option<WalHeader>, WalFileError> {
        let mut bytes = [0u8; HEADER_BYTES];
        match self.read_exact_at(&mut bytes, 0)? {
            false => Ok(None),
            true => WalHeader::parse(&bytes)
                .map(Some)
                .map_err(|reason| WalFileError::NotAWal {
                    path: self.path.clone(),
                    reason,
                }),
        }
    }

    /// Reads the frames after `cursor` that belong to this WAL, as far as the last one
    /// that ends a commit and no further than frame `up_to` (when given): the commits
    /// found, in order. Frames after the last commit (a transaction being written, or
    /// spilled from the cache) are not part of the answer. Returns an empty list when
    /// nothing was committed after the cursor; [`WalFileError::Moved`] when the WAL was
    /// restarted since the cursor was taken.
    pub fn commits_after(
        &self,
        cursor: &WalCursor,
        up_to: Option<u32>,
    ) -> Result<Vec<Commit>, WalFileError> {
        self.check_same_wal(cursor)?;
        let mut commits = Vec::new();
        let mut frame = vec![0u8; cursor.header.frame_bytes()];
        let mut chain = cursor.chain;
        let mut number = cursor.frames;
        while up_to.is_none_or(|last| number < last) {
            if !self.read_exact_at(&mut frame, self.offset(&cursor.header, number + 1))? {
                break;
            }
            match check_frame(&cursor.header, chain, &frame) {
                Ok(header) => {
                    number += 1;
                    chain = header.checksum;
                    if header.is_commit() {
                        commits.push(Commit {
                            frame: number,
                            pages: header.commit_pages,
                        });
                    }
                }
                Err(_) => break,
            }
        }
        Ok(commits)
    }

    /// Writes frames `cursor.frames + 1 ..= last` to `out` as they are in the WAL
    /// (header and page each), checking each again on the way, and returns the cursor
    /// after them. `last` must end a commit ([`WalFile::commits_after`] finds one).
    pub fn copy_frames(
        &self,
        cursor: &WalCursor,
        last: u32,
        out: &mut dyn Write,
    ) -> Result<WalCursor, WalFileError> {
        let mut frame = vec![0u8; cursor.header.frame_bytes()];
        let mut chain = cursor.chain;
        for number in cursor.frames + 1..=last {
            let moved = |reason: String| WalFileError::Moved {
                path: self.path.clone(),
                frame: number,
                reason,
            };
            if !self.read_exact_at(&mut frame, self.offset(&cursor.header, number))? {
                return Err(moved("the file ends before it".into()));
            }
            let header = check_frame(&cursor.header, chain, &frame).map_err(moved)?;
            if number == last && !header.is_commit() {
                return Err(moved("it does not end a commit".into()));
            }
            chain = header.checksum;
            out.write_all(&frame).map_err(|source| WalFileError::Io {
                path: self.path.clone(),
                source,
            })?;
        }
        // The header is read again last: frames that checked out but now sit under a
        // different header were overwritten by a restart while being copied.
        self.check_same_wal(cursor)?;
        Ok(WalCursor {
            header: cursor.header,
            frames: last,
            chain,
        })
    }

    fn check_same_wal(&self, cursor: &WalCursor) -> Result<(), WalFileError> {
        match self.header()? {
            Some(now) if now == cursor.header => Ok(()),
            _ => Err(WalFileError::Moved {
                path: self.path.clone(),
                frame: cursor.frames,
                reason: "the WAL header changed (the WAL was restarted)".into(),
            }),
        }
    }

    fn offset(&self, header: &WalHeader, frame: u32) -> u64 {
        HEADER_BYTES as u64 + (u64::from(frame) - 1) * header.frame_bytes() as u64
    }

    /// Fills `buf` from `offset`; `false` when the file ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<bool, WalFileError> {
        match self.file.read_exact_at(buf, offset) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
            Err(source) => Err(WalFileError::Io {
                path: self.path.clone(),
                source,
            }),
        }
    }
}

pub fn wal_path(database: &Path) -> PathBuf {
    suffixed(database, "-wal")
}

pub fn shm_path(database: &Path) -> PathBuf {
    suffixed(database, "-shm")
}

fn suffixed(database: &Path, suffix: &str) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// What the wal-index header says about the WAL, as of the last commit or restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalIndex {
    /// `iChange`: every commit, by any connection, adds one (wrapping). Across a
    /// restart it goes on counting, which is what shows whether commits were made to
    /// a WAL that was restarted before they could be read.
    pub commits: u32,
    /// `mxFrame`: the newest committed frame.
    pub max_frame: u32,
    /// `nPage`: the database's size in pages.
    pub pages: u32,
    pub salt: [u32; 2],
    /// `nBackfill`: frames already copied back into the database.
    pub backfilled: u32,
}

/// Reads the wal-index header from `<database>-shm`, the way SQLite's readers do
/// without a lock: both copies must agree and the checksum must hold, else it is read
/// again (a writer was between the two copies). `None` when there is no `-shm` file
/// or it is not initialized (no connection has the database open in WAL mode).
pub fn read_wal_index(database: &Path) -> Result<Option<WalIndex>, WalFileError> {
    let path = shm_path(database);
    let file = match shm_file(&path) {
        Ok(Some(f)) => f,
        Ok(None) => return Ok(None),
        Err(source) => return Err(WalFileError::Io { path, source }),
    };
    let mut bytes = [0u8; WAL_INDEX_BYTES];
    for _ in 0..100 {
        match file.read_exact_at(&mut bytes, 0) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(source) => return Err(WalFileError::Io { path, source }),
        }
        if let Some(index) = parse_wal_index(&bytes) {
            return Ok(Some(index));
        }
        if bytes[12] == 0 && bytes[60] == 0 {
            return Ok(None);
        }
        std::thread::yield_now();
    }
    Err(WalFileError::NotAWal {
        path,
        reason: "the wal-index header never read the same twice".into(),
    })
}

/// Every `-shm` file this process opened, by path, each descriptor kept open for the
/// life of the process (see the module's docs: closing one would drop SQLite's locks
/// on that file). A file replaced under the same path (every connection closed, the
/// file deleted and made again) gets a new descriptor; the old one is kept too, as a
/// connection may still hold locks on the old file.
fn shm_file(path: &Path) -> io::Result<Option<Arc<File>>> {
    static OPEN: OnceLock<Mutex<HashMap<PathBuf, Vec<Arc<File>>>>> = OnceLock::new();
    let on_disk = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let same_file = |file: &File| {
        file.metadata()
            .is_ok_and(|m| m.dev() == on_disk.dev() && m.ino() == on_disk.ino())
    };
    let mut open = OPEN
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let kept = open.entry(path.to_path_buf()).or_default();
    if let Some(file) = kept.iter().find(|f| same_file(f)) {
        return Ok(Some(file.clone()));
    }
    let file = match File::open(path) {
        Ok(f) => Arc::new(f),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    kept.push(file.clone());
    Ok(Some(file))
}

/// The wal-index header's words are in the machine's byte order (the `-shm` file is
/// never moved between machines); the salts are the WAL header's bytes as they are.
fn parse_wal_index(bytes: &[u8; WAL_INDEX_BYTES]) -> Option<WalIndex> {
    let (first, second) = (&bytes[0..48], &bytes[48..96]);
    let native = |b: &[u8], i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    if first != second || first[12] == 0 {
        return None;
    }
    let sum = checksum(cfg!(target_endian = "big"), &first[..40], [0, 0]);
    if sum != [native(first, 40), native(first, 44)] {
        return None;
    }
    Some(WalIndex {
        commits: native(first, 8),
        max_frame: native(first, 16),
        pages: native(first, 20),
        salt: [be32(&first[32..36]), be32(&first[36..40])],
        backfilled: native(bytes, 96),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::Connection;

    fn wal_db(dir: &Path) -> (PathBuf, Connection) {
        let path = dir.join("w.db");
        let conn = Connection::open(&path).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, x);",
        )
        .expect("schema");
        (path, conn)
    }

    fn start(path: &Path) -> (WalFile, WalCursor) {
        let wal = WalFile::open(path).expect("open wal").expect("a wal");
        let header = wal.header().expect("header").expect("a header");
        (wal, WalCursor::at_start(header))
    }

    /// Every commit SQLite made is found, in order, each ending with the database's
    /// size then; the wal-index header agrees on the last frame and counts them.
    #[test]
    fn each_commit_is_found_where_sqlite_says_it_ends() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, conn) = wal_db(dir.path());
        let before = read_wal_index(&path).expect("shm").expect("index");
        for i in 0..5 {
            conn.execute("INSERT INTO t(x) VALUES (randomblob(?1))", [1000 * (i + 1)])
                .expect("insert");
        }
        let (wal, cursor) = start(&path);
        let commits = wal.commits_after(&cursor, None).expect("scan");
        let index = read_wal_index(&path).expect("shm").expect("index");
        assert_eq!(commits.len(), 6, "the schema's commit and five inserts");
        assert!(commits.windows(2).all(|w| w[0].frame < w[1].frame));
        assert_eq!(commits.last().map(|c| c.frame), Some(index.max_frame));
        let pages: u32 = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("pages");
        assert_eq!(commits.last().map(|c| c.pages), Some(pages));
        assert_eq!(index.pages, pages);
        assert_eq!(index.commits.wrapping_sub(before.commits), 5);
        assert_eq!(index.salt, cursor.header.salt);
    }

    /// A transaction still being written is not a commit yet: frames spilled from the
    /// cache before COMMIT are not part of the answer.
    #[test]
    fn frames_of_an_open_transaction_are_not_counted() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, conn) = wal_db(dir.path());
        conn.execute_batch("PRAGMA cache_size=2; BEGIN;")
            .expect("begin");
        for _ in 0..50 {
            conn.execute("INSERT INTO t(x) VALUES (randomblob(3000))", [])
                .expect("insert");
        }
        let (wal, cursor) = start(&path);
        let spilled = std::fs::metadata(wal.path()).expect("stat").len();
        let commits = wal.commits_after(&cursor, None).expect("scan");
        assert!(
            spilled > (HEADER_BYTES + 2 * cursor.header.frame_bytes()) as u64,
            "the open transaction spilled frames into the WAL"
        );
        assert_eq!(commits.len(), 1, "only the schema's commit");
        conn.execute_batch("COMMIT").expect("commit");
        assert_eq!(wal.commits_after(&cursor, None).expect("scan").len(), 2);
    }

    /// Frames copied from one commit to another and written over a copy of the
    /// database taken before them give the database SQLite has after them.
    #[test]
    fn copied_frames_replayed_on_the_database_give_sqlites_state() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, conn) = wal_db(dir.path());
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .expect("checkpoint");
        let before = dir.path().join("before.db");
        std::fs::copy(&path, &before).expect("copy of the checkpointed file");
        for i in 0..40 {
            conn.execute("INSERT INTO t(x) VALUES (randomblob(?1))", [i * 300])
                .expect("insert");
        }
        conn.execute("DELETE FROM t WHERE id % 3 = 0", [])
            .expect("delete");
        conn.execute_batch("VACUUM")
            .expect("vacuum shrinks the file");
        let (wal, cursor) = start(&path);
        let commits = wal.commits_after(&cursor, None).expect("scan");
        let last = commits.last().expect("commits");
        let mut frames = Vec::new();
        let after = wal
            .copy_frames(&cursor, last.frame, &mut frames)
            .expect("copy");
        assert_eq!(after.frames, last.frame);
        replay(&before, &cursor.header, &frames);
        let replayed = Connection::open(&before).expect("open replayed");
        let rows = |c: &Connection| -> Vec<(i64, Vec<u8>)> {
            let mut s = c
                .prepare("SELECT id, x FROM t ORDER BY id")
                .expect("prepare");
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(rows(&replayed), rows(&conn));
        let check: String = replayed
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("check");
        assert_eq!(check, "ok");
    }

    fn replay(database: &Path, wal: &WalHeader, frames: &[u8]) {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(database)
            .expect("open db");
        let page = wal.page_size as u64;
        for frame in frames.chunks_exact(wal.frame_bytes()) {
            let header = FrameHeader::parse(frame);
            file.write_all_at(
                &frame[FRAME_HEADER_BYTES..],
                (u64::from(header.page_number) - 1) * page,
            )
            .expect("write page");
            if header.is_commit() {
                file.set_len(u64::from(header.commit_pages) * page)
                    .expect("truncate");
            }
        }
    }

    /// A frame whose page was changed on disk ends the chain there, and a cursor
    /// taken before a restart is told the WAL moved.
    #[test]
    fn a_damaged_frame_ends_the_chain_and_a_restart_moves_the_wal() {
        let dir = tempfile::tempdir().expect("dir");
        let (path, conn) = wal_db(dir.path());
        for _ in 0..3 {
            conn.execute("INSERT INTO t(x) VALUES (randomblob(100))", [])
                .expect("insert");
        }
        let (wal, cursor) = start(&path);
        let commits = wal.commits_after(&cursor, None).expect("scan");
        assert_eq!(commits.len(), 4);
        let second_commit_end = commits[1].frame;
        let damaged_frame = second_commit_end + 1;
        let offset = HEADER_BYTES as u64
            + u64::from(damaged_frame - 1) * cursor.header.frame_bytes() as u64
            + FRAME_HEADER_BYTES as u64
            + 100;
        let raw = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(wal.path())
            .expect("open raw");
        let mut byte = [0u8; 1];
        raw.read_exact_at(&mut byte, offset).expect("read");
        raw.write_all_at(&[byte[0] ^ 0xff], offset).expect("flip");
        let commits = wal.commits_after(&cursor, None).expect("scan");
        assert_eq!(
            commits.iter().map(|c| c.frame).collect::<Vec<_>>(),
            vec![commits[0].frame, second_commit_end]
        );
        let mut sink = Vec::new();
        assert!(matches!(
            wal.copy_frames(&cursor, damaged_frame, &mut sink),
            Err(WalFileError::Moved { frame, .. }) if frame == damaged_frame
        ));
        raw.write_all_at(&byte, offset).expect("restore");

        let before = read_wal_index(&path).expect("shm").expect("index");
        conn.execute_batch("PRAGMA wal_checkpoint(PASSIVE)")
            .expect("checkpoint");
        conn.execute("INSERT INTO t(x) VALUES (1)", [])
            .expect("insert");
        let after = read_wal_index(&path).expect("shm").expect("index");
        assert_eq!(after.salt[0], before.salt[0].wrapping_add(1));
        assert_eq!(after.commits, before.commits.wrapping_add(1));
        assert!(matches!(
            wal.commits_after(&cursor, None),
            Err(WalFileError::Moved { .. })
        ));
        let (_, restarted) = start(&path);
        assert_eq!(restarted.header.salt, after.salt);
        assert_eq!(
            restarted.header.checkpoint_sequence,
            cursor.header.checkpoint_sequence + 1
        );
    }

    #[test]
    fn a_file_that_is_not_a_wal_is_refused_with_the_reason() {
        let mut bytes = [0u8; HEADER_BYTES];
        bytes[..4].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        assert_eq!(WalHeader::parse(&bytes), Err("magic 0x12345678".into()));
        let header = WalHeader {
            big_endian_checksums: false,
            page_size: 4096,
            checkpoint_sequence: 7,
            salt: [1, 2],
            checksum: [0, 0],
        };
        let mut bytes = header.to_bytes();
        let sum = checksum(false, &bytes[..24], [0, 0]);
        bytes[24..28].copy_from_slice(&sum[0].to_be_bytes());
        bytes[28..32].copy_from_slice(&sum[1].to_be_bytes());
        let parsed = WalHeader::parse(&bytes).expect("valid");
        assert_eq!(parsed.to_bytes(), bytes);
        bytes[13] ^= 1;
        assert_eq!(
            WalHeader::parse(&bytes),
            Err("header checksum does not match".into())
        );
    }
}

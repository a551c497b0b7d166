//! Segments: the WAL frames of consecutive commits, as continuous replication ships
//! them, and how a restore applies them.
//!
//! A segment is one file (before compression and encryption, which are the backups'
//! [`super::codec`], ending with its digest trailer):
//!
//! ```text
//! dbwarden-segment 2\n      the magic line
//! {JSON header}\n           one line: see SegmentHeader
//! frames                    the WAL frames exactly as SQLite wrote them (24-byte frame
//!                           header, then the page), run after run, in order
//! ```
//!
//! The header lists the segment's *runs* (frames that follow each other in one WAL:
//! which WAL of the generation, its 32-byte header, the first frame's number, how many
//! frames, and the checksum the first frame's checksum runs on from) and its *commits*
//! (where each ends, the database's size in pages after it, when dbwarden saw it and,
//! where known, the highest event id then). A reader checks every frame against the
//! WAL's own checksum chain and the run's salts, and the SHA-256 of the segment: in
//! format 2, of its compressed bytes, against the stream's digest trailer (checked by
//! [`super::codec::decoder`] as they are read, required by whoever reads a download:
//! [`SegmentReader::needs_trailer`]); in format 1 (written before 2026-12-08, still
//! read), of all frame bytes, against the header's `frames_sha256`. The chain also ties
//! each segment to the one before it ([`SegmentHeader::follows`]), so a missing or
//! doubled segment cannot go unseen.
//!
//! The spool keeps the same thing with its frames compressed (a *piece*, written by the
//! tailer and read back only on this machine): `dbwarden-piece 1\n`, the same header
//! line, then the frames as one zstd frame with zstd's content checksum. The WAL the
//! frames come from is already on disk, so the spool's copy is written small;
//! [`SegmentReader`] reads either, and what is uploaded is always the plain form above,
//! written by [`write_joined`]. A piece keeps its frames' SHA-256 in its header.
//!
//! How a restore applies them is [`super::applier`].

use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::db::walfile::{self, FrameHeader, WalCursor, WalHeader, FRAME_HEADER_BYTES};

pub const MAGIC: &[u8] = b"dbwarden-segment 2\n";
/// Segments written before 2026-12-08: the SHA-256 of the frames in the header.
pub const MAGIC_FORMAT_1: &[u8] = b"dbwarden-segment 1\n";
/// A spooled piece: the header as in a segment, the frames zstd-compressed.
pub const PIECE_MAGIC: &[u8] = b"dbwarden-piece 1\n";
/// zstd's fastest ordinary level: the frames of one piece repeat the same few pages,
/// which compress well even so, and the tailer must keep up with the writer.
const PIECE_ZSTD_LEVEL: i32 = 1;
/// A header line longer than this is not a segment's (a generous bound: a header lists
/// one entry per commit, about 120 bytes each).
const MAX_HEADER_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SegmentError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("segment {segment}: {reason}")]
    Bad { segment: String, reason: String },
    #[error("segment {segment} does not follow {previous}: {reason}")]
    Gap {
        previous: String,
        segment: String,
        reason: String,
    },
}

/// A place in a generation's stream of frames: frame `frame` of the generation's WAL
/// number `wal` (the WAL counts from 0 at the generation's snapshot, one more at each
/// restart of the WAL). Written as `wal-frame` in hex, 8 digits each, so names sort in
/// stream order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Position {
    pub wal: u32,
    pub frame: u32,
}

impl Position {
    /// Where a segment following one that ends here may start: the next frame of the
    /// same WAL, or (after a restart of the WAL) the first frame of the next one.
    pub fn successors(self) -> [Position; 2] {
        [
            Position {
                wal: self.wal,
                frame: self.frame + 1,
            },
            Position {
                wal: self.wal + 1,
                frame: 1,
            },
        ]
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:08x}-{:08x}", self.wal, self.frame)
    }
}

impl std::str::FromStr for Position {
    type Err = String;
    fn from_str(s: &str) -> Result<Position, String> {
        let (wal, frame) = s
            .split_once('-')
            .filter(|(w, f)| w.len() == 8 && f.len() == 8)
            .ok_or_else(|| format!("`{s}` is not a position (8 hex digits, -, 8 hex digits)"))?;
        let hex = |x: &str| u32::from_str_radix(x, 16).map_err(|e| format!("`{s}`: {e}"));
        Ok(Position {
            wal: hex(wal)?,
            frame: hex(frame)?,
        })
    }
}

/// Frames that follow each other in one WAL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub wal: u32,
    /// The WAL's 32-byte header, hex: its salts and checksum byte order.
    pub wal_header: String,
    pub first_frame: u32,
    pub frames: u32,
    /// The checksum the first frame's runs on from: the previous frame's, or the WAL
    /// header's for frame 1.
    pub chain: [u32; 2],
}

impl Run {
    pub fn header(&self) -> Result<WalHeader, String> {
        let bytes: [u8; walfile::HEADER_BYTES] = hex::decode(&self.wal_header)
            .map_err(|e| format!("wal_header: {e}"))?
            .try_into()
            .map_err(|_| "wal_header is not 32 bytes".to_string())?;
        WalHeader::parse(&bytes).map_err(|e| format!("wal_header: {e}"))
    }

    pub fn last(&self) -> Position {
        Position {
            wal: self.wal,
            frame: self.first_frame + self.frames - 1,
        }
    }
}

/// One commit inside a segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitRecord {
    /// Where the commit's last frame is.
    pub at: Position,
    /// The database's size in pages after it.
    pub pages: u32,
    /// When dbwarden read the commit from the WAL: at most a poll interval after it
    /// was made (see the replication docs), never before.
    pub seen_at: DateTime<Utc>,
    /// The highest event id ever assigned when this commit was the newest (the events
    /// table's AUTOINCREMENT counter), when dbwarden read it at exactly this commit.
    pub last_event_id: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentHeader {
    pub generation: String,
    /// The last frame before this segment's first: the previous segment's end, or the
    /// generation's snapshot. Across a restart of the WAL it names the old WAL's last
    /// frame, so a segment lost at the end of a WAL is a gap too.
    pub after: Position,
    pub page_size: u32,
    pub runs: Vec<Run>,
    pub commits: Vec<CommitRecord>,
    /// The SHA-256 of all frame bytes, hex: a spooled piece's, and a format 1
    /// segment's. Empty (and not written) in a format 2 segment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub frames_sha256: String,
}

/// Where a segment (or a generation's snapshot) ends, as the next segment must start
/// from it. At frame 0 the header and chain are not known and not checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainEnd {
    pub position: Position,
    pub wal_header: String,
    pub chain: [u32; 2],
}

impl SegmentHeader {
    pub fn first(&self) -> Option<Position> {
        self.runs.first().map(|r| Position {
            wal: r.wal,
            frame: r.first_frame,
        })
    }

    pub fn last(&self) -> Option<Position> {
        self.runs.last().map(Run::last)
    }

    /// The bytes of its frames (24-byte header and page each).
    pub fn frame_bytes(&self) -> u64 {
        let frames: u64 = self.runs.iter().map(|r| u64::from(r.frames)).sum();
        frames * (FRAME_HEADER_BYTES as u64 + u64::from(self.page_size))
    }

    /// Its header line: the JSON and a newline.
    pub(crate) fn line(&self) -> Result<Vec<u8>, SegmentError> {
        self.check().map_err(|reason| SegmentError::Bad {
            segment: self.name(),
            reason,
        })?;
        let mut line = serde_json::to_vec(self).map_err(|e| SegmentError::Bad {
            segment: self.name(),
            reason: e.to_string(),
        })?;
        line.push(b'\n');
        Ok(line)
    }

    /// The length of the plain segment [`write_joined`] writes under this header.
    pub fn plain_len(&self) -> Result<u64, SegmentError> {
        Ok(MAGIC.len() as u64 + self.line()?.len() as u64 + self.frame_bytes())
    }

    /// The object name's stem: `<first position>_<last position>`.
    pub fn name(&self) -> String {
        match (self.first(), self.last()) {
            (Some(first), Some(last)) => format!("{first}_{last}"),
            _ => "empty".into(),
        }
    }

    /// Checks that this segment starts exactly where `previous` ended: the next frame
    /// of the same WAL, its checksum running on from the previous frame's; or frame 1
    /// of the next WAL (the WAL was restarted after everything in it was shipped).
    pub fn follows(&self, previous: &ChainEnd) -> Result<(), SegmentError> {
        let gap = |reason: String| SegmentError::Gap {
            previous: previous.position.to_string(),
            segment: self.name(),
            reason,
        };
        let run = self
            .runs
            .first()
            .ok_or_else(|| gap("it has no frames".into()))?;
        if self.after != previous.position {
            return Err(gap(format!("it starts after {}", self.after)));
        }
        let same_wal = run.wal == previous.position.wal;
        if same_wal {
            if run.first_frame != previous.position.frame + 1 {
                return Err(gap(format!(
                    "it starts at frame {} of WAL {}, not {}",
                    run.first_frame,
                    run.wal,
                    previous.position.frame + 1
                )));
            }
            // After frame 0 (a snapshot taken with the WAL empty) any WAL header goes.
            let chained = run.wal_header == previous.wal_header && run.chain == previous.chain;
            if previous.position.frame > 0 && !chained {
                return Err(gap(
                    "its checksum chain does not run on from the previous frame".into(),
                ));
            }
        } else if run.wal != previous.position.wal + 1 || run.first_frame != 1 {
            return Err(gap(format!(
                "it starts at frame {} of WAL {}, after WAL {}",
                run.first_frame, run.wal, previous.position.wal
            )));
        }
        Ok(())
    }

    /// Checks the header on its own: runs in order, chained to each other, commits
    /// inside them and in order, the last frame a commit's.
    pub fn check(&self) -> Result<(), String> {
        let Some(first) = self.first() else {
            return Err("no runs".into());
        };
        let continues = self.after.wal == first.wal && self.after.frame + 1 == first.frame;
        let restarts = self.after.wal + 1 == first.wal && first.frame == 1;
        if !(continues || restarts) {
            return Err(format!(
                "it starts at {first}, which cannot follow {}",
                self.after
            ));
        }
        for run in &self.runs {
            if run.frames == 0 || run.first_frame == 0 {
                return Err(format!(
                    "run of WAL {} is empty or starts at frame 0",
                    run.wal
                ));
            }
            let header = run.header()?;
            if header.page_size != self.page_size {
                return Err(format!(
                    "WAL {} has page size {}",
                    run.wal, header.page_size
                ));
            }
            if run.first_frame == 1 && run.chain != header.checksum {
                return Err(format!(
                    "WAL {}: frame 1 must chain from the header",
                    run.wal
                ));
            }
        }
        for pair in self.runs.windows(2) {
            let (a, b) = (&pair[0], &pair[1]);
            if !(b.wal == a.wal + 1 && b.first_frame == 1) {
                return Err(format!(
                    "run of WAL {} does not follow WAL {}",
                    b.wal, a.wal
                ));
            }
        }
        let inside = |p: Position| {
            self.runs
                .iter()
                .any(|r| r.wal == p.wal && (r.first_frame..=r.last().frame).contains(&p.frame))
        };
        if !self.commits.iter().all(|c| inside(c.at) && c.pages > 0) {
            return Err("a commit is outside the segment's frames".into());
        }
        if !self.commits.windows(2).all(|w| w[0].at < w[1].at) {
            return Err("commits are out of order".into());
        }
        if self.commits.last().map(|c| c.at) != self.last() {
            return Err("the last frame does not end a commit".into());
        }
        Ok(())
    }
}

/// Writes a spool piece from frames still in the WAL: `runs` are read from `wal`
/// with [`walfile::WalFile::copy_frames`] (which checks them again), compressed after
/// the header. Returns the header written.
pub fn write_from_wal(
    out: &mut (impl Write + Seek),
    generation: &str,
    after: Position,
    wal: &walfile::WalFile,
    run: (u32, WalCursor),
    last_frame: u32,
    commits: Vec<CommitRecord>,
) -> Result<(SegmentHeader, WalCursor), SegmentError> {
    let (wal_number, cursor) = run;
    let mut header = SegmentHeader {
        generation: generation.to_string(),
        after,
        page_size: cursor.header.page_size,
        runs: vec![Run {
            wal: wal_number,
            wal_header: hex::encode(cursor.header.to_bytes()),
            first_frame: cursor.frames + 1,
            frames: last_frame - cursor.frames,
            chain: cursor.chain,
        }],
        commits,
        frames_sha256: String::new(),
    };
    let mut writer = StreamedPiece::begin(out, &header)?;
    let end = wal
        .copy_frames(&cursor, last_frame, &mut writer)
        .map_err(|e| SegmentError::Bad {
            segment: format!("{wal_number:08x}-{:08x}", cursor.frames + 1),
            reason: e.to_string(),
        })?;
    writer.finish(&mut header)?;
    Ok((header, end))
}

/// A spooled piece written without its frames in memory: the header goes first with a
/// placeholder for the frames' SHA-256 (hex of fixed length, so the header's length does
/// not depend on it), the frames follow compressed as they come, hashed on the way, and
/// [`StreamedPiece::finish`] writes the digest over the placeholder.
struct StreamedPiece<'a, W: Write + Seek> {
    body: zstd::stream::write::Encoder<'static, &'a mut W>,
    /// Where the placeholder's first byte is.
    digest_at: u64,
    hasher: Sha256,
}

impl<'a, W: Write + Seek> StreamedPiece<'a, W> {
    fn begin(out: &'a mut W, header: &SegmentHeader) -> Result<Self, SegmentError> {
        let io = |source| SegmentError::Io {
            what: format!("segment {}", header.name()),
            source,
        };
        let mut header = header.clone();
        header.frames_sha256 = "0".repeat(64);
        let line = header.line()?;
        let key = br#""frames_sha256":""#;
        let at = line
            .windows(key.len())
            .position(|w| w == key)
            .ok_or_else(|| SegmentError::Bad {
                segment: header.name(),
                reason: "its header has no frames_sha256".into(),
            })?;
        let start = out.stream_position().map_err(io)?;
        out.write_all(PIECE_MAGIC).map_err(io)?;
        out.write_all(&line).map_err(io)?;
        let mut body = zstd::stream::write::Encoder::new(out, PIECE_ZSTD_LEVEL).map_err(io)?;
        body.include_checksum(true).map_err(io)?;
        body.set_pledged_src_size(Some(header.frame_bytes()))
            .map_err(io)?;
        Ok(StreamedPiece {
            body,
            digest_at: start + (PIECE_MAGIC.len() + at + key.len()) as u64,
            hasher: Sha256::new(),
        })
    }

    /// Ends the frames and writes their digest into its place; sets it in `header`.
    fn finish(self, header: &mut SegmentHeader) -> Result<(), SegmentError> {
        let name = header.name();
        let io = |source| SegmentError::Io {
            what: format!("segment {name}"),
            source,
        };
        header.frames_sha256 = hex::encode(self.hasher.finalize());
        let out = self.body.finish().map_err(io)?;
        let end = out.stream_position().map_err(io)?;
        out.seek(SeekFrom::Start(self.digest_at)).map_err(io)?;
        out.write_all(header.frames_sha256.as_bytes()).map_err(io)?;
        out.seek(SeekFrom::Start(end)).map_err(io)?;
        Ok(())
    }
}

impl<W: Write + Seek> Write for StreamedPiece<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.body.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.body.flush()
    }
}

/// What follows the magic line: the frames as stored, or a piece's compressed frames.
enum Body<R: BufRead> {
    Plain(R),
    Zstd(zstd::stream::read::Decoder<'static, R>),
}

impl<R: BufRead> Read for Body<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Plain(r) => r.read(buf),
            Body::Zstd(r) => r.read(buf),
        }
    }
}

/// Which of the forms a [`SegmentReader`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Format 2: its SHA-256 is in the stored stream's trailer, not here.
    Segment,
    /// Format 1: the frames' SHA-256 in the header.
    SegmentFormat1,
    /// A spooled piece: the frames' SHA-256 in the header, the frames compressed.
    Piece,
}

/// Reads a segment from a stream (a decrypted, decompressed download, or a local
/// file), frame by frame, checking each.
pub struct SegmentReader<R: BufRead> {
    input: Body<R>,
    pub header: SegmentHeader,
    form: Form,
    /// Off when the same bytes were checked already ([`SegmentReader::checked_already`]).
    check: bool,
    run: usize,
    in_run: u32,
    wal: WalHeader,
    chain: [u32; 2],
    /// Of the frames, where the header holds their SHA-256 and they are checked.
    hasher: Option<Sha256>,
    frame: Vec<u8>,
}

/// One checked frame.
pub struct Frame<'a> {
    pub at: Position,
    pub header: FrameHeader,
    pub page: &'a [u8],
}

impl<R: BufRead> SegmentReader<R> {
    pub fn new(mut input: R, what: &str) -> Result<SegmentReader<R>, SegmentError> {
        let bad = |reason: String| SegmentError::Bad {
            segment: what.to_string(),
            reason,
        };
        let io = |source| SegmentError::Io {
            what: what.to_string(),
            source,
        };
        let mut magic = Vec::new();
        (&mut input)
            .take(MAGIC.len().max(PIECE_MAGIC.len()) as u64)
            .read_until(b'\n', &mut magic)
            .map_err(io)?;
        let form = match &magic[..] {
            m if m == MAGIC => Form::Segment,
            m if m == MAGIC_FORMAT_1 => Form::SegmentFormat1,
            m if m == PIECE_MAGIC => Form::Piece,
            _ => {
                return Err(bad(
                    "it does not start with `dbwarden-segment 2` (or 1)".into()
                ))
            }
        };
        let mut line = Vec::new();
        (&mut input)
            .take(MAX_HEADER_BYTES as u64)
            .read_until(b'\n', &mut line)
            .map_err(io)?;
        if line.pop() != Some(b'\n') {
            return Err(bad("its header line does not end".into()));
        }
        let header: SegmentHeader =
            serde_json::from_slice(&line).map_err(|e| bad(format!("header: {e}")))?;
        header.check().map_err(bad)?;
        let first = &header.runs[0];
        let wal = first.header().map_err(bad)?;
        let input = if form == Form::Piece {
            Body::Zstd(zstd::stream::read::Decoder::with_buffer(input).map_err(io)?)
        } else {
            Body::Plain(input)
        };
        Ok(SegmentReader {
            input,
            form,
            check: true,
            run: 0,
            in_run: 0,
            chain: first.chain,
            wal,
            hasher: (form != Form::Segment).then(Sha256::new),
            frame: vec![0u8; FRAME_HEADER_BYTES + header.page_size as usize],
            header,
        })
    }

    /// For a second read of bytes the first read checked whole: neither the frames'
    /// checksums nor their SHA-256 are computed again. Salts, page numbers, commits and
    /// the chain from one segment to the next (from the checksums stored in the
    /// frames) are still checked.
    pub fn checked_already(mut self) -> Self {
        self.check = false;
        self.hasher = None;
        self
    }

    /// True for a format 2 segment: its SHA-256 is not in what this reads but in the
    /// stored stream's digest trailer, so a reader of a download must also see that
    /// the trailer matched ([`super::codec::TrailerSeen`]) once this read to the end.
    pub fn needs_trailer(&self) -> bool {
        self.form == Form::Segment
    }

    pub(crate) fn bad(&self, reason: String) -> SegmentError {
        SegmentError::Bad {
            segment: self.header.name(),
            reason,
        }
    }

    /// The next frame, checked against the chain; `None` after the last, once the
    /// SHA-256 of all frames matched and nothing follows them.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, SegmentError> {
        if self.in_run == self.header.runs[self.run].frames {
            if self.run + 1 == self.header.runs.len() {
                let mut rest = [0u8; 1];
                let extra = self
                    .input
                    .read(&mut rest)
                    .map_err(|source| SegmentError::Io {
                        what: self.header.name(),
                        source,
                    })?;
                if extra != 0 {
                    return Err(self.bad("bytes follow the last frame".into()));
                }
                if let Some(hasher) = self.hasher.take() {
                    let sum = hex::encode(hasher.finalize());
                    if sum != self.header.frames_sha256 {
                        return Err(self.bad(format!(
                            "the frames' SHA-256 is {sum}, the header says {}",
                            self.header.frames_sha256
                        )));
                    }
                }
                return Ok(None);
            }
            self.run += 1;
            self.in_run = 0;
            let run = &self.header.runs[self.run];
            self.wal = run.header().map_err(|r| self.bad(r))?;
            self.chain = run.chain;
        }
        let run = &self.header.runs[self.run];
        let at = Position {
            wal: run.wal,
            frame: run.first_frame + self.in_run,
        };
        if let Err(source) = self.input.read_exact(&mut self.frame) {
            return Err(match source.kind() {
                io::ErrorKind::UnexpectedEof => self.bad(format!("it ends before frame {at}")),
                _ => SegmentError::Io {
                    what: self.header.name(),
                    source,
                },
            });
        }
        let header = if self.check {
            walfile::check_frame(&self.wal, self.chain, &self.frame)
        } else {
            walfile::frame_of(&self.wal, &self.frame)
        }
        .map_err(|reason| self.bad(format!("frame {at}: {reason}")))?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(&self.frame);
        }
        self.chain = header.checksum;
        self.in_run += 1;
        Ok(Some(Frame {
            at,
            header,
            page: &self.frame[FRAME_HEADER_BYTES..],
        }))
    }

    /// The bytes after the header line, none read yet: a plain segment's frames as
    /// stored (a piece's decompressed).
    pub fn into_frames(self) -> impl Read {
        self.input
    }

    /// Reads every frame, checking each, to the end (where a SHA-256 in the header is
    /// checked).
    pub fn read_through(mut self) -> Result<(), SegmentError> {
        while self.next_frame()?.is_some() {}
        Ok(())
    }

    /// Where this segment ends, for [`SegmentHeader::follows`]; known once every frame
    /// was read.
    pub fn end(&self) -> Option<ChainEnd> {
        let run = self.header.runs.last()?;
        (self.run + 1 == self.header.runs.len() && self.in_run == run.frames).then(|| ChainEnd {
            position: run.last(),
            wal_header: run.wal_header.clone(),
            chain: self.chain,
        })
    }
}

/// The header of the segment `segments` make joined end to end (one generation, each
/// following the one before): their runs, a run continued where the next segment goes
/// on in the same WAL, and their commits; no `frames_sha256` (a format 2 segment's).
/// Whether the segments do follow each other is checked when [`write_joined`] reads them.
pub fn join_headers<'a>(
    segments: impl IntoIterator<Item = &'a SegmentHeader>,
) -> Result<SegmentHeader, SegmentError> {
    let mut joined: Option<SegmentHeader> = None;
    for next in segments {
        let next = next.clone();
        match joined.as_mut() {
            None => joined = Some(next),
            Some(m) => {
                if m.generation != next.generation {
                    return Err(SegmentError::Bad {
                        segment: next.name(),
                        reason: format!(
                            "it is of generation {}, not {}",
                            next.generation, m.generation
                        ),
                    });
                }
                let mut runs = next.runs.into_iter();
                if let (Some(last), Some(first)) = (m.runs.last_mut(), runs.next()) {
                    if last.wal == first.wal {
                        last.frames += first.frames;
                    } else {
                        m.runs.push(first);
                    }
                }
                m.runs.extend(runs);
                m.commits.extend(next.commits);
            }
        }
    }
    let mut header = joined.ok_or_else(|| SegmentError::Bad {
        segment: "merge".into(),
        reason: "no segments to merge".into(),
    })?;
    header.frames_sha256.clear();
    Ok(header)
}

/// Reads every frame of `segments` in order, one segment open at a time (a compaction
/// may join thousands of pieces), checking that each follows the one before, and hands
/// each frame's bytes to `each`. Answers the headers read.
fn each_frame<R: BufRead>(
    segments: impl IntoIterator<Item = Result<SegmentReader<R>, SegmentError>>,
    mut each: impl FnMut(&[u8; FRAME_HEADER_BYTES], &[u8]) -> io::Result<()>,
) -> Result<Vec<SegmentHeader>, SegmentError> {
    let mut previous: Option<ChainEnd> = None;
    let mut headers = Vec::new();
    for segment in segments {
        let mut segment = segment?;
        if let Some(end) = &previous {
            segment.header.follows(end)?;
        }
        let name = segment.header.name();
        while let Some(frame) = segment.next_frame()? {
            each(&frame.header_bytes(), frame.page).map_err(|source| SegmentError::Io {
                what: format!("segment {name}"),
                source,
            })?;
        }
        previous = segment.end();
        headers.push(segment.header);
    }
    Ok(headers)
}

/// Writes `segments` joined end to end as one plain format 2 segment (the form that is
/// uploaded, before its compression and digest trailer) under `header`, the one
/// [`join_headers`] makes of theirs, every frame checked as it is read. Fails, once the
/// frames are written, if `header` is not theirs.
pub fn write_joined<R: BufRead>(
    segments: impl IntoIterator<Item = Result<SegmentReader<R>, SegmentError>>,
    header: &SegmentHeader,
    out: &mut (impl Write + ?Sized),
) -> Result<(), SegmentError> {
    let io = |source| SegmentError::Io {
        what: format!("segment {}", header.name()),
        source,
    };
    out.write_all(MAGIC).map_err(io)?;
    out.write_all(&header.line()?).map_err(io)?;
    let headers = each_frame(segments, |frame_header, page| {
        out.write_all(frame_header)?;
        out.write_all(page)
    })?;
    if join_headers(&headers)? != *header {
        return Err(SegmentError::Bad {
            segment: header.name(),
            reason: "its header is not the one of the segments it is made of".into(),
        });
    }
    Ok(())
}

impl Frame<'_> {
    /// The frame's 24-byte header as it was stored.
    pub fn header_bytes(&self) -> [u8; FRAME_HEADER_BYTES] {
        let mut out = [0u8; FRAME_HEADER_BYTES];
        let words = [
            self.header.page_number,
            self.header.commit_pages,
            self.header.salt[0],
            self.header.salt[1],
            self.header.checksum[0],
            self.header.checksum[1],
        ];
        for (i, w) in words.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&w.to_be_bytes());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::walfile::{read_wal_index, WalFile};
    use crate::replica::applier::{Applier, SegmentPages};
    use proptest::prelude::*;
    use rusqlite::Connection;
    use std::path::{Path, PathBuf};

    /// The table's rows and the database's size in pages.
    type Rows = (Vec<(i64, Vec<u8>)>, u32);

    /// What the test does to the database between reads of its WAL.
    #[derive(Debug, Clone)]
    enum Step {
        Insert(usize),
        Update(u8, usize),
        Delete(u8),
        Vacuum,
        /// Read the WAL into a segment now.
        Tail,
        /// Read the WAL, then checkpoint: the next write restarts the WAL.
        Checkpoint,
        /// Read the WAL, then checkpoint and truncate it.
        Truncate,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            4 => (1usize..6000).prop_map(Step::Insert),
            2 => (any::<u8>(), 1usize..3000).prop_map(|(i, n)| Step::Update(i, n)),
            2 => any::<u8>().prop_map(Step::Delete),
            1 => Just(Step::Vacuum),
            3 => Just(Step::Tail),
            1 => Just(Step::Checkpoint),
            1 => Just(Step::Truncate),
        ]
    }

    /// Reads the WAL the way replication does: the commits after the cursor become a
    /// segment; a new WAL header means the WAL was restarted (this test always reads
    /// everything before it checkpoints, so nothing is lost in between).
    struct Tail {
        wal_number: u32,
        end: Position,
        cursor: Option<WalCursor>,
        segments: Vec<Vec<u8>>,
    }

    impl Tail {
        fn read(&mut self, db: &Path) {
            let Some(wal) = WalFile::open(db).expect("open wal") else {
                return;
            };
            let Some(header) = wal.header().expect("header") else {
                return;
            };
            let cursor = match self.cursor {
                Some(c) if c.header == header => c,
                Some(_) => {
                    self.wal_number += 1;
                    WalCursor::at_start(header)
                }
                None => WalCursor::at_start(header),
            };
            let commits = wal.commits_after(&cursor, None).expect("scan");
            let Some(last) = commits.last() else {
                self.cursor = Some(cursor);
                return;
            };
            let records = commits
                .iter()
                .map(|c| CommitRecord {
                    at: Position {
                        wal: self.wal_number,
                        frame: c.frame,
                    },
                    pages: c.pages,
                    seen_at: Utc::now(),
                    last_event_id: None,
                })
                .collect();
            let mut out = io::Cursor::new(Vec::new());
            let (_, after) = write_from_wal(
                &mut out,
                "g",
                self.end,
                &wal,
                (self.wal_number, cursor),
                last.frame,
                records,
            )
            .expect("segment");
            self.cursor = Some(after);
            self.end = Position {
                wal: self.wal_number,
                frame: after.frames,
            };
            self.segments.push(out.into_inner());
        }
    }

    fn rows(conn: &Connection) -> Rows {
        let mut s = conn
            .prepare("SELECT id, x FROM t ORDER BY id")
            .expect("prepare");
        let rows = s
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let pages = conn
            .query_row("PRAGMA page_count", [], |r| r.get(0))
            .expect("page_count");
        (rows, pages)
    }

    /// Runs `steps`, returning the snapshot taken before them, the segments read and
    /// the rows after each commit (index 0: the snapshot's).
    fn record(dir: &Path, steps: &[Step]) -> (PathBuf, Vec<Vec<u8>>, Vec<Rows>) {
        let db = dir.join("live.db");
        let conn = Connection::open(&db).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA wal_autocheckpoint=0;
             CREATE TABLE t(id INTEGER PRIMARY KEY, x BLOB);
             PRAGMA wal_checkpoint(TRUNCATE);",
        )
        .expect("schema");
        let snapshot = dir.join("snapshot.db");
        std::fs::copy(&db, &snapshot).expect("snapshot of the checkpointed file");
        let mut states = vec![rows(&conn)];
        let mut tail = Tail {
            wal_number: 0,
            end: Position { wal: 0, frame: 0 },
            cursor: None,
            segments: Vec::new(),
        };
        let commits = || read_wal_index(&db).expect("shm").map_or(0, |i| i.commits);
        for step in steps {
            let before = commits();
            match step {
                Step::Insert(n) => {
                    conn.execute("INSERT INTO t(x) VALUES (randomblob(?1))", [*n as i64])
                        .expect("insert");
                }
                Step::Update(i, n) => {
                    conn.execute(
                        "UPDATE t SET x = randomblob(?2) WHERE id % 7 = ?1 % 7",
                        rusqlite::params![*i as i64, *n as i64],
                    )
                    .expect("update");
                }
                Step::Delete(i) => {
                    conn.execute("DELETE FROM t WHERE id % 5 = ?1 % 5", [*i as i64])
                        .expect("delete");
                }
                Step::Vacuum => conn.execute_batch("VACUUM").expect("vacuum"),
                Step::Tail => tail.read(&db),
                Step::Checkpoint | Step::Truncate => {
                    tail.read(&db);
                    let mode = match step {
                        Step::Checkpoint => "PASSIVE",
                        _ => "TRUNCATE",
                    };
                    conn.execute_batch(&format!("PRAGMA wal_checkpoint({mode})"))
                        .expect("checkpoint");
                }
            }
            match commits().wrapping_sub(before) {
                0 => {}
                1 => states.push(rows(&conn)),
                n => panic!("{n} commits in one step"),
            }
        }
        tail.read(&db);
        (snapshot, tail.segments, states)
    }

    /// Rebuilds the database at commit `target` (0: the snapshot) from the snapshot and
    /// the segments, keeping at most `waiting_bytes` of pages unwritten if given. With
    /// `pages_bytes`, a segment whose commits all come before the target is applied as
    /// its newest pages ([`SegmentPages`], at most that many bytes of them; frame by
    /// frame when they do not fit), as a restore does with the segments it goes past.
    fn restore(
        dir: &Path,
        snapshot: &Path,
        segments: &[Vec<u8>],
        target: usize,
        waiting_bytes: Option<usize>,
        pages_bytes: Option<usize>,
    ) -> PathBuf {
        let out = dir.join(format!("restored-{target}.db"));
        std::fs::copy(snapshot, &out).expect("copy snapshot");
        let mut applier = Applier::open(&out, 4096).expect("applier");
        if let Some(bytes) = waiting_bytes {
            applier = applier.waiting_at_most(bytes);
        }
        applier.chain_end = Some(start());
        let mut applied = 0;
        for bytes in segments {
            if applied == target {
                break;
            }
            let mut reader = SegmentReader::new(&bytes[..], "test").expect("reader");
            let commits = reader.header.commits.len();
            if let Some(limit) = pages_bytes.filter(|_| applied + commits <= target) {
                if let Some(pages) = SegmentPages::read(reader, limit).expect("pages") {
                    applier.apply_pages(&pages).expect("apply pages");
                    applied += commits;
                    continue;
                }
                reader = SegmentReader::new(&bytes[..], "test").expect("reader");
            }
            applier
                .apply(&mut reader, |_, _| {
                    applied += 1;
                    Ok(applied == target)
                })
                .expect("apply");
        }
        assert_eq!(applied, target, "the segments hold every commit");
        applier.finish().expect("finish");
        out
    }

    /// The restored file's rows, and its size in pages measured by its length (a
    /// restore that left stale pages past the end would be longer than SQLite's).
    fn restored_rows(path: &Path) -> Rows {
        let length = std::fs::metadata(path).expect("stat").len();
        let conn = Connection::open(path).expect("open restored");
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(check, "ok");
        let (rows, _) = rows(&conn);
        (rows, (length / 4096) as u32)
    }

    fn merged_in_groups(segments: &[Vec<u8>], group: usize) -> Vec<Vec<u8>> {
        segments
            .chunks(group)
            .map(|chunk| {
                let readers = || chunk.iter().map(|b| SegmentReader::new(&b[..], "part"));
                let headers: Vec<SegmentHeader> =
                    readers().map(|r| r.expect("header").header).collect();
                let header = join_headers(&headers).expect("join");
                let mut out = Vec::new();
                write_joined(readers(), &header, &mut out).expect("merge");
                out
            })
            .collect()
    }

    /// The pieces as uploaded: each one a plain segment.
    fn plain(pieces: &[Vec<u8>]) -> Vec<Vec<u8>> {
        let plain = merged_in_groups(pieces, 1);
        for (piece, plain) in pieces.iter().zip(&plain) {
            assert!(piece.starts_with(PIECE_MAGIC) && plain.starts_with(MAGIC));
            assert!(piece.len() < plain.len(), "a piece's frames are compressed");
        }
        plain
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Restoring to any commit from the snapshot and the segments gives exactly the
        /// rows the database had right after that commit, across restarts and
        /// truncations of the WAL and whether or not segments were merged.
        #[test]
        fn a_restore_to_any_commit_gives_the_database_as_it_was_then(
            steps in proptest::collection::vec(step(), 1..60),
            targets in proptest::collection::vec(any::<prop::sample::Index>(), 1..6),
            group in 1usize..5,
            waiting_pages in 1usize..6,
            kept_pages in 1usize..40,
        ) {
            let dir = tempfile::tempdir().expect("dir");
            let (snapshot, segments, states) = record(dir.path(), &steps);
            let merged = merged_in_groups(&segments, group);
            for (i, target) in targets.iter().enumerate() {
                let target = target.index(states.len());
                let from = if i % 2 == 0 { &segments } else { &merged };
                // A few pages waiting at most: they are written again and again, between
                // commits and inside them.
                let waiting = ((i / 2) % 2 == 1).then_some(waiting_pages * 4096);
                // Segments passed over applied frame by frame, as their pages, or as
                // their pages where a few fit (frame by frame where more are needed).
                let pages = [None, Some(16 << 20), Some(kept_pages * 4096)][i % 3];
                let path = restore(dir.path(), &snapshot, from, target, waiting, pages);
                prop_assert_eq!(&restored_rows(&path), &states[target]);
                std::fs::remove_file(&path).expect("remove");
            }
        }
    }

    /// Where the test's snapshot is: before frame 1 of the first WAL.
    fn start() -> ChainEnd {
        ChainEnd {
            position: Position { wal: 0, frame: 0 },
            wal_header: String::new(),
            chain: [0, 0],
        }
    }

    fn three_segments(dir: &Path) -> (PathBuf, Vec<Vec<u8>>) {
        let steps = [
            Step::Insert(100),
            Step::Tail,
            Step::Insert(200),
            Step::Checkpoint,
            Step::Insert(300),
        ];
        let (snapshot, segments, _) = record(dir, &steps);
        assert_eq!(segments.len(), 3);
        (snapshot, segments)
    }

    fn apply_all(dir: &Path, snapshot: &Path, segments: &[Vec<u8>]) -> Result<(), SegmentError> {
        let out = dir.join("all.db");
        std::fs::copy(snapshot, &out).expect("copy");
        let mut applier = Applier::open(&out, 4096)?;
        applier.chain_end = Some(start());
        for bytes in segments {
            let mut reader = SegmentReader::new(&bytes[..], "test")?;
            applier.apply(&mut reader, |_, _| Ok(false))?;
        }
        applier.finish()
    }

    #[test]
    fn a_missing_or_repeated_segment_is_a_gap_not_a_silent_hole() {
        let dir = tempfile::tempdir().expect("dir");
        let (snapshot, segments) = three_segments(dir.path());
        apply_all(dir.path(), &snapshot, &segments).expect("the whole chain applies");
        let missing = [segments[0].clone(), segments[2].clone()];
        let repeated = [segments[0].clone(), segments[0].clone()];
        let first_missing = [segments[1].clone(), segments[2].clone()];
        for chain in [&missing[..], &repeated[..], &first_missing[..]] {
            assert!(matches!(
                apply_all(dir.path(), &snapshot, chain),
                Err(SegmentError::Gap { .. })
            ));
        }
    }

    #[test]
    fn a_damaged_segment_is_refused_with_the_frame_that_is_wrong() {
        let dir = tempfile::tempdir().expect("dir");
        let (snapshot, pieces) = three_segments(dir.path());
        let segments = plain(&pieces);
        apply_all(dir.path(), &snapshot, &segments).expect("the plain chain applies");
        let mut damaged = segments.clone();
        let last = damaged[1].len() - 10;
        damaged[1][last] ^= 0x40;
        let err = apply_all(dir.path(), &snapshot, &damaged).expect_err("refused");
        assert!(
            err.to_string().contains("checksum does not follow"),
            "{err}"
        );
        let mut cut = segments.clone();
        let shorter = cut[1].len() - 100;
        cut[1].truncate(shorter);
        let err = apply_all(dir.path(), &snapshot, &cut).expect_err("refused");
        assert!(err.to_string().contains("it ends before frame"), "{err}");
        let mut extra = segments;
        extra[2].push(0);
        let err = apply_all(dir.path(), &snapshot, &extra).expect_err("refused");
        assert!(
            err.to_string().contains("bytes follow the last frame"),
            "{err}"
        );
    }

    /// A spooled piece damaged on disk is refused too (zstd's own checksum, or the
    /// frames' once decompressed), and so is one whose frames are cut short.
    #[test]
    fn a_damaged_piece_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (snapshot, pieces) = three_segments(dir.path());
        let body = pieces[1]
            .iter()
            .position(|&b| b == b'\n')
            .and_then(|magic| {
                pieces[1][magic + 1..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map(|h| magic + h + 2)
            })
            .expect("a header line");
        for at in [body + 20, pieces[1].len() - 6] {
            let mut damaged = pieces.clone();
            damaged[1][at] ^= 0x40;
            assert!(apply_all(dir.path(), &snapshot, &damaged).is_err());
        }
        let mut cut = pieces;
        cut[1].truncate(body + 10);
        assert!(apply_all(dir.path(), &snapshot, &cut).is_err());
    }

    #[test]
    fn positions_are_written_so_names_sort_in_stream_order() {
        let a = Position {
            wal: 1,
            frame: 0xff,
        };
        let b = Position { wal: 2, frame: 1 };
        assert_eq!(a.to_string(), "00000001-000000ff");
        assert!(a.to_string() < b.to_string());
        assert_eq!("00000002-00000001".parse::<Position>(), Ok(b));
        assert!("2-1".parse::<Position>().is_err());
    }
}

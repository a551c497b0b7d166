//! A database file rebuilt from a snapshot and the segments after it.
//!
//! To apply a frame is to write its page at `(page number - 1) × page size` in the
//! database file; after a commit's last frame the database is that commit's size in
//! pages. A restore applies whole commits only and stops after the one it was asked for.
//!
//! Pages are not written as each frame is read. A busy spell rewrites the same few pages
//! (the table's last leaf, the pages above it, page 1) thousands of times, and the file
//! needs only the newest version of each: after half a minute at ~2,000 commits/s the
//! segments hold 3.2 GB of frames for a database of tens of MB. So [`Rebuilt`] keeps the
//! newest version of every page applied since it last wrote (up to
//! [`WAITING_BYTES`]) and writes them in page order, neighbours in one call, when that
//! is full, when the database must be read (a restore to an event id reads it at a
//! commit that did not record its newest id) and at the end ([`Applier::finish`]).
//! This is what SQLite's own checkpoint does with the same frames: the newest version
//! of each page, none past the database's end as of the last commit, then the file cut
//! to that end ([`Rebuilt::written`]). SQLite writes a page again whenever a commit
//! brings it back past an earlier end, so the file holds, page for page, what writing
//! every frame in order and cutting the file at each commit would have left.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufRead;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::segment::{ChainEnd, CommitRecord, Frame, SegmentError, SegmentHeader, SegmentReader};

/// The page versions kept before they are written: at most this many bytes of pages.
const WAITING_BYTES: usize = 32 << 20;
/// Neighbouring pages are written together in runs of at most this many bytes.
const RUN_BYTES: usize = 1 << 20;

/// A database file being rebuilt from a snapshot and segments.
pub struct Applier {
    db: Rebuilt,
    /// The last commit applied whole.
    pub applied: Option<CommitRecord>,
    /// The end of the last segment read to its end.
    pub chain_end: Option<ChainEnd>,
}

/// What [`Applier::apply`] did with a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Every commit in it.
    Whole,
    /// Commits up to the one `stop` chose; the rest was not applied.
    Stopped,
}

impl Applier {
    /// Opens the snapshot at `path` (a copy, changed in place) to apply segments to.
    pub fn open(path: &Path, page_size: u32) -> Result<Applier, SegmentError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(io(path))?;
        let len = file.metadata().map_err(io(path))?.len();
        Ok(Applier {
            db: Rebuilt {
                path: path.to_path_buf(),
                file,
                page_size: page_size as usize,
                len,
                file_len: len,
                waiting: NewestPages::new(page_size as usize),
                waiting_limit: WAITING_BYTES,
                run: Vec::new(),
            },
            applied: None,
            chain_end: None,
        })
    }

    /// Keeps at most `bytes` of pages waiting (at least one page): for tests, which
    /// would never fill [`WAITING_BYTES`].
    #[cfg(test)]
    pub(crate) fn waiting_at_most(mut self, bytes: usize) -> Applier {
        self.db.waiting_limit = bytes;
        self
    }

    /// Applies `segment`'s commits in order. After each commit `stop` is asked whether
    /// this is the commit to stop at (it may read the database as of that commit through
    /// [`Rebuilt::written`]); if it says yes, nothing after it is applied. The segment
    /// must follow the previous one applied ([`super::segment::SegmentHeader::follows`]).
    /// Pages may still be waiting when this returns: [`Applier::finish`] writes them.
    pub fn apply<R: BufRead>(
        &mut self,
        segment: &mut SegmentReader<R>,
        mut stop: impl FnMut(&CommitRecord, &mut Rebuilt) -> Result<bool, SegmentError>,
    ) -> Result<Applied, SegmentError> {
        self.accepts(&segment.header)?;
        let (name, commits) = (segment.header.name(), segment.header.commits.clone());
        let mut next_commit = commits.iter();
        while let Some(frame) = segment.next_frame()? {
            self.db.put(frame.header.page_number, frame.page)?;
            if let Some(record) = listed_commit(&name, &mut next_commit, &frame)? {
                self.db.commit(record.pages);
                self.applied = Some(record.clone());
                if stop(record, &mut self.db)? {
                    return Ok(Applied::Stopped);
                }
            }
        }
        self.chain_end = segment.end();
        Ok(Applied::Whole)
    }

    /// Applies every commit of a segment read whole into `pages`: the same file as
    /// [`Applier::apply`] with no stop, from the newest version of each page alone.
    pub fn apply_pages(&mut self, pages: &SegmentPages) -> Result<(), SegmentError> {
        self.accepts(&pages.header)?;
        // Pages from before that one of its commits cut off stay gone, as they would
        // frame by frame; its own surviving pages are newer than any waiting.
        self.db.commit(pages.least_pages);
        for (&number, &slot) in &pages.pages.slots {
            self.db.put(number, pages.pages.slot(slot))?;
        }
        self.db.commit(pages.last.pages);
        self.applied = Some(pages.last.clone());
        self.chain_end = Some(pages.end.clone());
        Ok(())
    }

    /// Checks that a segment goes on from the last one applied, in pages of this size.
    fn accepts(&self, header: &SegmentHeader) -> Result<(), SegmentError> {
        if let Some(previous) = &self.chain_end {
            header.follows(previous)?;
        }
        if header.page_size as usize != self.db.page_size {
            return Err(SegmentError::Bad {
                segment: header.name(),
                reason: format!(
                    "page size {}, the database's is {}",
                    header.page_size, self.db.page_size
                ),
            });
        }
        Ok(())
    }

    /// Writes the pages still waiting and makes the file durable: only then does it
    /// hold every commit applied.
    pub fn finish(&mut self) -> Result<(), SegmentError> {
        self.db.written()?;
        self.db.file.sync_all().map_err(io(&self.db.path))
    }
}

/// The database being rebuilt: its file, and the newest version of each page applied
/// since the file was last written.
pub struct Rebuilt {
    path: PathBuf,
    file: File,
    page_size: usize,
    /// The database's length as of the last frame applied.
    len: u64,
    /// The file's own length.
    file_len: u64,
    /// The pages applied since the file was last written.
    waiting: NewestPages,
    /// [`WAITING_BYTES`], but smaller in tests.
    waiting_limit: usize,
    /// Reused to join neighbouring pages into one write.
    run: Vec<u8>,
}

impl Rebuilt {
    /// The file, with every page applied so far written to it and its length that of
    /// the last commit: for reading the database as of that commit.
    pub fn written(&mut self) -> Result<&Path, SegmentError> {
        self.write_waiting()?;
        if self.file_len != self.len {
            self.file.set_len(self.len).map_err(io(&self.path))?;
            self.file_len = self.len;
        }
        Ok(&self.path)
    }

    /// A frame's page: kept as the newest version of page `number`.
    fn put(&mut self, number: u32, page: &[u8]) -> Result<(), SegmentError> {
        if !self.waiting.put(number, page, self.waiting_limit) {
            self.write_waiting()?;
            // The first page always goes in, whatever the limit.
            self.waiting.put(number, page, usize::MAX);
        }
        self.len = self.len.max(u64::from(number) * self.page_size as u64);
        Ok(())
    }

    /// A commit's last frame was applied: the database is `pages` long now.
    fn commit(&mut self, pages: u32) {
        // Pages past the end are gone (SQLite's checkpoint skips them too).
        self.waiting.cut(pages);
        self.len = u64::from(pages) * self.page_size as u64;
    }

    /// Writes the waiting pages in page order, runs of neighbours in one call.
    fn write_waiting(&mut self) -> Result<(), SegmentError> {
        let size = self.page_size;
        let order = self.waiting.in_page_order();
        let mut start = 0u32;
        for (i, &(number, slot)) in order.iter().enumerate() {
            let follows = i > 0 && order[i - 1].0 + 1 == number;
            if !follows || self.run.len() + size > RUN_BYTES {
                self.write_run(start)?;
                start = number;
            }
            self.run.extend_from_slice(self.waiting.slot(slot));
        }
        self.write_run(start)?;
        self.waiting.clear();
        Ok(())
    }

    /// Writes `run` (pages from page `first` on) and empties it.
    fn write_run(&mut self, first: u32) -> Result<(), SegmentError> {
        if self.run.is_empty() {
            return Ok(());
        }
        let offset = u64::from(first - 1) * self.page_size as u64;
        self.file
            .write_all_at(&self.run, offset)
            .map_err(io(&self.path))?;
        self.file_len = self.file_len.max(offset + self.run.len() as u64);
        self.run.clear();
        Ok(())
    }
}

/// The commit `frame` ends, as the header lists it next; `None` for a frame inside a
/// commit. A commit frame the header does not list next is an error.
fn listed_commit<'c>(
    segment: &str,
    next_commit: &mut std::slice::Iter<'c, CommitRecord>,
    frame: &Frame<'_>,
) -> Result<Option<&'c CommitRecord>, SegmentError> {
    if !frame.header.is_commit() {
        return Ok(None);
    }
    next_commit
        .next()
        .filter(|c| c.at == frame.at && c.pages == frame.header.commit_pages)
        .map(Some)
        .ok_or_else(|| SegmentError::Bad {
            segment: segment.to_string(),
            reason: format!("frame {} ends a commit the header does not list", frame.at),
        })
}

/// A segment read whole (every frame checked, as [`SegmentReader`] does) and kept as
/// the newest version of each page its commits leave: what a restore that goes past
/// the segment's end needs of it. A busy second's segment holds every version of the
/// same few pages; this holds each once, so the segment is neither kept decoded nor
/// read a second time.
pub struct SegmentPages {
    header: SegmentHeader,
    end: ChainEnd,
    last: CommitRecord,
    /// The smallest size in pages any of its commits left.
    least_pages: u32,
    pages: NewestPages,
}

impl SegmentPages {
    /// Reads `segment` to its end. `None` when its pages would need more than
    /// `limit` bytes: the caller reads it frame by frame instead.
    pub fn read<R: BufRead>(
        mut segment: SegmentReader<R>,
        limit: usize,
    ) -> Result<Option<SegmentPages>, SegmentError> {
        let mut pages = NewestPages::new(segment.header.page_size as usize);
        let (name, commits) = (segment.header.name(), segment.header.commits.clone());
        let mut next_commit = commits.iter();
        let mut least_pages = u32::MAX;
        while let Some(frame) = segment.next_frame()? {
            let number = frame.header.page_number;
            if !pages.put(number, frame.page, limit) {
                return Ok(None);
            }
            if let Some(record) = listed_commit(&name, &mut next_commit, &frame)? {
                least_pages = least_pages.min(record.pages);
                pages.cut(record.pages);
            }
        }
        let (Some(end), Some(last)) = (segment.end(), commits.last().cloned()) else {
            return Err(segment.bad("it ends without a commit".into()));
        };
        Ok(Some(SegmentPages {
            header: segment.header,
            end,
            last,
            least_pages,
            pages,
        }))
    }
}

/// The newest version of each page put since it was last cleared, in slots of one
/// buffer: what [`Rebuilt`] keeps before it writes, and [`SegmentPages`] keeps of a
/// segment.
struct NewestPages {
    page_size: usize,
    /// Page number → its slot in `data`.
    slots: HashMap<u32, usize>,
    data: Vec<u8>,
    /// No kept page is numbered above this.
    highest: u32,
}

impl NewestPages {
    fn new(page_size: usize) -> NewestPages {
        NewestPages {
            page_size,
            slots: HashMap::new(),
            data: Vec::new(),
            highest: 0,
        }
    }

    /// Keeps `page` as the newest version of page `number`, unless a new slot for it
    /// would take the buffer past `limit` bytes: then nothing changes and it answers
    /// `false`.
    fn put(&mut self, number: u32, page: &[u8], limit: usize) -> bool {
        let size = self.page_size;
        match self.slots.entry(number) {
            Entry::Occupied(slot) => {
                let slot = *slot.get();
                self.data[slot * size..(slot + 1) * size].copy_from_slice(page);
            }
            Entry::Vacant(_) if self.data.len() + size > limit => return false,
            Entry::Vacant(slot) => {
                slot.insert(self.data.len() / size);
                self.data.extend_from_slice(page);
            }
        }
        self.highest = self.highest.max(number);
        true
    }

    /// A commit left the database `pages` long: the pages past it are gone. (A slot
    /// left behind is not reused until [`NewestPages::clear`]: `put` counts it still.)
    fn cut(&mut self, pages: u32) {
        if pages < self.highest {
            self.slots.retain(|&number, _| number <= pages);
            self.highest = pages;
        }
    }

    fn slot(&self, slot: usize) -> &[u8] {
        &self.data[slot * self.page_size..(slot + 1) * self.page_size]
    }

    /// The kept pages' numbers and slots, in page order.
    fn in_page_order(&self) -> Vec<(u32, usize)> {
        let mut order: Vec<(u32, usize)> = self.slots.iter().map(|(&n, &s)| (n, s)).collect();
        order.sort_unstable();
        order
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.data.clear();
        self.highest = 0;
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SegmentError {
    let what = path.display().to_string();
    move |source| SegmentError::Io { what, source }
}

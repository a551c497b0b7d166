//! A crash-simulating SQLite VFS, for the power-loss tests (in the spirit of SQLite's
//! own `test6.c`). Compiled only with the `crash-vfs` feature (the tests turn it on);
//! nothing uses it unless the hidden setting `database.vfs = "dbwarden-crash"` asks.
//!
//! Killing a process never loses data the kernel already has, so SIGKILL cannot test
//! power loss. This VFS wraps the default `unix` VFS (shared memory passes through)
//! and remembers what a power cut would take back:
//! - for every file written since its last sync, the content it had at that sync and
//!   every write and truncation since ([`disk::FileHistory`]);
//! - every file created, renamed or deleted since its directory's last sync (a deleted
//!   file comes back as the disk had it: its synced content plus what the cut keeps).
//!
//! At the chosen sync (the Nth `xSync`, file fsync or directory fsync, counted across
//! the process) or when [`power_cut_now`] is called, it "cuts the power" before the
//! sync happens: each file is rebuilt from its synced content and the unsynced changes
//! the mode keeps (`all`: none; `subset`: each at random; `torn`: in one file, the
//! changes before a random one whole, that one torn sector by sector, appends
//! included, and none after it), unsynced directory operations are undone, every
//! `-shm` is deleted (shared memory does not survive a power loss), the cut is written
//! to the report file, and the process ends at once with [`EXIT_CODE`]. A fresh process
//! then recovers with the normal VFS. Mode `kill` takes nothing back: it is SIGKILL at
//! exactly that sync, where a real signal lands wherever the scheduler was.
//!
//! The plan comes from the environment of the process that registers the VFS:
//! `DBWARDEN_CRASH_AT` (sync number; unset: only an explicit cut), `DBWARDEN_CRASH_MODE`
//! (`all`, `subset`, `torn`, `kill`), `DBWARDEN_CRASH_SEED`, `DBWARDEN_CRASH_SYNCHRONOUS`
//! (`FULL` by default; `NORMAL` or `OFF` let the harness prove it can detect losses)
//! and `DBWARDEN_CRASH_REPORT` (a file that receives `planned N PATH` or `explicit N`:
//! which cut happened, at which sync count and, for a planned one, before the sync of
//! which file or directory, so the harness can prove each point cut where it meant to
//! and say which steps its cuts fell on).
//!
//! Syncs, renames, file writes and deletes that dbwarden makes outside SQLite (a
//! backup's fsync and rename, a manifest, retention's deletes, the replication spool's
//! segments, records and removals) go through
//! [`super::durable`], which reports them here.

pub mod disk;
mod shim;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::DbError;
use disk::{Change, Fate, FileHistory};

/// The VFS's registered name, the value of `database.vfs` that selects it.
pub const NAME: &str = crate::config::CRASH_VFS;

/// The exit code of a process whose power was cut.
pub const EXIT_CODE: i32 = 86;

/// Deleted or replaced files larger than this are not kept for a possible undo.
const KEEP_DELETED_UP_TO: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every unsynced change is lost.
    All,
    /// Each unsynced change is lost or kept, at random.
    Subset,
    /// One write is torn: its file keeps the changes before it, none after it; every
    /// other file loses its unsynced changes.
    Torn,
    /// Not a power cut but SIGKILL at that sync: the process dies, the kernel keeps
    /// every write (shared memory included), nothing is taken back.
    Kill,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub crash_at: Option<u64>,
    pub mode: Mode,
    pub seed: u64,
    /// The `PRAGMA synchronous` the writer runs with under this VFS.
    pub synchronous: &'static str,
    /// Where the cut is reported (`planned N PATH` / `explicit N`).
    pub report: Option<PathBuf>,
}

impl Plan {
    fn from_env() -> Plan {
        let var = |k: &str| std::env::var(k).ok();
        Plan {
            crash_at: var("DBWARDEN_CRASH_AT").and_then(|v| v.parse().ok()),
            mode: match var("DBWARDEN_CRASH_MODE").as_deref() {
                Some("subset") => Mode::Subset,
                Some("torn") => Mode::Torn,
                Some("kill") => Mode::Kill,
                _ => Mode::All,
            },
            seed: var("DBWARDEN_CRASH_SEED")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1),
            synchronous: match var("DBWARDEN_CRASH_SYNCHRONOUS").as_deref() {
                Some("OFF") => "OFF",
                Some("NORMAL") => "NORMAL",
                _ => "FULL",
            },
            report: var("DBWARDEN_CRASH_REPORT").map(PathBuf::from),
        }
    }
}

enum DirOp {
    Created(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        /// What was under `to` before, as the disk had it.
        replaced: Option<FileHistory>,
    },
    Deleted {
        path: PathBuf,
        history: FileHistory,
    },
}

impl DirOp {
    fn dir(&self) -> Option<&Path> {
        match self {
            DirOp::Created(p) | DirOp::Deleted { path: p, .. } => p.parent(),
            DirOp::Renamed { to, .. } => to.parent(),
        }
    }
}

struct Recorder {
    plan: Plan,
    syncs: u64,
    unsynced: HashMap<PathBuf, FileHistory>,
    dir_ops: Vec<DirOp>,
    databases: Vec<PathBuf>,
    rng: u64,
    /// What the planned cut's sync was for.
    cut_at: Option<PathBuf>,
}

fn recorder() -> &'static Mutex<Recorder> {
    static RECORDER: OnceLock<Mutex<Recorder>> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let plan = Plan::from_env();
        Mutex::new(Recorder {
            rng: plan.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            plan,
            syncs: 0,
            unsynced: HashMap::new(),
            dir_ops: Vec::new(),
            databases: Vec::new(),
            cut_at: None,
        })
    })
}

/// Whether the VFS was registered in this process (then the hooks record).
fn active() -> bool {
    shim::registered()
}

fn lock() -> MutexGuard<'static, Recorder> {
    // A poisoned lock only means another thread panicked while recording; the
    // records are still the best knowledge there is.
    recorder().lock().unwrap_or_else(|e| e.into_inner())
}

/// Registers the VFS (once per process) and reads its plan from the environment.
pub fn register() -> Result<(), DbError> {
    shim::register().map_err(|reason| DbError::CrashVfs { reason })?;
    drop(lock());
    Ok(())
}

/// The plan this process runs under.
pub fn plan() -> Plan {
    lock().plan.clone()
}

/// How many syncs this process made so far.
pub fn sync_count() -> u64 {
    lock().syncs
}

/// Cuts the power now (reported as `explicit`).
pub fn power_cut_now() -> ! {
    let mut rec = lock();
    rec.power_cut("explicit")
}

/// A file's content as the disk has it now, when small enough to keep.
fn content_of(path: &Path) -> Option<Vec<u8>> {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file() && m.len() <= KEEP_DELETED_UP_TO)
        .and_then(|_| std::fs::read(path).ok())
}

/// Writes `content` as the whole of `path`.
fn put(path: &Path, content: &[u8]) {
    if let Ok(file) = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
    {
        let _ = file.write_all_at(content, 0);
        let _ = file.set_len(content.len() as u64);
    }
}

impl Recorder {
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic for a seed, good enough to pick subsets.
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Counts a sync point (of the file or directory `what`); cuts the power if it is
    /// the planned one.
    fn sync_point(&mut self, what: &Path) {
        self.syncs += 1;
        if self.plan.crash_at == Some(self.syncs) {
            self.cut_at = Some(what.to_path_buf());
            self.power_cut("planned");
        }
    }

    fn dir_synced(&mut self, dir: &Path) {
        self.dir_ops.retain(|op| op.dir() != Some(dir));
    }

    /// The file's history since its last sync, or one that starts from its content now.
    fn history(&mut self, path: &Path) -> Option<FileHistory> {
        match self.unsynced.remove(path) {
            Some(h) => Some(h),
            None => content_of(path).map(FileHistory::new),
        }
    }

    /// What of `history` is on the disk after the cut, for a file that is not torn.
    fn survivor(&mut self, history: &FileHistory) -> Vec<u8> {
        let fate = match self.plan.mode {
            Mode::Subset => Fate::Subset,
            Mode::All | Mode::Torn | Mode::Kill => Fate::LoseAll,
        };
        let mut random = || self.next_random();
        history.after_cut(fate, &mut random)
    }

    fn power_cut(&mut self, kind: &str) -> ! {
        if self.plan.mode == Mode::Kill {
            self.end(kind)
        }
        let mut files: Vec<(PathBuf, FileHistory)> = self.unsynced.drain().collect();
        files.sort_by(|a, b| a.0.cmp(&b.0));
        let torn = if self.plan.mode == Mode::Torn {
            let candidates: Vec<usize> = (0..files.len())
                .filter(|&i| !files[i].1.changes.is_empty())
                .collect();
            if candidates.is_empty() {
                None
            } else {
                let file = candidates[(self.next_random() as usize) % candidates.len()];
                let at = (self.next_random() as usize) % files[file].1.changes.len();
                Some((file, at))
            }
        } else {
            None
        };
        for (i, (path, history)) in files.iter().enumerate() {
            if !path.exists() {
                continue;
            }
            let image = match torn {
                Some((file, at)) if file == i => {
                    let mut random = || self.next_random();
                    history.after_cut(Fate::TornAt(at), &mut random)
                }
                _ => self.survivor(history),
            };
            put(path, &image);
        }
        for op in std::mem::take(&mut self.dir_ops).into_iter().rev() {
            match op {
                DirOp::Created(path) => {
                    let _ = std::fs::remove_file(path);
                }
                DirOp::Renamed { from, to, replaced } => {
                    let _ = std::fs::rename(&to, &from);
                    if let Some(history) = replaced {
                        let image = self.survivor(&history);
                        put(&to, &image);
                    }
                }
                DirOp::Deleted { path, history } => {
                    let image = self.survivor(&history);
                    put(&path, &image);
                }
            }
        }
        for db in &self.databases {
            let mut shm = db.as_os_str().to_owned();
            shm.push("-shm");
            let _ = std::fs::remove_file(PathBuf::from(shm));
        }
        self.end(kind)
    }

    /// Reports the cut and ends the process at once.
    fn end(&self, kind: &str) -> ! {
        if let Some(report) = &self.plan.report {
            let what = self
                .cut_at
                .as_ref()
                .map(|p| format!(" {}", p.display()))
                .unwrap_or_default();
            let _ = std::fs::write(report, format!("{kind} {}{what}\n", self.syncs));
        }
        // SAFETY: _exit ends the process at once, like a power cut: no destructors,
        // no buffered output flushed after this point.
        unsafe { libc::_exit(EXIT_CODE) }
    }
}

/// The key a path is recorded under: absolute, with its directory's symlinks resolved
/// (SQLite hands the VFS such paths).
fn key(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    match (absolute.parent(), absolute.file_name()) {
        (Some(dir), Some(name)) => std::fs::canonicalize(dir)
            .map(|d| d.join(name))
            .unwrap_or(absolute),
        _ => absolute,
    }
}

// ---- records, made by the shim (SQLite's files) while it holds the recorder lock, so
// a power cut never lands between a record and the operation it describes.

impl Recorder {
    /// A write of `data` at `offset`; `now` reads the whole file as it is before it
    /// (called only on the first change since the file's last sync).
    fn before_write(
        &mut self,
        path: &Path,
        offset: u64,
        data: &[u8],
        now: impl FnOnce() -> Vec<u8>,
    ) {
        self.unsynced
            .entry(path.to_path_buf())
            .or_insert_with(|| FileHistory::new(now()))
            .changes
            .push(Change::Write {
                offset,
                data: data.to_vec(),
            });
    }

    fn before_set_len(&mut self, path: &Path, len: u64, now: impl FnOnce() -> Vec<u8>) {
        self.unsynced
            .entry(path.to_path_buf())
            .or_insert_with(|| FileHistory::new(now()))
            .changes
            .push(Change::SetLen(len));
    }

    fn created(&mut self, path: &Path) {
        self.dir_ops.push(DirOp::Created(path.to_path_buf()));
    }

    fn opened_database(&mut self, path: &Path) {
        if !self.databases.iter().any(|p| p == path) {
            self.databases.push(path.to_path_buf());
        }
    }

    fn before_delete(&mut self, path: &Path) {
        if let Some(history) = self.history(path) {
            self.dir_ops.push(DirOp::Deleted {
                path: path.to_path_buf(),
                history,
            });
        }
    }

    /// The file's writes reached the disk; with `dir_too`, its directory's entries too.
    fn synced(&mut self, path: &Path, dir_too: bool) {
        self.unsynced.remove(path);
        if dir_too {
            if let Some(dir) = path.parent() {
                self.dir_synced(dir);
            }
        }
    }
}

// ---- dbwarden's own durability steps (see `durable`)

/// `durable::sync_file`: a sync point, then the file's writes are durable.
pub(crate) fn sync_file(
    path: &Path,
    sync: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    if !active() {
        return sync();
    }
    let path = key(path);
    let mut rec = lock();
    rec.sync_point(&path);
    sync()?;
    rec.synced(&path, false);
    Ok(())
}

/// `durable::sync_dir`: a sync point, then the directory's entries are durable.
pub(crate) fn sync_dir(
    dir: &Path,
    sync: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    if !active() {
        return sync();
    }
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut rec = lock();
    rec.sync_point(&dir);
    sync()?;
    rec.dir_synced(&dir);
    Ok(())
}

/// `durable::rename`: undone by a power cut until the directory is synced.
pub(crate) fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    if !active() {
        return std::fs::rename(from, to);
    }
    let (from_key, to_key) = (key(from), key(to));
    let mut rec = lock();
    let replaced = rec.history(&to_key);
    std::fs::rename(from, to)?;
    rec.dir_ops.push(DirOp::Renamed {
        from: from_key.clone(),
        to: to_key.clone(),
        replaced,
    });
    // Writes not yet synced follow the file to its new name.
    if let Some(undos) = rec.unsynced.remove(&from_key) {
        rec.unsynced.insert(to_key, undos);
    }
    Ok(())
}

/// `durable::write_file`: a new file's content, written through the recorder so a cut
/// before its sync can take it back (and before its directory's sync, the file itself).
pub(crate) fn write_file(
    path: &Path,
    content: &[u8],
    write: impl FnOnce() -> std::io::Result<()>,
) -> std::io::Result<()> {
    if !active() {
        return write();
    }
    let path_key = key(path);
    let mut rec = lock();
    let existed = path.exists();
    let before = content_of(path).unwrap_or_default();
    write()?;
    if !existed {
        rec.created(&path_key);
    }
    rec.before_set_len(&path_key, 0, || before);
    rec.before_write(&path_key, 0, content, Vec::new);
    Ok(())
}

/// `durable::create_file`: a new file whose content, whatever is written to it, a cut
/// before its sync takes back whole (and before its directory's sync, the file too).
pub(crate) fn create_file(
    path: &Path,
    create: impl FnOnce() -> std::io::Result<std::fs::File>,
) -> std::io::Result<std::fs::File> {
    if !active() {
        return create();
    }
    let path_key = key(path);
    let mut rec = lock();
    let existed = path.exists();
    let before = content_of(path).unwrap_or_default();
    let file = create()?;
    if !existed {
        rec.created(&path_key);
    }
    // Truncated now; what the caller writes later is not recorded, so the cut rebuilds
    // the file from its synced content alone: a truncation to nothing at most.
    rec.before_set_len(&path_key, 0, || before);
    Ok(file)
}

/// `durable::remove_file`: comes back at a cut until its directory is synced.
pub(crate) fn remove_file(path: &Path) -> std::io::Result<()> {
    if !active() {
        return std::fs::remove_file(path);
    }
    let path_key = key(path);
    let mut rec = lock();
    let history = rec.history(&path_key);
    if let Err(e) = std::fs::remove_file(path) {
        if let Some(h) = history.filter(|h| !h.changes.is_empty()) {
            rec.unsynced.insert(path_key, h);
        }
        return Err(e);
    }
    if let Some(history) = history {
        rec.dir_ops.push(DirOp::Deleted {
            path: path_key,
            history,
        });
    }
    Ok(())
}

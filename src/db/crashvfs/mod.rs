//! A crash-simulating SQLite VFS, for the power-loss tests (in the spirit of SQLite's
//! own `test6.c`). Not for production: nothing uses it unless the hidden setting
//! `database.vfs = "dbwarden-crash"` asks for it.
//!
//! Killing a process never loses data the kernel already has, so SIGKILL cannot test
//! power loss. This VFS wraps the default `unix` VFS (shared memory passes through)
//! and remembers what a power cut would take back:
//! - every write and truncation made to a file since that file's last sync, with the
//!   bytes it overwrote (its pre-image);
//! - every file created, renamed or deleted since its directory's last sync.
//!
//! At the chosen sync (the Nth `xSync`, file fsync or directory fsync, counted across
//! the process) or when [`power_cut_now`] is called, it "cuts the power" before the
//! sync happens: it undoes the unsynced writes (all of them, a random subset, or all
//! but a random subset of one write's 512-byte sectors: a torn write), undoes the
//! unsynced directory operations, deletes every `-shm` (shared memory does not survive
//! a power loss) and ends the process at once with [`EXIT_CODE`]. A fresh process then
//! recovers with the normal VFS.
//!
//! The plan comes from the environment of the process that registers the VFS:
//! `DBWARDEN_CRASH_AT` (sync number; unset: only an explicit cut), `DBWARDEN_CRASH_MODE`
//! (`all`, `subset`, `torn`), `DBWARDEN_CRASH_SEED`, and `DBWARDEN_CRASH_SYNCHRONOUS`
//! (`FULL` by default; `NORMAL` or `OFF` let the harness prove it can detect losses).
//!
//! Syncs that dbwarden makes outside SQLite (a backup's fsync, rename and directory
//! fsync) go through [`super::durable`], which reports them here.

mod shim;

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use super::DbError;

/// The VFS's registered name, the value of `database.vfs` that selects it.
pub const NAME: &str = crate::config::CRASH_VFS;

/// The exit code of a process whose power was cut.
pub const EXIT_CODE: i32 = 86;

/// The sector size torn writes are cut at.
const SECTOR: u64 = 512;

/// Deleted files larger than this are not kept for a possible undo.
const KEEP_DELETED_UP_TO: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every unsynced write is lost.
    All,
    /// Each unsynced write is lost or kept, at random.
    Subset,
    /// Every unsynced write is lost, except some sectors of one of them.
    Torn,
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub crash_at: Option<u64>,
    pub mode: Mode,
    pub seed: u64,
    /// The `PRAGMA synchronous` the writer runs with under this VFS.
    pub synchronous: &'static str,
}

impl Plan {
    fn from_env() -> Plan {
        let var = |k: &str| std::env::var(k).ok();
        Plan {
            crash_at: var("DBWARDEN_CRASH_AT").and_then(|v| v.parse().ok()),
            mode: match var("DBWARDEN_CRASH_MODE").as_deref() {
                Some("subset") => Mode::Subset,
                Some("torn") => Mode::Torn,
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
        }
    }
}

enum Undo {
    /// `old` was at `offset` and the file was `old_size` long before the write.
    Write {
        offset: u64,
        old: Vec<u8>,
        old_size: u64,
    },
    /// The file was `old_size` long and ended with `tail` (from the new size on).
    Resize { old_size: u64, tail: Vec<u8> },
}

enum DirOp {
    Created(PathBuf),
    Renamed {
        from: PathBuf,
        to: PathBuf,
        replaced: Option<Vec<u8>>,
    },
    Deleted {
        path: PathBuf,
        content: Vec<u8>,
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
    unsynced: HashMap<PathBuf, Vec<Undo>>,
    dir_ops: Vec<DirOp>,
    databases: Vec<PathBuf>,
    rng: u64,
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

/// Cuts the power now.
pub fn power_cut_now() -> ! {
    let mut rec = lock();
    rec.power_cut()
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

    fn coin(&mut self) -> bool {
        self.next_random() >> 63 == 0
    }

    /// Counts a sync point; cuts the power if it is the planned one.
    fn sync_point(&mut self) {
        self.syncs += 1;
        if self.plan.crash_at == Some(self.syncs) {
            self.power_cut();
        }
    }

    fn dir_synced(&mut self, dir: &Path) {
        self.dir_ops.retain(|op| op.dir() != Some(dir));
    }

    fn power_cut(&mut self) -> ! {
        let mode = self.plan.mode;
        let files: Vec<(PathBuf, Vec<Undo>)> = self.unsynced.drain().collect();
        let torn_file = if mode == Mode::Torn && !files.is_empty() {
            Some((self.next_random() as usize) % files.len())
        } else {
            None
        };
        for (i, (path, undos)) in files.into_iter().enumerate() {
            let torn_write = match torn_file {
                Some(f) if f == i && !undos.is_empty() => {
                    Some((self.next_random() as usize) % undos.len())
                }
                _ => None,
            };
            let Ok(file) = OpenOptions::new().write(true).open(&path) else {
                continue;
            };
            for (j, undo) in undos.into_iter().enumerate().rev() {
                let lose = mode != Mode::Subset || self.coin();
                if !lose {
                    continue;
                }
                match undo {
                    Undo::Write {
                        offset,
                        old,
                        old_size,
                    } => {
                        if torn_write == Some(j) {
                            // Some of this write's sectors reached the disk.
                            let mut at = 0u64;
                            while at < old.len() as u64 {
                                let end = (at + SECTOR).min(old.len() as u64);
                                if self.coin() {
                                    let _ =
                                        file.write_at(&old[at as usize..end as usize], offset + at);
                                }
                                at = end;
                            }
                        } else {
                            let _ = file.write_at(&old, offset);
                            let _ = file.set_len(old_size);
                        }
                    }
                    Undo::Resize { old_size, tail } => {
                        let _ = file.set_len(old_size);
                        if !tail.is_empty() {
                            let _ = file.write_at(&tail, old_size - tail.len() as u64);
                        }
                    }
                }
            }
        }
        for op in std::mem::take(&mut self.dir_ops).into_iter().rev() {
            match op {
                DirOp::Created(path) => {
                    let _ = std::fs::remove_file(path);
                }
                DirOp::Renamed { from, to, replaced } => {
                    let _ = std::fs::rename(&to, &from);
                    if let Some(content) = replaced {
                        let _ = std::fs::write(&to, content);
                    }
                }
                DirOp::Deleted { path, content } => {
                    let _ = std::fs::write(path, content);
                }
            }
        }
        for db in &self.databases {
            let mut shm = db.as_os_str().to_owned();
            shm.push("-shm");
            let _ = std::fs::remove_file(PathBuf::from(shm));
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
    fn before_write(&mut self, path: &Path, offset: u64, old: Vec<u8>, old_size: u64) {
        self.unsynced
            .entry(path.to_path_buf())
            .or_default()
            .push(Undo::Write {
                offset,
                old,
                old_size,
            });
    }

    fn before_resize(&mut self, path: &Path, old_size: u64, tail: Vec<u8>) {
        self.unsynced
            .entry(path.to_path_buf())
            .or_default()
            .push(Undo::Resize { old_size, tail });
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
        let content = std::fs::metadata(path)
            .ok()
            .filter(|m| m.len() <= KEEP_DELETED_UP_TO)
            .and_then(|_| std::fs::read(path).ok());
        if let Some(content) = content {
            self.dir_ops.push(DirOp::Deleted {
                path: path.to_path_buf(),
                content,
            });
        }
        self.unsynced.remove(path);
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
    rec.sync_point();
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
    rec.sync_point();
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
    let replaced = std::fs::read(to).ok();
    let mut rec = lock();
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

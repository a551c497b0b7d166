//! The file-system steps that make a file durable outside SQLite: fsync a file, rename
//! it, fsync its directory. Backups, manifests and restores take them through here so
//! the crash-simulating VFS of the power-loss tests ([`super::crashvfs`]) sees them:
//! it must know which renames a power cut would undo. Without that VFS they are the
//! plain system calls.

use std::fs::File;
use std::io;
use std::path::Path;

use super::crashvfs;

/// fsync of a file's content.
pub fn sync_file(path: &Path) -> io::Result<()> {
    crashvfs::sync_file(path, || File::open(path)?.sync_all())
}

/// fsync of a directory: renames, creations and removals in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    crashvfs::sync_dir(dir, || File::open(dir)?.sync_all())
}

/// rename(2); durable only once the directory is synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    crashvfs::rename(from, to)
}

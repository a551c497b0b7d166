//! The file-system steps that make a file durable outside SQLite: fsync a file, rename
//! it, fsync its directory. Backups, manifests and restores take them through here.
//!
//! In a release build they are the plain system calls. Test builds (the `crash-vfs`
//! feature) report them to the crash-simulating VFS of the power-loss tests
//! ([`super::crashvfs`]) when it is active: it must know which renames a power cut
//! would undo and which syncs count as sync points.

use std::fs::File;
use std::io;
use std::path::Path;

/// fsync of a file's content.
pub fn sync_file(path: &Path) -> io::Result<()> {
    let sync = || File::open(path)?.sync_all();
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::sync_file(path, sync);
    #[cfg(not(feature = "crash-vfs"))]
    sync()
}

/// fsync of a directory: renames, creations and removals in it become durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    let sync = || File::open(dir)?.sync_all();
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::sync_dir(dir, sync);
    #[cfg(not(feature = "crash-vfs"))]
    sync()
}

/// rename(2); durable only once the directory is synced.
pub fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(feature = "crash-vfs")]
    return super::crashvfs::rename(from, to);
    #[cfg(not(feature = "crash-vfs"))]
    std::fs::rename(from, to)
}
